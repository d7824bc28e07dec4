//! An agent's presence and membership: its status, what follows going offline or gaining
//! capacity, signing it out, its groups' rooms.

use chrono::Utc;
use entity::{agents, enums::AgentStatus};
use jobs::{
    agent_presence::{ReleaseError, release_all},
    close_conversation::serve_groups_of,
    notify::Outcome,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    UpdateMany,
    sea_query::{Expr, ExprTrait},
};
use serde::Deserialize;

use super::views::AgentView;
use crate::{auth::CurrentAgent, error::ApiError, state::AppState};

/// A status change: `acceptingChats` follows the status when not given.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusBody {
    status: AgentStatus,
    accepting_chats: Option<bool>,
}

/// Sets the caller's presence. Going offline hands its active conversations back to the line
/// (the Socket.IO layer adds a grace period for dropped connections); becoming available offers
/// it the waiting lines of its groups.
pub async fn set_status(
    state: &AppState,
    caller: CurrentAgent,
    body: StatusBody,
) -> Result<AgentView, ApiError> {
    let before = caller.agent;
    let accepting = body.accepting_chats.unwrap_or(match body.status {
        AgentStatus::Online => true,
        AgentStatus::Away | AgentStatus::Offline => false,
    });
    let txn = jobs::db::begin_write(&state.db).await?;
    let agent = agents::ActiveModel {
        id: Set(before.id),
        status: Set(body.status),
        accepting_chats: Set(accepting),
        last_seen_at: Set(Some(Utc::now())),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(&txn)
    .await?;
    let changed = Outcome::AgentStatusChanged {
        account_id: agent.account_id,
        agent_id: agent.id,
        status: agent.status,
        accepting_chats: agent.accepting_chats,
    };
    let staged = state.outbox.stage(&txn, [changed]).await?;
    txn.commit().await?;
    staged.tell(&*state.notifier);
    // Also when it already was offline: a retry after a failed hand-over completes it (the
    // reassign job acts only on chats still held).
    if agent.status == AgentStatus::Offline {
        release(state, agent.id).await?;
    }
    if agent.status == AgentStatus::Online && agent.accepting_chats {
        offer_capacity(state, &agent).await;
    }
    AgentView::one(&state.db, agent).await
}

/// Hands every chat the agent holds back to the line (reassign jobs).
pub async fn release(state: &AppState, agent_id: i64) -> Result<(), ApiError> {
    release_all(
        &state.job_context(),
        agent_id,
        jobs::conversation::ReleaseReason::AgentOffline,
    )
    .await
    .map(drop)
    .map_err(|err| match err {
        ReleaseError::Db(err) => ApiError::from(err),
        ReleaseError::Store(_) => ApiError::Unavailable("job storage"),
    })
}

/// Capacity may have appeared for `agent`: serve its groups' lines. A lost submission only delays
/// assignment until the reconciler's next pass, so it is logged, not returned.
pub async fn offer_capacity(state: &AppState, agent: &agents::Model) {
    if let Err(err) = serve_groups_of(&state.job_context(), agent.account_id, agent.id).await {
        tracing::warn!(agent_id = agent.id, %err, "could not offer new capacity; the reconciler will");
    }
}

/// `update` (of one agent) also revokes every token the agent holds: its version moves on.
pub fn revoking_tokens(update: UpdateMany<agents::Entity>) -> UpdateMany<agents::Entity> {
    update
        .col_expr(
            agents::Column::TokenVersion,
            Expr::col(agents::Column::TokenVersion).add(1),
        )
        .col_expr(agents::Column::UpdatedAt, Expr::value(Utc::now()))
}

/// Closes the agent's open sockets on every node (it was deleted, or its tokens revoked).
pub fn sign_out(state: &AppState, account_id: i64, agent_id: i64) {
    state.notifier.notify(Outcome::AgentSignedOut {
        account_id,
        agent_id,
    });
}

/// The agent's open sockets (on every node) join or leave the group's room with its membership.
pub fn membership_changed(
    state: &AppState,
    account_id: i64,
    agent_id: i64,
    group_id: i64,
    joined: bool,
) {
    state.notifier.notify(Outcome::MembershipChanged {
        account_id,
        agent_id,
        group_id,
        joined,
    });
}

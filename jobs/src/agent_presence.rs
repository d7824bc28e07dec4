//! Presence: an agent whose last socket dropped keeps its chats for a grace period. The realtime
//! layer records the drop (`agents.disconnected_at`) and submits [`AgentDisconnected`] to run
//! after the grace; a reconnect meanwhile (a later `connected_at`) or a later drop (another
//! `disconnected_at`, with its own job) makes this one a no-op.
//!
//! Idempotent: the status change is conditional on the same timestamps, and handing back the
//! chats submits reassignments that act only on chats the agent still holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{
    agents, conversations,
    enums::{AgentStatus, ConversationStatus},
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryBudget, StoreError, notify::Outcome,
    reassign_conversation::ReassignConversation,
};

/// The grace period of an agent's drop is over: act on it unless it reconnected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDisconnected {
    /// The agent.
    pub agent_id: i64,
    /// The `agents.disconnected_at` the drop wrote (microsecond precision, as stored).
    pub disconnected_at: DateTime<Utc>,
}

impl Job for AgentDisconnected {
    const QUEUE: &'static str = "agent-presence";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(100),
        timeout: Duration::from_secs(30),
    };

    #[tracing::instrument(name = "job.agent_presence", skip_all, fields(agent_id = self.agent_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let Some(agent) = agents::Entity::find_by_id(self.agent_id)
            .one(&ctx.db)
            .await?
        else {
            return Ok("no such agent".into());
        };
        if agent.disconnected_at != Some(self.disconnected_at) {
            return Ok("superseded by a later disconnect".into());
        }
        if agent
            .connected_at
            .is_some_and(|connected| connected > self.disconnected_at)
        {
            return Ok("reconnected within the grace period".into());
        }
        // Conditional on the same facts, so a reconnect racing this job wins.
        let changed = agents::Entity::update_many()
            .col_expr(agents::Column::Status, Expr::value(AgentStatus::Offline))
            .col_expr(agents::Column::AcceptingChats, Expr::value(false))
            .col_expr(agents::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(agents::Column::Id.eq(agent.id))
            .filter(agents::Column::DisconnectedAt.eq(self.disconnected_at))
            .filter(
                Condition::any()
                    .add(agents::Column::ConnectedAt.is_null())
                    .add(agents::Column::ConnectedAt.lte(self.disconnected_at)),
            )
            .filter(
                Condition::any()
                    .add(agents::Column::Status.ne(AgentStatus::Offline))
                    .add(agents::Column::AcceptingChats.eq(true)),
            )
            .exec(&ctx.db)
            .await?
            .rows_affected;
        if changed == 1 {
            ctx.notifier.notify(Outcome::AgentStatusChanged {
                account_id: agent.account_id,
                agent_id: agent.id,
                status: AgentStatus::Offline,
                accepting_chats: false,
            });
        }
        // Also when the status was already offline: a retry completes an interrupted hand-over.
        let released = release_all(ctx, agent.id, "agent_offline")
            .await
            .map_err(|err| JobError::Transient(err.to_string()))?;
        Ok(format!(
            "offline after the grace period; {released} chat(s) handed back"
        ))
    }
}

/// Why a hand-over could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Reading the held chats failed.
    #[error(transparent)]
    Db(#[from] sea_orm::DbErr),
    /// Submitting a reassignment failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Submits a reassignment for every conversation `agent_id` holds; returns how many.
pub async fn release_all(
    ctx: &JobContext,
    agent_id: i64,
    reason: &str,
) -> Result<usize, ReleaseError> {
    let held = held_by(&ctx.db, agent_id).await?;
    for &conversation_id in &held {
        ctx.jobs
            .submit(ReassignConversation {
                conversation_id,
                from_agent_id: agent_id,
                reason: reason.to_owned(),
                to_group_id: None,
            })
            .await?;
    }
    Ok(held.len())
}

/// The active conversations `agent_id` holds.
pub async fn held_by(db: &impl ConnectionTrait, agent_id: i64) -> Result<Vec<i64>, sea_orm::DbErr> {
    conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .filter(conversations::Column::AssignedAgentId.eq(agent_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Active))
        .into_tuple()
        .all(db)
        .await
}

//! Releases: an agent gives a conversation back (its capacity and its assignment), and a requeue
//! puts the conversation back in its place in line.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::{
    agents, assignments, conversations,
    enums::{ClosedBy, ConversationStatus},
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    by_id,
    events::system_event,
    threads::{close_thread, open_thread},
};

/// Why an agent lost a conversation. Its string (`as_str`, and the serde form) is what the
/// database stores (`assignments.release_reason`, `threads.closed_reason`), what job args carry and
/// what clients and webhooks read (`conversation:unassigned`, `conversation.reassigned`): it never
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The agent transferred it (to another agent or a group): `transferred`.
    Transferred,
    /// The agent went offline, or was deleted, while holding it: `agent_offline`.
    AgentOffline,
    /// The agent did not answer the visitor in time: `no_response`.
    NoResponse,
    /// The conversation was resolved or closed: `closed`.
    Closed,
}

impl ReleaseReason {
    /// The reasons after which the released agent is not offered the conversation again.
    pub const EXCLUDING: [ReleaseReason; 3] = [
        ReleaseReason::Transferred,
        ReleaseReason::AgentOffline,
        ReleaseReason::NoResponse,
    ];

    /// The stored and sent form.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Transferred => "transferred",
            ReleaseReason::AgentOffline => "agent_offline",
            ReleaseReason::NoResponse => "no_response",
            ReleaseReason::Closed => "closed",
        }
    }

    /// What the "reassigned" system event says.
    fn describe(self) -> &'static str {
        match self {
            ReleaseReason::Transferred => "transferred by the agent",
            ReleaseReason::AgentOffline => "the agent went offline",
            ReleaseReason::NoResponse => "the agent did not reply in time",
            ReleaseReason::Closed => "closed",
        }
    }
}

impl std::fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A conversation that left an agent and waits again.
#[derive(Debug, Clone)]
pub struct Requeued {
    /// The conversation as it is now (pending).
    pub conversation: conversations::Model,
    /// The agent that lost it.
    pub agent_id: i64,
}

/// Gives back the slots of conversations that just left `active` (conversation → its agent) and
/// ends their assignments with `reason`: two statements for any number.
pub(super) async fn release_agents(
    txn: &impl ConnectionTrait,
    released: &HashMap<i64, i64>,
    reason: ReleaseReason,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if released.is_empty() {
        return Ok(());
    }
    let mut per_agent: BTreeMap<i64, i32> = Default::default();
    for agent in released.values() {
        *per_agent.entry(*agent).or_default() += 1;
    }
    let freed = || by_id(agents::Column::Id, per_agent.iter().map(|(a, k)| (*a, *k)));
    agents::Entity::update_many()
        .col_expr(
            agents::Column::ActiveChats,
            Expr::col(agents::Column::ActiveChats).sub(freed()),
        )
        .filter(agents::Column::Id.is_in(per_agent.keys().copied()))
        .filter(Expr::col(agents::Column::ActiveChats).gte(freed()))
        .exec(txn)
        .await?;
    // A conversation has one unreleased assignment at most: its current agent's. Naming the
    // agents lets the (agent, released) index find them even before the table has statistics.
    assignments::Entity::update_many()
        .col_expr(assignments::Column::ReleasedAt, Expr::value(Some(now)))
        .col_expr(
            assignments::Column::ReleaseReason,
            Expr::value(Some(reason.as_str().to_owned())),
        )
        .filter(assignments::Column::AgentId.is_in(per_agent.keys().copied()))
        .filter(assignments::Column::ReleasedAt.is_null())
        .filter(assignments::Column::ConversationId.is_in(released.keys().copied()))
        .exec(txn)
        .await?;
    Ok(())
}

/// Takes an active conversation away from `agent_id` and puts it back in the waiting line, in its
/// original place (its `queued_at` is kept), optionally in another group. `None` when it is no
/// longer active with that agent.
///
/// The caller locks the agent's row first ([`super::lock_agents`], or
/// [`super::lock_conversation`], which locks the holder): the update below takes the
/// conversation's row, and then the agent's, and agents come first in every transaction.
pub async fn requeue(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    agent_id: i64,
    reason: ReleaseReason,
    to_group: Option<i64>,
    detail: Option<&str>,
) -> Result<Option<Requeued>, DbErr> {
    let now = Utc::now();
    let mut update = conversations::Entity::update_many()
        .col_expr(
            conversations::Column::Status,
            Expr::value(ConversationStatus::Pending),
        )
        .col_expr(
            conversations::Column::AssignedAgentId,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            conversations::Column::AssignedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            conversations::Column::ReassignmentCount,
            Expr::col(conversations::Column::ReassignmentCount).add(1),
        )
        .col_expr(conversations::Column::UpdatedAt, Expr::value(now));
    if let Some(group) = to_group {
        update = update.col_expr(conversations::Column::GroupId, Expr::value(group));
    }
    let moved = update
        .filter(conversations::Column::Id.eq(conversation_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Active))
        .filter(conversations::Column::AssignedAgentId.eq(agent_id))
        .exec(txn)
        .await?;
    if moved.rows_affected != 1 {
        return Ok(None);
    }
    release_agents(txn, &[(conversation_id, agent_id)].into(), reason, now).await?;
    close_thread(txn, conversation_id, ClosedBy::System, reason.as_str(), now).await?;
    let conversation = conversations::Entity::find_by_id(conversation_id)
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("conversation {conversation_id}")))?;
    let conversation = open_thread(txn, &conversation, None, now).await?;
    let content = format!(
        "Reassigned: {}",
        detail.unwrap_or_else(|| reason.describe())
    );
    system_event(
        txn,
        &conversation,
        content,
        json!({ "action": "requeued", "agentId": agent_id, "reason": reason }),
        &format!("requeued:{agent_id}:{}", conversation.reassignment_count),
    )
    .await?;
    Ok(Some(Requeued {
        conversation,
        agent_id,
    }))
}

//! Presence: an agent whose last socket dropped keeps its chats for a grace period. The realtime
//! layer records the drop (`agents.disconnected_at`) and submits [`AgentDisconnected`] to run
//! after the grace; a reconnect meanwhile (a later `connected_at`) or a later drop (another
//! `disconnected_at`, with its own job) makes this one a no-op.
//!
//! Idempotent: the status change is conditional on the same timestamps, and handing back the
//! chats submits reassignments that act only on chats the agent still holds.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use entity::{
    agents, conversations,
    enums::{AgentStatus, ConversationStatus},
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryBudget, StoreError, conversation::ReleaseReason,
    notify::Outcome, reassign_conversation::ReassignConversation,
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
        if let Some(why) = still_here(&agent, self.disconnected_at) {
            return Ok(why.into());
        }
        // Conditional on the same facts, so a reconnect or heartbeat racing this job wins.
        let txn = crate::db::begin_write(&ctx.db).await?;
        let changed = agents::Entity::update_many()
            .col_expr(agents::Column::Status, Expr::value(AgentStatus::Offline))
            .col_expr(agents::Column::AcceptingChats, Expr::value(false))
            .col_expr(agents::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(agents::Column::Id.eq(agent.id))
            .filter(agents::Column::DisconnectedAt.eq(self.disconnected_at))
            .filter(not_after(agents::Column::ConnectedAt, self.disconnected_at))
            .filter(not_after(agents::Column::LastSeenAt, self.disconnected_at))
            .filter(
                Condition::any()
                    .add(agents::Column::Status.ne(AgentStatus::Offline))
                    .add(agents::Column::AcceptingChats.eq(true)),
            )
            .exec(&txn)
            .await?
            .rows_affected;
        let told = (changed == 1).then(|| Outcome::went_offline(&agent));
        let staged = ctx.outbox.stage(&txn, told).await?;
        txn.commit().await?;
        ctx.tell(staged);
        // Hand the chats over only if the agent is (still) offline for this very drop; also when
        // an earlier run set the status, so a retry completes an interrupted hand-over.
        let Some(now) = agents::Entity::find_by_id(agent.id).one(&ctx.db).await? else {
            return Ok("no such agent".into());
        };
        if let Some(why) = still_here(&now, self.disconnected_at) {
            return Ok(why.into());
        }
        if now.status != AgentStatus::Offline {
            return Ok("the agent set its status again".into());
        }
        let released = release_all(ctx, agent.id, ReleaseReason::AgentOffline)
            .await
            .map_err(|err| JobError::Transient(err.to_string()))?;
        Ok(format!(
            "offline after the grace period; {released} chat(s) handed back"
        ))
    }
}

/// Why the drop at `disconnected_at` no longer stands, if it does not: a later drop, a reconnect,
/// or a node (or the agent itself) vouching for it since.
fn still_here(agent: &agents::Model, disconnected_at: DateTime<Utc>) -> Option<&'static str> {
    if agent.disconnected_at != Some(disconnected_at) {
        return Some("superseded by a later disconnect");
    }
    if agent.connected_at.is_some_and(|at| at > disconnected_at) {
        return Some("reconnected within the grace period");
    }
    if agent.last_seen_at.is_some_and(|at| at > disconnected_at) {
        return Some("still connected elsewhere");
    }
    None
}

/// `column` is unset or not later than `at`.
fn not_after(column: agents::Column, at: DateTime<Utc>) -> Condition {
    Condition::any().add(column.is_null()).add(column.lte(at))
}

/// Agents that look connected (their last connect is later than their last drop) but that no API
/// node has vouched for within `stale`: their node died without telling. Each gets its drop
/// recorded now and the presence job at once (the grace is already over). Returns how many.
pub async fn reclaim_silent(
    ctx: &JobContext,
    stale: std::time::Duration,
) -> Result<usize, JobError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let silent = || {
        Condition::all()
            .add(agents::Column::ConnectedAt.is_not_null())
            .add(
                Condition::any()
                    .add(agents::Column::DisconnectedAt.is_null())
                    .add(ExprTrait::lt(
                        Expr::col(agents::Column::DisconnectedAt),
                        Expr::col(agents::Column::ConnectedAt),
                    )),
            )
            .add(not_after(agents::Column::LastSeenAt, cutoff))
            .add(agents::Column::Status.ne(AgentStatus::Offline))
    };
    let ids: Vec<i64> = agents::Entity::find()
        .select_only()
        .column(agents::Column::Id)
        .filter(silent())
        .into_tuple()
        .all(&ctx.db)
        .await?;
    let mut reclaimed = 0;
    for agent_id in ids {
        let now = Utc::now().trunc_subsecs(6);
        let recorded = agents::Entity::update_many()
            .col_expr(agents::Column::DisconnectedAt, Expr::value(now))
            .filter(agents::Column::Id.eq(agent_id))
            .filter(silent())
            .exec(&ctx.db)
            .await?
            .rows_affected;
        if recorded == 1 {
            tracing::warn!(
                agent_id,
                "no node vouches for a connected agent; treating it as dropped"
            );
            ctx.jobs
                .submit(AgentDisconnected {
                    agent_id,
                    disconnected_at: now,
                })
                .await
                .map_err(|err| JobError::Transient(err.to_string()))?;
            reclaimed += 1;
        }
    }
    Ok(reclaimed)
}

/// Agents whose last recorded drop is older than `stale` (the grace, and some) with no sign of
/// life since (no later connect, no node vouching for them) but that are still not offline: their
/// presence job was never submitted (the process died between recording the drop and submitting
/// it) or was lost with the job storage. Each is handled as its presence job would have, here and
/// now. Returns how many went offline.
pub async fn reclaim_lapsed(
    ctx: &JobContext,
    stale: std::time::Duration,
) -> Result<usize, JobError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let dropped_at = || Expr::col(agents::Column::DisconnectedAt);
    let lapsed: Vec<(i64, DateTime<Utc>)> = agents::Entity::find()
        .select_only()
        .column(agents::Column::Id)
        .column(agents::Column::DisconnectedAt)
        .filter(agents::Column::DisconnectedAt.lte(cutoff))
        .filter(
            Condition::any()
                .add(agents::Column::ConnectedAt.is_null())
                .add(ExprTrait::lte(
                    Expr::col(agents::Column::ConnectedAt),
                    dropped_at(),
                )),
        )
        .filter(
            Condition::any()
                .add(agents::Column::LastSeenAt.is_null())
                .add(ExprTrait::lte(
                    Expr::col(agents::Column::LastSeenAt),
                    dropped_at(),
                )),
        )
        .filter(
            Condition::any()
                .add(agents::Column::Status.ne(AgentStatus::Offline))
                .add(agents::Column::AcceptingChats.eq(true)),
        )
        .into_tuple()
        .all(&ctx.db)
        .await?;
    let mut reclaimed = 0;
    for (agent_id, disconnected_at) in lapsed {
        tracing::warn!(agent_id, %disconnected_at, "an agent's drop outlived its grace without its presence job; taking it offline");
        AgentDisconnected {
            agent_id,
            disconnected_at,
        }
        .run(ctx)
        .await?;
        reclaimed += 1;
    }
    Ok(reclaimed)
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
    reason: ReleaseReason,
) -> Result<usize, ReleaseError> {
    let held = held_by(&ctx.db, agent_id).await?;
    for &conversation_id in &held {
        ctx.jobs
            .submit(ReassignConversation {
                conversation_id,
                from_agent_id: agent_id,
                reason,
                to_group_id: None,
                detail: None,
                intent: None,
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

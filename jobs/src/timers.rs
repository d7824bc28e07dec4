//! The scheduler's timers: what a conversation is waiting for, and what happens when it waits too
//! long. Each group sets its limits (`agent_response_timeout_seconds`, `max_reassignments`,
//! `visitor_idle_timeout_seconds`, `first_response_sla_seconds`, `max_queue_wait_seconds`).
//!
//! - **Agent response**: the visitor wrote and the holding agent has not answered within the
//!   timeout (counted from the visitor's message, the assignment or the agent's last typing
//!   signal, whichever is latest, so typing pauses the clock) → the chat goes back to the head of
//!   the line with that agent excluded. After `max_reassignments` it is held there for a person
//!   (automatic routing skips it) and supervisors hear `sla:breached`.
//! - **Visitor idle**: an active chat without visitor activity for the idle timeout is closed by
//!   the system (`visitor_idle`).
//! - **Visitor gone**: a waiting chat whose visitor has left (no socket vouched for it, no
//!   request, no message) for the idle timeout, at least [`GONE_AT_LEAST`], is closed by the
//!   system (`abandoned`): a visitor who closed the tab is not waited for (nor mailed about) for
//!   ever. One who left an e-mail address asked to be answered later: its chat waits.
//! - **First response**: no agent message within the SLA of the conversation's start →
//!   `sla:breached` to supervisors, once.
//! - **Queue wait**: a visitor waiting longer than `max_queue_wait_seconds` is told, once, and
//!   offered to leave an e-mail address.
//!
//! The sweep ([`sweep`]) finds expiries and submits one [`ExpireTimer`] job each; the job re-reads
//! the conversation in a write transaction and acts only if the timer is still expired, so the same
//! expiry seen by two nodes, or on the next tick, acts once. Every action writes a system event
//! that says why.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use entity::{
    conversations,
    enums::{ClosedBy, ConversationStatus, RoutingStrategy},
    groups, visitors,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, Query},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    Job, JobContext, JobError, RetryBudget,
    close_conversation::{after_close, commit_closes},
    conversation::{Closing, ReleaseReason, lock_conversation, requeue, system_event},
    db::begin_write,
    notify::{Outcome, SlaKind},
    reassign_conversation::{after_requeue, requeue_outcomes},
};

/// What a new group starts with: its routing strategy and timer limits. The one definition: the
/// first account's group (bootstrap) and every group created through the API take these, and the
/// schema's column defaults (the first migration, frozen history) repeat the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupDefaults {
    /// How the line is served.
    pub routing_strategy: RoutingStrategy,
    /// `agentResponseTimeoutSeconds`: the holder's time to answer the visitor.
    pub agent_response_timeout_seconds: i32,
    /// `visitorIdleTimeoutSeconds`: an active chat's time without the visitor.
    pub visitor_idle_timeout_seconds: i32,
    /// `firstResponseSlaSeconds`: the first agent reply's service level.
    pub first_response_sla_seconds: i32,
    /// `maxReassignments`: unanswered reassignments before the chat is held for a person.
    pub max_reassignments: i32,
    /// `maxQueueWaitSeconds`: a waiting visitor's time before being told (none: never).
    pub max_queue_wait_seconds: Option<i32>,
}

impl GroupDefaults {
    /// The defaults of every new group.
    pub const NEW_GROUP: GroupDefaults = GroupDefaults {
        routing_strategy: RoutingStrategy::LeastLoaded,
        agent_response_timeout_seconds: 120,
        visitor_idle_timeout_seconds: 900,
        first_response_sla_seconds: 60,
        max_reassignments: 3,
        max_queue_wait_seconds: None,
    };

    /// A group row with these settings and nothing else set (account, name, ... are the caller's).
    pub fn row(self) -> groups::ActiveModel {
        groups::ActiveModel {
            routing_strategy: Set(self.routing_strategy),
            agent_response_timeout_seconds: Set(self.agent_response_timeout_seconds),
            visitor_idle_timeout_seconds: Set(self.visitor_idle_timeout_seconds),
            first_response_sla_seconds: Set(self.first_response_sla_seconds),
            max_reassignments: Set(self.max_reassignments),
            max_queue_wait_seconds: Set(self.max_queue_wait_seconds),
            ..Default::default()
        }
    }
}

/// What a conversation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// The holding agent's reply to the visitor.
    AgentResponse,
    /// The visitor's next move in an active chat.
    VisitorIdle,
    /// Any agent's first reply (the first-response SLA).
    FirstResponse,
    /// An agent, while the visitor waits in line.
    QueueWait,
    /// The visitor's presence (`visitors.last_seen_at`), while it waits in line.
    VisitorGone,
}

/// The least time a waiting visitor must be gone before its chat is closed as abandoned, whatever
/// the group's idle timeout: API nodes vouch for connected visitors every few seconds, and widget
/// requests refresh it every 30 s, so a visitor still there is never taken for gone.
pub const GONE_AT_LEAST: Duration = Duration::from_secs(120);

impl Timer {
    const ALL: [Timer; 5] = [
        Timer::AgentResponse,
        Timer::VisitorIdle,
        Timer::FirstResponse,
        Timer::QueueWait,
        Timer::VisitorGone,
    ];

    /// The group's limit for this timer, if it has one.
    fn limit(self, group: &groups::Model) -> Option<chrono::Duration> {
        let seconds = match self {
            Timer::AgentResponse => Some(group.agent_response_timeout_seconds),
            Timer::VisitorIdle => Some(group.visitor_idle_timeout_seconds),
            Timer::FirstResponse => Some(group.first_response_sla_seconds),
            Timer::QueueWait => group.max_queue_wait_seconds,
            Timer::VisitorGone => {
                let floor = i32::try_from(GONE_AT_LEAST.as_secs()).unwrap_or(i32::MAX);
                Some(Ord::max(group.visitor_idle_timeout_seconds, floor))
            }
        }?;
        Some(chrono::Duration::seconds(i64::from(Ord::max(seconds, 1))))
    }

    /// When the clock of this timer started for `c`, if it runs at all in its current state.
    pub fn started(self, c: &conversations::Model) -> Option<DateTime<Utc>> {
        match self {
            Timer::AgentResponse => {
                if c.status != ConversationStatus::Active || c.assigned_agent_id.is_none() {
                    return None;
                }
                let wrote = c.last_visitor_activity_at?;
                // Answered since the visitor last wrote: nothing is owed.
                if c.last_agent_activity_at
                    .is_some_and(|answered| answered >= wrote)
                {
                    return None;
                }
                [Some(wrote), c.assigned_at, c.agent_typing_at]
                    .into_iter()
                    .flatten()
                    .max()
            }
            Timer::VisitorIdle => {
                if c.status != ConversationStatus::Active {
                    return None;
                }
                [c.last_visitor_activity_at, c.assigned_at]
                    .into_iter()
                    .flatten()
                    .max()
            }
            Timer::FirstResponse => {
                let open = matches!(
                    c.status,
                    ConversationStatus::Pending | ConversationStatus::Active
                );
                (open && c.first_response_at.is_none() && c.first_response_breached_at.is_none())
                    .then_some(c.created_at)
            }
            Timer::QueueWait => {
                if c.status != ConversationStatus::Pending || c.queue_wait_exceeded_at.is_some() {
                    return None;
                }
                c.queued_at
            }
            // The visitor's own presence is read with it (see `ExpireTimer`, `candidates`).
            Timer::VisitorGone => {
                if c.status != ConversationStatus::Pending {
                    return None;
                }
                [c.last_visitor_activity_at, c.queued_at, Some(c.created_at)]
                    .into_iter()
                    .flatten()
                    .max()
            }
        }
    }

    /// Whether this timer has run out for `c` in `group` at `now`.
    pub fn expired(
        self,
        c: &conversations::Model,
        group: &groups::Model,
        now: DateTime<Utc>,
    ) -> bool {
        match (self.started(c), self.limit(group)) {
            (Some(started), Some(limit)) => now - started >= limit,
            _ => false,
        }
    }
}

/// Acts on one expired timer of one conversation, if it is still expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpireTimer {
    pub conversation_id: i64,
    pub timer: Timer,
}

impl Job for ExpireTimer {
    const QUEUE: &'static str = "expire-timer";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(100),
        timeout: Duration::from_secs(30),
    };

    #[tracing::instrument(name = "job.expire_timer", skip_all, fields(conversation_id = self.conversation_id, timer = ?self.timer), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let txn = begin_write(&ctx.db).await?;
        let Some(conversation) = lock_conversation(&txn, self.conversation_id).await? else {
            return Ok("no such conversation".into());
        };
        let Some(group) = groups::Entity::find_by_id(conversation.group_id)
            .one(&txn)
            .await?
        else {
            return Ok("no such group".into());
        };
        let now = Utc::now();
        if !self.timer.expired(&conversation, &group, now) {
            return Ok("not expired (any more)".into());
        }
        let (c, group) = (&conversation, &group);
        match self.timer {
            Timer::AgentResponse => no_reply(ctx, txn, c, group, now).await,
            Timer::VisitorIdle => visitor_idle(ctx, txn, c, group).await,
            Timer::VisitorGone => visitor_gone(ctx, txn, c, group, now).await,
            Timer::FirstResponse => first_response_breached(ctx, txn, c, group, now).await,
            Timer::QueueWait => queue_wait_exceeded(ctx, txn, c, now).await,
        }
    }
}

/// The holder did not answer the visitor in time: the chat goes back to its place in line, that
/// agent excluded; past the group's `max_reassignments` it is held there for a person.
async fn no_reply(
    ctx: &JobContext,
    txn: DatabaseTransaction,
    c: &conversations::Model,
    group: &groups::Model,
    now: DateTime<Utc>,
) -> Result<String, JobError> {
    let Some(agent_id) = c.assigned_agent_id else {
        return Ok("not assigned".into());
    };
    let seconds = group.agent_response_timeout_seconds;
    let detail = format!("no agent reply in {seconds} s");
    let Some(requeued) = requeue(
        &txn,
        c.id,
        agent_id,
        ReleaseReason::NoResponse,
        None,
        Some(&detail),
    )
    .await?
    else {
        return Ok("no longer active with that agent".into());
    };
    // `requeue` counted this reassignment.
    let count = requeued.conversation.reassignment_count;
    let held = count > group.max_reassignments;
    if held {
        conversations::Entity::update_many()
            .col_expr(conversations::Column::RoutingHeldAt, Expr::value(Some(now)))
            .filter(conversations::Column::Id.eq(c.id))
            .exec(&txn)
            .await?;
        system_event(
            &txn,
            &requeued.conversation,
            format!(
                "Held at the head of the line for a person: reassigned {} times without a reply (the group allows {})",
                count - 1,
                group.max_reassignments
            ),
            json!({ "action": "held", "reason": "max_reassignments", "reassignments": count - 1 }),
            &format!("held:{count}"),
        )
        .await?;
    }
    let mut outcomes = Vec::new();
    if held {
        outcomes.push(Outcome::SlaBreached {
            account_id: c.account_id,
            conversation_id: c.id,
            group_id: c.group_id,
            visitor_id: c.visitor_id,
            agent_id: Some(agent_id),
            sla: SlaKind::MaxReassignments,
            limit: i64::from(group.max_reassignments),
            actual: i64::from(count - 1),
        });
    }
    let (told, position) = requeue_outcomes(&txn, &requeued, ReleaseReason::NoResponse).await?;
    outcomes.extend(told);
    let staged = ctx.outbox.stage(&txn, outcomes).await?;
    txn.commit().await?;
    after_requeue(ctx, &requeued, staged).await?;
    if held {
        return Ok(format!(
            "held at position {position} after {} reassignments",
            count - 1
        ));
    }
    Ok(format!("reassigned ({detail}); position {position}"))
}

/// An active chat without the visitor for the idle timeout: the system closes it.
async fn visitor_idle(
    ctx: &JobContext,
    txn: DatabaseTransaction,
    c: &conversations::Model,
    group: &groups::Model,
) -> Result<String, JobError> {
    if !close_by_system(ctx, txn, c.id, "visitor_idle").await? {
        return Ok("already closed".into());
    }
    Ok(format!(
        "closed: no visitor activity in {} s",
        group.visitor_idle_timeout_seconds
    ))
}

/// A waiting visitor gone for the idle timeout (at least [`GONE_AT_LEAST`]): the system closes the
/// chat as abandoned, unless the visitor left an address or is still around.
async fn visitor_gone(
    ctx: &JobContext,
    txn: DatabaseTransaction,
    c: &conversations::Model,
    group: &groups::Model,
    now: DateTime<Utc>,
) -> Result<String, JobError> {
    let limit = Timer::VisitorGone.limit(group).unwrap_or_default();
    let visitor = visitors::Entity::find_by_id(c.visitor_id).one(&txn).await?;
    if visitor.as_ref().is_some_and(|v| v.email.is_some()) {
        return Ok("the visitor left an address: it waits to be answered".into());
    }
    if visitor.is_some_and(|v| now - v.last_seen_at < limit) {
        return Ok("the visitor is still around".into());
    }
    if !close_by_system(ctx, txn, c.id, "abandoned").await? {
        return Ok("already closed".into());
    }
    Ok(format!(
        "closed as abandoned: the visitor left {} s ago while waiting",
        limit.num_seconds()
    ))
}

/// No agent reply within the first-response SLA: supervisors hear it, once.
async fn first_response_breached(
    ctx: &JobContext,
    txn: DatabaseTransaction,
    c: &conversations::Model,
    group: &groups::Model,
    now: DateTime<Utc>,
) -> Result<String, JobError> {
    let seconds = group.first_response_sla_seconds;
    if !mark(
        &txn,
        c.id,
        conversations::Column::FirstResponseBreachedAt,
        now,
    )
    .await?
    {
        return Ok("already raised".into());
    }
    let waited = (now - c.created_at).num_seconds();
    system_event(
        &txn,
        c,
        format!("First-response SLA breached: no agent reply within {seconds} s"),
        json!({ "action": "sla_breached", "sla": SlaKind::FirstResponse, "limit": seconds, "actual": waited }),
        "sla:first_response",
    )
    .await?;
    let breach = Outcome::SlaBreached {
        account_id: c.account_id,
        conversation_id: c.id,
        group_id: c.group_id,
        visitor_id: c.visitor_id,
        agent_id: c.assigned_agent_id,
        sla: SlaKind::FirstResponse,
        limit: i64::from(seconds),
        actual: waited,
    };
    let staged = ctx.outbox.stage(&txn, [breach]).await?;
    txn.commit().await?;
    ctx.tell(staged);
    Ok(format!("first-response SLA breached after {waited} s"))
}

/// The visitor waited longer than the group's limit: it is told, once.
async fn queue_wait_exceeded(
    ctx: &JobContext,
    txn: DatabaseTransaction,
    c: &conversations::Model,
    now: DateTime<Utc>,
) -> Result<String, JobError> {
    if !mark(&txn, c.id, conversations::Column::QueueWaitExceededAt, now).await? {
        return Ok("already told".into());
    }
    let waited = c.queued_at.map_or(0, |queued| (now - queued).num_seconds());
    system_event(
        &txn,
        c,
        format!("Waited {waited} s in line: the visitor was offered to leave an e-mail address"),
        json!({ "action": "queue_wait_exceeded", "waitedSeconds": waited }),
        "queue_wait_exceeded",
    )
    .await?;
    txn.commit().await?;
    ctx.notifier.notify(Outcome::QueueWaitExceeded {
        account_id: c.account_id,
        conversation_id: c.id,
        group_id: c.group_id,
        visitor_id: c.visitor_id,
        waited_seconds: waited,
    });
    Ok(format!("visitor told after {waited} s in line"))
}

/// Closes conversation `id` (closed by the system, for `reason`) in `txn`, commits, and tells
/// what the close implies. `false` when it was already closed.
async fn close_by_system(
    ctx: &JobContext,
    txn: DatabaseTransaction,
    id: i64,
    reason: &str,
) -> Result<bool, JobError> {
    let closing = [Closing {
        conversation_id: id,
        closed_by: ClosedBy::System,
        reason: reason.to_owned(),
        intent: None,
    }];
    let Some(Some((closed, staged))) = commit_closes(&ctx.db, &ctx.outbox, txn, &closing)
        .await?
        .pop()
    else {
        return Ok(false);
    };
    after_close(ctx, &closed, staged).await?;
    Ok(true)
}

/// Sets a once-only timestamp; `false` when it was already set (another run won).
async fn mark(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    column: conversations::Column,
    now: DateTime<Utc>,
) -> Result<bool, sea_orm::DbErr> {
    let marked = conversations::Entity::update_many()
        .col_expr(column, Expr::value(Some(now)))
        .filter(conversations::Column::Id.eq(conversation_id))
        .filter(column.is_null())
        .exec(txn)
        .await?;
    Ok(marked.rows_affected == 1)
}

/// Most expiries of one kind one sweep submits; the rest wait for the next tick.
const SWEEP_BATCH: u64 = 500;

/// What one sweep found, per timer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub expired: HashMap<Timer, usize>,
}

impl Swept {
    /// Expiries submitted in all.
    pub fn total(&self) -> usize {
        self.expired.values().sum()
    }
}

/// Finds expired timers and submits an [`ExpireTimer`] for each. Safe on any number of nodes at
/// once: the jobs re-check before acting.
pub async fn sweep(ctx: &JobContext) -> Result<Swept, JobError> {
    let now = Utc::now();
    let groups: HashMap<i64, groups::Model> = groups::Entity::find()
        .all(&ctx.db)
        .await?
        .into_iter()
        .map(|group| (group.id, group))
        .collect();
    let mut swept = Swept::default();
    for timer in Timer::ALL {
        // One query per distinct limit, over the groups that have it: every row read is due
        // under its own group's limit (but for the agent's typing, checked below), so rows that
        // are not due never fill a batch and starve the ones that are.
        let mut by_limit: BTreeMap<chrono::Duration, Vec<i64>> = BTreeMap::new();
        for group in groups.values() {
            if let Some(limit) = timer.limit(group) {
                by_limit.entry(limit).or_default().push(group.id);
            }
        }
        for (limit, group_ids) in by_limit {
            let rows = conversations::Entity::find()
                .filter(conversations::Column::GroupId.is_in(group_ids))
                .filter(candidates(timer, now - limit))
                .order_by_asc(conversations::Column::Id)
                .limit(SWEEP_BATCH)
                .all(&ctx.db)
                .await?;
            for conversation in rows {
                let Some(group) = groups.get(&conversation.group_id) else {
                    continue;
                };
                if !timer.expired(&conversation, group, now) {
                    continue;
                }
                ctx.jobs
                    .submit(ExpireTimer {
                        conversation_id: conversation.id,
                        timer,
                    })
                    .await
                    .map_err(|err| JobError::Transient(err.to_string()))?;
                *swept.expired.entry(timer).or_default() += 1;
            }
        }
    }
    Ok(swept)
}

/// The rows whose `timer` started before `started_before` (for the agent response, before the
/// agent's typing is counted); [`Timer::expired`] decides exactly.
fn candidates(timer: Timer, started_before: DateTime<Utc>) -> Condition {
    use conversations::Column as C;
    match timer {
        Timer::AgentResponse => Condition::all()
            .add(C::Status.eq(ConversationStatus::Active))
            .add(C::LastVisitorActivityAt.lt(started_before))
            .add(
                Condition::any()
                    .add(C::LastAgentActivityAt.is_null())
                    .add(Expr::col(C::LastAgentActivityAt).lt(Expr::col(C::LastVisitorActivityAt))),
            )
            .add(C::AssignedAt.lt(started_before)),
        Timer::VisitorIdle => Condition::all()
            .add(C::Status.eq(ConversationStatus::Active))
            .add(C::AssignedAt.lt(started_before))
            .add(
                Condition::any()
                    .add(C::LastVisitorActivityAt.is_null())
                    .add(C::LastVisitorActivityAt.lt(started_before)),
            ),
        Timer::FirstResponse => Condition::all()
            .add(C::Status.is_in([ConversationStatus::Pending, ConversationStatus::Active]))
            .add(C::FirstResponseAt.is_null())
            .add(C::FirstResponseBreachedAt.is_null())
            .add(C::CreatedAt.lt(started_before)),
        Timer::QueueWait => Condition::all()
            .add(C::Status.eq(ConversationStatus::Pending))
            .add(C::QueueWaitExceededAt.is_null())
            .add(C::QueuedAt.lt(started_before)),
        Timer::VisitorGone => Condition::all()
            .add(C::Status.eq(ConversationStatus::Pending))
            .add(C::QueuedAt.lt(started_before))
            .add(
                Condition::any()
                    .add(C::LastVisitorActivityAt.is_null())
                    .add(C::LastVisitorActivityAt.lt(started_before)),
            )
            // Its visitor, by primary key: no scan of the visitors table.
            .add(Expr::exists(
                Query::select()
                    .expr(Expr::value(1))
                    .from(visitors::Entity)
                    .and_where(
                        Expr::col((visitors::Entity, visitors::Column::Id))
                            .equals((conversations::Entity, C::VisitorId)),
                    )
                    .and_where(visitors::Column::LastSeenAt.lt(started_before))
                    // A visitor who left an address asked to be answered later: its chat waits.
                    .and_where(visitors::Column::Email.is_null())
                    .to_owned(),
            )),
    }
}

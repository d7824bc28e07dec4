//! Every state change of a conversation, shared by the jobs and the HTTP layer.
//!
//! Rules that keep the invariants under any number of workers:
//! - each change is one transaction whose `UPDATE`s are conditional on the state they start from
//!   (`WHERE status = 'pending'`, `WHERE active_chats < max_concurrent_chats`, ...); when a
//!   condition fails another worker got there first, and the caller drops the transaction;
//! - an agent's `active_chats` changes only in the transaction that moves one of its conversations
//!   into or out of `active`, so the counter always equals the rows it counts;
//! - locks are taken agents first, then conversations, so two transactions never wait on each
//!   other in a cycle.

use chrono::{DateTime, Utc};
use entity::{
    agent_groups, agents, assignments, conversations,
    enums::{AgentStatus, AuthorType, ClosedBy, ConversationStatus, EventKind, ThreadStatus},
    events, groups, threads,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, JoinType, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, RelationTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use serde_json::{Value, json};

use crate::routing::Candidate;

/// Release reasons after which the released agent is not offered the conversation again.
pub const REASSIGN_REASONS: [&str; 3] = ["transferred", "agent_offline", "no_response"];

/// A claim that could not be made; the caller must drop (roll back) its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The agent is offline, away, not accepting, deleted or at capacity.
    #[error("the agent cannot take another conversation")]
    AgentUnavailable,
    /// The conversation is no longer waiting (another worker assigned or closed it).
    #[error("the conversation is not waiting for an agent")]
    NotPending,
}

/// A conversation given to an agent.
#[derive(Debug, Clone)]
pub struct Assigned {
    /// The conversation as it is now (active).
    pub conversation: conversations::Model,
    /// The agent as it is now (counter included).
    pub agent: agents::Model,
    /// Why, in words ("least loaded").
    pub why: String,
}

/// A conversation that left an agent and waits again.
#[derive(Debug, Clone)]
pub struct Requeued {
    /// The conversation as it is now (pending).
    pub conversation: conversations::Model,
    /// The agent that lost it.
    pub agent_id: i64,
}

/// A conversation that was resolved or closed.
#[derive(Debug, Clone)]
pub struct Closed {
    /// The conversation as it is now.
    pub conversation: conversations::Model,
    /// The agent it was active with, whose capacity was released.
    pub released_agent: Option<i64>,
}

/// An event insert that writes nothing when the conversation already has an event with the same
/// key (`client_message_id`: a client's message id, or a system event's cause).
fn once_per_key() -> OnConflict {
    OnConflict::columns([
        events::Column::ConversationId,
        events::Column::ClientMessageId,
    ])
    .do_nothing()
    .to_owned()
}

/// Writes an event. With a `dedupe` key, a second write with the same key writes nothing
/// (returns `false`): jobs key their system events by what caused them.
#[allow(clippy::too_many_arguments)]
pub async fn write_event(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    thread_id: i64,
    kind: EventKind,
    author: AuthorType,
    agent_id: Option<i64>,
    content: String,
    metadata: Option<Value>,
    dedupe: Option<String>,
) -> Result<bool, DbErr> {
    let row = events::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation.id),
        thread_id: Set(thread_id),
        kind: Set(kind),
        author_type: Set(author),
        agent_id: Set(agent_id),
        content: Set(content),
        metadata: Set(metadata),
        client_message_id: Set(dedupe),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    let written = events::Entity::insert(row)
        .on_conflict(once_per_key())
        .exec_without_returning(db)
        .await?;
    Ok(written == 1)
}

/// A system event on the conversation's active thread.
pub async fn system_event(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    content: String,
    metadata: Value,
    dedupe: Option<String>,
) -> Result<bool, DbErr> {
    let Some(thread_id) = conversation.active_thread_id else {
        return Ok(false);
    };
    write_event(
        db,
        conversation,
        thread_id,
        EventKind::System,
        AuthorType::System,
        None,
        content,
        Some(metadata),
        dedupe.map(|key| format!("sys:{key}")),
    )
    .await
}

/// Opens a new active thread and makes it the conversation's active one.
async fn open_thread(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    agent_id: Option<i64>,
    now: DateTime<Utc>,
) -> Result<conversations::Model, DbErr> {
    let thread = threads::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation.id),
        agent_id: Set(agent_id),
        status: Set(ThreadStatus::Active),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    conversations::ActiveModel {
        id: Set(conversation.id),
        active_thread_id: Set(Some(thread.id)),
        ..Default::default()
    }
    .update(db)
    .await
}

/// Closes the conversation's active thread.
async fn close_thread(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    closed_by: ClosedBy,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    threads::Entity::update_many()
        .col_expr(threads::Column::Status, Expr::value(ThreadStatus::Closed))
        .col_expr(threads::Column::ClosedBy, Expr::value(Some(closed_by)))
        .col_expr(
            threads::Column::ClosedReason,
            Expr::value(Some(reason.to_owned())),
        )
        .col_expr(threads::Column::ClosedAt, Expr::value(Some(now)))
        .filter(threads::Column::ConversationId.eq(conversation_id))
        .filter(threads::Column::Status.eq(ThreadStatus::Active))
        .exec(db)
        .await?;
    Ok(())
}

/// Gives the pending conversation to the agent, atomically: the conversation and the agent's
/// capacity are claimed together, a new thread opens (the pre-assignment one closes with
/// `agent_assigned`), and an assignment row and an "assigned" system event are written.
///
/// Seven statements, each returning what the next needs. `NotPending` leaves the transaction as it
/// was; after `AgentUnavailable` the caller must drop it (the conversation was claimed in it).
pub async fn claim(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    agent_id: i64,
    why: &str,
) -> Result<Result<Assigned, ClaimError>, DbErr> {
    let now = Utc::now();
    let Some(waiting) = conversations::Entity::find_by_id(conversation_id)
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .one(txn)
        .await?
    else {
        return Ok(Err(ClaimError::NotPending));
    };
    let thread = threads::ActiveModel {
        account_id: Set(waiting.account_id),
        conversation_id: Set(conversation_id),
        agent_id: Set(Some(agent_id)),
        status: Set(ThreadStatus::Active),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    let mut taken = conversations::Entity::update_many()
        .col_expr(
            conversations::Column::Status,
            Expr::value(ConversationStatus::Active),
        )
        .col_expr(
            conversations::Column::AssignedAgentId,
            Expr::value(Some(agent_id)),
        )
        .col_expr(conversations::Column::AssignedAt, Expr::value(Some(now)))
        .col_expr(
            conversations::Column::ActiveThreadId,
            Expr::value(Some(thread.id)),
        )
        // A person took it: the hold (if any) has done its job; the new holder's clock is fresh.
        .col_expr(
            conversations::Column::RoutingHeldAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            conversations::Column::AgentTypingAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(conversations::Column::UpdatedAt, Expr::value(now))
        .filter(conversations::Column::Id.eq(conversation_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .exec_with_returning(txn)
        .await?;
    let Some(conversation) = taken.pop() else {
        // Claimed elsewhere between our read and our update: the thread we opened goes.
        threads::Entity::delete_by_id(thread.id).exec(txn).await?;
        return Ok(Err(ClaimError::NotPending));
    };
    let mut slot = agents::Entity::update_many()
        .col_expr(
            agents::Column::ActiveChats,
            Expr::col(agents::Column::ActiveChats).add(1),
        )
        .col_expr(agents::Column::LastAssignedAt, Expr::value(Some(now)))
        .filter(agents::Column::Id.eq(agent_id))
        .filter(agents::Column::DeletedAt.is_null())
        .filter(agents::Column::Status.eq(AgentStatus::Online))
        .filter(agents::Column::AcceptingChats.eq(true))
        .filter(
            Expr::col(agents::Column::ActiveChats)
                .lt(Expr::col(agents::Column::MaxConcurrentChats)),
        )
        .exec_with_returning(txn)
        .await?;
    let Some(agent) = slot.pop() else {
        return Ok(Err(ClaimError::AgentUnavailable));
    };
    // The thread the conversation waited in closes; the new one stays.
    threads::Entity::update_many()
        .col_expr(threads::Column::Status, Expr::value(ThreadStatus::Closed))
        .col_expr(
            threads::Column::ClosedBy,
            Expr::value(Some(ClosedBy::System)),
        )
        .col_expr(
            threads::Column::ClosedReason,
            Expr::value(Some("agent_assigned".to_owned())),
        )
        .col_expr(threads::Column::ClosedAt, Expr::value(Some(now)))
        .filter(threads::Column::ConversationId.eq(conversation_id))
        .filter(threads::Column::Status.eq(ThreadStatus::Active))
        .filter(threads::Column::Id.ne(thread.id))
        .exec(txn)
        .await?;
    let assignment = assignments::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation_id),
        agent_id: Set(agent_id),
        reason: Set(why.to_owned()),
        assigned_at: Set(now),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    let content = format!(
        "Assigned to {}: {why}, {} of {} chats",
        agent.name, agent.active_chats, agent.max_concurrent_chats
    );
    system_event(
        txn,
        &conversation,
        content,
        json!({ "action": "assigned", "agentId": agent_id, "reason": why }),
        Some(format!("assigned:{}", assignment.id)),
    )
    .await?;
    Ok(Ok(Assigned {
        conversation,
        agent,
        why: why.to_owned(),
    }))
}

/// Locks the rows of `agents` in id order (PostgreSQL; SQLite transactions already run one at a
/// time). A transaction that touches several agents — a transfer releases one and claims another,
/// an assigner claims for many — takes their locks first, in a fixed order, so two such
/// transactions never deadlock.
/// Locks a conversation's row for update (PostgreSQL), after its holder's agent row: the order
/// every claim uses (agents first), so a close or timer racing a claim waits instead of
/// deadlocking. Reads the row on SQLite, whose write transactions run one at a time.
pub async fn lock_conversation(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<conversations::Model>, DbErr> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return conversations::Entity::find_by_id(conversation_id)
            .one(txn)
            .await;
    }
    let holder = conversations::Entity::find_by_id(conversation_id)
        .one(txn)
        .await?
        .and_then(|conversation| conversation.assigned_agent_id);
    lock_agents(txn, holder.into_iter().collect()).await?;
    // If the holder changed meanwhile, the caller's conditional updates (on the holder it reads
    // now) miss and change nothing.
    conversations::Entity::find_by_id(conversation_id)
        .lock_exclusive()
        .one(txn)
        .await
}

pub async fn lock_agents(txn: &impl ConnectionTrait, mut agents: Vec<i64>) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    agents.sort_unstable();
    agents.dedup();
    agents::Entity::find()
        .filter(agents::Column::Id.is_in(agents))
        .order_by_asc(agents::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    Ok(())
}

/// Gives back the agent's slot for a conversation that just left `active`.
async fn release_agent(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    agent_id: i64,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    agents::Entity::update_many()
        .col_expr(
            agents::Column::ActiveChats,
            Expr::col(agents::Column::ActiveChats).sub(1),
        )
        .filter(agents::Column::Id.eq(agent_id))
        .filter(agents::Column::ActiveChats.gt(0))
        .exec(txn)
        .await?;
    assignments::Entity::update_many()
        .col_expr(assignments::Column::ReleasedAt, Expr::value(Some(now)))
        .col_expr(
            assignments::Column::ReleaseReason,
            Expr::value(Some(reason.to_owned())),
        )
        .filter(assignments::Column::ConversationId.eq(conversation_id))
        .filter(assignments::Column::AgentId.eq(agent_id))
        .filter(assignments::Column::ReleasedAt.is_null())
        .exec(txn)
        .await?;
    Ok(())
}

/// Takes an active conversation away from `agent_id` and puts it back in the waiting line, in its
/// original place (its `queued_at` is kept), optionally in another group. `None` when it is no
/// longer active with that agent.
pub async fn requeue(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    agent_id: i64,
    reason: &str,
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
    release_agent(txn, conversation_id, agent_id, reason, now).await?;
    close_thread(txn, conversation_id, ClosedBy::System, reason, now).await?;
    let conversation = conversations::Entity::find_by_id(conversation_id)
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("conversation {conversation_id}")))?;
    let conversation = open_thread(txn, &conversation, None, now).await?;
    let content = format!(
        "Reassigned: {}",
        detail.unwrap_or_else(|| describe_release(reason))
    );
    system_event(
        txn,
        &conversation,
        content,
        json!({ "action": "requeued", "agentId": agent_id, "reason": reason }),
        Some(format!(
            "requeued:{}:{}",
            agent_id, conversation.reassignment_count
        )),
    )
    .await?;
    Ok(Some(Requeued {
        conversation,
        agent_id,
    }))
}

fn describe_release(reason: &str) -> &str {
    match reason {
        "transferred" => "transferred by the agent",
        "agent_offline" => "the agent went offline",
        "no_response" => "the agent did not reply in time",
        other => other,
    }
}

/// Resolves (closed by an agent) or closes (by the visitor or the system) a pending or active
/// conversation, releasing its agent. `None` when it was already resolved or closed.
pub async fn close(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    closed_by: ClosedBy,
    reason: &str,
) -> Result<Option<Closed>, DbErr> {
    let now = Utc::now();
    // Locked (PostgreSQL), so a claim or requeue committing meanwhile is waited for and then
    // closed, instead of making the conditional update below miss and the close be lost.
    let Some(before) = lock_conversation(txn, conversation_id).await? else {
        return Ok(None);
    };
    let (status, stamp) = match closed_by {
        ClosedBy::Agent => (
            ConversationStatus::Resolved,
            conversations::Column::ResolvedAt,
        ),
        ClosedBy::Visitor | ClosedBy::System => {
            (ConversationStatus::Closed, conversations::Column::ClosedAt)
        }
    };
    if !matches!(
        before.status,
        ConversationStatus::Pending | ConversationStatus::Active
    ) {
        return Ok(None);
    }
    let mut update = conversations::Entity::update_many()
        .col_expr(conversations::Column::Status, Expr::value(status))
        .col_expr(stamp, Expr::value(Some(now)))
        .col_expr(conversations::Column::UpdatedAt, Expr::value(now))
        .filter(conversations::Column::Id.eq(conversation_id))
        .filter(conversations::Column::Status.eq(before.status));
    update = match before.assigned_agent_id {
        Some(agent) => update.filter(conversations::Column::AssignedAgentId.eq(agent)),
        None => update.filter(conversations::Column::AssignedAgentId.is_null()),
    };
    if update.exec(txn).await?.rows_affected != 1 {
        return Ok(None);
    }
    let released_agent = match (before.status, before.assigned_agent_id) {
        (ConversationStatus::Active, Some(agent)) => {
            release_agent(txn, conversation_id, agent, "closed", now).await?;
            Some(agent)
        }
        _ => None,
    };
    let by = match closed_by {
        ClosedBy::Agent => "the agent",
        ClosedBy::Visitor => "the visitor",
        ClosedBy::System => "the system",
    };
    system_event(
        txn,
        &before,
        format!("Closed by {by}: {reason}"),
        json!({ "action": "closed", "closedBy": closed_by, "reason": reason }),
        Some(format!(
            "closed:{}",
            before.active_thread_id.unwrap_or_default()
        )),
    )
    .await?;
    close_thread(txn, conversation_id, closed_by, reason, now).await?;
    let conversation = conversations::Entity::find_by_id(conversation_id)
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("conversation {conversation_id}")))?;
    Ok(Some(Closed {
        conversation,
        released_agent,
    }))
}

/// Puts a resolved conversation back at the end of its group's line with a new thread. `None`
/// when it is not resolved.
pub async fn reopen(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<conversations::Model>, DbErr> {
    let now = Utc::now();
    let moved = conversations::Entity::update_many()
        .col_expr(
            conversations::Column::Status,
            Expr::value(ConversationStatus::Pending),
        )
        .col_expr(conversations::Column::QueuedAt, Expr::value(Some(now)))
        .col_expr(
            conversations::Column::ResolvedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            conversations::Column::AssignedAgentId,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            conversations::Column::AssignedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(conversations::Column::UpdatedAt, Expr::value(now))
        .filter(conversations::Column::Id.eq(conversation_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Resolved))
        .exec(txn)
        .await?;
    if moved.rows_affected != 1 {
        return Ok(None);
    }
    let conversation = conversations::Entity::find_by_id(conversation_id)
        .one(txn)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("conversation {conversation_id}")))?;
    let conversation = open_thread(txn, &conversation, None, now).await?;
    system_event(
        txn,
        &conversation,
        "Reopened".into(),
        json!({ "action": "reopened" }),
        Some(format!(
            "reopened:{}",
            conversation.active_thread_id.unwrap_or_default()
        )),
    )
    .await?;
    Ok(Some(conversation))
}

/// The 1-based place of a pending conversation in its group's line: priority first (high before
/// normal before low), then the time it was queued, then its id.
pub async fn queue_position(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
) -> Result<u64, DbErr> {
    let Some(queued_at) = conversation.queued_at else {
        return Ok(0);
    };
    let priority = conversation.priority;
    let ahead = conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(conversation.group_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .filter(
            Condition::any()
                .add(conversations::Column::Priority.lt(priority))
                .add(
                    Condition::all()
                        .add(conversations::Column::Priority.eq(priority))
                        .add(
                            Condition::any()
                                .add(conversations::Column::QueuedAt.lt(queued_at))
                                .add(
                                    Condition::all()
                                        .add(conversations::Column::QueuedAt.eq(queued_at))
                                        .add(conversations::Column::Id.lt(conversation.id)),
                                ),
                        ),
                ),
        )
        .count(db)
        .await?;
    Ok(ahead + 1)
}

/// The head of a group's waiting line, in serving order.
pub async fn waiting_line(
    db: &impl ConnectionTrait,
    group_id: i64,
    limit: u64,
) -> Result<Vec<conversations::Model>, DbErr> {
    line(group_id, limit).all(db).await
}

/// The head of the part of a group's line that automatic routing serves: without the
/// conversations held for a person after too many reassignments (they keep their place in
/// [`waiting_line`], so a held chat never blocks the ones behind it).
pub async fn routable_line(
    db: &impl ConnectionTrait,
    group_id: i64,
    limit: u64,
) -> Result<Vec<conversations::Model>, DbErr> {
    line(group_id, limit)
        .filter(conversations::Column::RoutingHeldAt.is_null())
        .all(db)
        .await
}

fn line(group_id: i64, limit: u64) -> sea_orm::Select<conversations::Entity> {
    conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        // Not yet queued (a crash mid-way): the reconciler enqueues it first.
        .filter(conversations::Column::QueuedAt.is_not_null())
        .order_by_asc(conversations::Column::Priority)
        .order_by_asc(conversations::Column::QueuedAt)
        .order_by_asc(conversations::Column::Id)
        .limit(limit)
}

/// Agents of the group who may take a conversation now: online, accepting, not deleted, under
/// capacity.
pub async fn candidates(db: &impl ConnectionTrait, group_id: i64) -> Result<Vec<Candidate>, DbErr> {
    let rows = agents::Entity::find()
        .join(JoinType::InnerJoin, agents::Relation::AgentGroups.def())
        .filter(agent_groups::Column::GroupId.eq(group_id))
        .filter(agents::Column::DeletedAt.is_null())
        .filter(agents::Column::Status.eq(AgentStatus::Online))
        .filter(agents::Column::AcceptingChats.eq(true))
        .filter(
            Expr::col((agents::Entity, agents::Column::ActiveChats)).lt(Expr::col((
                agents::Entity,
                agents::Column::MaxConcurrentChats,
            ))),
        )
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|agent| Candidate {
            id: agent.id,
            active_chats: agent.active_chats,
            max_concurrent_chats: agent.max_concurrent_chats,
            last_assigned_at: agent.last_assigned_at,
        })
        .collect())
}

/// Agents who must not be offered this conversation again (they transferred it, went offline
/// with it or did not answer it).
pub async fn excluded_agents(
    db: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Vec<i64>, DbErr> {
    assignments::Entity::find()
        .select_only()
        .column(assignments::Column::AgentId)
        .filter(assignments::Column::ConversationId.eq(conversation_id))
        .filter(assignments::Column::ReleaseReason.is_in(REASSIGN_REASONS))
        .into_tuple()
        .all(db)
        .await
}

/// [`excluded_agents`] of several conversations in one query.
pub async fn excluded_agents_of(
    db: &impl ConnectionTrait,
    conversation_ids: &[i64],
) -> Result<std::collections::HashMap<i64, Vec<i64>>, DbErr> {
    let rows: Vec<(i64, i64)> = assignments::Entity::find()
        .select_only()
        .column(assignments::Column::ConversationId)
        .column(assignments::Column::AgentId)
        .filter(assignments::Column::ConversationId.is_in(conversation_ids.iter().copied()))
        .filter(assignments::Column::ReleaseReason.is_in(REASSIGN_REASONS))
        .into_tuple()
        .all(db)
        .await?;
    let mut excluded: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for (conversation, agent) in rows {
        excluded.entry(conversation).or_default().push(agent);
    }
    Ok(excluded)
}

/// The agent who last served this visitor, in this conversation or an earlier one (for sticky
/// routing; an agent excluded for the conversation is filtered out by the caller).
pub async fn previous_agent(
    db: &impl ConnectionTrait,
    visitor_id: i64,
) -> Result<Option<i64>, DbErr> {
    assignments::Entity::find()
        .select_only()
        .column(assignments::Column::AgentId)
        .join(
            JoinType::InnerJoin,
            assignments::Relation::Conversation.def(),
        )
        .filter(conversations::Column::VisitorId.eq(visitor_id))
        .order_by_desc(assignments::Column::AssignedAt)
        .into_tuple()
        .one(db)
        .await
}

/// Ids of the live groups an agent belongs to.
pub async fn groups_of_agent(db: &impl ConnectionTrait, agent_id: i64) -> Result<Vec<i64>, DbErr> {
    agent_groups::Entity::find()
        .select_only()
        .column(agent_groups::Column::GroupId)
        .join(JoinType::InnerJoin, agent_groups::Relation::Group.def())
        .filter(agent_groups::Column::AgentId.eq(agent_id))
        .filter(groups::Column::DeletedAt.is_null())
        .into_tuple()
        .all(db)
        .await
}

/// A chat message that could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The conversation is resolved or closed.
    #[error("the conversation is closed")]
    Closed,
}

/// How a sender's own message id is stored: per author, so a visitor and an agent may reuse ids
/// and neither can collide with the system events' keys (`sys:…`).
pub fn client_key(author: AuthorType, agent_id: Option<i64>, client_id: &str) -> String {
    match author {
        AuthorType::Agent => format!("a{}:{client_id}", agent_id.unwrap_or_default()),
        _ => format!("v:{client_id}"),
    }
}

/// The sender's own message id of a stored key (`None` for system events).
pub fn client_id_of(stored: &str) -> Option<&str> {
    if stored.starts_with("sys:") {
        return None;
    }
    stored.split_once(':').map(|(_, id)| id)
}

/// A message as stored.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The stored event (the first one, when the client resent its message id).
    pub event: events::Model,
    /// False when the client's message id was already stored: nothing new was written.
    pub created: bool,
}

/// Stores a message from the visitor or an agent on conversation `conversation_id`'s active
/// thread, in one statement: the insert reads the thread from the conversation row, on the
/// condition that the conversation is open, so a message never lands in a chat that closed
/// meanwhile. The conversation's activity timestamps are the caller's to record (see
/// [`crate::activity`]). With a `client_id`, sending the same message twice stores it once: the
/// second call returns the first event and `created: false`. The caller has checked that the
/// author may write to the conversation.
pub async fn post_message(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    author: AuthorType,
    agent_id: Option<i64>,
    content: String,
    client_id: Option<&str>,
) -> Result<Result<Posted, MessageError>, DbErr> {
    use sea_orm::{FromQueryResult, sea_query::Query};
    let key = client_id.map(|id| client_key(author, agent_id, id));
    let open = Query::select()
        .column(conversations::Column::AccountId)
        .column(conversations::Column::Id)
        .column(conversations::Column::ActiveThreadId)
        .expr(Expr::value(EventKind::Message))
        .expr(Expr::value(author))
        .expr(Expr::value(agent_id))
        .expr(Expr::value(content))
        .expr(Expr::value(key.clone()))
        .expr(Expr::value(Utc::now()))
        .from(conversations::Entity)
        .and_where(conversations::Column::Id.eq(conversation_id))
        .and_where(
            conversations::Column::Status
                .is_in([ConversationStatus::Pending, ConversationStatus::Active]),
        )
        .and_where(conversations::Column::ActiveThreadId.is_not_null())
        .to_owned();
    let insert = Query::insert()
        .into_table(events::Entity)
        .columns([
            events::Column::AccountId,
            events::Column::ConversationId,
            events::Column::ThreadId,
            events::Column::Kind,
            events::Column::AuthorType,
            events::Column::AgentId,
            events::Column::Content,
            events::Column::ClientMessageId,
            events::Column::CreatedAt,
        ])
        .select_from(open)
        .map_err(|err| DbErr::Custom(err.to_string()))?
        .on_conflict(once_per_key())
        .returning_all()
        .to_owned();
    let statement = db.get_database_backend().build(&insert);
    if let Some(event) = events::Model::find_by_statement(statement).one(db).await? {
        return Ok(Ok(Posted {
            event,
            created: true,
        }));
    }
    // Nothing inserted: the client resent a message already stored, or the chat is closed.
    let Some(key) = key else {
        return Ok(Err(MessageError::Closed));
    };
    let first = events::Entity::find()
        .filter(events::Column::ConversationId.eq(conversation_id))
        .filter(events::Column::ClientMessageId.eq(key))
        .one(db)
        .await?;
    Ok(match first {
        Some(event) => Ok(Posted {
            event,
            created: false,
        }),
        None => Err(MessageError::Closed),
    })
}

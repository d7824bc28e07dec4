//! Every state change of a conversation, shared by the jobs and the HTTP layer.
//!
//! Rules that keep the invariants under any number of workers:
//! - each change is one transaction whose `UPDATE`s are conditional on the state they start from
//!   (`WHERE status = 'pending'`, `WHERE active_chats < max_concurrent_chats`, ...); when a
//!   condition fails another worker got there first, and the caller drops the transaction;
//! - an agent's `active_chats` changes only in the transaction that moves one of its conversations
//!   into or out of `active`, so the counter always equals the rows it counts;
//! - locks are taken agents first, then conversations, so two transactions never wait on each
//!   other in a cycle;
//! - rows are locked `FOR NO KEY UPDATE` (what an `UPDATE` of non-key columns takes): it excludes
//!   other changes but not the key-share locks that inserting a row which refers to them (an
//!   event, a thread, an assignment) takes, so those inserts never wait on, or deadlock with, a
//!   lock held for a change.

use chrono::{DateTime, Utc};
use entity::{
    agent_groups, agents, assignments, conversations,
    enums::{AgentStatus, AuthorType, ClosedBy, ConversationStatus, EventKind, ThreadStatus},
    events, groups, threads,
};
use sea_orm::{
    ActiveEnum, ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, RelationTrait,
    sea_query::{Expr, ExprTrait, LockType, OnConflict},
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
    /// The live groups of that agent: their lines may be served now (see [`find_freed_groups`]).
    pub freed_groups: Vec<i64>,
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

/// `CASE WHEN id = k THEN v ... END` over `pairs`: one value per row of a multi-row update.
pub(crate) fn by_id<C, V>(id: C, pairs: impl IntoIterator<Item = (i64, V)>) -> Expr
where
    C: ColumnTrait,
    V: Into<Expr>,
{
    let mut pairs = pairs.into_iter();
    let Some((first, value)) = pairs.next() else {
        return Expr::value(Option::<i64>::None);
    };
    pairs
        .fold(Expr::case(id.eq(first), value), |case, (key, value)| {
            case.case(id.eq(key), value)
        })
        .into()
}

/// One planned assignment: `agent_id` takes `conversation_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// The conversation's account.
    pub account_id: i64,
    /// The waiting conversation.
    pub conversation_id: i64,
    /// The agent who takes it.
    pub agent_id: i64,
    /// Why, in words ("least loaded").
    pub why: String,
}

/// Gives the pending conversation to the agent: [`claim_many`] with one pick, `NotPending` when
/// it no longer waits.
pub async fn claim(
    txn: &impl ConnectionTrait,
    pick: Pick,
) -> Result<Result<Assigned, ClaimError>, DbErr> {
    Ok(match claim_many(txn, &[pick]).await? {
        Ok(mut done) => done.pop().ok_or(ClaimError::NotPending),
        Err(err) => Err(err),
    })
}

/// Gives each pending conversation of `picks` to its agent, atomically: the conversations and the
/// agents' capacity are claimed together, a new thread opens for each (the pre-assignment one
/// closes with `agent_assigned`), and an assignment row and an "assigned" system event are
/// written.
///
/// Seven statements for the whole batch, each reaching its rows by primary key (or by a unique
/// index), so the plan stays an index lookup even before the tables have statistics.
/// Conversations that no longer wait (another worker took or closed them) are left out of the
/// result and nothing is written for them. `AgentUnavailable` when an agent lacks the capacity
/// for its picks; the caller must then drop (roll back) the transaction. Each conversation may
/// appear once.
pub async fn claim_many(
    txn: &impl ConnectionTrait,
    picks: &[Pick],
) -> Result<Result<Vec<Assigned>, ClaimError>, DbErr> {
    use std::collections::{BTreeMap, HashMap};
    if picks.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let now = Utc::now();
    // The conversations that still wait, locked (PostgreSQL; after the agents, the order every
    // claim uses), with the threads they wait in: those close below, by id.
    let waiting: HashMap<i64, Option<i64>> =
        lock_waiting(txn, picks.iter().map(|p| p.conversation_id)).await?;
    let picks: Vec<&Pick> = picks
        .iter()
        .filter(|p| waiting.contains_key(&p.conversation_id))
        .collect();
    if picks.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let opened = threads::Entity::insert_many(picks.iter().map(|pick| threads::ActiveModel {
        account_id: Set(pick.account_id),
        conversation_id: Set(pick.conversation_id),
        agent_id: Set(Some(pick.agent_id)),
        status: Set(ThreadStatus::Active),
        created_at: Set(now),
        ..Default::default()
    }))
    .exec_with_returning(txn)
    .await?;
    let thread_of: HashMap<i64, i64> = opened.iter().map(|t| (t.conversation_id, t.id)).collect();
    let taken = conversations::Entity::update_many()
        .col_expr(
            conversations::Column::Status,
            Expr::value(ConversationStatus::Active),
        )
        .col_expr(
            conversations::Column::AssignedAgentId,
            by_id(
                conversations::Column::Id,
                picks.iter().map(|p| (p.conversation_id, p.agent_id)),
            ),
        )
        .col_expr(conversations::Column::AssignedAt, Expr::value(Some(now)))
        .col_expr(
            conversations::Column::ActiveThreadId,
            by_id(
                conversations::Column::Id,
                thread_of.iter().map(|(c, t)| (*c, *t)),
            ),
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
        .filter(conversations::Column::Id.is_in(picks.iter().map(|p| p.conversation_id)))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .exec_with_returning(txn)
        .await?;
    if taken.len() != picks.len() {
        // Locked as pending above: only a transaction that broke the lock order gets here.
        return Err(DbErr::Custom(
            "a locked waiting conversation changed during its claim".to_owned(),
        ));
    }
    let taken: HashMap<i64, conversations::Model> = taken.into_iter().map(|c| (c.id, c)).collect();
    // Each agent's slots taken and the time of its last pick: picks are a microsecond apart, so
    // round-robin rotation in this batch is what the rows say afterwards.
    let mut per_agent: BTreeMap<i64, (i32, DateTime<Utc>)> = BTreeMap::new();
    for (n, pick) in picks.iter().enumerate() {
        let at = now + chrono::Duration::microseconds(n as i64);
        let entry = per_agent.entry(pick.agent_id).or_insert((0, at));
        *entry = (entry.0 + 1, at);
    }
    let added = || {
        by_id(
            agents::Column::Id,
            per_agent.iter().map(|(a, (k, _))| (*a, *k)),
        )
    };
    let agents_now = agents::Entity::update_many()
        .col_expr(
            agents::Column::ActiveChats,
            Expr::col(agents::Column::ActiveChats).add(added()),
        )
        .col_expr(
            agents::Column::LastAssignedAt,
            by_id(
                agents::Column::Id,
                per_agent.iter().map(|(a, (_, at))| (*a, *at)),
            ),
        )
        .filter(agents::Column::Id.is_in(per_agent.keys().copied()))
        .filter(agents::Column::DeletedAt.is_null())
        .filter(agents::Column::Status.eq(AgentStatus::Online))
        .filter(agents::Column::AcceptingChats.eq(true))
        .filter(
            Expr::col(agents::Column::ActiveChats)
                .add(added())
                .lte(Expr::col(agents::Column::MaxConcurrentChats)),
        )
        .exec_with_returning(txn)
        .await?;
    if agents_now.len() != per_agent.len() {
        return Ok(Err(ClaimError::AgentUnavailable));
    }
    let agents_now: HashMap<i64, agents::Model> =
        agents_now.into_iter().map(|a| (a.id, a)).collect();
    // The threads the conversations waited in close; the new ones stay.
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
        .filter(threads::Column::Id.is_in(waiting.values().flatten().copied()))
        .filter(threads::Column::Status.eq(ThreadStatus::Active))
        .exec(txn)
        .await?;
    let assignments =
        assignments::Entity::insert_many(picks.iter().map(|pick| assignments::ActiveModel {
            account_id: Set(pick.account_id),
            conversation_id: Set(pick.conversation_id),
            agent_id: Set(pick.agent_id),
            reason: Set(pick.why.clone()),
            assigned_at: Set(now),
            ..Default::default()
        }))
        .exec_with_returning(txn)
        .await?;
    let assignment_of: HashMap<i64, i64> = assignments
        .iter()
        .map(|a| (a.conversation_id, a.id))
        .collect();
    // The count each event states is the agent's after that pick: its final count less the
    // picks that came after.
    let mut later: HashMap<i64, i32> = per_agent.iter().map(|(a, (k, _))| (*a, *k)).collect();
    let mut done = Vec::with_capacity(picks.len());
    let mut notes = Vec::with_capacity(picks.len());
    for pick in picks {
        let conversation = taken[&pick.conversation_id].clone();
        let agent = agents_now[&pick.agent_id].clone();
        let remaining = later.entry(pick.agent_id).or_default();
        *remaining -= 1;
        let content = format!(
            "Assigned to {}: {}, {} of {} chats",
            agent.name,
            pick.why,
            agent.active_chats - *remaining,
            agent.max_concurrent_chats
        );
        notes.push(event_row(
            &conversation,
            thread_of[&pick.conversation_id],
            content,
            json!({ "action": "assigned", "agentId": pick.agent_id, "reason": pick.why }),
            &format!("assigned:{}", assignment_of[&pick.conversation_id]),
        ));
        done.push(Assigned {
            conversation,
            agent,
            why: pick.why.clone(),
        });
    }
    write_events_once(txn, notes).await?;
    Ok(Ok(done))
}

/// The conversations of `ids` that still wait, each with the thread it waits in, locked for the
/// claim (PostgreSQL, in id order; SQLite's write transactions run one at a time).
async fn lock_waiting(
    txn: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = i64>,
) -> Result<std::collections::HashMap<i64, Option<i64>>, DbErr> {
    let mut read = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .column(conversations::Column::ActiveThreadId)
        .filter(conversations::Column::Id.is_in(ids))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .order_by_asc(conversations::Column::Id);
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        read = read.lock(LockType::NoKeyUpdate);
    }
    Ok(read
        .into_tuple::<(i64, Option<i64>)>()
        .all(txn)
        .await?
        .into_iter()
        .collect())
}

/// A system event row on the conversation's active thread, keyed by what caused it (`key`); `None`
/// when it has no active thread.
pub fn system_event_row(
    conversation: &conversations::Model,
    content: String,
    metadata: Value,
    key: &str,
) -> Option<events::ActiveModel> {
    let thread = conversation.active_thread_id?;
    Some(event_row(conversation, thread, content, metadata, key))
}

/// Writes event rows in one statement, each only if its conversation has no event with its key.
/// Returns how many were written.
pub async fn write_events_once(
    db: &impl ConnectionTrait,
    rows: Vec<events::ActiveModel>,
) -> Result<u64, DbErr> {
    if rows.is_empty() {
        return Ok(0);
    }
    events::Entity::insert_many(rows)
        .on_conflict(once_per_key())
        .exec_without_returning(db)
        .await
}

/// A system event row on `thread_id`, keyed by what caused it (`key`, stored as `sys:key` so it
/// never collides with a client's message id).
fn event_row(
    conversation: &conversations::Model,
    thread_id: i64,
    content: String,
    metadata: Value,
    key: &str,
) -> events::ActiveModel {
    events::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation.id),
        thread_id: Set(thread_id),
        kind: Set(EventKind::System),
        author_type: Set(AuthorType::System),
        agent_id: Set(None),
        content: Set(content),
        metadata: Set(Some(metadata)),
        client_message_id: Set(Some(format!("sys:{key}"))),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
}

/// Locks a conversation's row for update (PostgreSQL), after its holder's agent row: the order
/// every claim uses (agents first), so a close or timer racing a claim waits instead of
/// deadlocking. Reads the row on SQLite, whose write transactions run one at a time.
pub async fn lock_conversation(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<conversations::Model>, DbErr> {
    Ok(lock_conversations(txn, &[conversation_id])
        .await?
        .remove(&conversation_id))
}

/// Locks the rows of `agents` in id order (PostgreSQL; SQLite transactions already run one at a
/// time). A transaction that touches several agents — a transfer releases one and claims another,
/// an assigner claims for many — takes their locks first, in a fixed order, so two such
/// transactions never deadlock.
pub async fn lock_agents(txn: &impl ConnectionTrait, mut agents: Vec<i64>) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    agents.sort_unstable();
    agents.dedup();
    agents::Entity::find()
        .filter(agents::Column::Id.is_in(agents))
        .order_by_asc(agents::Column::Id)
        .lock(LockType::NoKeyUpdate)
        .all(txn)
        .await?;
    Ok(())
}

/// Gives back the slots of conversations that just left `active` (conversation → its agent) and
/// ends their assignments with `reason`: two statements for any number.
async fn release_agents(
    txn: &impl ConnectionTrait,
    released: &std::collections::HashMap<i64, i64>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if released.is_empty() {
        return Ok(());
    }
    let mut per_agent: std::collections::BTreeMap<i64, i32> = Default::default();
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
            Expr::value(Some(reason.to_owned())),
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
    release_agents(txn, &[(conversation_id, agent_id)].into(), reason, now).await?;
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

/// One conversation to close, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// The conversation.
    pub conversation_id: i64,
    /// An agent resolves it; the visitor or the system closes it.
    pub closed_by: ClosedBy,
    /// Why, in a few words (`resolved`, `visitor_left`, `visitor_idle`).
    pub reason: String,
    /// The intent of the request (see `intent`): consumed by the close, which does nothing when
    /// it is already gone.
    pub intent: Option<i64>,
}

/// Resolves (closed by an agent) or closes (by the visitor or the system) a pending or active
/// conversation, releasing its agent: [`close_many`] with one conversation.
pub async fn close(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    closed_by: ClosedBy,
    reason: &str,
) -> Result<Option<Closed>, DbErr> {
    let closing = Closing {
        conversation_id,
        closed_by,
        reason: reason.to_owned(),
        intent: None,
    };
    Ok(close_many(txn, &[closing]).await?.pop().flatten())
}

/// Resolves or closes each pending or active conversation of `closing`, releasing its agent, in
/// a fixed number of statements for the whole batch. One output per input, in order: `None` when
/// that conversation was already resolved or closed (or named earlier in the batch).
pub async fn close_many(
    txn: &impl ConnectionTrait,
    closing: &[Closing],
) -> Result<Vec<Option<Closed>>, DbErr> {
    // A close that carries an intent acts only if the intent is still there (see `intent`).
    let taken = crate::intent::consume(txn, closing.iter().filter_map(|c| c.intent)).await?;
    let acts: Vec<bool> = closing
        .iter()
        .map(|c| c.intent.is_none_or(|id| taken.contains(&id)))
        .collect();
    if acts.iter().all(|acts| *acts) {
        return close_acting(txn, closing).await;
    }
    let acting: Vec<Closing> = closing
        .iter()
        .zip(&acts)
        .filter(|(_, acts)| **acts)
        .map(|(c, _)| c.clone())
        .collect();
    let mut outputs = if acting.is_empty() {
        Vec::new()
    } else {
        close_acting(txn, &acting).await?
    }
    .into_iter();
    Ok(acts
        .into_iter()
        .map(|acts| if acts { outputs.next().flatten() } else { None })
        .collect())
}

/// [`close_many`] for closes that may act.
async fn close_acting(
    txn: &impl ConnectionTrait,
    closing: &[Closing],
) -> Result<Vec<Option<Closed>>, DbErr> {
    use std::collections::{HashMap, HashSet};
    let now = Utc::now();
    let ids: Vec<i64> = closing.iter().map(|c| c.conversation_id).collect();
    // The holders' agent rows first (PostgreSQL), the order every claim uses. The conditional
    // updates below then lock the conversations and wait for a claim or requeue committing
    // meanwhile; what they return says all the close needs (a close changes neither the holder
    // nor the thread), so the conversations need no read of their own.
    lock_holders(txn, &ids).await?;
    let mut first = HashSet::new();
    let firsts: Vec<&Closing> = closing
        .iter()
        .filter(|c| first.insert(c.conversation_id))
        .collect();
    // An agent resolves; the visitor or the system closes: one update per kind.
    let mut closed: HashMap<i64, conversations::Model> = HashMap::new();
    for resolve in [true, false] {
        let these: Vec<i64> = firsts
            .iter()
            .filter(|c| (c.closed_by == ClosedBy::Agent) == resolve)
            .map(|c| c.conversation_id)
            .collect();
        if these.is_empty() {
            continue;
        }
        let (status, stamp) = if resolve {
            (
                ConversationStatus::Resolved,
                conversations::Column::ResolvedAt,
            )
        } else {
            (ConversationStatus::Closed, conversations::Column::ClosedAt)
        };
        let rows = conversations::Entity::update_many()
            .col_expr(conversations::Column::Status, Expr::value(status))
            .col_expr(stamp, Expr::value(Some(now)))
            .col_expr(conversations::Column::UpdatedAt, Expr::value(now))
            .filter(conversations::Column::Id.is_in(these))
            .filter(
                conversations::Column::Status
                    .is_in([ConversationStatus::Pending, ConversationStatus::Active]),
            )
            .exec_with_returning(txn)
            .await?;
        closed.extend(rows.into_iter().map(|c| (c.id, c)));
    }
    if closed.is_empty() {
        return Ok(vec![None; closing.len()]);
    }
    let todo: Vec<(&Closing, &conversations::Model)> = firsts
        .iter()
        .filter_map(|c| Some((*c, closed.get(&c.conversation_id)?)))
        .collect();
    // Capacity comes back for the conversations that were active: only those have a holder.
    let released: HashMap<i64, i64> = todo
        .iter()
        .filter_map(|(c, b)| Some((c.conversation_id, b.assigned_agent_id?)))
        .collect();
    release_agents(txn, &released, "closed", now).await?;
    let notes: Vec<events::ActiveModel> = todo
        .iter()
        .filter_map(|(c, b)| {
            let thread = b.active_thread_id?;
            let by = match c.closed_by {
                ClosedBy::Agent => "the agent",
                ClosedBy::Visitor => "the visitor",
                ClosedBy::System => "the system",
            };
            Some(event_row(
                b,
                thread,
                format!("Closed by {by}: {}", c.reason),
                json!({ "action": "closed", "closedBy": c.closed_by, "reason": c.reason }),
                &format!("closed:{thread}"),
            ))
        })
        .collect();
    write_events_once(txn, notes).await?;
    // Each conversation's active thread closes, reached by its id (a close keeps the thread).
    let ending: Vec<(&Closing, i64)> = todo
        .iter()
        .filter_map(|(c, b)| Some((*c, b.active_thread_id?)))
        .collect();
    threads::Entity::update_many()
        .col_expr(threads::Column::Status, Expr::value(ThreadStatus::Closed))
        .col_expr(
            threads::Column::ClosedBy,
            by_id(
                threads::Column::Id,
                ending
                    .iter()
                    .map(|(c, thread)| (*thread, Some(c.closed_by))),
            ),
        )
        .col_expr(
            threads::Column::ClosedReason,
            by_id(
                threads::Column::Id,
                ending
                    .iter()
                    .map(|(c, thread)| (*thread, Some(c.reason.clone()))),
            ),
        )
        .col_expr(threads::Column::ClosedAt, Expr::value(Some(now)))
        .filter(threads::Column::Id.is_in(ending.iter().map(|(_, thread)| *thread)))
        .filter(threads::Column::Status.eq(ThreadStatus::Active))
        .exec(txn)
        .await?;
    let mut outputs = Vec::with_capacity(closing.len());
    let mut given = HashSet::new();
    for c in closing {
        let output = closed
            .get(&c.conversation_id)
            .filter(|_| given.insert(c.conversation_id))
            .map(|conversation| Closed {
                conversation: conversation.clone(),
                released_agent: released.get(&c.conversation_id).copied(),
                freed_groups: Vec::new(),
            });
        outputs.push(output);
    }
    Ok(outputs)
}

/// Fills in [`Closed::freed_groups`] (one query for the lot), once the close has committed: the
/// read need not hold the agents' locks.
pub async fn find_freed_groups(
    db: &impl ConnectionTrait,
    closed: &mut [Option<Closed>],
) -> Result<(), DbErr> {
    let agents = closed.iter().flatten().filter_map(|c| c.released_agent);
    let groups = groups_of_agents(db, agents).await?;
    for c in closed.iter_mut().flatten() {
        if let Some(agent) = c.released_agent {
            c.freed_groups = groups.get(&agent).cloned().unwrap_or_default();
        }
    }
    Ok(())
}

/// Reads conversations for a change, locked (PostgreSQL) after their holders' agent rows: the
/// order every claim uses (agents first), so a close racing a claim or a requeue waits instead of
/// deadlocking. SQLite's write transactions run one at a time: a plain read.
async fn lock_conversations(
    txn: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, conversations::Model>, DbErr> {
    lock_holders(txn, ids).await?;
    let mut read =
        conversations::Entity::find().filter(conversations::Column::Id.is_in(ids.iter().copied()));
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        // If a holder changed meanwhile, its new agent row is locked by the update that follows.
        read = read
            .order_by_asc(conversations::Column::Id)
            .lock(LockType::NoKeyUpdate);
    }
    Ok(read
        .all(txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect())
}

/// Locks the agent rows of the conversations' holders, in id order, in one statement
/// (PostgreSQL; SQLite's write transactions run one at a time).
async fn lock_holders(txn: &impl ConnectionTrait, ids: &[i64]) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    let holders = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::AssignedAgentId)
        .filter(conversations::Column::Id.is_in(ids.iter().copied()))
        .filter(conversations::Column::AssignedAgentId.is_not_null())
        .into_query();
    agents::Entity::find()
        .select_only()
        .column(agents::Column::Id)
        .filter(agents::Column::Id.in_subquery(holders))
        .order_by_asc(agents::Column::Id)
        .lock(LockType::NoKeyUpdate)
        .into_tuple::<i64>()
        .all(txn)
        .await?;
    Ok(())
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
/// normal before low), then the time it was queued, then its id. 0 when it is not in line.
pub async fn queue_position(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
) -> Result<u64, DbErr> {
    Ok(queue_positions(db, std::slice::from_ref(conversation))
        .await?
        .get(&conversation.id)
        .copied()
        .unwrap_or(0))
}

/// [`queue_position`] of several conversations (as read by the caller, pending and in line;
/// others are left out), with two queries per group whatever their number: how many wait ahead
/// of the first, and the stretch of the line from the first to the last.
pub async fn queue_positions(
    db: &impl ConnectionTrait,
    members: &[conversations::Model],
) -> Result<std::collections::HashMap<i64, u64>, DbErr> {
    use std::collections::{BTreeMap, HashMap};
    let key = |c: &conversations::Model| (c.priority.to_value(), c.queued_at, c.id);
    let mut by_group: BTreeMap<i64, (&conversations::Model, &conversations::Model)> =
        BTreeMap::new();
    for c in members
        .iter()
        .filter(|c| c.status == ConversationStatus::Pending && c.queued_at.is_some())
    {
        let span = by_group.entry(c.group_id).or_insert((c, c));
        if key(c) < key(span.0) {
            span.0 = c;
        }
        if key(c) > key(span.1) {
            span.1 = c;
        }
    }
    let mut places = HashMap::new();
    for (group, (first, last)) in by_group {
        let in_line = || {
            conversations::Entity::find()
                .filter(conversations::Column::GroupId.eq(group))
                .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
                .filter(conversations::Column::QueuedAt.is_not_null())
        };
        // One statement: the stretch, each row carrying the count of those ahead of it.
        let ahead = in_line()
            .filter(ahead_of(first))
            .select_only()
            .expr(Expr::col(conversations::Column::Id).count())
            .into_query();
        let stretch: Vec<(i64, i64)> = in_line()
            .select_only()
            .column(conversations::Column::Id)
            .expr(Expr::SubQuery(None, Box::new(ahead.into())))
            .filter(serving_key().gte(serving_key_of(first)))
            .filter(serving_key().lte(serving_key_of(last)))
            .order_by_asc(conversations::Column::Priority)
            .order_by_asc(conversations::Column::QueuedAt)
            .order_by_asc(conversations::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        for (n, (id, ahead)) in stretch.into_iter().enumerate() {
            places.insert(id, u64::try_from(ahead).unwrap_or(0) + 1 + n as u64);
        }
    }
    // Only the callers' conversations: the stretch may hold others.
    places.retain(|id, _| members.iter().any(|c| c.id == *id));
    Ok(places)
}

/// The place in serving order of a conversation, as one row value: `(priority, queued_at, id)`.
/// Compared as a row, it is a range on the line's index (`idx_conversations_line`).
fn serving_key() -> Expr {
    Expr::tuple([
        Expr::col((conversations::Entity, conversations::Column::Priority)),
        Expr::col((conversations::Entity, conversations::Column::QueuedAt)),
        Expr::col((conversations::Entity, conversations::Column::Id)),
    ])
}

fn serving_key_of(c: &conversations::Model) -> Expr {
    Expr::tuple([
        Expr::value(c.priority),
        Expr::value(c.queued_at),
        Expr::value(c.id),
    ])
}

/// Conversations served before `c`: a higher priority, or the same one and queued earlier (ties
/// by id).
fn ahead_of(c: &conversations::Model) -> Expr {
    serving_key().lt(serving_key_of(c))
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

/// Agents of the group who may take a conversation now (online, accepting, not deleted, under
/// capacity), read for a change: on PostgreSQL their rows are locked, in id order (the order
/// every transaction that touches several agents uses), so nobody else changes their capacity
/// until the transaction ends. Agents whose rows another transaction holds right now (a close
/// giving their capacity back) are skipped rather than waited for: that close asks for the line
/// to be served again once it commits, so the assigner never queues behind closes.
pub async fn lock_candidates(
    txn: &impl ConnectionTrait,
    group_id: i64,
) -> Result<Vec<Candidate>, DbErr> {
    use sea_orm::sea_query::LockBehavior;
    let mut query = eligible(group_id).order_by_asc(agents::Column::Id);
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        QuerySelect::query(&mut query).lock_with_tables_behavior(
            LockType::NoKeyUpdate,
            [agents::Entity],
            LockBehavior::SkipLocked,
        );
    }
    Ok(query
        .all(txn)
        .await?
        .into_iter()
        .map(Candidate::from)
        .collect())
}

fn eligible(group_id: i64) -> sea_orm::Select<agents::Entity> {
    agents::Entity::find()
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
}

impl From<agents::Model> for Candidate {
    fn from(agent: agents::Model) -> Self {
        Self {
            id: agent.id,
            active_chats: agent.active_chats,
            max_concurrent_chats: agent.max_concurrent_chats,
            last_assigned_at: agent.last_assigned_at,
        }
    }
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

/// The agent who last served each of `visitor_ids`, in this conversation or an earlier one (for
/// sticky routing; an agent excluded for the conversation is filtered out by the caller).
pub async fn previous_agents(
    db: &impl ConnectionTrait,
    visitor_ids: &[i64],
) -> Result<std::collections::HashMap<i64, i64>, DbErr> {
    let rows: Vec<(i64, i64)> = assignments::Entity::find()
        .select_only()
        .column(conversations::Column::VisitorId)
        .column(assignments::Column::AgentId)
        .join(
            JoinType::InnerJoin,
            assignments::Relation::Conversation.def(),
        )
        .filter(conversations::Column::VisitorId.is_in(visitor_ids.iter().copied()))
        .order_by_desc(assignments::Column::AssignedAt)
        .order_by_desc(assignments::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let mut latest = std::collections::HashMap::new();
    for (visitor, agent) in rows {
        latest.entry(visitor).or_insert(agent);
    }
    Ok(latest)
}

/// Ids of the live groups an agent belongs to.
pub async fn groups_of_agent(db: &impl ConnectionTrait, agent_id: i64) -> Result<Vec<i64>, DbErr> {
    Ok(groups_of_agents(db, [agent_id])
        .await?
        .remove(&agent_id)
        .unwrap_or_default())
}

/// [`groups_of_agent`] of several agents in one query (agents in no group are left out).
pub async fn groups_of_agents(
    db: &impl ConnectionTrait,
    agent_ids: impl IntoIterator<Item = i64>,
) -> Result<std::collections::HashMap<i64, Vec<i64>>, DbErr> {
    let mut agent_ids: Vec<i64> = agent_ids.into_iter().collect();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    if agent_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(i64, i64)> = agent_groups::Entity::find()
        .select_only()
        .column(agent_groups::Column::AgentId)
        .column(agent_groups::Column::GroupId)
        .join(JoinType::InnerJoin, agent_groups::Relation::Group.def())
        .filter(agent_groups::Column::AgentId.is_in(agent_ids))
        .filter(groups::Column::DeletedAt.is_null())
        .order_by_asc(agent_groups::Column::GroupId)
        .into_tuple()
        .all(db)
        .await?;
    let mut groups: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for (agent, group) in rows {
        groups.entry(agent).or_default().push(group);
    }
    Ok(groups)
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

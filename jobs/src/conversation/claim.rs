//! Claims: waiting conversations given to agents, many in one fixed set of statements.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::{
    agents, assignments, conversations,
    enums::{AgentStatus, ClosedBy, ConversationStatus, ThreadStatus},
    threads,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};
use serde_json::json;

use super::{
    by_id,
    events::{event_row, write_events_once},
    locks::lock_waiting,
};

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
    let thread_of = open_threads(txn, &picks, now).await?;
    let taken = take_conversations(txn, &picks, &thread_of, now).await?;
    let per_agent = slots_per_agent(&picks, now);
    let Some(agents_now) = take_capacity(txn, &per_agent).await? else {
        return Ok(Err(ClaimError::AgentUnavailable));
    };
    close_waiting_threads(txn, waiting.values().flatten().copied(), now).await?;
    let assignment_of = record_assignments(txn, &picks, now).await?;
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

/// Opens each pick's thread with its agent; returns conversation → new thread.
async fn open_threads(
    txn: &impl ConnectionTrait,
    picks: &[&Pick],
    now: DateTime<Utc>,
) -> Result<HashMap<i64, i64>, DbErr> {
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
    Ok(opened.iter().map(|t| (t.conversation_id, t.id)).collect())
}

/// Makes the picked (waiting, locked) conversations active with their agents and new threads;
/// returns them as they are now.
async fn take_conversations(
    txn: &impl ConnectionTrait,
    picks: &[&Pick],
    thread_of: &HashMap<i64, i64>,
    now: DateTime<Utc>,
) -> Result<HashMap<i64, conversations::Model>, DbErr> {
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
    Ok(taken.into_iter().map(|c| (c.id, c)).collect())
}

/// Each agent's slots taken by `picks` and the time of its last pick: picks are a microsecond
/// apart, so round-robin rotation in this batch is what the rows say afterwards.
fn slots_per_agent(picks: &[&Pick], now: DateTime<Utc>) -> BTreeMap<i64, (i32, DateTime<Utc>)> {
    let mut per_agent: BTreeMap<i64, (i32, DateTime<Utc>)> = BTreeMap::new();
    for (n, pick) in picks.iter().enumerate() {
        let at = now + chrono::Duration::microseconds(n as i64);
        let entry = per_agent.entry(pick.agent_id).or_insert((0, at));
        *entry = (entry.0 + 1, at);
    }
    per_agent
}

/// Takes the agents' slots, on the condition that each is online, accepting, not deleted and has
/// room for all its picks; returns the agents as they are now, `None` when one could not take them.
async fn take_capacity(
    txn: &impl ConnectionTrait,
    per_agent: &BTreeMap<i64, (i32, DateTime<Utc>)>,
) -> Result<Option<HashMap<i64, agents::Model>>, DbErr> {
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
        return Ok(None);
    }
    Ok(Some(agents_now.into_iter().map(|a| (a.id, a)).collect()))
}

/// Closes the threads the conversations waited in (`agent_assigned`); the new ones stay.
async fn close_waiting_threads(
    txn: &impl ConnectionTrait,
    waited_in: impl IntoIterator<Item = i64>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
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
        .filter(threads::Column::Id.is_in(waited_in))
        .filter(threads::Column::Status.eq(ThreadStatus::Active))
        .exec(txn)
        .await?;
    Ok(())
}

/// Writes each pick's assignment row; returns conversation → assignment.
async fn record_assignments(
    txn: &impl ConnectionTrait,
    picks: &[&Pick],
    now: DateTime<Utc>,
) -> Result<HashMap<i64, i64>, DbErr> {
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
    Ok(assignments
        .iter()
        .map(|a| (a.conversation_id, a.id))
        .collect())
}

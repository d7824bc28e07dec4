//! Closes (an agent resolves, the visitor or the system closes), many in one fixed set of
//! statements, and the reopen of a resolved conversation.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{
    conversations,
    enums::{ClosedBy, ConversationStatus, ThreadStatus},
    events, threads,
};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, sea_query::Expr};
use serde_json::json;

use super::{
    by_id,
    candidates::groups_of_agents,
    events::{event_row, system_event, write_events_once},
    locks::lock_holders,
    release::{ReleaseReason, release_agents},
    threads::open_thread,
};

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
    let closed = end_conversations(txn, &firsts, now).await?;
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
    release_agents(txn, &released, ReleaseReason::Closed, now).await?;
    write_events_once(txn, closed_events(&todo)).await?;
    close_threads(txn, &todo, now).await?;
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

/// Resolves (an agent's closes) or closes (the visitor's and the system's) the conversations of
/// `firsts` that are still pending or active: one conditional update per kind. Returns those it
/// ended, as they are now.
async fn end_conversations(
    txn: &impl ConnectionTrait,
    firsts: &[&Closing],
    now: DateTime<Utc>,
) -> Result<HashMap<i64, conversations::Model>, DbErr> {
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
    Ok(closed)
}

/// The "closed" system event of each ended conversation, on its active thread.
fn closed_events(todo: &[(&Closing, &conversations::Model)]) -> Vec<events::ActiveModel> {
    todo.iter()
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
        .collect()
}

/// Closes each ended conversation's active thread, reached by its id (a close keeps the thread),
/// with who closed it and why.
async fn close_threads(
    txn: &impl ConnectionTrait,
    todo: &[(&Closing, &conversations::Model)],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
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
    Ok(())
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
        &format!(
            "reopened:{}",
            conversation.active_thread_id.unwrap_or_default()
        ),
    )
    .await?;
    Ok(Some(conversation))
}

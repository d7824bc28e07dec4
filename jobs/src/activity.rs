//! When a conversation last heard from each side, and its first response: written in batches.
//!
//! A message is one insert on the hot path; its activity timestamps are recorded here and
//! flushed every [`FLUSH_PERIOD`] with one statement per kind for every conversation that moved,
//! so the timestamps are at most that much late (the scheduler's timeouts are counted in
//! minutes). A crash loses at most one period of them, never a message.

use std::{collections::BTreeSet, time::Duration};

use chrono::Utc;
use entity::{
    conversations,
    enums::{AuthorType, ConversationStatus},
};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, sea_query::Expr};
use tokio::sync::mpsc;

/// How often recorded activity is written.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(200);
/// Most conversations one statement names.
const CHUNK: usize = 500;

/// Records activity; cloning shares the flushing task, which ends with the last handle.
#[derive(Debug, Clone)]
pub struct Activity {
    moved: mpsc::UnboundedSender<(i64, Moved)>,
}

/// What happened in a conversation.
#[derive(Debug, Clone, Copy)]
enum Moved {
    Wrote(AuthorType),
    /// The holding agent signalled typing (pauses its response clock, see `timers`).
    AgentTyping,
}

impl Activity {
    /// Starts the flushing task.
    pub fn start(db: DatabaseConnection) -> Self {
        let (moved, inbox) = mpsc::unbounded_channel();
        tokio::spawn(flush_loop(db, inbox));
        Self { moved }
    }

    /// `author` wrote in `conversation_id` just now.
    pub fn record(&self, conversation_id: i64, author: AuthorType) {
        let _ = self.moved.send((conversation_id, Moved::Wrote(author)));
    }

    /// The holding agent of `conversation_id` is typing (or just stopped).
    pub fn agent_typing(&self, conversation_id: i64) {
        let _ = self.moved.send((conversation_id, Moved::AgentTyping));
    }
}

async fn flush_loop(db: DatabaseConnection, mut inbox: mpsc::UnboundedReceiver<(i64, Moved)>) {
    let mut visitors = BTreeSet::new();
    let mut agents = BTreeSet::new();
    let mut typing = BTreeSet::new();
    let mut tick = tokio::time::interval(FLUSH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            moved = inbox.recv() => match moved {
                Some((id, Moved::Wrote(AuthorType::Agent))) => { agents.insert(id); }
                Some((id, Moved::Wrote(_))) => { visitors.insert(id); }
                Some((id, Moved::AgentTyping)) => { typing.insert(id); }
                None => break,
            },
            _ = tick.tick(), if !visitors.is_empty() || !agents.is_empty() || !typing.is_empty() => {
                let (v, a, t) = (
                    std::mem::take(&mut visitors),
                    std::mem::take(&mut agents),
                    std::mem::take(&mut typing),
                );
                if let Err(err) = flush(&db, &v, &a, &t).await {
                    tracing::warn!(%err, "conversation activity not recorded");
                }
            }
        }
    }
    let _ = flush(&db, &visitors, &agents, &typing).await;
}

async fn flush(
    db: &DatabaseConnection,
    visitors: &BTreeSet<i64>,
    agents: &BTreeSet<i64>,
    typing: &BTreeSet<i64>,
) -> Result<(), DbErr> {
    let now = Utc::now();
    let ids = |set: &BTreeSet<i64>| set.iter().copied().collect::<Vec<_>>();
    for chunk in ids(visitors).chunks(CHUNK) {
        conversations::Entity::update_many()
            .col_expr(
                conversations::Column::LastVisitorActivityAt,
                Expr::value(Some(now)),
            )
            .filter(conversations::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    for chunk in ids(typing).chunks(CHUNK) {
        conversations::Entity::update_many()
            .col_expr(conversations::Column::AgentTypingAt, Expr::value(Some(now)))
            .filter(conversations::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
    }
    for chunk in ids(agents).chunks(CHUNK) {
        conversations::Entity::update_many()
            .col_expr(
                conversations::Column::LastAgentActivityAt,
                Expr::value(Some(now)),
            )
            .filter(conversations::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await?;
        // An agent's first message in an active chat is its first response.
        conversations::Entity::update_many()
            .col_expr(
                conversations::Column::FirstResponseAt,
                Expr::value(Some(now)),
            )
            .filter(conversations::Column::Id.is_in(chunk.iter().copied()))
            .filter(conversations::Column::FirstResponseAt.is_null())
            .filter(conversations::Column::Status.eq(ConversationStatus::Active))
            .exec(db)
            .await?;
    }
    Ok(())
}

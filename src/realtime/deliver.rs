//! The [`Notifier`] of a process: job outcomes become room pushes.
//!
//! `notify` never blocks a job: outcomes go through bounded channels to delivery tasks, sharded
//! so that the outcomes of one conversation (or agent) are pushed in order. Waiting lines are pushed at most every [`LINE_PERIOD`] per group
//! (a burst of assignments moves a line many times a second; clients need its latest state),
//! and a visitor hears `queue:position` only when its place changed.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use entity::{conversations, enums::ConversationStatus};
use jobs::{
    conversation::waiting_line,
    notify::{Notifier, Outcome},
};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use tokio::sync::mpsc;

use super::{AGENTS, Push, VISITORS, room};
use crate::http::views::{Waiting, waiting_count};

/// How often a changed waiting line is pushed.
pub const LINE_PERIOD: Duration = Duration::from_millis(250);
/// Outcomes waiting for delivery before new ones are dropped (and logged).
const BACKLOG: usize = 65_536;
/// The part of a line whose visitors hear their place; further back they hear it once they move
/// into it.
const LINE_WATCHED: u64 = 1_000;
/// The part of a line shown to agents in `queue:update`.
const LINE_SHOWN: usize = 100;
/// The window over which the group's serving rate is measured for wait estimates.
const RATE_WINDOW_SECONDS: i64 = 900;
/// How long a group's counted serving rate is used for its pushes before it is counted again.
const RATE_REFRESH: Duration = Duration::from_secs(10);

/// Pushes outcomes to Socket.IO rooms.
#[derive(Debug)]
pub struct RoomNotifier {
    /// One delivery task per shard: outcomes about one conversation (or agent) keep their order,
    /// different ones are pushed in parallel (with the Redis adapter each push waits for a
    /// publish round trip, so one task alone caps the rate at one round trip per push).
    shards: Vec<mpsc::Sender<Outcome>>,
}

/// Parallel delivery tasks.
const SHARDS: usize = 16;

impl RoomNotifier {
    /// Starts the delivery tasks (they end when the last notifier handle is dropped).
    pub fn start(push: Push, db: DatabaseConnection) -> Arc<Self> {
        // Lines are read and pushed on a task of their own, so a long line never delays a
        // message push.
        let (changed, lines) = mpsc::unbounded_channel();
        tokio::spawn(Lines::new(push.clone(), db).run(lines));
        let shards = (0..SHARDS)
            .map(|_| {
                let (outcomes, inbox) = mpsc::channel(BACKLOG / SHARDS);
                let delivery = Delivery {
                    push: push.clone(),
                    changed: changed.clone(),
                };
                tokio::spawn(delivery.run(inbox));
                outcomes
            })
            .collect();
        Arc::new(Self { shards })
    }
}

/// What an outcome's order matters relative to: its conversation, or its agent.
fn order_key(outcome: &Outcome) -> i64 {
    match outcome {
        Outcome::ConversationQueued {
            conversation_id, ..
        }
        | Outcome::ConversationAssigned {
            conversation_id, ..
        }
        | Outcome::ConversationUnassigned {
            conversation_id, ..
        }
        | Outcome::ConversationClosed {
            conversation_id, ..
        }
        | Outcome::MessageCreated {
            conversation_id, ..
        }
        | Outcome::SlaBreached {
            conversation_id, ..
        }
        | Outcome::QueueWaitExceeded {
            conversation_id, ..
        }
        | Outcome::SyncRequired {
            conversation_id, ..
        } => *conversation_id,
        Outcome::QueueChanged { group_id, .. } => *group_id,
        Outcome::AgentStatusChanged { agent_id, .. } => *agent_id,
    }
}

impl Notifier for RoomNotifier {
    fn notify(&self, outcome: Outcome) {
        let shard = order_key(&outcome).unsigned_abs() as usize % self.shards.len();
        if let Err(err) = self.shards[shard].try_send(outcome) {
            tracing::warn!(%err, "push dropped: the delivery backlog is full");
        }
    }
}

/// Pushes outcomes in order; tells [`Lines`] which waiting lines moved.
struct Delivery {
    push: Push,
    /// (account, group) of each line that moved.
    changed: mpsc::UnboundedSender<(i64, i64)>,
}

/// Pushes the waiting lines that moved, at most every [`LINE_PERIOD`] each.
struct Lines {
    push: Push,
    db: DatabaseConnection,
    /// Groups whose line changed since the last push: (account, group).
    changed: HashSet<(i64, i64)>,
    /// The place each watched visitor was last told, per group.
    told: HashMap<i64, HashMap<i64, u64>>,
    /// Each group's recent serving rate, kept for [`RATE_REFRESH`]: a rate over
    /// [`RATE_WINDOW_SECONDS`] moves slowly, and counting it at every push would read the
    /// window's rows four times a second.
    rates: jobs::cache::Cache<i64, u64>,
}

impl Delivery {
    async fn run(mut self, mut inbox: mpsc::Receiver<Outcome>) {
        while let Some(outcome) = inbox.recv().await {
            self.deliver(outcome).await;
        }
    }

    fn line_moved(&self, account_id: i64, group_id: i64) {
        let _ = self.changed.send((account_id, group_id));
    }

    async fn deliver(&mut self, outcome: Outcome) {
        let push = &self.push;
        match &outcome {
            Outcome::ConversationQueued {
                account_id,
                conversation_id,
                group_id,
                visitor_id,
                position,
            } => {
                self.line_moved(*account_id, *group_id);
                let body = json!({
                    "conversationId": conversation_id,
                    "groupId": group_id,
                    "visitorId": visitor_id,
                    "position": position,
                });
                let rooms = vec![room::group(*group_id), room::account(*account_id)];
                push.emit(AGENTS, rooms, "conversation:queued", &body).await;
            }
            Outcome::ConversationAssigned {
                account_id,
                conversation_id,
                group_id,
                visitor_id,
                agent_id,
                agent_name,
                agent_avatar_url,
                reason,
            } => {
                self.line_moved(*account_id, *group_id);
                push.move_sockets(
                    AGENTS,
                    room::agent(*agent_id),
                    room::conversation(*conversation_id),
                    true,
                )
                .await;
                let body = json!({
                    "conversationId": conversation_id,
                    "groupId": group_id,
                    "visitorId": visitor_id,
                    "agentId": agent_id,
                    "reason": reason,
                });
                let rooms = vec![
                    room::agent(*agent_id),
                    room::group(*group_id),
                    room::account(*account_id),
                ];
                push.emit(AGENTS, rooms, "conversation:assigned", &body)
                    .await;
                let card = json!({
                    "conversationId": conversation_id,
                    "agent": { "name": agent_name, "avatar": agent_avatar_url },
                });
                let rooms = vec![room::conversation(*conversation_id)];
                push.emit(VISITORS, rooms, "conversation:assigned", &card)
                    .await;
            }
            Outcome::ConversationUnassigned {
                account_id,
                conversation_id,
                group_id,
                agent_id,
                reason,
            } => {
                let body = json!({
                    "conversationId": conversation_id,
                    "groupId": group_id,
                    "agentId": agent_id,
                    "reason": reason,
                });
                let rooms = vec![
                    room::agent(*agent_id),
                    room::group(*group_id),
                    room::account(*account_id),
                ];
                push.emit(AGENTS, rooms, "conversation:unassigned", &body)
                    .await;
                push.move_sockets(
                    AGENTS,
                    room::agent(*agent_id),
                    room::conversation(*conversation_id),
                    false,
                )
                .await;
            }
            Outcome::ConversationClosed {
                account_id,
                conversation_id,
                visitor_id,
                agent_id,
                closed_by,
                reason,
            } => {
                let body = json!({
                    "conversationId": conversation_id,
                    "visitorId": visitor_id,
                    "agentId": agent_id,
                    "closedBy": closed_by,
                    "reason": reason,
                });
                let mut rooms = vec![
                    room::conversation(*conversation_id),
                    room::account(*account_id),
                ];
                rooms.extend(agent_id.map(room::agent));
                push.emit(AGENTS, rooms, "conversation:closed", &body).await;
                // Visitors hear that it ended and by whom, not the agents' notes or ids.
                let ended = json!({ "conversationId": conversation_id, "closedBy": closed_by });
                let rooms = vec![room::conversation(*conversation_id)];
                push.emit(VISITORS, rooms, "conversation:closed", &ended)
                    .await;
                if let Some(agent_id) = agent_id {
                    push.move_sockets(
                        AGENTS,
                        room::agent(*agent_id),
                        room::conversation(*conversation_id),
                        false,
                    )
                    .await;
                }
            }
            Outcome::SyncRequired {
                conversation_id,
                agent_id,
                ..
            } => {
                let told = json!({ "reason": "conversation_changed", "conversationId": conversation_id, "withinMs": 0 });
                let mut rooms = vec![room::conversation(*conversation_id)];
                rooms.extend(agent_id.map(room::agent));
                push.emit(AGENTS, rooms, super::SYNC_REQUIRED, &told).await;
                let rooms = vec![room::conversation(*conversation_id)];
                push.emit(VISITORS, rooms, super::SYNC_REQUIRED, &told)
                    .await;
            }
            Outcome::MessageCreated {
                conversation_id,
                assigned_agent_id,
                event,
                ..
            } => {
                let mut rooms = vec![room::conversation(*conversation_id)];
                rooms.extend(assigned_agent_id.map(room::agent));
                push.emit(AGENTS, rooms, "message:new", event).await;
                let rooms = vec![room::conversation(*conversation_id)];
                push.emit(VISITORS, rooms, "message:new", event).await;
            }
            Outcome::QueueChanged {
                account_id,
                group_id,
            } => {
                self.line_moved(*account_id, *group_id);
            }
            Outcome::SlaBreached {
                account_id,
                conversation_id,
                group_id,
                agent_id,
                sla,
                limit,
                actual,
                ..
            } => {
                let body = json!({
                    "conversationId": conversation_id,
                    "groupId": group_id,
                    "agentId": agent_id,
                    "sla": sla,
                    "limit": limit,
                    "actual": actual,
                });
                let rooms = vec![room::account(*account_id)];
                push.emit(AGENTS, rooms, "sla:breached", &body).await;
            }
            Outcome::QueueWaitExceeded {
                visitor_id,
                conversation_id,
                waited_seconds,
                ..
            } => {
                let body = json!({
                    "conversationId": conversation_id,
                    "waitedSeconds": waited_seconds,
                    "canLeaveEmail": true,
                });
                let rooms = vec![room::visitor(*visitor_id)];
                push.emit(VISITORS, rooms, "queue:overdue", &body).await;
            }
            Outcome::AgentStatusChanged {
                account_id,
                agent_id,
                status,
                accepting_chats,
            } => {
                let body = json!({
                    "agentId": agent_id,
                    "status": status,
                    "acceptingChats": accepting_chats,
                });
                let rooms = vec![room::agent(*agent_id), room::account(*account_id)];
                push.emit(AGENTS, rooms, "agent:status", &body).await;
            }
        }
    }
}

impl Lines {
    fn new(push: Push, db: DatabaseConnection) -> Self {
        Self {
            push,
            db,
            changed: HashSet::new(),
            told: HashMap::new(),
            rates: jobs::cache::short_lived(100_000, RATE_REFRESH),
        }
    }

    async fn run(mut self, mut moved: mpsc::UnboundedReceiver<(i64, i64)>) {
        let mut tick = tokio::time::interval(LINE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                line = moved.recv() => match line {
                    Some(line) => { self.changed.insert(line); }
                    None => break,
                },
                _ = tick.tick(), if !self.changed.is_empty() => self.push_lines().await,
            }
        }
    }

    async fn push_lines(&mut self) {
        for (account_id, group_id) in std::mem::take(&mut self.changed) {
            if let Err(err) = self.push_line(account_id, group_id).await {
                tracing::warn!(group_id, %err, "waiting line not pushed");
            }
        }
    }

    /// `queue:update` to the group's agents and supervisors; `queue:position` to each watched
    /// visitor whose place changed.
    async fn push_line(&mut self, account_id: i64, group_id: i64) -> Result<(), DbErr> {
        let line = waiting_line(&self.db, group_id, LINE_WATCHED).await?;
        let served = match self.rates.get(&group_id) {
            Some(served) => served,
            None => {
                let served = served_recently(&self.db, group_id).await?;
                // An empty window is not kept but counted again at every push (cheaply: it is
                // empty), so the first chat served gives the visitors an estimate at once.
                if served > 0 {
                    self.rates.insert(group_id, served);
                }
                served
            }
        };
        let waiting = Waiting::head(&line, LINE_SHOWN);
        let waiting_count = if (line.len() as u64) < LINE_WATCHED {
            line.len() as u64
        } else {
            waiting_count(&self.db, group_id).await?
        };
        let body = json!({
            "groupId": group_id,
            "waitingCount": waiting_count,
            "waiting": waiting,
        });
        let rooms = vec![room::group(group_id), room::account(account_id)];
        self.push.emit(AGENTS, rooms, "queue:update", &body).await;

        let before = self.told.remove(&group_id).unwrap_or_default();
        let mut now_told = HashMap::with_capacity(line.len());
        for (index, conversation) in line.iter().enumerate() {
            let position = index as u64 + 1;
            now_told.insert(conversation.id, position);
            if before.get(&conversation.id) == Some(&position) {
                continue;
            }
            let body = json!({
                "conversationId": conversation.id,
                "position": position,
                "estimatedWaitSeconds": estimate(position, served),
            });
            let rooms = vec![room::conversation(conversation.id)];
            self.push
                .emit(VISITORS, rooms, "queue:position", &body)
                .await;
        }
        if !now_told.is_empty() {
            self.told.insert(group_id, now_told);
        }
        Ok(())
    }
}

/// Chats of the group assigned within the rate window.
async fn served_recently(db: &DatabaseConnection, group_id: i64) -> Result<u64, DbErr> {
    conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group_id))
        .filter(
            conversations::Column::AssignedAt
                .gt(Utc::now() - chrono::Duration::seconds(RATE_WINDOW_SECONDS)),
        )
        .count(db)
        .await
}

/// The `queue:position` body of a waiting conversation (`None` once it no longer waits): what a
/// visitor hears when it connects, before its place next changes.
pub async fn place_of(
    db: &DatabaseConnection,
    conversation: &conversations::Model,
) -> Result<Option<serde_json::Value>, DbErr> {
    if conversation.status != ConversationStatus::Pending {
        return Ok(None);
    }
    let position = jobs::conversation::queue_position(db, conversation).await?;
    let served = served_recently(db, conversation.group_id).await?;
    Ok(Some(json!({
        "conversationId": conversation.id,
        "position": position,
        "estimatedWaitSeconds": estimate(position, served),
    })))
}

/// Seconds until place `position` is served at the group's recent rate (`served` chats in the
/// window); `None` when nothing was served lately, so there is no rate to go by.
fn estimate(position: u64, served: u64) -> Option<u64> {
    if served == 0 {
        return None;
    }
    let per_chat = RATE_WINDOW_SECONDS as f64 / served as f64;
    Some((position as f64 * per_chat).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::estimate;

    #[test]
    fn estimates_follow_the_recent_rate() {
        assert_eq!(estimate(3, 0), None);
        // 90 served in 15 minutes: one every 10 s.
        assert_eq!(estimate(1, 90), Some(10));
        assert_eq!(estimate(4, 90), Some(40));
        // Faster than one a second still waits at least a second.
        assert_eq!(estimate(1, 10_000), Some(1));
    }
}

//! The [`Notifier`] of a process: job outcomes become room pushes.
//!
//! `notify` never blocks a job: outcomes go through bounded channels to delivery tasks, sharded
//! so that the outcomes of one conversation (or agent) are pushed in order. Waiting lines leave
//! through [`Lines`], at most every [`LINE_PERIOD`](super::lines::LINE_PERIOD) per group (a
//! burst of assignments moves a line many times a second; clients need its latest state), and a
//! visitor hears `queue:position` only when its place changed.

use std::sync::Arc;

use jobs::notify::{Notifier, Outcome};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::sync::mpsc;

use super::{AGENTS, Push, VISITORS, lines::Lines, room};
use crate::chat::signals::{seen_body, typing_body};

/// Outcomes waiting for delivery before new ones are dropped (and logged).
const BACKLOG: usize = 65_536;
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
        }
        | Outcome::Typing {
            conversation_id, ..
        }
        | Outcome::Seen {
            conversation_id, ..
        } => *conversation_id,
        Outcome::QueueChanged { group_id, .. } => *group_id,
        Outcome::AgentStatusChanged { agent_id, .. }
        | Outcome::AgentSignedOut { agent_id, .. }
        | Outcome::MembershipChanged { agent_id, .. } => *agent_id,
    }
}

/// Outcomes that change which sockets hear what (a revoked agent's sockets close, a member's
/// join its group's room): they wait for room in a full backlog instead of being dropped, since
/// no `sync` would repair them.
fn must_arrive(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::AgentSignedOut { .. } | Outcome::MembershipChanged { .. }
    )
}

impl Notifier for RoomNotifier {
    fn notify(&self, outcome: Outcome) {
        let shard = &self.shards[order_key(&outcome).unsigned_abs() as usize % self.shards.len()];
        match shard.try_send(outcome) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(outcome)) if must_arrive(&outcome) => {
                let shard = shard.clone();
                tokio::spawn(async move {
                    let _ = shard.send(outcome).await;
                });
            }
            Err(err) => tracing::warn!(%err, "push dropped: the delivery backlog is full"),
        }
    }
}

/// Pushes outcomes in order; tells [`Lines`] which waiting lines moved.
struct Delivery {
    push: Push,
    /// (account, group) of each line that moved.
    changed: mpsc::UnboundedSender<(i64, i64)>,
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

    /// Pushes one outcome: each kind to the rooms that hear it, in both namespaces.
    async fn deliver(&mut self, outcome: Outcome) {
        let push = &self.push;
        match outcome {
            Outcome::ConversationQueued {
                account_id,
                conversation_id,
                group_id,
                visitor_id,
                position,
            } => {
                self.line_moved(account_id, group_id);
                let body = json!({
                    "conversationId": conversation_id,
                    "groupId": group_id,
                    "visitorId": visitor_id,
                    "position": position,
                });
                let rooms = vec![room::group(group_id), room::account(account_id)];
                push.emit(AGENTS, rooms, "conversation:queued", &body).await;
            }
            Outcome::ConversationAssigned { .. } => self.assigned(outcome).await,
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
                let rooms = holder_and_group(account_id, group_id, agent_id);
                push.emit(AGENTS, rooms, "conversation:unassigned", &body)
                    .await;
                leave_conversation(push, agent_id, conversation_id).await;
            }
            Outcome::ConversationClosed { .. } => closed(push, outcome).await,
            Outcome::SyncRequired {
                conversation_id,
                agent_id,
                ..
            } => {
                let told = json!({ "reason": "conversation_changed", "conversationId": conversation_id, "withinMs": 0 });
                both_sides(push, conversation_id, agent_id, super::SYNC_REQUIRED, &told).await;
            }
            Outcome::MessageCreated {
                conversation_id,
                assigned_agent_id,
                event,
                ..
            } => {
                both_sides(
                    push,
                    conversation_id,
                    assigned_agent_id,
                    "message:new",
                    &event,
                )
                .await
            }
            Outcome::QueueChanged {
                account_id,
                group_id,
            } => self.line_moved(account_id, group_id),
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
                let rooms = vec![room::account(account_id)];
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
                let rooms = vec![room::visitor(visitor_id)];
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
                let rooms = vec![room::agent(agent_id), room::account(account_id)];
                push.emit(AGENTS, rooms, "agent:status", &body).await;
            }
            Outcome::Typing {
                conversation_id,
                agent_id,
                assigned_agent_id,
                typing,
                ..
            } => {
                let body = typing_body(conversation_id, agent_id, typing);
                other_side(
                    push,
                    conversation_id,
                    agent_id,
                    assigned_agent_id,
                    "typing",
                    &body,
                )
                .await;
            }
            Outcome::Seen {
                conversation_id,
                agent_id,
                assigned_agent_id,
                event_id,
                ..
            } => {
                let body = seen_body(conversation_id, agent_id, event_id);
                let event = "message:seen";
                other_side(
                    push,
                    conversation_id,
                    agent_id,
                    assigned_agent_id,
                    event,
                    &body,
                )
                .await;
            }
            Outcome::AgentSignedOut { agent_id, .. } => {
                push.disconnect(AGENTS, room::agent(agent_id)).await;
            }
            Outcome::MembershipChanged {
                agent_id,
                group_id,
                joined,
                ..
            } => {
                let (of, group) = (room::agent(agent_id), room::group(group_id));
                push.move_sockets(AGENTS, of, group, joined).await;
            }
        }
    }

    /// The agent's sockets join the conversation's room; its agents and its visitor hear who
    /// took it (visitors: the agent's name and picture only).
    async fn assigned(&self, outcome: Outcome) {
        let Outcome::ConversationAssigned {
            account_id,
            conversation_id,
            group_id,
            visitor_id,
            agent_id,
            agent_name,
            agent_avatar_url,
            reason,
        } = outcome
        else {
            return;
        };
        let push = &self.push;
        self.line_moved(account_id, group_id);
        push.move_sockets(
            AGENTS,
            room::agent(agent_id),
            room::conversation(conversation_id),
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
        let rooms = holder_and_group(account_id, group_id, agent_id);
        push.emit(AGENTS, rooms, "conversation:assigned", &body)
            .await;
        let card = json!({
            "conversationId": conversation_id,
            "agent": { "name": agent_name, "avatar": agent_avatar_url },
        });
        let rooms = vec![room::conversation(conversation_id)];
        push.emit(VISITORS, rooms, "conversation:assigned", &card)
            .await;
    }
}

/// Agents hear that a conversation ended (with why and by whom), its visitor only by whom; the
/// agent's sockets leave its room.
async fn closed(push: &Push, outcome: Outcome) {
    let Outcome::ConversationClosed {
        account_id,
        conversation_id,
        visitor_id,
        agent_id,
        closed_by,
        reason,
    } = outcome
    else {
        return;
    };
    let body = json!({
        "conversationId": conversation_id,
        "visitorId": visitor_id,
        "agentId": agent_id,
        "closedBy": closed_by,
        "reason": reason,
    });
    let mut rooms = vec![
        room::conversation(conversation_id),
        room::account(account_id),
    ];
    rooms.extend(agent_id.map(room::agent));
    push.emit(AGENTS, rooms, "conversation:closed", &body).await;
    // Visitors hear that it ended and by whom, not the agents' notes or ids.
    let ended = json!({ "conversationId": conversation_id, "closedBy": closed_by });
    let rooms = vec![room::conversation(conversation_id)];
    push.emit(VISITORS, rooms, "conversation:closed", &ended)
        .await;
    if let Some(agent_id) = agent_id {
        leave_conversation(push, agent_id, conversation_id).await;
    }
}

/// Who hears that a conversation changed hands: the agent, the group's agents and the account's
/// supervisors.
fn holder_and_group(account_id: i64, group_id: i64, agent_id: i64) -> Vec<String> {
    vec![
        room::agent(agent_id),
        room::group(group_id),
        room::account(account_id),
    ]
}

/// The agent's sockets leave the conversation's room.
async fn leave_conversation(push: &Push, agent_id: i64, conversation_id: i64) {
    let (of, conversation) = (room::agent(agent_id), room::conversation(conversation_id));
    push.move_sockets(AGENTS, of, conversation, false).await;
}

/// Both sides of a conversation hear `event`: its rooms in both namespaces, and the agent
/// holding it (who hears it without joining the room).
async fn both_sides(
    push: &Push,
    conversation_id: i64,
    agent_id: Option<i64>,
    event: &str,
    body: &impl serde::Serialize,
) {
    let mut rooms = vec![room::conversation(conversation_id)];
    rooms.extend(agent_id.map(room::agent));
    push.emit(AGENTS, rooms, event, body).await;
    let rooms = vec![room::conversation(conversation_id)];
    push.emit(VISITORS, rooms, event, body).await;
}

/// The side of a conversation that did not send `event` hears it: the visitor hears an agent
/// (`from_agent`), the agents (its room and its holder) hear the visitor.
async fn other_side(
    push: &Push,
    conversation_id: i64,
    from_agent: Option<i64>,
    holder: Option<i64>,
    event: &str,
    body: &serde_json::Value,
) {
    let mut rooms = vec![room::conversation(conversation_id)];
    if from_agent.is_some() {
        push.emit(VISITORS, rooms, event, body).await;
    } else {
        rooms.extend(holder.map(room::agent));
        push.emit(AGENTS, rooms, event, body).await;
    }
}

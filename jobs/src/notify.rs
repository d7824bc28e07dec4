//! The one seam through which job outcomes leave the domain.
//!
//! Jobs describe what happened as an [`Outcome`]; the root crate decides where it goes (Socket.IO
//! rooms in-process, a socketioxide emitter from a worker-only process, logs in tests). Pushes are
//! best effort and must not block: the database already holds the truth, and clients re-read it
//! (`sync`). Webhooks and e-mails are not: their outcomes are staged in the change's transaction
//! (see [`crate::outbox`]).

use std::fmt;

use entity::enums::{AgentStatus, ClosedBy};
use serde::{Deserialize, Serialize};

use crate::conversation::ReleaseReason;

/// Something a client may want to hear about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Outcome {
    /// A conversation entered (or re-entered) its group's waiting line.
    ConversationQueued {
        account_id: i64,
        conversation_id: i64,
        group_id: i64,
        visitor_id: i64,
        position: u64,
    },
    /// A conversation was given to an agent.
    ConversationAssigned {
        account_id: i64,
        conversation_id: i64,
        group_id: i64,
        visitor_id: i64,
        agent_id: i64,
        /// The agent's name and picture, as the visitor is shown them.
        agent_name: String,
        agent_avatar_url: Option<String>,
        reason: String,
    },
    /// An agent lost a conversation (transfer, offline, no reply).
    ConversationUnassigned {
        account_id: i64,
        conversation_id: i64,
        group_id: i64,
        agent_id: i64,
        reason: ReleaseReason,
    },
    /// A conversation was resolved or closed.
    ConversationClosed {
        account_id: i64,
        conversation_id: i64,
        visitor_id: i64,
        agent_id: Option<i64>,
        closed_by: ClosedBy,
        reason: String,
    },
    /// A message was stored (`event` is its wire form). Pushed to both sides of the conversation.
    MessageCreated {
        account_id: i64,
        conversation_id: i64,
        /// The agent holding the conversation, who hears it even without joining its room.
        assigned_agent_id: Option<i64>,
        event: serde_json::Value,
    },
    /// A group's waiting line changed (positions moved).
    QueueChanged { account_id: i64, group_id: i64 },
    /// A conversation broke one of its group's service levels. Raised once per breach (the
    /// scheduler records it on the conversation before telling anyone).
    SlaBreached {
        account_id: i64,
        conversation_id: i64,
        group_id: i64,
        visitor_id: i64,
        /// The agent holding it when it broke, if any.
        agent_id: Option<i64>,
        sla: SlaKind,
        /// The group's limit that was passed (seconds, or reassignments for `max_reassignments`).
        limit: i64,
        /// How far it went (seconds waited, or reassignments made).
        actual: i64,
    },
    /// A waiting visitor has waited longer than the group's `maxQueueWaitSeconds`: it is told and
    /// offered to leave an e-mail address instead of waiting.
    QueueWaitExceeded {
        account_id: i64,
        conversation_id: i64,
        group_id: i64,
        visitor_id: i64,
        waited_seconds: i64,
    },
    /// A conversation's clients may have missed what happened to it: a job found its change
    /// already made by an earlier run that may not have told anyone (it died after committing,
    /// or its commit's answer was lost). Its agents and visitor are told `sync:required`; no
    /// webhook or e-mail goes out again.
    SyncRequired {
        account_id: i64,
        conversation_id: i64,
        agent_id: Option<i64>,
    },
    /// An agent's presence changed.
    AgentStatusChanged {
        account_id: i64,
        agent_id: i64,
        status: AgentStatus,
        accepting_chats: bool,
    },
    /// Someone in a conversation started or stopped typing: the other side hears it. Never
    /// stored, never staged.
    Typing {
        account_id: i64,
        conversation_id: i64,
        /// The agent typing; `None` when it is the visitor.
        agent_id: Option<i64>,
        /// The agent holding the conversation, who hears the visitor without joining its room.
        assigned_agent_id: Option<i64>,
        typing: bool,
    },
    /// Someone in a conversation saw its messages up to event `event_id`: the other side hears
    /// it. Never stored, never staged.
    Seen {
        account_id: i64,
        conversation_id: i64,
        /// The agent who saw it; `None` when it is the visitor.
        agent_id: Option<i64>,
        /// The agent holding the conversation, who hears the visitor without joining its room.
        assigned_agent_id: Option<i64>,
        event_id: i64,
    },
    /// An agent was signed out (deleted, or its tokens revoked): its open sockets close.
    AgentSignedOut { account_id: i64, agent_id: i64 },
    /// An agent joined (or left) a group: its open sockets join (or leave) the group's room.
    MembershipChanged {
        account_id: i64,
        agent_id: i64,
        group_id: i64,
        joined: bool,
    },
}

impl Outcome {
    /// `conversation` waits in its group's line at `position`.
    pub fn queued(conversation: &entity::conversations::Model, position: u64) -> Self {
        Self::ConversationQueued {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            group_id: conversation.group_id,
            visitor_id: conversation.visitor_id,
            position,
        }
    }

    /// `agent_id` lost `conversation` (`reason`: transferred, agent offline, no reply).
    pub fn unassigned(
        conversation: &entity::conversations::Model,
        agent_id: i64,
        reason: ReleaseReason,
    ) -> Self {
        Self::ConversationUnassigned {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            group_id: conversation.group_id,
            agent_id,
            reason,
        }
    }

    /// `agent` went offline and takes no chats.
    pub fn went_offline(agent: &entity::agents::Model) -> Self {
        Self::AgentStatusChanged {
            account_id: agent.account_id,
            agent_id: agent.id,
            status: AgentStatus::Offline,
            accepting_chats: false,
        }
    }
}

/// Which service level a conversation broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaKind {
    /// No agent answered within `firstResponseSlaSeconds` of the conversation being created.
    FirstResponse,
    /// Reassigned `maxReassignments` times for silence: it now waits at the head of the line.
    MaxReassignments,
}

/// Where outcomes go. Implementations must return quickly and never fail the job.
pub trait Notifier: Send + Sync + fmt::Debug + 'static {
    /// Hands one outcome over for delivery.
    fn notify(&self, outcome: Outcome);

    /// Hands over an outcome that its change staged in the outbox (`staged` is its row's key,
    /// `None` when nothing but Socket.IO wants it): see [`crate::outbox`].
    fn notify_staged(&self, outcome: Outcome, _staged: Option<String>) {
        self.notify(outcome);
    }

    /// The webhooks of `account_id` changed (created, updated, deleted): forget what was cached
    /// about them.
    fn subscriptions_changed(&self, _account_id: i64) {}
}

/// Logs outcomes at debug level: the notifier until a realtime layer is plugged in.
#[derive(Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn notify(&self, outcome: Outcome) {
        tracing::debug!(?outcome, "outcome");
    }
}

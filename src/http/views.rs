//! How conversations and events look on the wire, for agents and visitors alike.

use chrono::{DateTime, Utc};
use entity::{
    conversations,
    enums::{AuthorType, ConversationStatus, EventKind, Priority},
    events,
};
use sea_orm::ConnectionTrait;
use serde::Serialize;

use crate::error::ApiError;

/// A conversation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub id: i64,
    pub visitor_id: i64,
    pub group_id: i64,
    pub assigned_agent_id: Option<i64>,
    pub status: ConversationStatus,
    pub priority: Priority,
    pub active_thread_id: Option<i64>,
    /// 1-based place in the group's line while pending.
    pub queue_position: Option<u64>,
    pub queued_at: Option<DateTime<Utc>>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub first_response_at: Option<DateTime<Utc>>,
    pub last_visitor_activity_at: Option<DateTime<Utc>>,
    pub last_agent_activity_at: Option<DateTime<Utc>>,
    pub reassignment_count: i32,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ConversationView {
    /// The view of `conversation`, with its queue position when it waits.
    pub async fn new(
        db: &impl ConnectionTrait,
        conversation: conversations::Model,
    ) -> Result<Self, ApiError> {
        let queue_position = if conversation.status == ConversationStatus::Pending {
            Some(jobs::conversation::queue_position(db, &conversation).await?)
        } else {
            None
        };
        Ok(Self {
            id: conversation.id,
            visitor_id: conversation.visitor_id,
            group_id: conversation.group_id,
            assigned_agent_id: conversation.assigned_agent_id,
            status: conversation.status,
            priority: conversation.priority,
            active_thread_id: conversation.active_thread_id,
            queue_position,
            queued_at: conversation.queued_at,
            assigned_at: conversation.assigned_at,
            first_response_at: conversation.first_response_at,
            last_visitor_activity_at: conversation.last_visitor_activity_at,
            last_agent_activity_at: conversation.last_agent_activity_at,
            reassignment_count: conversation.reassignment_count,
            resolved_at: conversation.resolved_at,
            closed_at: conversation.closed_at,
            created_at: conversation.created_at,
            updated_at: conversation.updated_at,
        })
    }
}

/// One event of a conversation (a message or a system note).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: i64,
    pub conversation_id: i64,
    pub thread_id: i64,
    pub kind: EventKind,
    pub author_type: AuthorType,
    pub agent_id: Option<i64>,
    pub content: String,
    pub metadata: Option<serde_json::Value>,
    /// The sender's own id for the message, echoed so clients can de-duplicate.
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<events::Model> for EventView {
    fn from(event: events::Model) -> Self {
        Self {
            id: event.id,
            conversation_id: event.conversation_id,
            thread_id: event.thread_id,
            kind: event.kind,
            author_type: event.author_type,
            agent_id: event.agent_id,
            content: event.content,
            metadata: event.metadata,
            client_message_id: event
                .client_message_id
                .as_deref()
                .and_then(jobs::conversation::client_id_of)
                .map(str::to_owned),
            created_at: event.created_at,
        }
    }
}

/// A stored message's answer for the caller. A new message (not a resent client id) has its
/// activity recorded and is pushed to both sides of the conversation: its rooms, and the
/// `holder`'s sockets when the caller knows who holds it. A closed conversation is 409.
pub fn published(
    state: &crate::state::AppState,
    stored: Result<jobs::conversation::Posted, jobs::conversation::MessageError>,
    holder: Option<i64>,
) -> Result<(EventView, bool), ApiError> {
    let posted = stored.map_err(|err| match err {
        jobs::conversation::MessageError::Closed => {
            ApiError::Conflict("the conversation is closed".into())
        }
    })?;
    let (account_id, conversation_id, author) = (
        posted.event.account_id,
        posted.event.conversation_id,
        posted.event.author_type,
    );
    let view = EventView::from(posted.event);
    if posted.created {
        state.activity.record(conversation_id, author);
        match serde_json::to_value(&view) {
            Ok(event) => state
                .notifier
                .notify(jobs::notify::Outcome::MessageCreated {
                    account_id,
                    conversation_id,
                    assigned_agent_id: holder,
                    event,
                }),
            Err(err) => tracing::warn!(%err, "message not pushed"),
        }
    }
    Ok((view, posted.created))
}

/// The HTTP answer to a sent message: 201 with the stored event, 200 with the first one when the
/// client sent the same message id again.
pub fn created(
    (view, created): (EventView, bool),
) -> Result<(axum::http::StatusCode, super::extract::Json<EventView>), ApiError> {
    use axum::http::StatusCode;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, super::extract::Json(view)))
}

/// One conversation of a group's waiting line, as agents see it (`GET /v1/queue`, `queue:update`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    pub conversation_id: i64,
    pub visitor_id: i64,
    pub position: u64,
    pub priority: Priority,
    pub waited_seconds: i64,
}

impl Waiting {
    /// The first `shown` conversations of `line` (in serving order) with their places and waits.
    pub fn head(line: &[conversations::Model], shown: usize) -> Vec<Self> {
        let now = Utc::now();
        line.iter()
            .take(shown)
            .enumerate()
            .map(|(index, c)| Self {
                conversation_id: c.id,
                visitor_id: c.visitor_id,
                position: index as u64 + 1,
                priority: c.priority,
                waited_seconds: c.queued_at.map_or(0, |at| (now - at).num_seconds().max(0)),
            })
            .collect()
    }
}

/// How many conversations of group `group_id` wait.
pub async fn waiting_count(
    db: &impl ConnectionTrait,
    group_id: i64,
) -> Result<u64, sea_orm::DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .count(db)
        .await
}

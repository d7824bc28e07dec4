//! How conversations and events look on the wire, for agents and visitors alike.

use chrono::{DateTime, Utc};
use entity::{
    conversations,
    enums::{ConversationStatus, Priority},
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

pub use jobs::messages::EventView;

/// A stored message's answer for the caller. A new message (not a resent client id) has its
/// activity recorded and is told to both sides of the conversation (and webhooks): see
/// `jobs::messages`. A closed conversation is 409.
pub fn published(
    state: &crate::state::AppState,
    stored: Result<jobs::messages::Stored, jobs::conversation::MessageError>,
) -> Result<(EventView, bool), ApiError> {
    let stored = stored.map_err(|err| match err {
        jobs::conversation::MessageError::Closed => {
            ApiError::Conflict("the conversation is closed".into())
        }
    })?;
    if stored.created {
        state
            .activity
            .record(stored.view.conversation_id, stored.view.author_type);
    }
    stored.staged.tell(&*state.notifier);
    Ok((stored.view, stored.created))
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

//! Messages: sending them (agents and visitors alike end in [`published`]) and reading them back.

use entity::{
    conversations,
    enums::{AuthorType, EventKind},
    events,
};
use jobs::{
    conversation::MessageError,
    messages::{NewMessage, Stored},
};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;

use super::{access::require_holder, views::EventView};
use crate::{
    auth::CurrentAgent,
    domain::{ClientMessageId, MessageContent},
    error::ApiError,
    state::AppState,
};

/// A message an agent writes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEvent {
    content: MessageContent,
    client_message_id: Option<ClientMessageId>,
}

impl NewEvent {
    pub fn new(content: MessageContent, client_message_id: Option<ClientMessageId>) -> Self {
        Self {
            content,
            client_message_id,
        }
    }
}

/// Stores an agent's message in a conversation it holds and pushes it to both sides. Returns
/// the event and whether it is new (not a resent client id).
pub async fn send_as_agent(
    state: &AppState,
    caller: &CurrentAgent,
    conversation: &conversations::Model,
    body: NewEvent,
) -> Result<(EventView, bool), ApiError> {
    require_holder(caller, conversation)?;
    let stored = state
        .messages
        .post(NewMessage {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            author: AuthorType::Agent,
            agent_id: Some(caller.id()),
            content: body.content.into(),
            client_id: body.client_message_id.map(|id| id.as_str().to_owned()),
            holder: conversation.assigned_agent_id,
        })
        .await?;
    published(state, stored)
}

/// A stored message's answer for the caller. A new message (not a resent client id) has its
/// activity recorded and is told to both sides of the conversation (and webhooks): see
/// `jobs::messages`. A closed conversation is 409.
pub fn published(
    state: &AppState,
    stored: Result<Stored, MessageError>,
) -> Result<(EventView, bool), ApiError> {
    let stored = stored.map_err(|err| match err {
        MessageError::Closed => ApiError::Conflict("the conversation is closed".into()),
    })?;
    if stored.created {
        state
            .activity
            .record(stored.view.conversation_id, stored.view.author_type);
    }
    stored.staged.tell(&*state.notifier);
    Ok((stored.view, stored.created))
}

/// Most events one read returns; page with `after`.
pub const EVENTS_PER_READ: u64 = 500;

/// The events of a conversation after event id `after`, oldest first (at most `limit`, default
/// and cap [`EVENTS_PER_READ`]): how a client catches up after a reconnect. Visitors see
/// messages only.
pub async fn events_since(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    after: Option<i64>,
    limit: Option<u64>,
    messages_only: bool,
) -> Result<Vec<EventView>, ApiError> {
    let mut query = events::Entity::find()
        .filter(events::Column::ConversationId.eq(conversation_id))
        .filter(events::Column::Id.gt(after.unwrap_or(0)));
    if messages_only {
        query = query.filter(events::Column::Kind.eq(EventKind::Message));
    }
    Ok(query
        .order_by_asc(events::Column::Id)
        .limit(limit.unwrap_or(EVENTS_PER_READ).clamp(1, EVENTS_PER_READ))
        .all(db)
        .await?
        .into_iter()
        .map(EventView::from)
        .collect())
}

/// Event `event_id` of conversation `conversation_id` (404 when it belongs elsewhere).
pub async fn event_of(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    event_id: i64,
) -> Result<events::Model, ApiError> {
    events::Entity::find_by_id(event_id)
        .filter(events::Column::ConversationId.eq(conversation_id))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("event"))
}

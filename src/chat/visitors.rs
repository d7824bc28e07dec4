//! What a visitor does through the widget: read its conversation, write, leave.

use entity::{
    agents, conversations,
    enums::{AuthorType, ClosedBy, ConversationStatus},
    visitors,
};
use jobs::{close_conversation::CloseConversation, conversation::queue_position};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};

use super::{
    conversations::{Accepted, require_open},
    messages::{events_since, published},
    views::EventView,
};
use crate::{
    domain::{ClientMessageId, MessageContent},
    error::ApiError,
    state::AppState,
};

/// The visitor's current conversation (its latest one).
pub async fn current_conversation(
    db: &impl ConnectionTrait,
    visitor: &visitors::Model,
    requested: Option<i64>,
) -> Result<conversations::Model, ApiError> {
    let mut query = conversations::Entity::find()
        .filter(conversations::Column::AccountId.eq(visitor.account_id))
        .filter(conversations::Column::VisitorId.eq(visitor.id));
    if let Some(id) = requested {
        // Another visitor's conversation is invisible: 404, like one that does not exist.
        query = query.filter(conversations::Column::Id.eq(id));
    }
    query
        .order_by_desc(conversations::Column::Id)
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("conversation"))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentCard {
    name: String,
    avatar_url: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VisitorConversation {
    pub conversation_id: i64,
    status: ConversationStatus,
    queue_position: Option<u64>,
    agent: Option<AgentCard>,
    events: Vec<EventView>,
}

/// What a visitor sees of its conversation (`requested`, or its current one): status, place in
/// line, its agent, and the messages after event `after` (REST and the socket's `sync`).
pub async fn visitor_view(
    db: &impl ConnectionTrait,
    visitor: &visitors::Model,
    requested: Option<i64>,
    after: Option<i64>,
) -> Result<VisitorConversation, ApiError> {
    let conversation = current_conversation(db, visitor, requested).await?;
    let queue_position = match conversation.status {
        ConversationStatus::Pending => Some(queue_position(db, &conversation).await?),
        _ => None,
    };
    let agent = match conversation.assigned_agent_id {
        Some(id) if conversation.status == ConversationStatus::Active => {
            agents::Entity::find_by_id(id)
                .one(db)
                .await?
                .map(|agent| AgentCard {
                    name: agent.name,
                    avatar_url: agent.avatar_url,
                })
        }
        _ => None,
    };
    // Visitors see the conversation's messages; routing notes (who was busy, why a chat moved)
    // are for agents.
    let events = events_since(db, conversation.id, after, None, true).await?;
    Ok(VisitorConversation {
        conversation_id: conversation.id,
        status: conversation.status,
        queue_position,
        agent,
        events,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMessage {
    conversation_id: Option<i64>,
    content: MessageContent,
    client_message_id: Option<ClientMessageId>,
}

/// Stores the visitor's message and pushes it to both sides (REST and `message:send`), within
/// the budgets of the visitor's session and of its `client` address (shared by both paths).
/// `known` is the visitor's own conversation when the caller already knows it (a socket learns
/// it at its handshake), which saves looking it up.
pub async fn send_as_visitor(
    state: &AppState,
    visitor: &visitors::Model,
    client: std::net::IpAddr,
    body: NewMessage,
    known: Option<i64>,
) -> Result<(EventView, bool), ApiError> {
    state.visitor_messages.take(visitor.id, client)?;
    let (conversation_id, holder) = match (body.conversation_id, known) {
        (None, Some(id)) => (id, None),
        (Some(asked), Some(id)) if asked == id => (id, None),
        (asked, _) => {
            let conversation = current_conversation(&state.db, visitor, asked).await?;
            (conversation.id, conversation.assigned_agent_id)
        }
    };
    let stored = state
        .messages
        .post(jobs::messages::NewMessage {
            account_id: visitor.account_id,
            conversation_id,
            author: AuthorType::Visitor,
            agent_id: None,
            content: body.content.into(),
            client_id: body.client_message_id.map(|id| id.as_str().to_owned()),
            holder,
        })
        .await?;
    published(state, stored)
}

/// The visitor leaves: submits the close job (REST and `conversation:end`).
pub async fn end_as_visitor(
    state: &AppState,
    visitor: &visitors::Model,
) -> Result<Accepted, ApiError> {
    let conversation = current_conversation(&state.db, visitor, None).await?;
    require_open(&conversation)?;
    // Accepted once the intent is stored: the job may be lost, the intent is not.
    let job = CloseConversation {
        conversation_id: conversation.id,
        closed_by: ClosedBy::Visitor,
        reason: "visitor_left".into(),
        intent: None,
    };
    state
        .intend(conversation.account_id, conversation.id, job)
        .await?;
    Ok(Accepted::new(conversation.id))
}

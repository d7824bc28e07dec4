//! Typing and seen: what one side of a conversation tells the other while it lasts. Nothing is
//! stored; both leave through the notifier like every push, and the caller's acknowledgement
//! carries what the other side hears.

use entity::{conversations, visitors};
use jobs::notify::Outcome;
use serde_json::{Value, json};

use super::{access::held, messages::event_of, visitors::current_conversation};
use crate::{auth::CurrentAgent, error::ApiError, state::AppState};

/// What the other side hears of a typing change (`typing`): `agent_id` is `None` for the visitor.
pub fn typing_body(conversation_id: i64, agent_id: Option<i64>, typing: bool) -> Value {
    match agent_id {
        Some(agent_id) => json!({
            "conversationId": conversation_id,
            "from": "agent",
            "agentId": agent_id,
            "typing": typing,
        }),
        None => json!({
            "conversationId": conversation_id,
            "from": "visitor",
            "typing": typing,
        }),
    }
}

/// What the other side hears when messages were seen (`message:seen`).
pub fn seen_body(conversation_id: i64, agent_id: Option<i64>, event_id: i64) -> Value {
    match agent_id {
        Some(agent_id) => json!({
            "conversationId": conversation_id,
            "eventId": event_id,
            "by": "agent",
            "agentId": agent_id,
        }),
        None => json!({
            "conversationId": conversation_id,
            "eventId": event_id,
            "by": "visitor",
        }),
    }
}

/// The agent holding a conversation starts or stops typing. Typing holds the response clock;
/// stopping does not restart it.
pub async fn agent_typing(
    state: &AppState,
    caller: &CurrentAgent,
    conversation_id: i64,
    typing: bool,
) -> Result<Value, ApiError> {
    let conversation = held(&state.db, caller, conversation_id).await?;
    if typing {
        state.activity.agent_typing(conversation.id);
    }
    Ok(typed(state, &conversation, Some(caller.id()), typing))
}

/// The visitor starts or stops typing in its conversation.
pub async fn visitor_typing(
    state: &AppState,
    visitor: &visitors::Model,
    conversation_id: Option<i64>,
    typing: bool,
) -> Result<Value, ApiError> {
    let conversation = current_conversation(&state.db, visitor, conversation_id).await?;
    Ok(typed(state, &conversation, None, typing))
}

/// The agent holding a conversation saw its messages up to `event_id`.
pub async fn agent_seen(
    state: &AppState,
    caller: &CurrentAgent,
    conversation_id: i64,
    event_id: i64,
) -> Result<Value, ApiError> {
    let conversation = held(&state.db, caller, conversation_id).await?;
    event_of(&state.db, conversation.id, event_id).await?;
    Ok(seen(state, &conversation, Some(caller.id()), event_id))
}

/// The visitor saw its conversation's messages up to `event_id`.
pub async fn visitor_seen(
    state: &AppState,
    visitor: &visitors::Model,
    conversation_id: Option<i64>,
    event_id: i64,
) -> Result<Value, ApiError> {
    let conversation = current_conversation(&state.db, visitor, conversation_id).await?;
    event_of(&state.db, conversation.id, event_id).await?;
    Ok(seen(state, &conversation, None, event_id))
}

fn typed(
    state: &AppState,
    conversation: &conversations::Model,
    agent_id: Option<i64>,
    typing: bool,
) -> Value {
    state.notifier.notify(Outcome::Typing {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        agent_id,
        assigned_agent_id: conversation.assigned_agent_id,
        typing,
    });
    typing_body(conversation.id, agent_id, typing)
}

fn seen(
    state: &AppState,
    conversation: &conversations::Model,
    agent_id: Option<i64>,
    event_id: i64,
) -> Value {
    state.notifier.notify(Outcome::Seen {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        agent_id,
        assigned_agent_id: conversation.assigned_agent_id,
        event_id,
    });
    seen_body(conversation.id, agent_id, event_id)
}

//! Chat messages from the visitor or an agent, stored once per client message id.

use chrono::Utc;
use entity::{
    conversations,
    enums::{AuthorType, ConversationStatus, EventKind},
    events,
};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, sea_query::Expr};

use super::events::once_per_key;

/// A chat message that could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The conversation is resolved or closed.
    #[error("the conversation is closed")]
    Closed,
}

/// How a sender's own message id is stored: per author, so a visitor and an agent may reuse ids
/// and neither can collide with the system events' keys (`sys:…`).
pub fn client_key(author: AuthorType, agent_id: Option<i64>, client_id: &str) -> String {
    match author {
        AuthorType::Agent => format!("a{}:{client_id}", agent_id.unwrap_or_default()),
        _ => format!("v:{client_id}"),
    }
}

/// The sender's own message id of a stored key (`None` for system events).
pub fn client_id_of(stored: &str) -> Option<&str> {
    if stored.starts_with("sys:") {
        return None;
    }
    stored.split_once(':').map(|(_, id)| id)
}

/// A message as stored.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The stored event (the first one, when the client resent its message id).
    pub event: events::Model,
    /// False when the client's message id was already stored: nothing new was written.
    pub created: bool,
}

/// Stores a message from the visitor or an agent on conversation `conversation_id`'s active
/// thread, in one statement: the insert reads the thread from the conversation row, on the
/// condition that the conversation is open, so a message never lands in a chat that closed
/// meanwhile. The conversation's activity timestamps are the caller's to record (see
/// [`crate::activity`]). With a `client_id`, sending the same message twice stores it once: the
/// second call returns the first event and `created: false`. The caller has checked that the
/// author may write to the conversation.
pub async fn post_message(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    author: AuthorType,
    agent_id: Option<i64>,
    content: String,
    client_id: Option<&str>,
) -> Result<Result<Posted, MessageError>, DbErr> {
    use sea_orm::{FromQueryResult, sea_query::Query};
    let key = client_id.map(|id| client_key(author, agent_id, id));
    let open = Query::select()
        .column(conversations::Column::AccountId)
        .column(conversations::Column::Id)
        .column(conversations::Column::ActiveThreadId)
        .expr(Expr::value(EventKind::Message))
        .expr(Expr::value(author))
        .expr(Expr::value(agent_id))
        .expr(Expr::value(content))
        .expr(Expr::value(key.clone()))
        .expr(Expr::value(Utc::now()))
        .from(conversations::Entity)
        .and_where(conversations::Column::Id.eq(conversation_id))
        .and_where(
            conversations::Column::Status
                .is_in([ConversationStatus::Pending, ConversationStatus::Active]),
        )
        .and_where(conversations::Column::ActiveThreadId.is_not_null())
        .to_owned();
    let insert = Query::insert()
        .into_table(events::Entity)
        .columns([
            events::Column::AccountId,
            events::Column::ConversationId,
            events::Column::ThreadId,
            events::Column::Kind,
            events::Column::AuthorType,
            events::Column::AgentId,
            events::Column::Content,
            events::Column::ClientMessageId,
            events::Column::CreatedAt,
        ])
        .select_from(open)
        .map_err(|err| DbErr::Custom(err.to_string()))?
        .on_conflict(once_per_key())
        .returning_all()
        .to_owned();
    let statement = db.get_database_backend().build(&insert);
    if let Some(event) = events::Model::find_by_statement(statement).one(db).await? {
        return Ok(Ok(Posted {
            event,
            created: true,
        }));
    }
    // Nothing inserted: the client resent a message already stored, or the chat is closed.
    let Some(key) = key else {
        return Ok(Err(MessageError::Closed));
    };
    let first = events::Entity::find()
        .filter(events::Column::ConversationId.eq(conversation_id))
        .filter(events::Column::ClientMessageId.eq(key))
        .one(db)
        .await?;
    Ok(match first {
        Some(event) => Ok(Posted {
            event,
            created: false,
        }),
        None => Err(MessageError::Closed),
    })
}

//! System events: the lines a conversation's history shows for what the lifecycle did, each keyed
//! by its cause so a step run twice writes it once.

use chrono::Utc;
use entity::{
    conversations,
    enums::{AuthorType, EventKind},
    events,
};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, sea_query::OnConflict};
use serde_json::Value;

/// An event insert that writes nothing when the conversation already has an event with the same
/// key (`client_message_id`: a client's message id, or a system event's cause).
pub(super) fn once_per_key() -> OnConflict {
    OnConflict::columns([
        events::Column::ConversationId,
        events::Column::ClientMessageId,
    ])
    .do_nothing()
    .to_owned()
}

/// Writes an event. With a `dedupe` key, a second write with the same key writes nothing
/// (returns `false`): jobs key their system events by what caused them.
#[allow(clippy::too_many_arguments)]
pub async fn write_event(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    thread_id: i64,
    kind: EventKind,
    author: AuthorType,
    agent_id: Option<i64>,
    content: String,
    metadata: Option<Value>,
    dedupe: Option<String>,
) -> Result<bool, DbErr> {
    let row = events::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation.id),
        thread_id: Set(thread_id),
        kind: Set(kind),
        author_type: Set(author),
        agent_id: Set(agent_id),
        content: Set(content),
        metadata: Set(metadata),
        client_message_id: Set(dedupe),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    let written = events::Entity::insert(row)
        .on_conflict(once_per_key())
        .exec_without_returning(db)
        .await?;
    Ok(written == 1)
}

/// A system event on the conversation's active thread.
pub async fn system_event(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    content: String,
    metadata: Value,
    dedupe: Option<String>,
) -> Result<bool, DbErr> {
    let Some(thread_id) = conversation.active_thread_id else {
        return Ok(false);
    };
    write_event(
        db,
        conversation,
        thread_id,
        EventKind::System,
        AuthorType::System,
        None,
        content,
        Some(metadata),
        dedupe.map(|key| format!("sys:{key}")),
    )
    .await
}

/// A system event row on the conversation's active thread, keyed by what caused it (`key`); `None`
/// when it has no active thread.
pub fn system_event_row(
    conversation: &conversations::Model,
    content: String,
    metadata: Value,
    key: &str,
) -> Option<events::ActiveModel> {
    let thread = conversation.active_thread_id?;
    Some(event_row(conversation, thread, content, metadata, key))
}

/// Writes event rows in one statement, each only if its conversation has no event with its key.
/// Returns how many were written.
pub async fn write_events_once(
    db: &impl ConnectionTrait,
    rows: Vec<events::ActiveModel>,
) -> Result<u64, DbErr> {
    if rows.is_empty() {
        return Ok(0);
    }
    events::Entity::insert_many(rows)
        .on_conflict(once_per_key())
        .exec_without_returning(db)
        .await
}

/// A system event row on `thread_id`, keyed by what caused it (`key`, stored as `sys:key` so it
/// never collides with a client's message id).
pub(super) fn event_row(
    conversation: &conversations::Model,
    thread_id: i64,
    content: String,
    metadata: Value,
    key: &str,
) -> events::ActiveModel {
    events::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation.id),
        thread_id: Set(thread_id),
        kind: Set(EventKind::System),
        author_type: Set(AuthorType::System),
        agent_id: Set(None),
        content: Set(content),
        metadata: Set(Some(metadata)),
        client_message_id: Set(Some(format!("sys:{key}"))),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
}

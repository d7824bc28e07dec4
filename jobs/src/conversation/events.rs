//! System events: the lines a conversation's history shows for what the lifecycle did. Each is
//! keyed by its cause (`client_message_id` = `sys:{key}`, unique per conversation), so a step run
//! twice writes its event once. One writer serves all: build rows ([`system_event_row`]), write
//! them in one statement ([`write_events_once`]); [`system_event`] does both for one event.

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

/// Writes a system event on the conversation's active thread, keyed by what caused it (`key`).
/// `false` when nothing was written: the conversation has no active thread, or the event with
/// that key is already there.
pub async fn system_event(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    content: String,
    metadata: Value,
    key: &str,
) -> Result<bool, DbErr> {
    let rows = system_event_row(conversation, content, metadata, key);
    Ok(write_events_once(db, rows.into_iter().collect()).await? == 1)
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

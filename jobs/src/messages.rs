//! Where messages are written, and what a new one tells.
//!
//! On SQLite, concurrent messages are written together through a [`Batcher`]: whatever messages
//! gathered while the previous transaction was busy are stored in one (a group commit), so a
//! burst costs one commit and one set of dirty pages instead of one per message. On PostgreSQL,
//! with its pool of connections, each message is written on its own: in one statement, or in a
//! transaction with its outbox row when the account's webhooks want messages (see
//! [`crate::outbox`]).

use chrono::{DateTime, Utc};
use entity::{
    enums::{AuthorType, EventKind},
    events,
};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr};
use serde::Serialize;

use crate::{
    conversation::{MessageError, Posted, post_message},
    notify::Outcome,
    outbox::{Outbox, Staged},
    runtime::batch::Batcher,
};

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
                .and_then(crate::conversation::client_id_of)
                .map(str::to_owned),
            created_at: event.created_at,
        }
    }
}

/// A message as stored, and what it tells.
#[derive(Debug)]
pub struct Stored {
    /// The stored event (the first one, when the client resent its message id).
    pub view: EventView,
    /// False when the client's message id was already stored: nothing new was written.
    pub created: bool,
    /// What a new message tells both sides of the conversation (and webhooks): nothing for a
    /// resent one.
    pub staged: Staged,
}

type Written = Result<Stored, MessageError>;

/// One message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The conversation's account (the caller has read it).
    pub account_id: i64,
    pub conversation_id: i64,
    pub author: AuthorType,
    /// The writing agent.
    pub agent_id: Option<i64>,
    pub content: String,
    /// The sender's own id for the message (a resend stores nothing).
    pub client_id: Option<String>,
    /// The agent holding the conversation, when the caller knows it: it hears the message even
    /// without joining the conversation's room.
    pub holder: Option<i64>,
}

impl NewMessage {
    async fn write(
        &self,
        db: &impl ConnectionTrait,
    ) -> Result<Result<Posted, MessageError>, DbErr> {
        post_message(
            db,
            self.conversation_id,
            self.author,
            self.agent_id,
            self.content.clone(),
            self.client_id.as_deref(),
        )
        .await
    }

    /// What the stored message tells (nothing when it was a resend).
    fn told(&self, view: &EventView, created: bool) -> Vec<Outcome> {
        if !created {
            return Vec::new();
        }
        match serde_json::to_value(view) {
            Ok(event) => vec![Outcome::MessageCreated {
                account_id: self.account_id,
                conversation_id: self.conversation_id,
                assigned_agent_id: self.holder,
                event,
            }],
            Err(err) => {
                tracing::warn!(%err, "message not pushed");
                Vec::new()
            }
        }
    }
}

/// Writes messages; cloning shares the writer.
#[derive(Debug, Clone)]
pub struct Messages {
    db: DatabaseConnection,
    outbox: Outbox,
    batcher: Option<Batcher<NewMessage, Written>>,
}

impl Messages {
    /// The writer for `db` (a batching task on SQLite; it ends with the last handle).
    pub fn start(db: DatabaseConnection, outbox: Outbox) -> Self {
        let batcher = (db.get_database_backend() == DatabaseBackend::Sqlite).then(|| {
            let (db, outbox) = (db.clone(), outbox.clone());
            Batcher::start("message", 1, move |batch: Vec<NewMessage>| {
                let (db, outbox) = (db.clone(), outbox.clone());
                Box::pin(async move { write_together(&db, &outbox, batch).await })
            })
        });
        Self {
            db,
            outbox,
            batcher,
        }
    }

    /// Stores one message (see [`post_message`]) and stages what it tells.
    pub async fn post(&self, message: NewMessage) -> Result<Written, DbErr> {
        match &self.batcher {
            Some(batcher) => batcher.run(message).await,
            None => write_together(&self.db, &self.outbox, vec![message])
                .await?
                .pop()
                .ok_or_else(|| DbErr::Custom("a message write gave no output".into())),
        }
    }
}

/// Stores `batch` in one transaction with the outbox rows of what it tells; a lone message that
/// no webhook wants, in a statement of its own.
async fn write_together(
    db: &DatabaseConnection,
    outbox: &Outbox,
    batch: Vec<NewMessage>,
) -> Result<Vec<Written>, DbErr> {
    if let [message] = batch.as_slice()
        && !outbox.wants_messages(db, message.account_id).await?
    {
        let written = message.write(db).await?.map(|posted| {
            let view = EventView::from(posted.event);
            let staged = Staged::unstaged(message.told(&view, posted.created));
            Stored {
                view,
                created: posted.created,
                staged,
            }
        });
        return Ok(vec![written]);
    }
    let txn = crate::db::begin_write(db).await?;
    let mut written = Vec::with_capacity(batch.len());
    let mut told = Vec::with_capacity(batch.len());
    for message in &batch {
        match message.write(&txn).await? {
            Ok(posted) => {
                let view = EventView::from(posted.event);
                told.push(message.told(&view, posted.created));
                written.push(Ok((view, posted.created)));
            }
            Err(refused) => {
                told.push(Vec::new());
                written.push(Err(refused));
            }
        }
    }
    let staged = outbox.stage_each(&txn, told).await?;
    txn.commit().await?;
    Ok(written
        .into_iter()
        .zip(staged)
        .map(|(written, staged)| {
            written.map(|(view, created)| Stored {
                view,
                created,
                staged,
            })
        })
        .collect())
}

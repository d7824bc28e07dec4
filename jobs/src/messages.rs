//! Where messages are written. On SQLite, concurrent messages are written together through a
//! [`Batcher`]: whatever messages gathered while the previous transaction was busy are stored in
//! one (a group commit), so a burst costs one commit and one set of dirty pages instead of one per
//! message. On PostgreSQL, with its pool of connections, each message is written on its own.

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr};

use crate::{
    batch::Batcher,
    conversation::{MessageError, Posted, post_message},
};
use entity::enums::AuthorType;

type Outcome = Result<Posted, MessageError>;

/// One message to store.
#[derive(Debug, Clone)]
struct Message {
    conversation_id: i64,
    author: AuthorType,
    agent_id: Option<i64>,
    content: String,
    client_id: Option<String>,
}

impl Message {
    async fn write(self, db: &impl ConnectionTrait) -> Result<Outcome, DbErr> {
        post_message(
            db,
            self.conversation_id,
            self.author,
            self.agent_id,
            self.content,
            self.client_id.as_deref(),
        )
        .await
    }
}

/// Writes messages; cloning shares the writer.
#[derive(Debug, Clone)]
pub struct Messages {
    db: DatabaseConnection,
    batcher: Option<Batcher<Message, Outcome>>,
}

impl Messages {
    /// The writer for `db` (a batching task on SQLite; it ends with the last handle).
    pub fn start(db: DatabaseConnection) -> Self {
        let batcher = (db.get_database_backend() == DatabaseBackend::Sqlite).then(|| {
            let db = db.clone();
            Batcher::start("message", 1, move |batch: Vec<Message>| {
                let db = db.clone();
                Box::pin(async move { write_together(&db, batch).await })
            })
        });
        Self { db, batcher }
    }

    /// Stores one message: see [`post_message`].
    pub async fn post(
        &self,
        conversation_id: i64,
        author: AuthorType,
        agent_id: Option<i64>,
        content: String,
        client_id: Option<&str>,
    ) -> Result<Outcome, DbErr> {
        let message = Message {
            conversation_id,
            author,
            agent_id,
            content,
            client_id: client_id.map(str::to_owned),
        };
        match &self.batcher {
            Some(batcher) => batcher.run(message).await,
            None => message.write(&self.db).await,
        }
    }
}

/// Stores `batch` in one transaction (a lone message in its own statement).
async fn write_together(
    db: &DatabaseConnection,
    batch: Vec<Message>,
) -> Result<Vec<Outcome>, DbErr> {
    let batch = match <[Message; 1]>::try_from(batch) {
        Ok([message]) => return Ok(vec![message.write(db).await?]),
        Err(batch) => batch,
    };
    let txn = crate::db::begin_write(db).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for message in batch {
        outcomes.push(message.write(&txn).await?);
    }
    txn.commit().await?;
    Ok(outcomes)
}

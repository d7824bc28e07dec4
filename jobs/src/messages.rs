//! Where messages are written. On SQLite, concurrent messages are written together: one task
//! takes whatever messages are waiting and stores them in one transaction (a group commit), so a
//! burst costs one commit and one set of dirty pages instead of one per message. On PostgreSQL,
//! with its pool of connections, each message is written on its own.

use sea_orm::{DatabaseBackend, DatabaseConnection, DbErr};
use tokio::sync::{mpsc, oneshot};

use crate::conversation::{MessageError, Posted, post_message};
use entity::enums::AuthorType;

/// Most messages one transaction carries.
const BATCH: usize = 256;

type Outcome = Result<Result<Posted, MessageError>, DbErr>;

struct Request {
    conversation_id: i64,
    author: AuthorType,
    agent_id: Option<i64>,
    content: String,
    client_id: Option<String>,
    reply: oneshot::Sender<Outcome>,
}

/// Writes messages; cloning shares the writer.
#[derive(Debug, Clone)]
pub struct Messages {
    db: DatabaseConnection,
    batcher: Option<mpsc::Sender<Request>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("conversation_id", &self.conversation_id)
            .finish_non_exhaustive()
    }
}

impl Messages {
    /// The writer for `db` (a batching task on SQLite; it ends with the last handle).
    pub fn start(db: DatabaseConnection) -> Self {
        let batcher = (db.get_database_backend() == DatabaseBackend::Sqlite).then(|| {
            let (tx, rx) = mpsc::channel(4 * BATCH);
            tokio::spawn(write_batches(db.clone(), rx));
            tx
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
    ) -> Outcome {
        let Some(batcher) = &self.batcher else {
            return post_message(
                &self.db,
                conversation_id,
                author,
                agent_id,
                content,
                client_id,
            )
            .await;
        };
        let (reply, answer) = oneshot::channel();
        let request = Request {
            conversation_id,
            author,
            agent_id,
            content,
            client_id: client_id.map(str::to_owned),
            reply,
        };
        batcher
            .send(request)
            .await
            .map_err(|_| DbErr::Custom("the message writer stopped".into()))?;
        answer
            .await
            .map_err(|_| DbErr::Custom("the message writer stopped".into()))?
    }
}

async fn write_batches(db: DatabaseConnection, mut inbox: mpsc::Receiver<Request>) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match inbox.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if batch.len() > 1 {
            match write_together(&db, &batch).await {
                Ok(outcomes) => {
                    for (request, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = request.reply.send(Ok(outcome));
                    }
                    continue;
                }
                // Nothing of the batch was kept: each message is tried on its own below, so one
                // bad message fails alone.
                Err(err) => {
                    tracing::warn!(%err, "batched message write failed; writing one by one")
                }
            }
        }
        for request in batch {
            let outcome = write_one(&db, &request).await;
            let _ = request.reply.send(outcome);
        }
    }
}

async fn write_one(db: &impl sea_orm::ConnectionTrait, request: &Request) -> Outcome {
    post_message(
        db,
        request.conversation_id,
        request.author,
        request.agent_id,
        request.content.clone(),
        request.client_id.as_deref(),
    )
    .await
}

async fn write_together(
    db: &DatabaseConnection,
    batch: &[Request],
) -> Result<Vec<Result<Posted, MessageError>>, DbErr> {
    let txn = crate::db::begin_write(db).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        outcomes.push(write_one(&txn, request).await?);
    }
    txn.commit().await?;
    Ok(outcomes)
}

//! The one cheap, cloneable state shared by every handler.

use std::sync::Arc;

use jobs::{JobContext, JobStore, notify::Notifier};
use sea_orm::DatabaseConnection;

use crate::{auth::token::TokenKeys, chat::budget::VisitorMessages, config::Settings};

/// Handles every request may need.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Application database.
    pub db: DatabaseConnection,
    /// Where jobs are submitted.
    pub jobs: JobStore,
    /// Token signing keys.
    pub tokens: Arc<TokenKeys>,
    /// Settings the process started with.
    pub settings: Arc<Settings>,
    /// Where outcomes of what the HTTP layer did itself go (the same seam jobs use).
    pub notifier: Arc<dyn Notifier>,
    /// Where changes stage the outcomes webhooks and e-mail may want (see `jobs::outbox`).
    pub outbox: jobs::outbox::Outbox,
    /// Where messages are written (grouped into shared commits on SQLite).
    pub messages: jobs::messages::Messages,
    /// Conversation activity timestamps, written in batches.
    pub activity: jobs::activity::Activity,
    /// Webhook and e-mail channels of this process.
    pub channels: jobs::delivery::channels::Channels,
    /// Group commit of the lifecycle's hot paths (shared with this process's jobs).
    pub batches: jobs::runtime::batch::Batches,
    /// Visitors' message budgets, shared by REST and sockets.
    pub visitor_messages: VisitorMessages,
    /// Counts this node's open sockets (the realtime layer's; none on a worker).
    pub sockets: SocketCount,
}

/// How many sockets this node holds now, per namespace (the realtime layer counts them).
#[derive(Clone)]
pub struct SocketCount(Arc<dyn Fn() -> Sockets + Send + Sync>);

impl SocketCount {
    pub fn new(count: impl Fn() -> Sockets + Send + Sync + 'static) -> Self {
        Self(Arc::new(count))
    }

    /// The sockets open now.
    pub fn now(&self) -> Sockets {
        (self.0)()
    }
}

impl std::fmt::Debug for SocketCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketCount")
    }
}

/// This node's open sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sockets {
    pub agents: usize,
    pub visitors: usize,
}

impl AppState {
    /// Accepts `job` for `conversation_id` of `account_id`: its intent is stored (so the job may
    /// be lost, the request is not), then the job is submitted (see `jobs::intent`).
    pub async fn intend<J: jobs::intent::Intended>(
        &self,
        account_id: i64,
        conversation_id: i64,
        job: J,
    ) -> Result<(), sea_orm::DbErr> {
        jobs::intent::submit(
            &self.batches,
            &self.jobs,
            account_id,
            Some(conversation_id),
            job,
        )
        .await
    }

    /// The context jobs get, for work the HTTP layer does in-line through the same domain code.
    pub fn job_context(&self) -> JobContext {
        JobContext {
            db: self.db.clone(),
            jobs: self.jobs.clone(),
            notifier: self.notifier.clone(),
            outbox: self.outbox.clone(),
            presence_stale: self.settings.presence_stale(),
            channels: self.channels.clone(),
            batches: self.batches.clone(),
        }
    }
}

//! The one cheap, cloneable state shared by every handler.

use std::sync::Arc;

use jobs::{JobContext, JobStore, notify::Notifier};
use sea_orm::DatabaseConnection;

use crate::{auth::TokenKeys, config::Settings, realtime::Push};

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
    /// Direct pushes of the realtime layer (typing, seen, disconnecting revoked agents).
    pub push: Push,
    /// Webhook and e-mail channels of this process.
    pub channels: jobs::channels::Channels,
    /// Group commit of the lifecycle's hot paths (shared with this process's jobs).
    pub batches: jobs::batch::Batches,
    /// Visitors' message budgets, shared by REST and sockets.
    pub visitor_messages: crate::http::rate_limit::VisitorMessages,
    /// This node's sockets per visitor session and per agent.
    pub socket_slots: crate::realtime::Slots,
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

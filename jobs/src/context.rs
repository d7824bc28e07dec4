//! The one value every job receives: cheap to clone, shared by all workers of a process.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;

use crate::{JobStore, delivery::channels::Channels, notify::Notifier, runtime::batch::Batches};

/// Handles a job needs: the database (source of truth), the job store (to submit follow-ups) and
/// the notifier (to tell clients what happened).
#[derive(Clone, Debug)]
pub struct JobContext {
    /// Application database (SQLite or PostgreSQL).
    pub db: DatabaseConnection,
    /// Where follow-up jobs are submitted.
    pub jobs: JobStore,
    /// Where outcomes go.
    pub notifier: Arc<dyn Notifier>,
    /// Where a change stages the outcomes webhooks and e-mail may want, in its transaction.
    pub outbox: crate::outbox::Outbox,
    /// An agent that looks connected but no API node has vouched for (heartbeat) for this long
    /// lost its sockets without a word (a node crashed): the reconciler treats it as dropped.
    pub presence_stale: Duration,
    /// Webhook and e-mail settings of this process (the delivery jobs and the fan-out).
    pub channels: Channels,
    /// Group commit of the lifecycle's hot paths in this process.
    pub batches: Batches,
}

impl JobContext {
    /// Tells what a committed change staged (see [`crate::outbox`]).
    pub fn tell(&self, staged: crate::outbox::Staged) {
        staged.tell(&*self.notifier);
    }
}

//! What every job is: serialisable args, a queue name, a retry budget and an idempotent `run`.

use std::{future::Future, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use crate::JobContext;

/// How often a failing job is tried, decided per job on purpose.
///
/// apalis retries in two places (docs/stack-notes.md, "apalis retries"): the worker's retry layer retries inside the
/// process with a backoff while the task's attempt number is at most `in_process`, and the storage
/// hands a failed task out again until it has been attempted `deliveries` times (apalis-sqlite at
/// once, apalis-redis after `attempt` seconds). The attempt counter is shared, so the total number
/// of executions is at most `max(in_process + 1, deliveries)`, never their product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries inside the worker, with exponential backoff from `backoff_min`.
    pub in_process: usize,
    /// Total deliveries by the storage before the task is left failed for operators.
    pub deliveries: usize,
    /// First in-process backoff; doubles each time, capped at 30 s.
    pub backoff_min: Duration,
    /// A single execution taking longer than this is cancelled and counts as a failed attempt.
    pub timeout: Duration,
}

/// A lifecycle step. Implementors are the args of one apalis queue.
pub trait Job: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static {
    /// Queue name, stored with every task: never rename one that has shipped.
    const QUEUE: &'static str;
    /// The retry budget of this job.
    const BUDGET: RetryBudget;
    /// Does the work. Must be idempotent: a second run with the same args changes nothing.
    /// Returns a one-line summary of what happened, kept as the task's result for operators.
    fn run(self, ctx: &JobContext) -> impl Future<Output = Result<String, JobError>> + Send;
}

/// Why a job failed, which decides whether it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database or a remote was unavailable or timed out: worth another attempt.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Another attempt would fail the same way (bad args, a row that cannot exist).
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl From<sea_orm::DbErr> for JobError {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, SqlErr};
        match err.sql_err() {
            // A constraint says the args can never be stored: retrying cannot help.
            Some(SqlErr::ForeignKeyConstraintViolation(msg)) => JobError::Permanent(msg),
            _ => match err {
                DbErr::Json(msg) | DbErr::Type(msg) => JobError::Permanent(msg),
                other => JobError::Transient(other.to_string()),
            },
        }
    }
}

//! The one value every job receives: cheap to clone, shared by all workers of a process.

use sea_orm::DatabaseConnection;

use crate::JobStore;

/// Handles a job needs: the database (source of truth) and the job store (to submit follow-ups).
#[derive(Clone, Debug)]
pub struct JobContext {
    /// Application database (SQLite or PostgreSQL).
    pub db: DatabaseConnection,
    /// Where follow-up jobs are submitted.
    pub jobs: JobStore,
}

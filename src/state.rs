//! The one cheap, cloneable state shared by every handler.

use std::sync::Arc;

use jobs::JobStore;
use sea_orm::DatabaseConnection;

use crate::{auth::TokenKeys, config::Settings};

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
}

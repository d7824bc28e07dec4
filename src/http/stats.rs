//! `GET /v1/stats`: the live state of an account's queues, for supervisors (see `chat::stats`).

use axum::{Router, extract::State, routing::get};
use entity::enums::AgentRole;

use super::extract::Json;
use crate::{
    auth::CurrentAgent,
    chat::stats::{AccountStats, account_stats},
    error::ApiError,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/stats", get(show))
}

async fn show(
    State(state): State<AppState>,
    caller: CurrentAgent,
) -> Result<Json<AccountStats>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    Ok(Json(account_stats(&state.db, caller.account_id()).await?))
}

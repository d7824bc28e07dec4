//! The operator listener (`SWITCHBOARD_OPS_BIND`, localhost by default): the apalis board,
//! `GET /metrics` (Prometheus), and whatever else operators need. Bound by every process kind (`all`, `serve`, `work`).
//!
//! Rules: never public. Every route here sits behind HTTP basic auth of admin agents
//! ([`auth`]), except the liveness and readiness probes (`/health`, `/health/ready`, the same as
//! the API listener's); a feature adds its routes in [`router`], beside the board's, and gets the
//! basic auth for free.

pub mod accounts;
pub mod auth;
mod board;

use crate::{
    error::{log_server_errors, method_not_allowed},
    state::AppState,
};
use axum::{Router, middleware, routing::get};

/// Everything the operator listener serves: the probes for anyone, the rest behind admin basic
/// auth.
pub fn router(state: &AppState) -> Router {
    let admin_only = Router::new()
        // Operator routes go here (`.route(...)` or `.merge(feature::router(state))`). The
        // board's web app is the fallback: it answers every path no route claims.
        .route(
            "/metrics",
            get(crate::metrics::scrape).with_state(state.clone()),
        )
        .merge(accounts::router(state))
        .merge(board::router(&state.jobs))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            auth::OpsAuth::new(state.db.clone()),
            auth::require_admin,
        ));
    let router = Router::new()
        // The liveness and readiness probes, as the API listener has them: every process binds
        // this listener, so worker-only ones (`work`) can be probed too. They tell nothing a
        // caller of the public API cannot learn.
        .merge(crate::http::health::router().with_state(state.clone()))
        .merge(admin_only)
        .layer(middleware::from_fn(log_server_errors))
        .layer(middleware::from_fn_with_state(
            state.settings.trusted_proxies.clone(),
            crate::client_ip::resolve,
        ));
    crate::http::observe::observe(router)
}

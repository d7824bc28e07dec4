//! The HTTP API (`/v1`, JSON, camelCase). Thin by rule: validate at the edge, write what the caller
//! must see at once, submit jobs, answer. Each feature module builds its own `router()`; this one
//! only merges them and adds the cross-cutting layers.

mod agents;
mod audit;
mod auth;
mod conversations;
pub(crate) mod extract;
mod groups;
pub mod health;
pub mod observe;
pub mod rate_limit;
mod reply;
pub(crate) mod resource;
mod stats;
mod tags;
mod webhooks;
mod widget;

use std::time::Duration;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderName, Method, header},
    middleware,
};
use tower_http::{
    cors::{Any, CorsLayer},
    timeout::TimeoutLayer,
};

use crate::{
    error::{log_server_errors, method_not_allowed, not_found},
    state::AppState,
};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The public router, with `state` applied.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(auth::router(&state))
        .merge(agents::router(&state))
        .merge(groups::router())
        .merge(tags::router())
        .merge(audit::router())
        .merge(stats::router())
        .merge(widget::router(&state))
        .merge(conversations::router())
        .merge(webhooks::router())
        .fallback(not_found);
    Router::new()
        .nest("/v1", v1)
        .merge(health::router())
        .route_layer(middleware::from_fn(crate::metrics::track_http))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_server_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .with_state(state)
}

/// Cross-origin access for browsers: widgets run on customers' sites. Tokens travel in the
/// Authorization header (or the Socket.IO handshake), never in cookies, so any origin may call.
/// Applied outside the Socket.IO layer too, so HTTP long-polling works from any origin.
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-request-id"),
        ])
}

//! Per-client rate limits for public endpoints and sockets (governor, keyed by the client's
//! network: see `chat::budget::client_key`).
//!
//! The client address is the one `client_ip` decided: the TCP peer, or behind a trusted proxy
//! (`SWITCHBOARD_TRUSTED_PROXIES`) the address it forwarded. Trusting no proxy (the default),
//! every client behind one shares the proxy's address: stricter, never spoofable.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{body::Body, http::Request, response::IntoResponse};
use governor::middleware::NoOpMiddleware;
use tower_governor::{
    GovernorError, GovernorLayer, governor::GovernorConfigBuilder, key_extractor::KeyExtractor,
};

use crate::{
    chat::budget::{PerMinute, client_key, forget_quiet},
    client_ip::ClientIp,
    error::ApiError,
};

/// tower-governor's key: the [`client_key`] of the request's [`ClientIp`].
#[derive(Debug, Clone, Copy)]
pub struct ClientNetwork;

impl KeyExtractor for ClientNetwork {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        ClientIp::of(req.extensions())
            .map(client_key)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// The layer type returned by [`per_client`].
pub type ClientLimit = GovernorLayer<ClientNetwork, NoOpMiddleware, Body>;

/// Allows `per_minute` requests per client per minute, in bursts of up to `per_minute`; beyond
/// that a JSON 429 with `Retry-After`.
pub fn per_client(per_minute: u32) -> ClientLimit {
    let per_minute = per_minute.max(1);
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs(60) / per_minute)
        .burst_size(per_minute)
        .key_extractor(ClientNetwork)
        .finish()
        .map(Arc::new);
    let config = match config {
        Some(config) => config,
        None => unreachable!("period and burst are positive"),
    };
    forget_quiet(config.limiter().clone());
    GovernorLayer::new(config).error_handler(|err| match err {
        GovernorError::TooManyRequests { wait_time, .. } => {
            ApiError::TooManyRequests(wait_time.max(1)).into_response()
        }
        _ => ApiError::BadRequest("cannot tell the client address".into()).into_response(),
    })
}

/// Socket.IO handshakes a client may open per minute (bursts of as many): each one costs the
/// server a database read or more, and long-polling requests of an open session (they carry
/// `sid=`) are not counted.
pub type Handshakes = PerMinute<IpAddr>;

/// Middleware: a JSON 429 with `Retry-After` for a client over its handshake budget.
pub async fn limit_handshakes(
    axum::extract::State(handshakes): axum::extract::State<Handshakes>,
    ClientIp(client): ClientIp,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = request.uri();
    let handshake = uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|pair| pair.starts_with("sid="));
    if handshake && let Err(refused) = handshakes.take(&client_key(client)) {
        return refused.into_response();
    }
    next.run(request).await
}

//! Per-client rate limits for public endpoints (tower-governor, keyed by the peer address).
//!
//! The peer address is the TCP peer: behind a reverse proxy every client shares the proxy's
//! address, which is the safe failure (stricter), unlike trusting a spoofable forwarded header.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, response::IntoResponse};
use governor::middleware::NoOpMiddleware;
use tower_governor::{
    GovernorError, GovernorLayer, governor::GovernorConfigBuilder,
    key_extractor::PeerIpKeyExtractor,
};

use crate::error::ApiError;

/// The layer type returned by [`per_client`].
pub type ClientLimit = GovernorLayer<PeerIpKeyExtractor, NoOpMiddleware, Body>;

/// Allows `per_minute` requests per client address per minute, in bursts of up to `per_minute`;
/// beyond that a JSON 429 with `Retry-After`.
pub fn per_client(per_minute: u32) -> ClientLimit {
    let per_minute = per_minute.max(1);
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs(60) / per_minute)
        .burst_size(per_minute)
        .key_extractor(PeerIpKeyExtractor)
        .finish()
        .map(Arc::new);
    let config = match config {
        Some(config) => config,
        None => unreachable!("period and burst are positive"),
    };
    // Forget clients that have been quiet, so the table does not grow without bound.
    let limiter = config.limiter().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.retain_recent();
        }
    });
    GovernorLayer::new(config).error_handler(|err| match err {
        GovernorError::TooManyRequests { wait_time, .. } => {
            ApiError::TooManyRequests(wait_time.max(1)).into_response()
        }
        _ => ApiError::BadRequest("cannot tell the client address".into()).into_response(),
    })
}

/// Socket.IO handshakes a client address may open per minute (bursts of as many): each one costs
/// the server a database read or more, and long-polling requests of an open session (they carry
/// `sid=`) are not counted.
#[derive(Clone)]
pub struct Handshakes(Arc<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>);

impl Handshakes {
    /// `per_minute` handshakes per client address.
    pub fn per_minute(per_minute: u32) -> Self {
        let rate =
            std::num::NonZeroU32::new(per_minute.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let limiter = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_minute(
            rate,
        )));
        let quiet = limiter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                quiet.retain_recent();
            }
        });
        Self(limiter)
    }
}

/// Middleware: a JSON 429 with `Retry-After` for a client over its handshake budget.
pub async fn limit_handshakes(
    axum::extract::State(handshakes): axum::extract::State<Handshakes>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
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
    if handshake && let Err(not_until) = handshakes.0.check_key(&peer.ip()) {
        use governor::clock::{Clock, DefaultClock};
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return ApiError::TooManyRequests(wait.as_secs().max(1)).into_response();
    }
    next.run(request).await
}

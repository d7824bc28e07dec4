//! Per-client rate limits for public endpoints and sockets (governor, keyed by the client's
//! network: see [`client_key`]).
//!
//! The peer address is the TCP peer: behind a reverse proxy every client shares the proxy's
//! address, which is the safe failure (stricter), unlike trusting a spoofable forwarded header.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{body::Body, http::Request, response::IntoResponse};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
};
use tower_governor::{
    GovernorError, GovernorLayer,
    governor::GovernorConfigBuilder,
    key_extractor::{KeyExtractor, PeerIpKeyExtractor},
};

use crate::error::ApiError;

/// What a client's budget is keyed by: an IPv4 address as it is, an IPv6 address by its /64
/// (one host usually holds a whole /64, so each of its addresses must not get a fresh budget).
/// An IPv4 address mapped into IPv6 counts as the IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

/// tower-governor's key: the peer's [`client_key`].
#[derive(Debug, Clone, Copy)]
pub struct ClientNetwork;

impl KeyExtractor for ClientNetwork {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        PeerIpKeyExtractor.extract(req).map(client_key)
    }
}

/// Forgets, every minute, the keys that have been quiet, so the table does not grow without bound.
fn forget_quiet<K: Hash + Eq + Clone + Send + Sync + 'static>(
    limiter: Arc<DefaultKeyedRateLimiter<K>>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.retain_recent();
        }
    });
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

/// A budget of `per_minute` per key (bursts of as many) that REST handlers and socket events
/// draw from alike.
#[derive(Clone)]
pub struct PerMinute<K: Hash + Eq + Clone + Send + Sync + 'static>(Arc<DefaultKeyedRateLimiter<K>>);

impl<K: Hash + Eq + Clone + Send + Sync + 'static> PerMinute<K> {
    /// `per_minute` per key.
    pub fn new(per_minute: u32) -> Self {
        let rate = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(rate)));
        forget_quiet(limiter.clone());
        Self(limiter)
    }

    /// Takes one from `key`'s budget; a 429 with the wait when it is spent.
    pub fn take(&self, key: &K) -> Result<(), ApiError> {
        self.0.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests(wait.as_secs().max(1))
        })
    }
}

/// Socket.IO handshakes a client may open per minute (bursts of as many): each one costs the
/// server a database read or more, and long-polling requests of an open session (they carry
/// `sid=`) are not counted.
pub type Handshakes = PerMinute<IpAddr>;

/// Middleware: a JSON 429 with `Retry-After` for a client over its handshake budget.
pub async fn limit_handshakes(
    axum::extract::State(handshakes): axum::extract::State<Handshakes>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
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
    if handshake && let Err(refused) = handshakes.take(&client_key(peer.ip())) {
        return refused.into_response();
    }
    next.run(request).await
}

/// What visitors' messages draw from, over REST and sockets alike: one budget per visitor
/// session and one per client, so neither more sockets nor more sessions buy more messages.
#[derive(Clone)]
pub struct VisitorMessages {
    by_session: PerMinute<i64>,
    by_client: PerMinute<IpAddr>,
}

impl VisitorMessages {
    /// `per_minute` messages per visitor session and per client.
    pub fn new(per_minute: u32) -> Self {
        Self {
            by_session: PerMinute::new(per_minute),
            by_client: PerMinute::new(per_minute),
        }
    }

    /// Takes one message from visitor `visitor_id`'s budget and from `client`'s.
    pub fn take(&self, visitor_id: i64, client: IpAddr) -> Result<(), ApiError> {
        self.by_session.take(&visitor_id)?;
        self.by_client.take(&client_key(client))
    }
}

impl std::fmt::Debug for VisitorMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VisitorMessages")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> IpAddr {
        client_key(ip.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_as_they_are() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    #[tokio::test]
    async fn addresses_of_one_64_share_a_budget() {
        let budget = VisitorMessages::new(2);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // Three sessions, each on a different address of one /64.
        budget.take(1, ip("2001:db8::1")).unwrap();
        budget.take(2, ip("2001:db8::2")).unwrap();
        let refused = budget.take(3, ip("2001:db8::3:4:5")).unwrap_err();
        assert!(
            matches!(refused, ApiError::TooManyRequests(_)),
            "{refused:?}"
        );
        // Another /64 has its own.
        budget.take(4, ip("2001:db8:0:1::1")).unwrap();
        // And one session cannot exceed its own budget from fresh addresses.
        budget.take(5, ip("192.0.2.1")).unwrap();
        budget.take(5, ip("192.0.2.2")).unwrap();
        assert!(budget.take(5, ip("192.0.2.3")).is_err());
    }
}

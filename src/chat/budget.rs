//! Budgets that callers draw from, whichever face they come through: per client network (see
//! [`client_key`]) and per visitor session.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
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

/// Forgets, every minute, the keys that have been quiet, so the table does not grow without bound.
pub(crate) fn forget_quiet<K: Hash + Eq + Clone + Send + Sync + 'static>(
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

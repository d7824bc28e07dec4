//! Short-lived caches of hot reads (a widget's group, an account's webhooks, a line's serving
//! rate): entries expire a fixed time after they were stored.

use std::{hash::Hash, time::Duration};

/// A concurrent map whose entries expire.
pub type Cache<K, V> = moka::sync::Cache<K, V>;

/// A cache of at most `capacity` entries, each kept for `ttl`.
pub fn short_lived<K, V>(capacity: u64, ttl: Duration) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .build()
}

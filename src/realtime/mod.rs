//! Socket.IO: the `/agents` and `/visitors` namespaces, and how pushes reach their rooms.
//!
//! The layer is thin: handlers validate, call the use cases (`chat`, as the REST endpoints do),
//! and answer with an acknowledgement. Job outcomes arrive through the [`Notifier`](jobs::notify)
//! seam and are pushed by [`deliver`]. Where pushes go depends on the process:
//! - embedded (`all` on SQLite): the in-process [`SocketIo`] with its local adapter;
//! - API nodes on Redis: a [`SocketIo`] with the socketioxide-redis adapter, so an emit on one node
//!   reaches sockets on every node;
//! - worker-only processes: socketioxide-emitter, publishing into the same Redis channels.

mod agents;
pub mod deliver;
mod lines;
mod push;
mod redis_link;
mod session;
mod tasks;
mod visitors;

use std::time::Duration;

use socketioxide::{
    SocketIo,
    adapter::{Adapter, Emitter, LocalAdapter},
    layer::SocketIoLayer,
};
use socketioxide_core::adapter::DefinedAdapter;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::state::AppState;
pub use push::Push;
pub(crate) use push::checked;
pub use redis_link::Link;
pub use session::Slots;
use tasks::tell_to_resync;
pub use tasks::{SYNC_REQUIRED, heartbeat, push_stats};

/// The Redis adapter on our own self-healing driver (see `redis_link`).
type RedisAdapter<E> = CustomRedisAdapter<E, Link>;

/// Agents' namespace.
pub const AGENTS: &str = "/agents";
/// Visitors' namespace.
pub const VISITORS: &str = "/visitors";

/// Largest message a socket may send over WebSocket or HTTP long-polling; beyond it the
/// connection is closed (WebSocket) or the request refused with 413 (polling). Message contents
/// are limited to 4,000 characters well inside it.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Room names (docs/architecture.md, "Real-time protocol"). Ids are global, so a room never spans accounts.
pub mod room {
    /// Supervisors and admins of an account.
    pub fn account(id: i64) -> String {
        format!("account:{id}")
    }
    /// Every socket of one agent.
    pub fn agent(id: i64) -> String {
        format!("agent:{id}")
    }
    /// Agents of a group.
    pub fn group(id: i64) -> String {
        format!("group:{id}")
    }
    /// Everyone in a conversation (one room per namespace).
    pub fn conversation(id: i64) -> String {
        format!("conversation:{id}")
    }
    /// Every socket of one visitor.
    pub fn visitor(id: i64) -> String {
        format!("visitor:{id}")
    }
}

/// What this node's socket handlers share: the application's state (the use cases take it, through
/// `Deref`), and what only sockets need: this node's push side (to see an agent's other sockets)
/// and its socket slots.
#[derive(Clone, Debug)]
pub struct Node {
    app: AppState,
    push: Push,
    slots: Slots,
}

impl std::ops::Deref for Node {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// How this process pushes, and the Socket.IO layer to mount when it serves sockets.
pub struct Realtime {
    /// The push side, for the notifier and handlers.
    pub push: Push,
    layer: Option<Layer>,
    /// The Redis link, when there is one (see `redis_link`).
    link: Option<Link>,
}

enum Layer {
    Local(SocketIoLayer<LocalAdapter>),
    Cluster(SocketIoLayer<RedisAdapter<Emitter>>),
}

/// The adapter's Redis URL: its subscriptions need RESP3 (`protocol=resp3`, lower case, which
/// replaces any other protocol the URL names; the rest of the URL is kept).
fn resp3(url: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| key != "protocol")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("protocol", "resp3");
    Ok(parsed.into())
}

impl Realtime {
    /// Sockets served here: local rooms without Redis, Redis-adapted rooms with it.
    pub async fn serve(redis_url: Option<&str>, prefix: &str) -> anyhow::Result<Self> {
        let builder = || {
            SocketIo::builder()
                .max_payload(MAX_PAYLOAD_BYTES as u64)
                .ws_max_message_size(MAX_PAYLOAD_BYTES)
                .ack_timeout(Duration::from_secs(10))
        };
        Ok(match redis_url {
            None => {
                let (layer, io) = builder().build_layer();
                Self {
                    push: Push::Local(io),
                    layer: Some(Layer::Local(layer)),
                    link: None,
                }
            }
            Some(url) => {
                let channels = format!("{prefix}:sio");
                let link = Link::connect(&resp3(url)?, &channels).await?;
                let config = RedisAdapterConfig::new()
                    .with_prefix(channels)
                    .with_request_timeout(Duration::from_secs(2))
                    // Every node hears every broadcast; the default 1,024 queued ones overflow
                    // (and are dropped) at a few thousand messages a second.
                    .with_stream_buffer(65_536);
                let ctr = RedisAdapterCtr::new_with_driver(link.clone(), config);
                let (layer, io) = builder().with_adapter::<RedisAdapter<_>>(ctr).build_layer();
                let push = Push::Cluster(io);
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                link.on_resync(tx).await?;
                tokio::spawn(tell_to_resync(push.clone(), rx));
                Self {
                    push,
                    layer: Some(Layer::Cluster(layer)),
                    link: Some(link),
                }
            }
        })
    }

    /// No sockets here: pushes are published on Redis for the API nodes (or dropped without it).
    pub async fn emit_only(redis_url: Option<&str>, prefix: &str) -> anyhow::Result<Self> {
        let (push, link) = match redis_url {
            Some(url) => {
                let channels = format!("{prefix}:sio");
                let link = Link::connect(&resp3(url)?, &channels).await?;
                let push = Push::Emitter {
                    driver: link.clone(),
                    prefix: channels.into(),
                };
                (push, Some(link))
            }
            None => (Push::Off, None),
        };
        Ok(Self {
            push,
            layer: None,
            link,
        })
    }

    /// Counts this node's sockets (for `/metrics`).
    pub fn socket_count(&self) -> crate::state::SocketCount {
        let push = self.push.clone();
        crate::state::SocketCount::new(move || crate::state::Sockets {
            agents: push.local_sockets(AGENTS),
            visitors: push.local_sockets(VISITORS),
        })
    }

    /// The Redis link, to leave the set of live processes on a clean stop.
    pub fn link(&self) -> Option<Link> {
        self.link.clone()
    }

    /// Registers the namespaces (their handlers get `state`) and wraps `router` in the layer.
    pub async fn mount(
        self,
        router: axum::Router,
        state: &AppState,
    ) -> anyhow::Result<axum::Router> {
        let node = Node {
            app: state.clone(),
            push: self.push.clone(),
            slots: Slots::default(),
        };
        Ok(match (self.layer, &self.push) {
            (Some(Layer::Local(layer)), Push::Local(io)) => {
                register(io, &node);
                router.layer(layer)
            }
            (Some(Layer::Cluster(layer)), Push::Cluster(io)) => {
                let (agents, visitors) = register(io, &node);
                agents.await?;
                visitors.await?;
                router.layer(layer)
            }
            _ => router,
        })
    }
}

/// Registers both namespaces; with a remote adapter the returned futures finish the registration.
fn register<A: Adapter + DefinedAdapter>(
    io: &SocketIo<A>,
    node: &Node,
) -> (A::InitRes, A::InitRes) {
    (
        agents::register(io, node.clone()),
        visitors::register(io, node.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::resp3;

    #[test]
    fn the_adapter_url_asks_for_resp3_and_keeps_the_rest() {
        assert_eq!(
            resp3("redis://127.0.0.1:6379").unwrap(),
            "redis://127.0.0.1:6379?protocol=resp3"
        );
        assert_eq!(
            resp3("redis://h/2?protocol=resp2&x=1").unwrap(),
            "redis://h/2?x=1&protocol=resp3"
        );
        assert_eq!(
            resp3("rediss://u:p@h:6380/#insecure").unwrap(),
            "rediss://u:p@h:6380/?protocol=resp3#insecure"
        );
        assert!(resp3("not a url").is_err());
    }
}

//! Socket.IO: the `/agents` and `/visitors` namespaces, and how pushes reach their rooms.
//!
//! The layer is thin: handlers validate, call the same functions as the REST endpoints, and
//! answer with an acknowledgement. Job outcomes arrive through the [`Notifier`](jobs::notify)
//! seam and are pushed by [`deliver`]. Where pushes go depends on the process:
//! - embedded (`all` on SQLite): the in-process [`SocketIo`] with its local adapter;
//! - API nodes on Redis: a [`SocketIo`] with the socketioxide-redis adapter, so an emit on one node
//!   reaches sockets on every node;
//! - worker-only processes: socketioxide-emitter, publishing into the same Redis channels.

mod agents;
pub mod deliver;
mod redis_link;
mod session;
mod visitors;

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use serde_json::json;
use socketioxide::{
    SocketIo,
    adapter::{Adapter, Emitter, LocalAdapter},
    layer::SocketIoLayer,
};
use socketioxide_core::adapter::DefinedAdapter;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::state::AppState;
pub use redis_link::Link;
pub use session::Slots;

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

/// Room names (ARCHITECTURE.md "Real-time protocol"). Ids are global, so a room never spans accounts.
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

/// What carries pushes out of this process.
#[derive(Clone)]
pub enum Push {
    /// Nothing to push to (a worker process without Redis).
    Off,
    /// The process's own sockets.
    Local(SocketIo<LocalAdapter>),
    /// The process's sockets and, through Redis, every other API node's.
    Cluster(SocketIo<RedisAdapter<Emitter>>),
    /// No sockets here: requests are published for the API nodes.
    Emitter { driver: Link, prefix: Arc<str> },
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "Push::Off",
            Self::Local(_) => "Push::Local",
            Self::Cluster(_) => "Push::Cluster",
            Self::Emitter { .. } => "Push::Emitter",
        })
    }
}

/// A failed send that may have left sockets without a push.
pub(crate) trait Undelivered: std::fmt::Display {
    /// Sockets whose queue was full (`InternalChannelFull`): the push is lost for them.
    fn full(&self) -> usize;
}

impl Undelivered for socketioxide::BroadcastError {
    fn full(&self) -> usize {
        match self {
            Self::Socket(errors) => errors
                .iter()
                .filter(|err| matches!(err, socketioxide::SocketError::InternalChannelFull))
                .count(),
            _ => 0,
        }
    }
}

impl Undelivered for socketioxide::SendError {
    fn full(&self) -> usize {
        usize::from(matches!(
            self,
            Self::Socket(socketioxide::SocketError::InternalChannelFull)
        ))
    }
}

/// Counts the pushes `result` could not queue because a socket's queue was full (a slow or stuck
/// client, or a burst larger than its buffer): `switchboard_socket_pushes_dropped_total
/// {namespace}`, and a warning (at most one a second per process, with the count since the last).
/// Returns the error as text for the caller's own log.
pub(crate) fn checked<E: Undelivered>(
    ns: &str,
    event: &str,
    result: Result<(), E>,
) -> Result<(), String> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static UNREPORTED: AtomicU64 = AtomicU64::new(0);
    static LAST_REPORT: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let Err(err) = result else { return Ok(()) };
    let full = err.full() as u64;
    if full > 0 {
        let namespace = if ns == VISITORS { VISITORS } else { AGENTS };
        metrics::counter!("switchboard_socket_pushes_dropped_total", "namespace" => namespace)
            .increment(full);
        UNREPORTED.fetch_add(full, Relaxed);
        let mut last = LAST_REPORT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(std::time::Instant::now());
            let dropped = UNREPORTED.swap(0, Relaxed);
            tracing::warn!(
                namespace = ns,
                event,
                dropped,
                "pushes dropped: sockets' queues were full (slow clients, or a burst); they catch up with `sync`"
            );
        }
    }
    Err(err.to_string())
}

/// Runs `$body` with `$io` bound to whichever `SocketIo` this is; `$otherwise` for the rest.
macro_rules! with_io {
    ($push:expr, $io:ident => $body:expr, $emitter:pat => $otherwise:expr) => {
        match $push {
            Push::Local($io) => $body,
            Push::Cluster($io) => $body,
            $emitter => $otherwise,
        }
    };
}

impl Push {
    /// Emits `event` to every socket of `ns` in any of `rooms` (each socket once).
    pub async fn emit(
        &self,
        ns: &'static str,
        rooms: Vec<String>,
        event: &str,
        data: &impl Serialize,
    ) {
        let result = with_io!(self, io => match io.of(ns) {
            Some(ops) => checked(ns, event, ops.to(rooms).emit(event, data).await),
            None => Ok(()),
        }, other => match other {
            Self::Emitter { driver, prefix } => socketioxide_emitter::IoEmitter::new()
                .of(ns)
                .to(rooms)
                .prefix(prefix.to_string())
                .emit(event, data, driver)
                .await
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        });
        if let Err(err) = result {
            tracing::warn!(event, %err, "push failed");
        }
    }

    /// Makes the sockets of `ns` in room `of` join (or, `join == false`, leave) room `room`.
    pub async fn move_sockets(&self, ns: &'static str, of: String, room: String, join: bool) {
        let result = with_io!(self, io => match io.of(ns) {
            Some(ops) if join => ops.within(of).join(room).await.map_err(|e| e.to_string()),
            Some(ops) => ops.within(of).leave(room).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }, other => match other {
            Self::Emitter { driver, prefix } => {
                let selected = socketioxide_emitter::IoEmitter::new()
                    .of(ns)
                    .within(of)
                    .prefix(prefix.to_string());
                if join {
                    selected.join(room, driver).await
                } else {
                    selected.leave(room, driver).await
                }
                .map_err(|e| e.to_string())
            }
            _ => Ok(()),
        });
        if let Err(err) = result {
            tracing::warn!(%err, "moving sockets between rooms failed");
        }
    }

    /// Disconnects every socket of `ns` in `room` (a deleted or revoked agent).
    pub async fn disconnect(&self, ns: &'static str, room: String) {
        let result = with_io!(self, io => match io.of(ns) {
            Some(ops) => ops.within(room).disconnect().await.map_err(|e| e.to_string()),
            None => Ok(()),
        }, other => match other {
            Self::Emitter { driver, prefix } => socketioxide_emitter::IoEmitter::new()
                .of(ns)
                .within(room)
                .prefix(prefix.to_string())
                .disconnect(driver)
                .await
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        });
        if let Err(err) = result {
            tracing::warn!(%err, "disconnecting sockets failed");
        }
    }

    /// The ids of the sockets of `ns` in `room` on every node (`None` when unknown: no sockets
    /// here, or a node did not answer).
    pub async fn sockets_in(&self, ns: &'static str, room: String) -> Option<Vec<String>> {
        with_io!(self, io => {
            let ops = io.of(ns)?;
            match ops.within(room).fetch_sockets().await {
                Ok(sockets) => Some(sockets.iter().map(|s| s.data().id.to_string()).collect()),
                Err(err) => {
                    tracing::warn!(%err, "could not list the sockets of a room");
                    None
                }
            }
        }, _ => None)
    }

    /// Disconnects every socket of this node (shutdown), so the HTTP server can finish.
    pub async fn close(&self) {
        with_io!(self, io => io.close().await, _ => ())
    }

    /// The rooms named `{kind}:{id}` that sockets of `ns` on this node are in: the ids.
    pub fn local_rooms_of(&self, ns: &'static str, kind: &str) -> std::collections::BTreeSet<i64> {
        let prefix = format!("{kind}:");
        with_io!(self, io => io.of(ns).map(|ops| {
            ops.sockets()
                .iter()
                .flat_map(|socket| socket.rooms())
                .filter_map(|room| room.strip_prefix(prefix.as_str()).and_then(|id| id.parse().ok()))
                .collect()
        }).unwrap_or_default(), _ => Default::default())
    }

    /// Emits `event` to the sockets of `ns` in `room` on this node only (each node serves its
    /// own sockets, so a cluster pushes once per socket).
    pub async fn emit_local(
        &self,
        ns: &'static str,
        room: String,
        event: &str,
        data: &impl Serialize,
    ) {
        let result = with_io!(self, io => match io.of(ns) {
            Some(ops) => checked(ns, event, ops.local().to(room).emit(event, data).await),
            None => Ok(()),
        }, _ => Ok(()));
        if let Err(err) = result {
            tracing::warn!(event, %err, "push failed");
        }
    }

    /// Emits `event` to every socket of `ns` on this node.
    pub async fn emit_local_all(&self, ns: &'static str, event: &str, data: &impl Serialize) {
        let result = with_io!(self, io => match io.of(ns) {
            Some(ops) => checked(ns, event, ops.local().emit(event, data).await),
            None => Ok(()),
        }, _ => Ok(()));
        if let Err(err) = result {
            tracing::warn!(event, %err, "push failed");
        }
    }

    /// Sockets connected to this node, per namespace (for operators).
    pub fn local_sockets(&self, ns: &'static str) -> usize {
        with_io!(self, io => io.of(ns).map_or(0, |ops| ops.sockets().len()), _ => 0)
    }
}

/// An interval for a node's periodic pass; a late tick delays the next ones (no burst).
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; `false` once `shutdown` is cancelled.
async fn next_tick(
    tick: &mut tokio::time::Interval,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        _ = tick.tick() => true,
    }
}

/// Vouches every `period` for the agents with a socket on this node (`agents.last_seen_at`), so
/// that a presence job does not take offline an agent still connected elsewhere, and the
/// reconciler can tell a node that died with its sockets (its agents fall silent); and for the
/// visitors with a socket here (`visitors.last_seen_at`), so a waiting chat whose visitor is still
/// on the page is not closed as abandoned. Sockets whose
/// token expired are disconnected on the way. Runs until `shutdown`.
pub async fn heartbeat(
    push: Push,
    db: sea_orm::DatabaseConnection,
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use crate::auth::visitor::SEEN_EVERY;
    use chrono::SubsecRound;
    use entity::agents as rows;
    use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, sea_query::Expr};

    let mut tick = ticker(period);
    while next_tick(&mut tick, &shutdown).await {
        // Taken before the sockets are listed: a socket that leaves after the listing has its
        // drop recorded later than this.
        let at = chrono::Utc::now().trunc_subsecs(6);
        let ids = with_io!(&push, io => agents::vouch(io), _ => Vec::new());
        let visitor_ids = with_io!(&push, io => visitors::vouch(io), _ => Vec::new());
        for chunk in visitor_ids.chunks(500) {
            // Only what the timer reads: visitors whose chat waits, and not seen for a while
            // (one row write per waiting visitor every `SEEN_EVERY`, not one per heartbeat).
            let stale = at - chrono::Duration::from_std(SEEN_EVERY).unwrap_or_default();
            let waiting = sea_orm::sea_query::Query::select()
                .column(entity::conversations::Column::VisitorId)
                .from(entity::conversations::Entity)
                .and_where(entity::conversations::Column::VisitorId.is_in(chunk.iter().copied()))
                .and_where(
                    entity::conversations::Column::Status
                        .eq(entity::enums::ConversationStatus::Pending),
                )
                .to_owned();
            let vouched = entity::visitors::Entity::update_many()
                .col_expr(entity::visitors::Column::LastSeenAt, Expr::value(at))
                .filter(entity::visitors::Column::Id.is_in(chunk.iter().copied()))
                .filter(entity::visitors::Column::LastSeenAt.lt(stale))
                .filter(entity::visitors::Column::Id.in_subquery(waiting))
                .exec(&db)
                .await;
            if let Err(err) = vouched {
                tracing::warn!(%err, "visitor presence heartbeat failed");
            }
        }
        for chunk in ids.chunks(500) {
            let vouched = rows::Entity::update_many()
                .col_expr(rows::Column::LastSeenAt, Expr::value(at))
                .filter(rows::Column::Id.is_in(chunk.iter().copied()))
                .filter(
                    Condition::any()
                        .add(rows::Column::LastSeenAt.is_null())
                        .add(rows::Column::LastSeenAt.lt(at)),
                )
                .exec(&db)
                .await;
            if let Err(err) = vouched {
                tracing::warn!(%err, "presence heartbeat failed");
            }
        }
    }
}

/// Pushes `stats:update` (the numbers of `GET /v1/stats`) every `period` to the account rooms
/// that supervisors on this node are in. Runs until `shutdown`.
pub async fn push_stats(
    push: Push,
    db: sea_orm::DatabaseConnection,
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = ticker(period);
    while next_tick(&mut tick, &shutdown).await {
        for account_id in push.local_rooms_of(AGENTS, "account") {
            match crate::http::stats::account_stats(&db, account_id).await {
                Ok(stats) => {
                    push.emit_local(AGENTS, room::account(account_id), "stats:update", &stats)
                        .await;
                }
                Err(err) => tracing::warn!(account_id, %err, "stats not computed"),
            }
        }
    }
}

/// What sockets hear when pushes may have been lost: they re-read their state with `sync`.
pub const SYNC_REQUIRED: &str = "sync:required";
/// Over how long clients told `sync:required` should spread their `sync` requests.
const SYNC_SPREAD_MS: u64 = 1_000;

/// Tells every socket of this node `sync:required` when some process announces that pushes may
/// have been lost (its Redis link came back, see `redis_link`). Announcements that arrive together
/// (every process recovers from the same outage) make one.
async fn tell_to_resync(
    push: Push,
    mut announcements: tokio::sync::mpsc::Receiver<socketioxide_redis::drivers::ChanItem>,
) {
    while announcements.recv().await.is_some() {
        // After an outage every process announces its own recovery within a second or so.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while announcements.try_recv().is_ok() {}
        // Every client asks at once otherwise: they spread their `sync` over `withinMs`.
        let told = json!({ "reason": "pushes_may_have_been_lost", "withinMs": SYNC_SPREAD_MS });
        for ns in [AGENTS, VISITORS] {
            push.emit_local_all(ns, SYNC_REQUIRED, &told).await;
        }
        tracing::info!(
            agents = push.local_sockets(AGENTS),
            visitors = push.local_sockets(VISITORS),
            "told this node's sockets to resync"
        );
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
        Ok(match (self.layer, &self.push) {
            (Some(Layer::Local(layer)), Push::Local(io)) => {
                register(io, state);
                router.layer(layer)
            }
            (Some(Layer::Cluster(layer)), Push::Cluster(io)) => {
                let (agents, visitors) = register(io, state);
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
    state: &AppState,
) -> (A::InitRes, A::InitRes) {
    (
        agents::register(io, state.clone()),
        visitors::register(io, state.clone()),
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

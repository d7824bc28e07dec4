//! Redis for the Socket.IO layer: one connection per process that comes back by itself, and the
//! cluster-wide resync signal that follows an outage.
//!
//! socketioxide-redis 0.4's own redis-rs driver holds one multiplexed connection and never
//! reconnects or resubscribes: after a Redis restart a node silently stops hearing the others.
//! [`Link`] is our driver instead: a redis-rs `ConnectionManager` (it reconnects, and re-issues
//! every subscription on the new connection), watched by a task that pings it every second, so a
//! lost connection is noticed even when nothing is published, and logged once when it goes and
//! once when it is back.
//!
//! Pushes published while the connection was down are gone. So whenever a process's link comes
//! back (an API node's adapter or a worker's emitter), or a publish of its failed, it publishes
//! one message on `{prefix}:resync`; every API node hears it and tells its own sockets
//! `sync:required`, and clients re-read their state with `sync`. A node whose own subscription
//! was down at that moment hears its own recovery message instead, which comes later.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    AsyncCommands, FromRedisValue, PushInfo, PushKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{Notify, mpsc};

/// How often the link is checked while nothing else uses it, and this process says it is alive.
const PING_PERIOD: Duration = Duration::from_secs(1);
/// A process silent this long died (killed, or cut off): the pushes it was about to send are
/// lost, so clients are told to resync.
const SILENT: Duration = Duration::from_secs(5);
/// A command that takes longer than this counts as a lost connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed pings in a row after which the connection is replaced: a connection that times out
/// (a failover to another address, a path that drops packets) is not one redis-rs reconnects.
const REBUILD_AFTER: u32 = 3;

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// A shared, self-healing Redis connection for publishing and subscribing.
#[derive(Clone)]
pub struct Link {
    /// The current connection; replaced when it stops answering (see [`watch`]).
    conn: Arc<RwLock<ConnectionManager>>,
    client: redis::Client,
    handlers: Arc<RwLock<Handlers>>,
    health: Arc<Health>,
}

struct Health {
    /// What this process last knew of the connection.
    up: AtomicBool,
    /// Something failed: the watcher should check now rather than at its next tick.
    suspect: Notify,
    /// The channel recoveries are announced on.
    resync_channel: String,
    /// The sorted set where every process with a link says it is alive (score: Unix ms).
    nodes_key: String,
    /// This process in that set.
    node: String,
}

/// The driver's error: a redis-rs error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LinkError(#[from] redis::RedisError);

/// The channel on which a process announces that pushes it sent may have been lost.
pub fn resync_channel(prefix: &str) -> String {
    format!("{prefix}:resync")
}

impl Link {
    /// Connects to `url` (RESP3, which subscriptions need: see `resp3`), and starts the watcher.
    /// `prefix` is the Socket.IO channels' prefix.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let handlers: Arc<RwLock<Handlers>> = Arc::default();
        let health = Arc::new(Health {
            up: AtomicBool::new(true),
            suspect: Notify::new(),
            resync_channel: resync_channel(prefix),
            nodes_key: format!("{prefix}:nodes"),
            node: format!("{}-{}", std::process::id(), ulid::Ulid::new()),
        });
        let client = redis::Client::open(url)?;
        let conn = manager(&client, &handlers, &health)?;
        let link = Self {
            conn: Arc::new(RwLock::new(conn)),
            client,
            handlers,
            health,
        };
        // Connected now, so a wrong URL or an unreachable Redis stops the start.
        redis::cmd("PING")
            .query_async::<String>(&mut link.conn())
            .await?;
        tokio::spawn(watch(link.clone()));
        Ok(link)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes this process out of the set of live ones (a clean stop is not a silent death).
    pub async fn leave(&self) {
        let left = self
            .conn()
            .zrem::<_, _, i64>(self.health.nodes_key.as_str(), self.health.node.as_str())
            .await;
        if let Err(err) = left {
            tracing::debug!(%err, "could not leave the set of live processes");
        }
    }

    /// Hands every message of the resync channel to `tx` (an API node's sockets are told).
    pub async fn on_resync(&self, tx: mpsc::Sender<ChanItem>) -> Result<(), LinkError> {
        let channel = self.health.resync_channel.clone();
        self.listen(channel, tx).await
    }

    /// Publishes `payload` on `channel`; a failure marks the link suspect, so its recovery is
    /// announced.
    pub async fn publish(&self, channel: String, payload: Vec<u8>) -> Result<(), LinkError> {
        let published = self
            .conn()
            .publish::<_, _, redis::Value>(channel, payload)
            .await;
        if let Err(err) = &published {
            self.suspect(err);
        }
        published.map(drop).map_err(LinkError)
    }

    async fn listen(&self, channel: String, tx: mpsc::Sender<ChanItem>) -> Result<(), LinkError> {
        self.handlers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(channel.clone(), tx);
        // Recorded first: should this fail, the watcher subscribes it when the link is back.
        let subscribed = self.conn().subscribe(channel).await;
        if let Err(err) = &subscribed {
            self.suspect(err);
        }
        subscribed.map_err(LinkError)
    }

    fn suspect(&self, err: &redis::RedisError) {
        if self.health.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(%err, "Redis connection lost: pushes between nodes pause until it is back");
        }
        self.health.suspect.notify_one();
    }
}

/// A connection manager on `client` whose pushes go to `handlers` (messages) and `health` (a
/// dropped connection). Lazy: it connects on first use.
fn manager(
    client: &redis::Client,
    handlers: &Arc<RwLock<Handlers>>,
    health: &Arc<Health>,
) -> redis::RedisResult<ConnectionManager> {
    let pushes = {
        let (handlers, health) = (handlers.clone(), health.clone());
        move |push: PushInfo| {
            deliver(&handlers, &health, push);
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let config = ConnectionManagerConfig::new()
        .set_push_sender(pushes)
        .set_automatic_resubscription()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        // Each attempt is retried by the watcher's next ping; a long retry chain inside the
        // manager would only delay noticing that Redis is back.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// Routes one push from Redis: a message to its channel's handler; a dropped connection marks the
/// link down.
fn deliver(handlers: &RwLock<Handlers>, health: &Health, push: PushInfo) {
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut data = push.data.into_iter();
            let (Some(channel), Some(message)) = (data.next(), data.next()) else {
                return;
            };
            let (Ok(channel), Ok(message)) = (
                String::from_redis_value(channel),
                Vec::<u8>::from_redis_value(message),
            ) else {
                tracing::warn!("unreadable Redis pub/sub message ignored");
                return;
            };
            let handlers = handlers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(tx) = handlers.get(&channel)
                && let Err(err) = tx.try_send((channel, message))
            {
                tracing::warn!(%err, "a Socket.IO adapter channel is full; a message was dropped");
            }
        }
        PushKind::Disconnection => {
            if health.up.swap(false, Ordering::SeqCst) {
                tracing::warn!(
                    "Redis connection lost: pushes between nodes pause until it is back"
                );
            }
            health.suspect.notify_one();
        }
        _ => {}
    }
}

/// Pings the link every [`PING_PERIOD`] (at once when something failed): a ping through the
/// manager reconnects it; [`REBUILD_AFTER`] failures in a row replace it. The first ping that
/// succeeds after a loss re-subscribes every channel (the manager's own resubscription only
/// knows what the server confirmed, and ignores its failures), then is logged and announced.
/// While the link is up it also says this process is alive and mourns silent ones. Runs for as
/// long as the process.
async fn watch(link: Link) {
    let mut lost_at: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(PING_PERIOD) => {}
            () = link.health.suspect.notified() => {
                // Let a burst of failures settle, and the manager start its reconnect.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let pinged = redis::cmd("PING")
            .query_async::<String>(&mut link.conn())
            .await;
        let down = !link.health.up.load(Ordering::SeqCst) || lost_at.is_some();
        let step = match pinged {
            Err(err) => Err(err),
            Ok(_) if down => recovered(&link).await,
            Ok(_) => mourn(&link).await.or_else(|err| {
                tracing::debug!(%err, "could not check on the other processes");
                Ok(())
            }),
        };
        match step {
            Ok(()) => {
                failures = 0;
                let lost_for = lost_at.take().map(|at| at.elapsed().as_millis() as u64);
                link.health.up.store(true, Ordering::SeqCst);
                if down {
                    tracing::info!(
                        down_ms = lost_for,
                        "Redis connection restored: subscriptions renewed, clients told to resync"
                    );
                }
            }
            Err(err) => {
                if link.health.up.swap(false, Ordering::SeqCst) {
                    tracing::warn!(%err, "Redis connection lost: pushes between nodes pause until it is back");
                }
                lost_at.get_or_insert_with(Instant::now);
                failures += 1;
                if failures >= REBUILD_AFTER {
                    failures = 0;
                    match manager(&link.client, &link.handlers, &link.health) {
                        Ok(fresh) => {
                            *link
                                .conn
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                            tracing::debug!("replaced the Redis connection");
                        }
                        Err(err) => tracing::debug!(%err, "could not build a Redis connection"),
                    }
                }
            }
        }
    }
}

/// The link answers again: subscribe every channel (again), then announce the resync.
async fn recovered(link: &Link) -> redis::RedisResult<()> {
    let channels: Vec<String> = link
        .handlers
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    let mut conn = link.conn();
    for channel in channels {
        conn.subscribe(channel).await?;
    }
    conn.publish::<_, _, i64>(
        link.health.resync_channel.as_str(),
        link.health.node.as_str(),
    )
    .await?;
    Ok(())
}

/// Says this process is alive, takes out the processes silent for [`SILENT`] (by Redis's clock,
/// so hosts' clocks need not agree; in one script, so of several processes noticing the same
/// death one removes it) and announces a resync for each: it may have died between committing a
/// change and pushing it.
async fn mourn(link: &Link) -> redis::RedisResult<()> {
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
            local time = redis.call('TIME')
            local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
            redis.call('ZADD', KEYS[1], now, ARGV[1])
            local silent = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
            for _, node in ipairs(silent) do
                redis.call('ZREM', KEYS[1], node)
            end
            return silent
            ",
        )
    });
    let mut conn = link.conn();
    let silent: Vec<String> = SCRIPT
        .key(link.health.nodes_key.as_str())
        .arg(link.health.node.as_str())
        .arg(u64::try_from(SILENT.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut conn)
        .await?;
    for node in silent {
        tracing::warn!(node, "a process fell silent; clients told to resync");
        conn.publish::<_, _, i64>(link.health.resync_channel.as_str(), node.as_str())
            .await?;
    }
    Ok(())
}

impl Driver for Link {
    type Error = LinkError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        Link::publish(self, chan, val).await
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.listen(chan, tx).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&chan);
        self.conn().unsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn())
            .await?;
        Ok(count)
    }
}

/// The worker processes' socketioxide-emitter driver rides on the same link.
impl socketioxide_emitter::Driver for Link {
    type Error = LinkError;

    async fn emit(&self, channel: String, data: Vec<u8>) -> Result<(), Self::Error> {
        self.publish(channel, data).await
    }
}

//! What carries pushes out of this process: the node's own `SocketIo` (local or Redis-adapted
//! rooms) or, on a worker-only process, the socketioxide emitter.

use std::{sync::Arc, time::Duration};

use serde::Serialize;
use socketioxide::{
    SocketIo,
    adapter::{Emitter, LocalAdapter},
};

use super::{AGENTS, Link, RedisAdapter, VISITORS};

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
pub(super) use with_io;

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

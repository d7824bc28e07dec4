//! What both namespaces share: the acknowledgement shape, payload parsing, the per-socket rate
//! limit, and one way to register a request handler.

use std::{future::Future, num::NonZeroU32, sync::Arc};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use socketioxide::{
    ParserError,
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, TryData},
};

use crate::error::ApiError;

/// A token bucket per socket: `per_second` events, bursts of twice that.
pub type Limiter = Arc<DefaultDirectRateLimiter>;

/// A fresh limiter for one socket.
pub fn limiter(per_second: u32) -> Limiter {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Arc::new(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// What a socket carries once its handshake passed.
pub trait Session: Clone + Send + Sync + 'static {
    /// The socket's event budget.
    fn limiter(&self) -> &Limiter;
}

/// The payload of a request that takes none: `{}` (or nothing).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

/// The request's payload as `B`. No payload (or `null`) reads as `{}`, so requests whose fields
/// are all optional may be sent bare; anything else must match exactly (unknown fields are
/// refused), and a payload that cannot be decoded runs nothing.
pub fn parse<B: DeserializeOwned>(data: Result<Value, ParserError>) -> Result<B, ApiError> {
    let value = match data {
        Ok(Value::Null) => json!({}),
        Ok(value) => value,
        Err(err) => return Err(ApiError::BadRequest(format!("undecodable payload: {err}"))),
    };
    serde_json::from_value(value)
        .map_err(|err| ApiError::Unprocessable(format!("invalid payload: {err}")))
}

/// The acknowledgement: `{ok: true, data}` or `{ok: false, error: {code, message}}`.
pub fn answer<A: Adapter, T: Serialize>(
    ns: &str,
    event: &str,
    ack: AckSender<A>,
    result: Result<T, ApiError>,
) {
    let body = match result {
        Ok(data) => json!({ "ok": true, "data": data }),
        Err(err) => {
            if err.is_internal() {
                tracing::error!(event, error = %format!("{err:#}"), "socket request failed");
            }
            json!({ "ok": false, "error": err.payload() })
        }
    };
    if let Err(err) = super::checked(ns, event, ack.send(&body)) {
        tracing::debug!(event, %err, "acknowledgement not sent");
    }
}

/// Registers request `event`: rate limit, payload as `B`, then `handle`, answered by an
/// acknowledgement. A socket without a session `S` (cannot happen after the handshake) or over
/// its budget is answered with an error and nothing runs.
pub fn on<A, S, B, T, F, Fut>(socket: &SocketRef<A>, event: &'static str, handle: F)
where
    A: Adapter,
    S: Session,
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(SocketRef<A>, S, B) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    socket.on(
        event,
        move |socket: SocketRef<A>, TryData(data): TryData<Value>, ack: AckSender<A>| {
            let handle = handle.clone();
            async move {
                let result = match admit::<A, S>(&socket) {
                    Ok(session) => match parse::<B>(data) {
                        Ok(body) => handle(socket.clone(), session, body).await,
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                };
                let revoked = matches!(result, Err(ApiError::Unauthorized(_)));
                answer(socket.ns(), event, ack, result);
                if revoked {
                    // The agent was deleted or its tokens revoked since the handshake.
                    let _ = socket.disconnect();
                }
            }
        },
    );
}

/// The socket's session if it is within its event budget.
fn admit<A: Adapter, S: Session>(socket: &SocketRef<A>) -> Result<S, ApiError> {
    let session = socket
        .extensions
        .get::<S>()
        .ok_or(ApiError::Unauthorized("not authenticated"))?;
    session
        .limiter()
        .check()
        .map_err(|_| ApiError::TooManyRequests(1))?;
    Ok(session)
}

/// Answers events nobody handles with an error (and counts them against the budget).
pub fn on_unknown<A: Adapter, S: Session>(socket: &SocketRef<A>) {
    socket.on_fallback(
        |socket: SocketRef<A>, Event(event): Event, ack: AckSender<A>| async move {
            let result: Result<(), ApiError> = admit::<A, S>(&socket)
                .and_then(|_| Err(ApiError::BadRequest(format!("unknown event `{event}`"))));
            answer(socket.ns(), &event, ack, result);
        },
    );
}

/// Why a handshake was refused; the client's `connect_error` carries this text as `message`.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ApiError> for Refused {
    fn from(err: ApiError) -> Self {
        if err.is_internal() {
            tracing::error!(error = %format!("{err:#}"), "socket handshake failed");
        }
        let message = err.payload()["message"]
            .as_str()
            .unwrap_or("refused")
            .to_owned();
        Self(message)
    }
}

/// The string field `key` of a handshake's `auth` object.
pub fn auth_field(auth: Result<Value, ParserError>, key: &str) -> Option<String> {
    auth.ok()?
        .get(key)?
        .as_str()
        .filter(|value| !value.is_empty() && value.len() <= 4096)
        .map(str::to_owned)
}

/// This node's sockets per owner (a visitor session or an agent), each owner with a cap: every
/// socket is a task, buffers and a share of every push to its rooms.
#[derive(Clone, Default)]
pub struct Slots(Arc<std::sync::Mutex<std::collections::HashMap<Owner, usize>>>);

/// Whose sockets are counted: a namespace and the visitor's or agent's id.
type Owner = (&'static str, i64);

/// One socket's place among its owner's; given back when the last clone is dropped (with the
/// socket's extensions, or at its disconnect).
#[derive(Clone)]
pub struct Slot {
    _held: Arc<Held>,
}

struct Held {
    slots: Slots,
    owner: Owner,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.owner) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slots")
    }
}

impl Slots {
    /// A place for one more socket of `id` in `ns`, unless it already has `cap` on this node.
    pub fn take(&self, ns: &'static str, id: i64, cap: usize) -> Result<Slot, Refused> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry((ns, id)).or_default();
        if *count >= cap.max(1) {
            return Err(Refused(format!(
                "too many sockets: at most {} per {} on this server; close another tab first",
                cap.max(1),
                if ns == super::AGENTS {
                    "agent"
                } else {
                    "visitor session"
                }
            )));
        }
        *count += 1;
        Ok(Slot {
            _held: Arc::new(Held {
                slots: self.clone(),
                owner: (ns, id),
            }),
        })
    }
}

/// Takes a place for `socket` among the sockets of `id` in `ns` (refused past `cap`); it is given
/// back when the socket disconnects.
pub fn occupy<A: Adapter>(
    node: &super::Node,
    socket: &SocketRef<A>,
    ns: &'static str,
    id: i64,
    cap: usize,
) -> Result<(), Refused> {
    let slot = node.slots.take(ns, id, cap)?;
    socket.extensions.insert(slot);
    Ok(())
}

/// Gives back the place of a socket that disconnected (see [`occupy`]).
pub fn vacate<A: Adapter>(socket: &SocketRef<A>) {
    socket.extensions.remove::<Slot>();
}

/// The client's address as the HTTP request that opened the socket carried it (see
/// `client_ip`).
pub fn client_address<A: Adapter>(socket: &SocketRef<A>) -> std::net::IpAddr {
    // Every listener serves with connect info; without it all such sockets share one budget,
    // the strict failure.
    crate::client_ip::ClientIp::of(&socket.req_parts().extensions)
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

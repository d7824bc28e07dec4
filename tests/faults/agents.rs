//! Agents as a real console behaves: one Socket.IO connection each (rust_socketio, reconnecting),
//! online and accepting chats; every chat assigned to it is "heard" (a `conversation:assigned`
//! push, or a `sync` answer after `sync:required` or a reconnection) and closed ~200 ms later,
//! retrying while the server answers `unavailable`. Everything is recorded for the checks.
//!
//! rust_socketio runs event callbacks under a lock of its client (and ack callbacks under the
//! list of pending acks), so callbacks only forward into a channel; a task per agent does the
//! work. Its ack ids are random in 0..999, and an answer whose id two pending requests share
//! panics its reader task (`Vec::remove` past the end, client.rs:432) and kills the socket: so
//! each agent has one request pending at a time, and answers that name a conversation are still
//! checked against the request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use rust_socketio::{
    Event, Payload, TransportType,
    asynchronous::{Client, ClientBuilder},
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::services::Clock;

const ACK_WAIT: Duration = Duration::from_secs(10);
const CLOSE_DELAY: Duration = Duration::from_millis(200);
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Push,
    Sync,
}

#[derive(Debug, Clone)]
pub struct Heard {
    pub at: f64,
    pub via: Via,
}

#[derive(Debug, Default, Clone)]
pub struct CloseState {
    /// (when, outcome) of every attempt.
    pub attempts: Vec<(f64, String)>,
    /// When the server acknowledged it (`{ok: true, data: {accepted: true}}`).
    pub acked_at: Option<f64>,
    /// A refusal that ended the attempts (`forbidden`, `conflict`, ...).
    pub refused: Option<String>,
    pub running: bool,
}

/// What one agent saw and did.
#[derive(Debug, Default)]
pub struct AgentLog {
    pub heard: HashMap<i64, Heard>,
    pub duplicate_pushes: u64,
    pub closes: HashMap<i64, CloseState>,
    /// `conversation:unassigned` pushes for this agent: (when, conversation, reason).
    pub unassigned: Vec<(f64, i64, String)>,
    pub connects: Vec<f64>,
    pub closed_by_server: Vec<f64>,
    pub errors: Vec<(f64, String)>,
    pub sync_required: Vec<(f64, Value)>,
    pub syncs_ok: u32,
    /// `sync` answered `bad_request` (the server does not know the event yet).
    pub sync_unknown: u32,
    pub sync_failures: Vec<(f64, String)>,
    /// Acknowledgements with `error.code = "internal"` (the socket's 500): (when, event, ack).
    pub internal: Vec<(f64, String, String)>,
    pub status_set_failures: Vec<(f64, String)>,
    /// Every request: (event, seconds waiting for its turn, seconds until answered or given up).
    pub requests: Vec<(&'static str, f64, f64)>,
}

enum Inbound {
    Connected,
    ClosedByServer,
    Error(String),
    Push(String, Value),
}

struct Inner {
    id: i64,
    client: Client,
    /// One request pending at a time (see the module's comment).
    one_at_a_time: tokio::sync::Mutex<()>,
    log: Mutex<AgentLog>,
    clock: Clock,
    stop: CancellationToken,
}

pub struct Agent {
    pub id: i64,
    inner: Arc<Inner>,
}

fn first(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut values) if !values.is_empty() => values.swap_remove(0),
        Payload::Text(_) | Payload::Binary(_) => Value::Null,
        #[allow(deprecated)]
        Payload::String(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Sends request `event` and waits for its acknowledgement.
async fn request(me: &Inner, event: &'static str, payload: Value) -> Result<Value, String> {
    let asked = std::time::Instant::now();
    let _turn = me.one_at_a_time.lock().await;
    let turn = asked.elapsed().as_secs_f64();
    let answer = request_now(me, event, payload).await;
    let took = asked.elapsed().as_secs_f64() - turn;
    me.log
        .lock()
        .expect("not poisoned")
        .requests
        .push((event, turn, took));
    answer
}

async fn request_now(me: &Inner, event: &str, payload: Value) -> Result<Value, String> {
    let client = &me.client;
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    client
        .emit_with_ack(event, payload, ACK_WAIT, move |payload, _| {
            let ack = match first(payload) {
                Value::Array(mut args) if !args.is_empty() => args.swap_remove(0),
                other => other,
            };
            if let Some(tx) = tx.lock().ok().and_then(|mut tx| tx.take()) {
                let _ = tx.send(ack);
            }
            async {}.boxed()
        })
        .await
        .map_err(|err| format!("not sent: {err}"))?;
    match tokio::time::timeout(ACK_WAIT, rx).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(_)) => Err("the ack was dropped".into()),
        Err(_) => Err(format!("no ack within {} s", ACK_WAIT.as_secs())),
    }
}

fn code(ack: &Value) -> &str {
    ack["error"]["code"].as_str().unwrap_or("?")
}

impl Agent {
    /// Connects agent `id` to `/agents` of `api`, sets it online and accepting, and returns once
    /// that is acknowledged.
    pub async fn connect(
        api: &str,
        id: i64,
        token: &str,
        clock: Clock,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        let (tx, inbox) = mpsc::unbounded_channel::<Inbound>();
        let (on_connect, on_close, on_error, on_any) = (tx.clone(), tx.clone(), tx.clone(), tx);
        let client = ClientBuilder::new(format!("{api}/"))
            .namespace("/agents")
            .auth(json!({ "token": token }))
            .transport_type(TransportType::Websocket)
            .reconnect(true)
            .reconnect_on_disconnect(true)
            .reconnect_delay(200, 1000)
            .on(Event::Connect, move |_, _| {
                let _ = on_connect.send(Inbound::Connected);
                async {}.boxed()
            })
            .on(Event::Close, move |_, _| {
                let _ = on_close.send(Inbound::ClosedByServer);
                async {}.boxed()
            })
            .on(Event::Error, move |payload, _| {
                let _ = on_error.send(Inbound::Error(first(payload).to_string()));
                async {}.boxed()
            })
            .on_any(move |event, payload, _| {
                if let Event::Custom(name) = event {
                    let _ = on_any.send(Inbound::Push(name, first(payload)));
                }
                async {}.boxed()
            })
            .connect()
            .await
            .map_err(|err| format!("agent {id}: connecting: {err}"))?;
        let inner = Arc::new(Inner {
            id,
            client,
            one_at_a_time: tokio::sync::Mutex::new(()),
            log: Mutex::new(AgentLog::default()),
            clock,
            stop,
        });
        let (ready, is_ready) = oneshot::channel();
        tokio::spawn(run(inner.clone(), inbox, ready));
        match tokio::time::timeout(Duration::from_secs(30), is_ready).await {
            Ok(Ok(Ok(()))) => Ok(Self { id, inner }),
            Ok(Ok(Err(err))) => Err(format!("agent {id}: {err}")),
            _ => Err(format!("agent {id}: not online within 30 s")),
        }
    }

    /// What it saw and did so far.
    pub fn log(&self) -> std::sync::MutexGuard<'_, AgentLog> {
        self.inner.log.lock().expect("not poisoned")
    }

    /// Closes still being retried.
    pub fn closes_running(&self) -> usize {
        self.log().closes.values().filter(|c| c.running).count()
    }

    pub async fn disconnect(&self) {
        let _ = self.inner.client.disconnect().await;
    }
}

async fn run(
    me: Arc<Inner>,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    loop {
        let message = tokio::select! {
            message = inbox.recv() => message,
            () = me.stop.cancelled() => None,
        };
        let Some(message) = message else { return };
        let now = me.clock.now();
        match message {
            Inbound::Connected => {
                me.log.lock().expect("not poisoned").connects.push(now);
                tokio::spawn(connected(me.clone(), ready.take()));
            }
            Inbound::ClosedByServer => me
                .log
                .lock()
                .expect("not poisoned")
                .closed_by_server
                .push(now),
            Inbound::Error(text) => {
                let mut log = me.log.lock().expect("not poisoned");
                if log.errors.len() < 50 {
                    log.errors.push((now, text));
                }
            }
            Inbound::Push(name, payload) => match name.as_str() {
                "conversation:assigned" if payload["agentId"].as_i64() == Some(me.id) => {
                    if let Some(conversation) = payload["conversationId"].as_i64() {
                        heard(&me, conversation, Via::Push);
                    }
                }
                "conversation:unassigned" if payload["agentId"].as_i64() == Some(me.id) => {
                    if let Some(conversation) = payload["conversationId"].as_i64() {
                        let reason = payload["reason"].as_str().unwrap_or("?").to_owned();
                        me.log.lock().expect("not poisoned").unassigned.push((
                            now,
                            conversation,
                            reason,
                        ));
                    }
                }
                "sync:required" => {
                    me.log
                        .lock()
                        .expect("not poisoned")
                        .sync_required
                        .push((now, payload));
                    tokio::spawn(sync(me.clone()));
                }
                _ => {}
            },
        }
    }
}

/// A chat this agent now knows it holds: recorded once, and closed.
fn heard(me: &Arc<Inner>, conversation: i64, via: Via) {
    let at = me.clock.now();
    let mut log = me.log.lock().expect("not poisoned");
    match log.heard.entry(conversation) {
        std::collections::hash_map::Entry::Occupied(_) => {
            if via == Via::Push {
                log.duplicate_pushes += 1;
            }
        }
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert(Heard { at, via });
        }
    }
    let close = log.closes.entry(conversation).or_default();
    if close.running || close.acked_at.is_some() {
        return;
    }
    close.running = true;
    close.refused = None;
    drop(log);
    tokio::spawn(close_conversation(me.clone(), conversation));
}

/// On every (re)connection: online and accepting (retried until acknowledged), then `sync`.
async fn connected(me: Arc<Inner>, ready: Option<oneshot::Sender<Result<(), String>>>) {
    let mut last = String::new();
    let mut online = false;
    for _ in 0..20 {
        if me.stop.is_cancelled() {
            return;
        }
        let body = json!({ "status": "online", "acceptingChats": true });
        match request(&me, "status:set", body).await {
            Ok(ack) if ack["ok"] == true && ack["data"]["id"].as_i64() == Some(me.id) => {
                online = true;
                break;
            }
            Ok(ack) => {
                if code(&ack) == "internal" {
                    internal(&me, "status:set", &ack);
                }
                last = ack.to_string();
            }
            Err(err) => last = err,
        }
        me.log
            .lock()
            .expect("not poisoned")
            .status_set_failures
            .push((me.clock.now(), last.clone()));
        tokio::time::sleep(RETRY_DELAY).await;
    }
    if let Some(ready) = ready {
        let _ = ready.send(if online {
            Ok(())
        } else {
            Err(format!("status:set never succeeded: {last}"))
        });
    }
    sync(me).await;
}

fn internal(me: &Inner, event: &str, ack: &Value) {
    me.log.lock().expect("not poisoned").internal.push((
        me.clock.now(),
        event.to_owned(),
        ack.to_string(),
    ));
}

/// `sync`: the chats this agent holds; each active one is heard (if not yet) and closed.
async fn sync(me: Arc<Inner>) {
    for _ in 0..10 {
        if me.stop.is_cancelled() {
            return;
        }
        let outcome = request(&me, "sync", json!({})).await;
        let now = me.clock.now();
        let failure = match outcome {
            Ok(ack) if ack["ok"] == true => {
                let data = &ack["data"];
                let mine = data["agent"]["id"].as_i64().is_none_or(|id| id == me.id);
                match data["conversations"].as_array() {
                    Some(list) if mine => {
                        me.log.lock().expect("not poisoned").syncs_ok += 1;
                        for c in list {
                            let holder = c["assignedAgentId"].as_i64();
                            if c["status"] == "active"
                                && holder.is_none_or(|h| h == me.id)
                                && let Some(id) = c["id"].as_i64()
                            {
                                heard(&me, id, Via::Sync);
                            }
                        }
                        return;
                    }
                    _ => format!("unexpected sync answer: {ack}"),
                }
            }
            Ok(ack) if code(&ack) == "bad_request" => {
                // The server does not handle `sync` (yet): nothing to retry.
                me.log.lock().expect("not poisoned").sync_unknown += 1;
                return;
            }
            Ok(ack) => {
                if code(&ack) == "internal" {
                    internal(&me, "sync", &ack);
                }
                ack.to_string()
            }
            Err(err) => err,
        };
        me.log
            .lock()
            .expect("not poisoned")
            .sync_failures
            .push((now, failure));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

enum Outcome {
    Acked,
    Retry(String),
    Refused(String),
}

/// Closes `conversation` after [`CLOSE_DELAY`], retrying what may succeed later.
async fn close_conversation(me: Arc<Inner>, conversation: i64) {
    tokio::time::sleep(CLOSE_DELAY).await;
    loop {
        if me.stop.is_cancelled() {
            break;
        }
        let at = me.clock.now();
        let body = json!({ "conversationId": conversation });
        let outcome = match request(&me, "conversation:close", body).await {
            Ok(ack) if ack["ok"] == true => {
                let data = &ack["data"];
                if data["conversationId"].as_i64() != Some(conversation) {
                    Outcome::Retry(format!(
                        "the answer of another request (ack id clash): {ack}"
                    ))
                } else if data["accepted"] == true {
                    Outcome::Acked
                } else {
                    Outcome::Refused(format!("not accepted: {ack}"))
                }
            }
            Ok(ack) => match code(&ack) {
                "unavailable" | "rate_limited" => Outcome::Retry(code(&ack).to_owned()),
                "internal" => {
                    internal(&me, "conversation:close", &ack);
                    Outcome::Retry("internal".into())
                }
                other => Outcome::Refused(format!(
                    "{other}: {}",
                    ack["error"]["message"].as_str().unwrap_or("")
                )),
            },
            Err(err) => Outcome::Retry(err),
        };
        let done = me.clock.now();
        let finished = {
            let mut log = me.log.lock().expect("not poisoned");
            let state = log.closes.entry(conversation).or_default();
            match outcome {
                Outcome::Acked => {
                    state.attempts.push((at, "acked".into()));
                    state.acked_at = Some(done);
                    true
                }
                Outcome::Refused(why) => {
                    state.attempts.push((at, why.clone()));
                    state.refused = Some(why);
                    true
                }
                Outcome::Retry(why) => {
                    state.attempts.push((at, why));
                    false
                }
            }
        };
        if finished {
            break;
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
    if let Some(state) = me
        .log
        .lock()
        .expect("not poisoned")
        .closes
        .get_mut(&conversation)
    {
        state.running = false;
    }
}

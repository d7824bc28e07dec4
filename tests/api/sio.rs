//! A Socket.IO client for tests (rust_socketio, over WebSocket): connect with a handshake
//! `auth`, send requests and read their acknowledgements, and wait for pushed events.

use std::{
    collections::VecDeque,
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

/// How long a test waits for an event that must come.
pub const WAIT: Duration = Duration::from_secs(10);

/// What a socket heard and answered, in order: pushes as (event, payload), requests as
/// (event, payload sent, acknowledgement).
#[derive(Debug, Default)]
pub struct Heard {
    pub pushes: Vec<(String, Value)>,
    pub requests: Vec<(String, Value, Value)>,
}

/// One connected socket.
pub struct Sio {
    client: Client,
    heard: Arc<Mutex<Heard>>,
    inbox: mpsc::UnboundedReceiver<(String, Value)>,
    /// Events read while waiting for another one.
    seen: VecDeque<(String, Value)>,
}

fn first(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut values) if !values.is_empty() => values.swap_remove(0),
        Payload::Text(_) => Value::Null,
        Payload::Binary(_) => Value::Null,
        #[allow(deprecated)]
        Payload::String(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Connects to namespace `ns` of the server at `address` (`http://host:port`). `Err` carries the
/// server's refusal (its `connect_error` message).
pub async fn connect(address: &str, ns: &str, auth: Value) -> Result<Sio, String> {
    let (events, inbox) = mpsc::unbounded_channel();
    let (answer, answered) = oneshot::channel::<Result<(), String>>();
    let answer = Arc::new(Mutex::new(Some(answer)));
    let on_connect = answer.clone();
    let on_error = answer;
    let closed = events.clone();
    let heard = Arc::new(Mutex::new(Heard::default()));
    let hears = heard.clone();
    let client = ClientBuilder::new(format!("{address}/"))
        .namespace(ns)
        .auth(auth)
        .transport_type(TransportType::Websocket)
        .reconnect(false)
        .on(Event::Connect, move |_, _| {
            if let Some(tx) = on_connect.lock().unwrap().take() {
                let _ = tx.send(Ok(()));
            }
            async {}.boxed()
        })
        .on(Event::Error, move |payload, _| {
            let text = first(payload).to_string();
            if let Some(tx) = on_error.lock().unwrap().take() {
                let _ = tx.send(Err(text));
            }
            async {}.boxed()
        })
        .on(Event::Close, move |_, _| {
            // The server disconnected this socket.
            let _ = closed.send(("disconnect".into(), Value::Null));
            async {}.boxed()
        })
        .on_any(move |event, payload, _| {
            if let Event::Custom(name) = event {
                let payload = first(payload);
                let pushed = (name.clone(), payload.clone());
                hears.lock().unwrap().pushes.push(pushed);
                let _ = events.send((name, payload));
            }
            async {}.boxed()
        })
        .connect()
        .await
        .map_err(|err| err.to_string())?;
    match tokio::time::timeout(WAIT, answered).await {
        Ok(Ok(Ok(()))) => Ok(Sio {
            client,
            heard,
            inbox,
            seen: VecDeque::new(),
        }),
        Ok(Ok(Err(refusal))) => Err(refusal),
        Ok(Err(_)) => Err("the client went away".into()),
        Err(_) => Err("no answer to the handshake".into()),
    }
}

impl Sio {
    /// Sends request `event` and returns its acknowledgement (`{ok, data | error}`).
    pub async fn request(&self, event: &str, payload: Value) -> Value {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let sent = payload.clone();
        self.client
            .emit_with_ack(event, payload, WAIT, move |payload, _| {
                // The acknowledgement's arguments arrive as one array.
                let ack = match first(payload) {
                    Value::Array(mut args) if !args.is_empty() => args.swap_remove(0),
                    other => other,
                };
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(ack);
                }
                async {}.boxed()
            })
            .await
            .expect("the request is sent");
        let ack = tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no acknowledgement of {event}"))
            .expect("an acknowledgement");
        let answered = (event.to_owned(), sent, ack.clone());
        self.heard.lock().unwrap().requests.push(answered);
        ack
    }

    /// Everything this socket heard and answered so far.
    pub fn heard(&self) -> Heard {
        let heard = self.heard.lock().unwrap();
        Heard {
            pushes: heard.pushes.clone(),
            requests: heard.requests.clone(),
        }
    }

    /// A request that must succeed; returns its `data`.
    pub async fn ok(&self, event: &str, payload: Value) -> Value {
        let ack = self.request(event, payload).await;
        assert_eq!(ack["ok"], true, "{event} was refused: {ack}");
        ack["data"].clone()
    }

    /// A request that must fail; returns its `error.code`.
    pub async fn refused(&self, event: &str, payload: Value) -> String {
        let ack = self.request(event, payload).await;
        assert_eq!(ack["ok"], false, "{event} was accepted: {ack}");
        ack["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    /// `status:set`: the agent's presence; returns the agent.
    pub async fn set_status(&self, status: &str) -> Value {
        self.ok("status:set", json!({ "status": status })).await
    }

    /// `message:send`; returns the stored message.
    pub async fn send_message(&self, payload: Value) -> Value {
        self.ok("message:send", payload).await
    }

    /// `message:list`: a page of the conversation's events.
    pub async fn list_messages(&self, payload: Value) -> Value {
        self.ok("message:list", payload).await
    }

    /// `typing:set`.
    pub async fn set_typing(&self, payload: Value) -> Value {
        self.ok("typing:set", payload).await
    }

    /// `conversation:close`.
    pub async fn close_conversation(&self, payload: Value) -> Value {
        self.ok("conversation:close", payload).await
    }

    /// `sync`: what the socket's side holds now.
    pub async fn sync(&self, payload: Value) -> Value {
        self.ok("sync", payload).await
    }

    /// Sends `event` without asking for an acknowledgement.
    pub async fn send(&self, event: &str, payload: Value) {
        self.client.emit(event, payload).await.expect("sent");
    }

    /// The next pushed `event` whose payload satisfies `matches` (other events are kept).
    pub async fn next_where(&mut self, event: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self
            .seen
            .iter()
            .position(|(name, value)| name == event && matches(value))
        {
            return self.seen.remove(index).expect("present").1;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event} arrived; got {:?}", self.seen))
                .expect("the client is alive");
            if got.0 == event && matches(&got.1) {
                return got.1;
            }
            self.seen.push_back(got);
        }
    }

    /// The next pushed `event`.
    pub async fn next(&mut self, event: &str) -> Value {
        self.next_where(event, |_| true).await
    }

    /// Asserts that no `event` arrives within `within`.
    pub async fn none(&mut self, event: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(got)) = tokio::time::timeout_at(deadline, self.inbox.recv()).await {
            self.seen.push_back(got);
        }
        assert!(
            !self.seen.iter().any(|(name, _)| name == event),
            "unexpected {event}: {:?}",
            self.seen
        );
    }

    /// Everything pushed within `within`, with what was read earlier and not yet taken.
    pub async fn drain(&mut self, within: Duration) -> Vec<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(got)) = tokio::time::timeout_at(deadline, self.inbox.recv()).await {
            self.seen.push_back(got);
        }
        self.seen.drain(..).collect()
    }

    /// Closes the socket.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
    }
}

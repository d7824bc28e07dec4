//! A webhook receiver for the fault suite: which conversations each kind was delivered for
//! (delivery is at least once: a second call for the same one is counted once).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::Value;

type Delivered = Arc<Mutex<HashMap<String, BTreeSet<i64>>>>;

/// A receiver on a port of its own; it stops with the test process.
pub struct Hooks {
    pub url: String,
    delivered: Delivered,
}

impl Hooks {
    pub async fn start() -> Self {
        let delivered = Delivered::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(delivered.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the webhook receiver");
        let url = format!(
            "http://{}/hook",
            listener.local_addr().expect("its address")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, delivered }
    }

    /// The conversations a `kind` call was received for.
    pub fn delivered(&self, kind: &str) -> BTreeSet<i64> {
        self.delivered
            .lock()
            .expect("not poisoned")
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }
}

async fn receive(State(delivered): State<Delivered>, Json(body): Json<Value>) -> StatusCode {
    let (Some(kind), Some(id)) = (
        body["kind"].as_str(),
        body["data"]["conversationId"].as_i64(),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    delivered
        .lock()
        .expect("not poisoned")
        .entry(kind.to_owned())
        .or_default()
        .insert(id);
    StatusCode::OK
}

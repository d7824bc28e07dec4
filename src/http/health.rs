//! `GET /health` and `GET /health/ready`: each dependency's status and latency; 503 when one fails.

use std::time::Instant;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::extract::Json;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(health))
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    checks: Map<String, Value>,
}

async fn check<E: std::fmt::Display>(
    checks: &mut Map<String, Value>,
    name: &str,
    probe: impl Future<Output = Result<(), E>>,
) -> bool {
    let started = Instant::now();
    let result = tokio::time::timeout(std::time::Duration::from_secs(3), probe).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let (ok, entry) = match result {
        Ok(Ok(())) => (true, json!({ "status": "ok", "latencyMs": latency_ms })),
        // The cause is for the log, not for anonymous callers.
        Ok(Err(err)) => {
            tracing::warn!(dependency = name, %err, "health check failed");
            (false, json!({ "status": "down", "latencyMs": latency_ms }))
        }
        Err(_) => (
            false,
            json!({ "status": "timeout", "latencyMs": latency_ms }),
        ),
    };
    checks.insert(name.to_owned(), entry);
    ok
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut checks = Map::new();
    let database = check(&mut checks, "database", state.db.ping()).await;
    let jobs = check(&mut checks, "jobStorage", state.jobs.ping()).await;
    if let Some(entry) = checks.get_mut("jobStorage").and_then(Value::as_object_mut) {
        entry.insert("backend".into(), state.jobs.kind().into());
    }
    let healthy = database && jobs;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let health = Health {
        status: if healthy { "ok" } else { "unavailable" },
        checks,
    };
    (status, Json(health))
}

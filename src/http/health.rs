//! `GET /health` (liveness: the process answers) and `GET /health/ready` (readiness: each
//! dependency's status and latency — database, job storage, Redis and SMTP when configured; 503
//! when one fails).
//!
//! `/health/ready` is public: its answer is kept for [`READY_FOR`], and concurrent calls wait for
//! the one check in progress, so a flood of calls costs one round of checks (one Redis
//! connection, one SMTP check) a second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::extract::Json;
use crate::state::AppState;

/// How long a readiness answer is reused.
pub const READY_FOR: Duration = Duration::from_secs(1);

/// The last readiness answer and when it was made; the lock is held while checking.
type LastReady = Arc<tokio::sync::Mutex<Option<(Instant, StatusCode, Health)>>>;

pub fn router() -> Router<AppState> {
    let last = LastReady::default();
    Router::new().route("/health", get(alive)).route(
        "/health/ready",
        get(move |State(state): State<AppState>| {
            let last = last.clone();
            async move {
                // On a task of its own: a caller that leaves (its client hung up, a probe's
                // timeout) neither aborts the round of checks nor loses its answer for the others.
                let round = tokio::spawn(async move {
                    let mut last = last.lock_owned().await;
                    if let Some((at, status, health)) = &*last
                        && at.elapsed() < READY_FOR
                    {
                        return (*status, health.clone());
                    }
                    let (status, health) = ready(&state).await;
                    *last = Some((Instant::now(), status, health.clone()));
                    (status, health)
                });
                match round.await {
                    Ok((status, health)) => (status, Json(health)),
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(Health {
                            status: "down",
                            checks: Map::new(),
                        }),
                    ),
                }
            }
        }),
    )
}

#[derive(Debug, Clone, Serialize)]
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

/// Liveness: answering at all is the check (a stuck dependency must not get the process killed).
async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn ready(state: &AppState) -> (StatusCode, Health) {
    let mut checks = Map::new();
    let mut healthy = check(&mut checks, "database", state.db.ping()).await;
    healthy &= check(&mut checks, "jobStorage", state.jobs.ping()).await;
    if let Some(entry) = checks.get_mut("jobStorage").and_then(Value::as_object_mut) {
        entry.insert("backend".into(), state.jobs.kind().into());
    }
    if let Some(url) = state.settings.redis_url.as_deref() {
        healthy &= check(&mut checks, "redis", ping_redis(url)).await;
    }
    if state.channels.email_on() {
        let smtp = async { state.channels.check_smtp().await.unwrap_or(Ok(())) };
        healthy &= check(&mut checks, "smtp", smtp).await;
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let health = Health {
        status: if healthy { "ok" } else { "unavailable" },
        checks,
    };
    (status, health)
}

/// A fresh connection and a `PING`: what the Socket.IO adapter and the job storage depend on.
async fn ping_redis(url: &str) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async::<()>(&mut conn).await
}

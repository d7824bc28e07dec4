//! Prometheus metrics (`GET /metrics` on the operator listener), names prefixed `switchboard_`.
//!
//! Counters and histograms are recorded where things happen, with the `metrics` facade:
//! - `switchboard_jobs_{processed,failed,retried,dead}_total{queue}` (`jobs::workers`),
//! - `switchboard_assignment_latency_seconds` (enqueue → assigned, `jobs::assign_agent`),
//! - `switchboard_webhook_deliveries_total{outcome}`, `switchboard_email_deliveries_total{outcome}`,
//! - `switchboard_http_request_duration_seconds{method,route,status}` ([`track_http`]).
//!
//! Gauges of state are read from the database at scrape time, so every node reports the same
//! truth: `switchboard_queue_depth` and `switchboard_queue_oldest_wait_seconds` per account, group
//! and priority; `switchboard_sockets_connected{namespace}` is this node's own.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use entity::{enums::Priority, groups};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::state::AppState;

/// Latency buckets (seconds) for assignments and HTTP requests.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's recorder, installed on first use. Metrics are process-wide by nature (the
/// `metrics` facade has one global recorder), so several applications in one process (tests)
/// share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            // State gauges are set at every scrape: one not set for a minute belongs to a group
            // that was deleted or renamed, and goes.
            .idle_timeout(
                MetricKindMask::GAUGE,
                Some(std::time::Duration::from_secs(60)),
            )
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the buckets are a non-empty constant");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(err) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%err, "another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        "switchboard_jobs_processed_total",
        "Job runs that succeeded, per queue."
    );
    metrics::describe_counter!(
        "switchboard_jobs_failed_total",
        "Job runs that failed, per queue."
    );
    metrics::describe_counter!(
        "switchboard_jobs_retried_total",
        "Job runs that were a retry of a failed attempt, per queue."
    );
    metrics::describe_counter!(
        "switchboard_jobs_dead_total",
        "Jobs that failed for good (permanent error or budget spent), per queue."
    );
    metrics::describe_histogram!(
        "switchboard_assignment_latency_seconds",
        metrics::Unit::Seconds,
        "From entering the waiting line to being assigned."
    );
    metrics::describe_histogram!(
        "switchboard_batch_size",
        "Items written together by one batch of a hot path (sessions, enqueues, closes, assignment requests)."
    );
    metrics::describe_histogram!(
        "switchboard_batch_seconds",
        metrics::Unit::Seconds,
        "How long one batch of a hot path took, per batch kind."
    );
    metrics::describe_histogram!(
        "switchboard_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route."
    );
    metrics::describe_gauge!(
        "switchboard_queue_depth",
        "Conversations waiting, per group and priority."
    );
    metrics::describe_gauge!(
        "switchboard_queue_oldest_wait_seconds",
        metrics::Unit::Seconds,
        "How long the oldest waiting conversation has waited, per group and priority."
    );
    metrics::describe_gauge!(
        "switchboard_sockets_connected",
        "Socket.IO connections to this node, per namespace."
    );
    metrics::describe_counter!(
        "switchboard_webhook_deliveries_total",
        "Webhook delivery attempts by outcome."
    );
    metrics::describe_counter!(
        "switchboard_email_deliveries_total",
        "E-mail delivery attempts by outcome."
    );
}

/// `GET /metrics`: the Prometheus text format.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let handle = handle();
    if let Err(err) = record_state(&state).await {
        tracing::warn!(%err, "queue gauges not refreshed");
    }
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Sets the state gauges from the database and this node's sockets.
async fn record_state(state: &AppState) -> Result<(), DbErr> {
    let now = Utc::now();
    let lines: Vec<(i64, i64, String)> = groups::Entity::find()
        .select_only()
        .column(groups::Column::AccountId)
        .column(groups::Column::Id)
        .column(groups::Column::Name)
        .filter(groups::Column::DeletedAt.is_null())
        .into_tuple()
        .all(&state.db)
        .await?;
    let waiting = crate::chat::stats::waiting_by_priority(&state.db, None).await?;
    for (account, group, name) in lines {
        for priority in [Priority::High, Priority::Normal, Priority::Low] {
            let (depth, oldest) = waiting
                .iter()
                .find(|(g, p, ..)| *g == group && *p == priority)
                .map_or((0, None), |(_, _, n, oldest)| (*n, *oldest));
            let labels = [
                ("account", account.to_string()),
                ("group", group.to_string()),
                ("group_name", name.clone()),
                ("priority", priority_label(priority).to_owned()),
            ];
            metrics::gauge!("switchboard_queue_depth", &labels).set(depth as f64);
            let waited = oldest.map_or(0.0, |oldest| {
                (now - oldest).num_milliseconds().max(0) as f64 / 1e3
            });
            metrics::gauge!("switchboard_queue_oldest_wait_seconds", &labels).set(waited);
        }
    }
    let sockets = state.sockets.now();
    for (namespace, count) in [("agents", sockets.agents), ("visitors", sockets.visitors)] {
        metrics::gauge!("switchboard_sockets_connected", "namespace" => namespace)
            .set(count as f64);
    }
    Ok(())
}

fn priority_label(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// Middleware: records each request's latency by method, matched route (never the raw path, so
/// ids do not explode the label set) and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "switchboard_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

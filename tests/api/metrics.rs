//! `GET /metrics` on the operator listener after a known sequence of events, and who may read it.
//!
//! Counters and histograms are process-wide (one `metrics` recorder per process, shared by the
//! tests running beside this one), so they are asserted as "at least" and as increases; the
//! queue gauges are read from this test's own database at scrape time, so they are exact.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::{both_backends, helpers::*};

/// Scrapes `/metrics` as the first admin.
pub(crate) async fn scrape(app: &TestApp) -> String {
    let reply = app
        .client
        .get(format!("{}/metrics", app.ops_address))
        .basic_auth(ADMIN_EMAIL, Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("the operator listener answers");
    assert_eq!(reply.status(), StatusCode::OK);
    let kind = reply.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    reply.text().await.unwrap()
}

/// The value of the sample `name` whose labels include every one of `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labelled, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(key, value)| labelled.contains(&format!("{key}=\"{value}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

both_backends! {
    async fn metrics_follow_a_known_sequence(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let group_label = group.to_string();
        let before = scrape(&app).await;
        let counted = |text: &str, name: &str, labels: &[(&str, &str)]| sample(text, name, labels).unwrap_or(0.0);

        let (_, agent) = app.online_agent(&admin, group, 1).await;
        let socket = app.agent_socket(&agent).await;
        let (served, _) = app.visitor(json!({})).await;
        app.conversation_becomes(&admin, served, "active").await;
        app.visitor(json!({ "priority": "high" })).await;
        app.visitor(json!({ "priority": "low" })).await;
        app.visitor(json!({ "priority": "low" })).await;

        // The gauge series are process-wide and the other backend's run of this test writes the
        // same labels (account 1, group 1): read until a scrape of this app is rendered alone.
        let text = eventually(Duration::from_secs(10), "this app's queue depths", || async {
            let text = scrape(&app).await;
            let depth = |priority: &str| sample(&text, "switchboard_queue_depth", &[("group", &group_label), ("priority", priority)]);
            ((depth("high"), depth("normal"), depth("low")) == (Some(1.0), Some(0.0), Some(2.0))).then_some(text)
        })
        .await;
        let oldest = sample(&text, "switchboard_queue_oldest_wait_seconds", &[("group", &group_label), ("priority", "low")]);
        assert!(oldest.is_some_and(|s| s >= 0.0), "{text}");
        assert_eq!(sample(&text, "switchboard_queue_oldest_wait_seconds", &[("group", &group_label), ("priority", "normal")]), Some(0.0));
        assert!(counted(&text, "switchboard_sockets_connected", &[("namespace", "agents")]) >= 1.0, "{text}");
        let latency = "switchboard_assignment_latency_seconds_count";
        assert!(counted(&text, latency, &[]) > counted(&before, latency, &[]), "{text}");
        assert!(text.contains("switchboard_assignment_latency_seconds_bucket{le=\"0.1\"}"), "a histogram, not a summary: {text}");
        let processed = |t: &str| counted(t, "switchboard_jobs_processed_total", &[("queue", "assign-agent")]);
        assert!(processed(&text) > processed(&before), "{text}");
        let sessions = |t: &str| counted(t, "switchboard_http_request_duration_seconds_count", &[("method", "POST"), ("route", "/v1/widget/session"), ("status", "201")]);
        assert!(sessions(&text) - sessions(&before) >= 4.0, "{text}");
        assert!(
            !text.contains(&format!("route=\"/v1/conversations/{served}\"")),
            "routes are labelled by pattern, not by path"
        );

        // A job that keeps failing: counted as failed and retried (the table it writes is gone).
        app.db()
            .execute_unprepared("ALTER TABLE audit_log RENAME TO audit_log_unavailable")
            .await
            .unwrap();
        app.create_tag(&admin, json!({ "name": "unrecorded" })).await;
        let audit = [("queue", "record-audit")];
        eventually(Duration::from_secs(30), "the audit job to fail and be retried", || async {
            let now = scrape(&app).await;
            (counted(&now, "switchboard_jobs_failed_total", &audit) > counted(&before, "switchboard_jobs_failed_total", &audit)
                && counted(&now, "switchboard_jobs_retried_total", &audit) > counted(&before, "switchboard_jobs_retried_total", &audit))
                .then_some(())
        })
        .await;
        socket.disconnect().await;
    }
}

#[tokio::test]
async fn metrics_are_for_admins_on_the_operator_listener_only() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let url = format!("{}/metrics", app.ops_address);
    let anonymous = app.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = app
        .client
        .get(&url)
        .basic_auth(ADMIN_EMAIL, Some("wrong-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let (id, _) = app.agent_with_role(&admin, "supervisor").await;
    let email = app.agent(&admin, id).await["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let supervisor = app
        .client
        .get(&url)
        .basic_auth(&email, Some("password-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        supervisor.status(),
        StatusCode::UNAUTHORIZED,
        "supervisors are not operators"
    );
    let public = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        public.status(),
        StatusCode::NOT_FOUND,
        "not on the public listener"
    );
}

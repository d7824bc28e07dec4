use reqwest::{Method, StatusCode};

use crate::{both_backends, helpers::*};

both_backends! {
    async fn health_reports_each_dependency(backend: Backend) {
        let app = spawn_app(backend).await;
        let alive = app.request(Method::GET, "/health", None, None).await;
        assert_eq!(alive.status, StatusCode::OK, "{:?}", alive.body);
        assert_eq!(alive.body["status"], "ok");

        let reply = app.request(Method::GET, "/health/ready", None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["status"], "ok");
        assert_eq!(reply.body["checks"]["database"]["status"], "ok");
        assert_eq!(reply.body["checks"]["jobStorage"]["status"], "ok");
        let expected = if backend == Backend::Embedded { "sqlite" } else { "redis" };
        assert_eq!(reply.body["checks"]["jobStorage"]["backend"], expected);
        assert!(reply.body["checks"]["database"]["latencyMs"].as_f64().is_some());
        // Redis is checked on its own when configured (the Socket.IO adapter needs it too).
        match backend {
            Backend::Embedded => assert!(reply.body["checks"].get("redis").is_none(), "{:?}", reply.body),
            Backend::Distributed => assert_eq!(reply.body["checks"]["redis"]["status"], "ok"),
        }
    }
}

#[tokio::test]
async fn health_is_503_when_the_job_storage_is_gone() {
    let app = spawn_app(Backend::Embedded).await;
    let jobs::JobStore::Sqlite(pool) = &app.state.jobs else {
        panic!("embedded uses sqlite")
    };
    pool.close().await;
    let reply = app.request(Method::GET, "/health/ready", None, None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], "unavailable");
    assert_eq!(reply.body["checks"]["jobStorage"]["status"], "down");
    assert_eq!(reply.body["checks"]["database"]["status"], "ok");
    // Liveness is not readiness: the process still answers, and must not be restarted for it.
    let alive = app.request(Method::GET, "/health", None, None).await;
    assert_eq!(alive.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app(Backend::Embedded).await;
    let token = app.admin_token().await;
    let reply = app.get("/v1/nothing-here", &token).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "not_found");
    let reply = app
        .request(Method::PUT, "/v1/agents", Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.code(), "method_not_allowed");
}

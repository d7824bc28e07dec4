use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use switchboard::config::Command;

use crate::{both_backends, helpers::*};

both_backends! {
    async fn health_reports_each_dependency(backend: Backend) {
        let app = spawn_app(backend).await;
        let alive = app.health().await;
        assert_eq!(alive.status, StatusCode::OK, "{:?}", alive.body);
        assert_eq!(alive.body["status"], "ok");

        let reply = app.readiness().await;
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
    let reply = app.readiness().await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], "unavailable");
    assert_eq!(reply.body["checks"]["jobStorage"]["status"], "down");
    assert_eq!(reply.body["checks"]["database"]["status"], "ok");
    // Liveness is not readiness: the process still answers, and must not be restarted for it.
    let alive = app.health().await;
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

/// Forwards connections from a port of its own to the Redis at `url`, counting them.
async fn counting_proxy(url: &str) -> (String, Arc<AtomicUsize>) {
    let parsed = url::Url::parse(url).unwrap();
    let target = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(6379)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut proxied = parsed.clone();
    proxied
        .set_port(Some(listener.local_addr().unwrap().port()))
        .unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (proxied.to_string(), count)
}

/// `/health/ready` is public: a burst of calls costs one round of checks (Redis connections
/// counted by a proxy in front of the real Redis), not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_readiness_calls_runs_one_check() {
    let storage = Storage::new(Backend::Distributed).await;
    let (proxied, connections) = counting_proxy(storage.redis_url.as_deref().unwrap()).await;
    let app = spawn_with(storage, Command::All, |settings| {
        settings.redis_url = Some(proxied);
    })
    .await;
    let first = app.readiness().await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["checks"]["redis"]["status"], "ok");
    // Past the first answer's life, so the burst starts with a fresh check.
    tokio::time::sleep(switchboard::http::health::READY_FOR).await;
    let before = connections.load(Ordering::SeqCst);
    let replies = join_all((0..50).map(|_| app.readiness())).await;
    let opened = connections.load(Ordering::SeqCst) - before;
    for reply in replies {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["checks"]["redis"]["status"], "ok");
    }
    eprintln!("50 readiness calls opened {opened} Redis connection(s)");
    assert!(opened <= 2, "{opened} Redis connections for 50 calls");
}

/// A worker-only process (`work`) serves no API, but its operator listener answers the liveness
/// and readiness probes without credentials (the rest of that listener still wants them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_answer_the_probes() {
    let api = spawn_app(Backend::Embedded).await;
    let worker = spawn_with(api.storage.clone(), Command::Work, |_| {}).await;
    assert!(worker.address.is_empty(), "a worker serves no API");
    let get = |path: &str| {
        worker
            .client
            .get(format!("{}{path}", worker.ops_address))
            .send()
    };
    let alive = get("/health").await.expect("the worker answers");
    assert_eq!(alive.status(), StatusCode::OK);
    let body: serde_json::Value = alive.json().await.expect("JSON");
    assert_eq!(body["status"], "ok");
    let ready = get("/health/ready").await.expect("the worker answers");
    assert_eq!(ready.status(), StatusCode::OK);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
    assert_eq!(body["checks"]["jobStorage"]["status"], "ok", "{body}");
    for guarded in ["/metrics", "/", "/api/v1/queues"] {
        let reply = get(guarded).await.expect("the worker answers");
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED, "{guarded}");
    }
}

//! Behind a reverse proxy (`SWITCHBOARD_TRUSTED_PROXIES`): each client behind a trusted proxy
//! gets its own budgets and its own recorded address; an untrusted peer's forwarded headers are
//! ignored.

use entity::visitors;
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use switchboard::{client_ip::TrustedProxies, config::Command};

use crate::helpers::*;

/// Opens a widget session through the peer 127.0.0.1 with the proxy headers `headers`.
async fn open_session(app: &TestApp, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(format!("{}/v1/widget/session", app.address))
        .json(&json!({}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Opens a Socket.IO handshake (long-polling) with the proxy headers `headers`.
async fn handshake(app: &TestApp, headers: &[(&str, &str)]) -> StatusCode {
    let mut request = app.client.get(format!(
        "{}/socket.io/?EIO=4&transport=polling",
        app.address
    ));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the server answers").status()
}

async fn app_trusting(proxies: &str) -> TestApp {
    let proxies = TrustedProxies::parse(proxies).expect("a valid list");
    spawn_with(
        Storage::new(Backend::Embedded).await,
        Command::All,
        |settings| {
            settings.widget_rate_per_minute = 2;
            settings.socket_handshakes_per_minute = 1;
            settings.trusted_proxies = proxies;
        },
    )
    .await
}

/// Through one trusted proxy (the test's 127.0.0.1), two visitors named by `X-Forwarded-For`
/// (and `Forwarded`) each get their own widget-session and handshake budgets, and the visitor
/// row records the forwarded address rather than the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_budgeted_apart() {
    let app = app_trusting("127.0.0.0/8").await;
    let first = [("x-forwarded-for", "198.51.100.1, 203.0.113.1")];
    for _ in 0..2 {
        let (status, body) = open_session(&app, &first).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, _) = open_session(&app, &first).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the first client's budget is spent"
    );
    // Another client through the same proxy, whatever it put on the left of the chain.
    let (status, body) = open_session(&app, &[("x-forwarded-for", "203.0.113.2")]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = open_session(
        &app,
        &[("forwarded", "for=\"[2001:db8::5]:4711\";proto=https")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let visitor = visitors::Entity::find_by_id(body["visitorId"].as_i64().expect("an id"))
        .one(app.db())
        .await
        .expect("a read")
        .expect("the visitor");
    assert_eq!(visitor.ip.as_deref(), Some("2001:db8::5"));
    let (_, body) = open_session(&app, &[("x-forwarded-for", "203.0.113.3")]).await;
    let visitor = visitors::Entity::find_by_id(body["visitorId"].as_i64().expect("an id"))
        .one(app.db())
        .await
        .expect("a read")
        .expect("the visitor");
    assert_eq!(visitor.ip.as_deref(), Some("203.0.113.3"));
    // A client that writes a `Forwarded` of its own beside the proxy's `X-Forwarded-For` (which
    // disagree) is not believed: it is the proxy.
    let (status, body) = open_session(
        &app,
        &[
            ("forwarded", "for=198.51.100.77"),
            ("x-forwarded-for", "203.0.113.4"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let visitor = visitors::Entity::find_by_id(body["visitorId"].as_i64().expect("an id"))
        .one(app.db())
        .await
        .expect("a read")
        .expect("the visitor");
    assert_eq!(visitor.ip.as_deref(), Some("127.0.0.1"));
    // Socket.IO handshakes: one a minute per client, each client its own.
    let one = [("x-forwarded-for", "203.0.113.1")];
    assert_eq!(handshake(&app, &one).await, StatusCode::OK);
    assert_eq!(handshake(&app, &one).await, StatusCode::TOO_MANY_REQUESTS);
    let two = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(handshake(&app, &two).await, StatusCode::OK);
}

/// A peer that is not a trusted proxy cannot buy fresh budgets with made-up forwarded headers,
/// nor have another address recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_spoof_its_address() {
    let app = app_trusting("10.0.0.0/8").await;
    let (status, body) = open_session(&app, &[("x-forwarded-for", "203.0.113.1")]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let visitor = visitors::Entity::find_by_id(body["visitorId"].as_i64().expect("an id"))
        .one(app.db())
        .await
        .expect("a read")
        .expect("the visitor");
    assert_eq!(visitor.ip.as_deref(), Some("127.0.0.1"));
    let (status, body) = open_session(&app, &[("forwarded", "for=203.0.113.2")]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = open_session(&app, &[("x-forwarded-for", "203.0.113.3")]).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "one budget, whatever the headers say"
    );
    assert_eq!(
        handshake(&app, &[("x-forwarded-for", "203.0.113.1")]).await,
        StatusCode::OK
    );
    assert_eq!(
        handshake(&app, &[("x-forwarded-for", "203.0.113.2")]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A list the server cannot read stops the start, naming the setting and the entry.
#[tokio::test]
async fn a_malformed_list_of_proxies_refuses_the_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (status, log) = crate::process::Server::fails_to_start(
        &dir.path().join("data"),
        &[("SWITCHBOARD_TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.0/33")],
    )
    .await;
    assert!(!status.success());
    assert!(log.contains("SWITCHBOARD_TRUSTED_PROXIES"), "{log}");
    assert!(log.contains("`10.0.0.0/33`"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

//! What the log carries (JSON lines, request ids, no colour codes in files) and must never carry.

use serde_json::json;

use std::time::Duration;

use crate::{helpers::*, process::Server, sio};

/// With the wire-level libraries' debug and trace logs asked for in `RUST_LOG` (Socket.IO,
/// WebSocket, HTTP), neither an agent's token nor a visitor's session token reaches the log; `SWITCHBOARD_LOG_SOCKET_PAYLOADS=1` lets them
/// through (which shows the check would see them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_credentials_stay_out_of_the_log() {
    const DEBUG: (&str, &str) = (
        "RUST_LOG",
        "info,socketioxide=trace,engineioxide=trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace,h2=trace",
    );
    async fn credentials_logged(env: &[(&str, &str)]) -> (bool, bool) {
        let server = Server::start(env).await;
        let login = server
            .post(
                "/v1/auth/login",
                json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }),
            )
            .await;
        let token = login["token"].as_str().expect("a token").to_owned();
        let session = server.post("/v1/widget/session", json!({})).await;
        let session_token = session["sessionToken"]
            .as_str()
            .expect("a session")
            .to_owned();
        let agent = sio::connect(&server.address, "/agents", json!({ "token": token }))
            .await
            .expect("the agent connects");
        let visitor = sio::connect(
            &server.address,
            "/visitors",
            json!({ "sessionToken": session_token }),
        )
        .await
        .expect("the visitor connects");
        agent.sync(json!({})).await;
        visitor.sync(json!({})).await;
        agent.disconnect().await;
        visitor.disconnect().await;
        let log = server.stop();
        (log.contains(&token), log.contains(&session_token))
    }
    assert_eq!(
        credentials_logged(&[DEBUG]).await,
        (false, false),
        "(agent token, session token) in the log"
    );
    let (_, session_logged) =
        credentials_logged(&[DEBUG, ("SWITCHBOARD_LOG_SOCKET_PAYLOADS", "true")]).await;
    assert!(
        session_logged,
        "the opt-in lets the libraries' debug log through"
    );
}

/// The request's log lines under `SWITCHBOARD_LOG_FORMAT=json`: the lines that carry `id` in the
/// request span, each parsed.
fn lines_of_request(log: &str, id: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|err| panic!("a log line that is not JSON ({err}): {line}"))
        })
        .filter(|line| {
            line["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|span| span["name"] == "request" && span["request_id"] == id)
            })
        })
        .collect()
}

/// `GET /health` with `x-request-id: id` (none when `None`); the response's `x-request-id`.
async fn request_id_of(server: &Server, id: Option<&str>) -> String {
    let mut request = reqwest::Client::new().get(format!("{}/health", server.address));
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.expect("the server answers");
    assert!(response.status().is_success(), "{:?}", response.status());
    response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id in the response")
        .to_str()
        .expect("a readable id")
        .to_owned()
}

/// With `SWITCHBOARD_LOG_FORMAT=json` every log line is a JSON object without colour codes; a
/// request's `x-request-id` comes back in the response and is on the request's log lines; a
/// request without one, or with one that is not sane, gets a ULID, logged the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_request_id() {
    let server = Server::start(&[
        ("SWITCHBOARD_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,tower_http=debug"),
        ("NO_COLOR", ""),
    ])
    .await;
    let given = "req-7f3a_given.id";
    assert_eq!(request_id_of(&server, Some(given)).await, given);
    let made = request_id_of(&server, None).await;
    assert!(ulid::Ulid::from_string(&made).is_ok(), "{made}");
    let long = "x".repeat(200);
    for insane in [long.as_str(), "has space", ""] {
        let replaced = request_id_of(&server, Some(insane)).await;
        assert!(
            ulid::Ulid::from_string(&replaced).is_ok(),
            "{insane:?} → {replaced}"
        );
    }
    let log = eventually(Duration::from_secs(5), "the requests' lines", || {
        let log = server.log();
        let found =
            !lines_of_request(&log, given).is_empty() && !lines_of_request(&log, &made).is_empty();
        async move { found.then_some(log) }
    })
    .await;
    let line = &lines_of_request(&log, given)[0];
    assert_eq!(line["span"]["path"], "/health", "{line}");
    assert!(
        line["level"].is_string() && line["fields"].is_object(),
        "{line}"
    );
    assert!(!log.contains('\u{1b}'), "colour codes in the log:\n{log}");
    assert!(
        log.contains("listening on http://"),
        "the start is logged as JSON too:\n{log}"
    );
}

/// Text lines written to a file (not a terminal) carry no colour codes, `NO_COLOR` or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let server = Server::start(&[("NO_COLOR", ""), ("RUST_LOG", "info,tower_http=debug")]).await;
    let id = request_id_of(&server, None).await;
    let log = eventually(Duration::from_secs(5), "the request's line", || {
        let log = server.log();
        let id = id.clone();
        async move { log.contains(&id).then_some(log) }
    })
    .await;
    assert!(!log.contains('\u{1b}'), "colour codes in the log:\n{log}");
}

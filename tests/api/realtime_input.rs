//! Bad input over Socket.IO: malformed payloads, unknown events, oversized messages, flooding,
//! and requests about conversations the socket does not own. Each gets an error acknowledgement
//! (or the oversized connection is dropped), the socket and the server keep working, and nothing
//! is stored.

use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use switchboard::config::Command;

use crate::helpers::{Backend, Storage, TestApp, spawn_app, spawn_with};

async fn stored_events(app: &TestApp) -> u64 {
    // Messages only: system notes of the routing jobs may land at any moment.
    entity::events::Entity::find()
        .filter(entity::events::Column::Kind.eq(entity::enums::EventKind::Message))
        .count(app.db())
        .await
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_foreign_requests_are_refused_and_change_nothing() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (_, token) = app.online_agent(&admin, group, 1).await;
    let (_, other_token) = app.online_agent(&admin, group, 1).await;
    let (mine, session) = app.visitor(json!({ "initialMessage": "one" })).await;
    let (theirs, other_session) = app.visitor(json!({ "initialMessage": "two" })).await;
    app.conversation_becomes(&admin, mine, "active").await;
    app.conversation_becomes(&admin, theirs, "active").await;
    // Which agent got which chat is the router's choice: find out.
    let holder = app.conversation(&admin, mine).await["assignedAgentId"]
        .as_i64()
        .unwrap();
    let me_id = app.me(&token).await["id"].as_i64().unwrap();
    let (token, other_token) = if holder == me_id {
        (token, other_token)
    } else {
        (other_token, token)
    };
    let agent = app.agent_socket(&token).await;
    let visitor = app.visitor_socket(&session).await;
    let _other_visitor = app.visitor_socket(&other_session).await;
    let other_event = app
        .agent_socket(&other_token)
        .await
        .send_message(json!({ "conversationId": theirs, "content": "theirs" }))
        .await["id"]
        .clone();
    let before = stored_events(&app).await;

    let too_long = "x".repeat(4001);
    let agent_cases: Vec<(&str, Value, &str)> = vec![
        ("message:send", json!("hello"), "validation_failed"),
        ("message:send", json!([1, 2]), "validation_failed"),
        ("message:send", json!({}), "validation_failed"),
        (
            "message:send",
            json!({ "conversationId": mine }),
            "validation_failed",
        ),
        (
            "message:send",
            json!({ "conversationId": "one", "content": "x" }),
            "validation_failed",
        ),
        (
            "message:send",
            json!({ "conversationId": mine, "content": "" }),
            "validation_failed",
        ),
        (
            "message:send",
            json!({ "conversationId": mine, "content": "a\u{0}b" }),
            "validation_failed",
        ),
        (
            "message:send",
            json!({ "conversationId": mine, "content": too_long }),
            "validation_failed",
        ),
        (
            "message:send",
            json!({ "conversationId": mine, "content": "x", "admin": true }),
            "validation_failed",
        ),
        (
            "message:send",
            json!({ "conversationId": theirs, "content": "not mine" }),
            "not_found",
        ),
        (
            "message:send",
            json!({ "conversationId": 987_654, "content": "nowhere" }),
            "not_found",
        ),
        (
            "status:set",
            json!({ "status": "dancing" }),
            "validation_failed",
        ),
        (
            "typing:set",
            json!({ "conversationId": theirs, "typing": true }),
            "not_found",
        ),
        (
            "typing:set",
            json!({ "conversationId": mine, "typing": "yes" }),
            "validation_failed",
        ),
        (
            "message:seen",
            json!({ "conversationId": mine, "eventId": other_event }),
            "not_found",
        ),
        (
            "conversation:join",
            json!({ "conversationId": theirs }),
            "not_found",
        ),
        (
            "conversation:close",
            json!({ "conversationId": theirs }),
            "not_found",
        ),
        (
            "conversation:transfer",
            json!({ "conversationId": mine }),
            "validation_failed",
        ),
        (
            "conversation:pickup",
            json!({ "conversationId": mine }),
            "conflict",
        ),
        (
            "message:list",
            json!({ "conversationId": theirs }),
            "not_found",
        ),
        ("no:such-event", json!({}), "bad_request"),
    ];
    for (event, payload, code) in agent_cases {
        let refused = agent.refused(event, payload.clone()).await;
        assert_eq!(refused, code, "agent {event} {payload}");
    }
    let visitor_cases: Vec<(&str, Value, &str)> = vec![
        (
            "message:send",
            json!({ "content": "" }),
            "validation_failed",
        ),
        ("message:send", json!({ "content": 5 }), "validation_failed"),
        (
            "message:send",
            json!({ "conversationId": theirs, "content": "hi" }),
            "not_found",
        ),
        ("typing:set", json!({}), "validation_failed"),
        (
            "message:seen",
            json!({ "eventId": other_event }),
            "not_found",
        ),
        (
            "message:list",
            json!({ "conversationId": theirs }),
            "not_found",
        ),
        (
            "conversation:end",
            json!({ "now": true }),
            "validation_failed",
        ),
        ("status:set", json!({ "status": "online" }), "bad_request"),
        (
            "conversation:pickup",
            json!({ "conversationId": mine }),
            "bad_request",
        ),
    ];
    for (event, payload, code) in visitor_cases {
        let refused = visitor.refused(event, payload.clone()).await;
        assert_eq!(refused, code, "visitor {event} {payload}");
    }
    assert_eq!(stored_events(&app).await, before, "nothing was stored");
    let view = app.conversation(&admin, theirs).await;
    assert_eq!(view["status"], "active", "the other chat was not touched");

    // Both sockets still work.
    agent
        .send_message(json!({ "conversationId": mine, "content": "still here" }))
        .await;
    visitor.send_message(json!({ "content": "me too" })).await;
    assert_eq!(stored_events(&app).await, before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_socket_is_held_to_its_budget() {
    let storage = Storage::new(Backend::Embedded).await;
    let app = spawn_with(storage, Command::All, |s| s.socket_events_per_second = 5).await;
    let (_, session) = app.visitor(json!({})).await;
    let visitor = app.visitor_socket(&session).await;
    let before = stored_events(&app).await;
    let mut accepted = 0;
    let mut limited = 0;
    for n in 0..40 {
        let ack = visitor
            .request("message:send", json!({ "content": format!("spam {n}") }))
            .await;
        match (ack["ok"].as_bool(), ack["error"]["code"].as_str()) {
            (Some(true), _) => accepted += 1,
            (_, Some("rate_limited")) => limited += 1,
            other => panic!("unexpected answer {other:?}: {ack}"),
        }
    }
    assert!(limited > 0, "some were refused");
    assert!(accepted >= 10, "the burst went through: {accepted}");
    // Only accepted messages were stored.
    assert_eq!(stored_events(&app).await, before + accepted);
    // The budget refills: the socket works again a moment later.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    visitor.send_message(json!({ "content": "calm now" })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_drops_that_connection_only() {
    let app = spawn_app(Backend::Embedded).await;
    let (_, session) = app.visitor(json!({})).await;
    let mut visitor = app.visitor_socket(&session).await;
    let before = stored_events(&app).await;
    // Over the 64 KiB frame limit: the server closes this connection without reading it.
    visitor
        .send("message:send", json!({ "content": "y".repeat(70 * 1024) }))
        .await;
    visitor.drain(Duration::from_millis(500)).await;
    assert_eq!(stored_events(&app).await, before);
    // The server and the visitor's next connection are fine.
    let again = app.visitor_socket(&session).await;
    again.send_message(json!({ "content": "short" })).await;
    assert_eq!(stored_events(&app).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_together_keep_their_own_outcomes() {
    // On SQLite, messages arriving together share one transaction: each still gets its own
    // answer, a closed chat refuses only its own, and a resent id is stored once.
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let (open, open_session) = app.visitor(json!({})).await;
    let (closed, closed_session) = app.visitor(json!({})).await;
    app.end_conversation(&closed_session).await;
    app.conversation_becomes(&admin, closed, "closed").await;
    let before = stored_events(&app).await;
    let send = |session: String, body: Value| {
        let app = &app;
        async move { app.try_visitor_says(&session, body).await }
    };
    let mut sends = Vec::new();
    for n in 0..30 {
        sends.push(send(
            open_session.clone(),
            json!({ "content": format!("m{n}") }),
        ));
        sends.push(send(
            open_session.clone(),
            json!({ "content": "again", "clientMessageId": "same" }),
        ));
        sends.push(send(
            closed_session.clone(),
            json!({ "content": format!("late {n}") }),
        ));
    }
    let replies = futures::future::join_all(sends).await;
    let mut ids = std::collections::HashSet::new();
    let mut resent = std::collections::HashSet::new();
    for reply in &replies {
        match reply.body["content"].as_str() {
            Some("again") => {
                resent.insert(reply.body["id"].as_i64().unwrap());
            }
            Some(_) => {
                assert_eq!(
                    reply.status,
                    reqwest::StatusCode::CREATED,
                    "{:?}",
                    reply.body
                );
                assert!(ids.insert(reply.body["id"].as_i64().unwrap()));
            }
            None => assert_eq!(
                reply.status,
                reqwest::StatusCode::CONFLICT,
                "{:?}",
                reply.body
            ),
        }
    }
    assert_eq!(ids.len(), 30);
    assert_eq!(resent.len(), 1, "a resent id is one message");
    assert_eq!(stored_events(&app).await, before + 31);
    let view = app.conversation(&admin, open).await;
    assert_eq!(view["status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_limited_per_client_address_but_open_sessions_are_not() {
    let storage = Storage::new(Backend::Embedded).await;
    let app = spawn_with(storage, Command::All, |s| {
        s.socket_handshakes_per_minute = 3
    })
    .await;
    let handshake = || async {
        app.client
            .get(format!(
                "{}/socket.io/?EIO=4&transport=polling",
                app.address
            ))
            .send()
            .await
            .unwrap()
    };
    let mut sid = String::new();
    for _ in 0..3 {
        let open = handshake().await;
        assert_eq!(open.status(), reqwest::StatusCode::OK);
        let text = open.text().await.unwrap();
        let start = text.find('{').expect("an open packet");
        let packet: Value = serde_json::from_str(&text[start..]).unwrap();
        sid = packet["sid"].as_str().unwrap().to_owned();
    }
    let refused = handshake().await;
    assert_eq!(refused.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Requests of an open session go through (here: a poll of the last session).
    let poll = app
        .client
        .get(format!(
            "{}/socket.io/?EIO=4&transport=polling&sid={sid}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), reqwest::StatusCode::OK);
    // The HTTP API is not affected.
    assert_eq!(app.health().await.status, reqwest::StatusCode::OK);
}

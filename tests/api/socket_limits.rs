//! What one visitor or agent may take of a node's sockets: a message budget shared by REST and
//! every socket of a visitor, a cap on sockets, and pushes lost to a full queue counted.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::json;
use switchboard::config::Command;

use crate::{
    helpers::*,
    metrics::{sample, scrape},
    sio,
};

/// Fifteen sockets on one visitor session draw from one message budget, which REST shares: the
/// budget (ten times `SWITCHBOARD_WIDGET_RATE_PER_MINUTE`, here 20) is all they get together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_of_one_visitor_share_one_message_budget_with_rest() {
    const SOCKETS: usize = 15;
    const EACH: usize = 5;
    let app = spawn_with(
        Storage::new(Backend::Embedded).await,
        Command::All,
        |settings| {
            settings.widget_rate_per_minute = 2;
            settings.sockets_per_visitor = SOCKETS;
        },
    )
    .await;
    let (conversation, session_token) = app.visitor(json!({})).await;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(
            sio::connect(
                &app.address,
                "/visitors",
                json!({ "sessionToken": session_token }),
            )
            .await
            .expect("a visitor socket"),
        );
    }
    // The budget starts full (20) and earns one every 3 s.
    let started = std::time::Instant::now();
    let acks = join_all(
        sockets
            .iter()
            .enumerate()
            .map(|(index, socket)| async move {
                let mut acks = Vec::new();
                for message in 0..EACH {
                    acks.push(
                        socket
                            .request(
                                "message:send",
                                json!({ "content": format!("socket {index} message {message}") }),
                            )
                            .await,
                    );
                }
                acks
            }),
    )
    .await;
    let acks: Vec<_> = acks.into_iter().flatten().collect();
    let accepted = acks.iter().filter(|ack| ack["ok"] == true).count();
    let limited = acks
        .iter()
        .filter(|ack| ack["error"]["code"] == "rate_limited")
        .count();
    assert_eq!(accepted + limited, SOCKETS * EACH, "{acks:?}");
    // REST draws from the same budget: it is spent.
    let mut rest_accepted = 0;
    let mut rest_limited = 0;
    for _ in 0..3 {
        let rest = app
            .try_visitor_says(&session_token, json!({ "content": "over REST" }))
            .await;
        match rest.status {
            StatusCode::CREATED => rest_accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => rest_limited += 1,
            other => panic!("{other}: {:?}", rest.body),
        }
    }
    let earned = (started.elapsed().as_secs() / 3) as usize;
    assert!(
        accepted >= 20 && accepted + rest_accepted <= 20 + earned,
        "{accepted} of {} socket messages and {rest_accepted} of 3 REST messages accepted; \
         the budget was 20 and {earned} more",
        SOCKETS * EACH
    );
    assert!(rest_limited > 0, "REST shares the budget");
    let stored = app
        .db()
        .query_one_raw(sea_orm::Statement::from_string(
            app.db().get_database_backend(),
            format!(
                "SELECT COUNT(*) FROM events \
                 WHERE conversation_id = {conversation} AND author_type = 'visitor'"
            ),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(
        stored as usize,
        accepted + rest_accepted,
        "stored visitor messages"
    );
    for socket in sockets {
        socket.disconnect().await;
    }
}

/// One visitor session and one agent get a bounded number of sockets; the next handshake is
/// refused with a reason, and a socket that leaves makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_visitor_session_and_per_agent_are_capped() {
    let app = spawn_with(
        Storage::new(Backend::Embedded).await,
        Command::All,
        |settings| {
            settings.sockets_per_visitor = 3;
            settings.sockets_per_agent = 2;
        },
    )
    .await;
    let (_, session_token) = app.visitor(json!({})).await;
    let visitor_auth = json!({ "sessionToken": session_token });
    let mut visitors = Vec::new();
    for _ in 0..3 {
        visitors.push(
            sio::connect(&app.address, "/visitors", visitor_auth.clone())
                .await
                .expect("within the cap"),
        );
    }
    let refused = sio::connect(&app.address, "/visitors", visitor_auth.clone())
        .await
        .err()
        .expect("the fourth socket is refused");
    assert!(refused.contains("too many sockets"), "{refused}");
    // Another session has its own.
    let (_, other) = app.visitor(json!({})).await;
    sio::connect(&app.address, "/visitors", json!({ "sessionToken": other }))
        .await
        .expect("another session connects")
        .disconnect()
        .await;
    visitors.pop().unwrap().disconnect().await;
    let again = eventually(Duration::from_secs(10), "a freed place", || {
        let auth = visitor_auth.clone();
        let address = app.address.clone();
        async move { sio::connect(&address, "/visitors", auth).await.ok() }
    })
    .await;

    let admin = app.admin_token().await;
    let agent_auth = json!({ "token": admin });
    let first = sio::connect(&app.address, "/agents", agent_auth.clone())
        .await
        .unwrap();
    let second = sio::connect(&app.address, "/agents", agent_auth.clone())
        .await
        .unwrap();
    let refused = sio::connect(&app.address, "/agents", agent_auth)
        .await
        .err()
        .expect("the third agent socket is refused");
    assert!(refused.contains("too many sockets"), "{refused}");
    for socket in [first, second, again].into_iter().chain(visitors) {
        socket.disconnect().await;
    }
}

/// Pushes that find a socket's queue full are counted in `/metrics`
/// (`switchboard_socket_pushes_dropped_total`), not dropped silently. The client is a real
/// Engine.IO long-polling client that connects to `/visitors` and then stops polling (a stuck
/// tab): what is pushed to it waits in its queue (socketioxide's 128 packets), and the rest is
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_full_socket_queue_are_counted() {
    let app = spawn_app(Backend::Embedded).await;
    let reply = app.widget_session(json!({})).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let visitor_id = reply.body["visitorId"].as_i64().unwrap();
    let session_token = reply.body["sessionToken"].as_str().unwrap();
    let polling = format!("{}/socket.io/?EIO=4&transport=polling", app.address);
    let open = app
        .client
        .get(&polling)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: serde_json::Value =
        serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
    let sid = open["sid"].as_str().expect("a session id");
    let connect = app
        .client
        .post(format!("{polling}&sid={sid}"))
        .body(format!(
            "40/visitors,{}",
            json!({ "sessionToken": session_token })
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(connect.status(), StatusCode::OK);
    let room = switchboard::realtime::room::visitor(visitor_id);
    let visitors = switchboard::realtime::VISITORS;
    eventually(
        Duration::from_secs(10),
        "the socket in its room",
        || async {
            let sockets = app.push.sockets_in(visitors, room.clone()).await?;
            (!sockets.is_empty()).then_some(())
        },
    )
    .await;

    let name = "switchboard_socket_pushes_dropped_total";
    let labels = [("namespace", "/visitors")];
    let before = sample(&scrape(&app).await, name, &labels).unwrap_or_default();
    for index in 0..200 {
        app.push
            .emit(
                visitors,
                vec![room.clone()],
                "burst",
                &json!({ "index": index }),
            )
            .await;
    }
    let after = sample(&scrape(&app).await, name, &labels).unwrap_or_default();
    eprintln!("dropped pushes counted: {before} -> {after}");
    assert!(after - before >= 50.0, "{name}: {before} -> {after}");
}

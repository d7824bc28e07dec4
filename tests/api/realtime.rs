//! Socket.IO end to end, with a real client (rust_socketio over WebSocket) against the running
//! server: the conversation flow, queue positions, refused handshakes, isolation, presence
//! grace, catch-up after a reconnect, and several API nodes on Redis.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use switchboard::config::Command;

use crate::{
    both_backends,
    helpers::{Backend, Storage, eventually, spawn_app, spawn_with},
    sio::connect,
};

fn conversation_is(id: i64) -> impl Fn(&Value) -> bool {
    move |body| body["conversationId"] == id
}

both_backends! {
    async fn a_chat_over_sockets_from_queue_to_close(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (agent_id, agent_token) = app.agent_in_group(&admin, group, 2).await;
        let mut agent = app.agent_socket(&agent_token).await;

        let (conversation, session) = app.visitor(json!({ "initialMessage": "hello?" })).await;
        let mut visitor = app.visitor_socket(&session).await;
        // Nobody is online: it waits, and the agent's group hears it.
        let queued = agent.next_where("conversation:queued", conversation_is(conversation)).await;
        assert_eq!(queued["position"], 1);

        // The agent comes online over its socket and gets the chat.
        let me = agent.set_status("online").await;
        assert_eq!(me["status"], "online");
        let assigned = agent.next_where("conversation:assigned", conversation_is(conversation)).await;
        assert_eq!(assigned["agentId"], agent_id);
        let card = visitor.next("conversation:assigned").await;
        assert_eq!(card["agent"]["name"], "A agent");

        // Visitor → agent, with the client's id echoed for de-duplication.
        let sent = visitor
            .send_message(json!({ "content": "my order is late", "clientMessageId": "v-1" }))
            .await;
        assert_eq!(sent["clientMessageId"], "v-1");
        let heard = agent.next_where("message:new", |e| e["content"] == "my order is late").await;
        assert_eq!(heard["id"], sent["id"]);
        assert_eq!(heard["authorType"], "visitor");
        // Sending the same client id again stores nothing new and pushes nothing.
        let again = visitor
            .send_message(json!({ "content": "my order is late", "clientMessageId": "v-1" }))
            .await;
        assert_eq!(again["id"], sent["id"]);

        // Typing and seen go to the other side.
        agent.set_typing(json!({ "conversationId": conversation, "typing": true })).await;
        let typing = visitor.next("typing").await;
        assert_eq!((typing["from"].as_str(), typing["typing"].as_bool()), (Some("agent"), Some(true)));
        visitor.set_typing(json!({ "typing": true })).await;
        let typing = agent.next("typing").await;
        assert_eq!(typing["from"], "visitor");
        agent
            .ok("message:seen", json!({ "conversationId": conversation, "eventId": sent["id"] }))
            .await;
        let seen = visitor.next("message:seen").await;
        assert_eq!(seen["eventId"], sent["id"]);

        // Agent → visitor.
        let reply = agent
            .send_message(json!({ "conversationId": conversation, "content": "on its way", "clientMessageId": "a-1" }))
            .await;
        let heard = visitor.next_where("message:new", |e| e["content"] == "on its way").await;
        assert_eq!(heard["id"], reply["id"]);
        assert_eq!(heard["agentId"], agent_id);
        visitor
            .ok("message:seen", json!({ "eventId": reply["id"] }))
            .await;
        assert_eq!(agent.next("message:seen").await["by"], "visitor");
        // The resend above pushed nothing: the agent heard the visitor's message once.
        let repeats = agent
            .drain(Duration::from_millis(300))
            .await
            .into_iter()
            .filter(|(name, e)| name == "message:new" && e["content"] == "my order is late")
            .count();
        assert_eq!(repeats, 0);

        // The agent closes; both sides hear it.
        let closing = agent
            .close_conversation(json!({ "conversationId": conversation, "reason": "answered" }))
            .await;
        assert_eq!(closing["accepted"], true);
        let closed = agent.next_where("conversation:closed", conversation_is(conversation)).await;
        assert_eq!(closed["closedBy"], "agent");
        let ended = visitor.next("conversation:closed").await;
        assert_eq!(ended["closedBy"], "agent");
        // The agent's note stays with the agents.
        assert!(ended.get("reason").is_none(), "{ended}");
        app.conversation_becomes(&admin, conversation, "resolved").await;
    }
}

both_backends! {
    async fn visitors_hear_their_place_fall_as_agents_free_up(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (_, agent_token) = app.online_agent(&admin, group, 1).await;
        let agent = app.agent_socket(&agent_token).await;
        let (first, _) = app.visitor(json!({})).await;
        app.conversation_becomes(&admin, first, "active").await;
        let (second, _) = app.visitor(json!({})).await;
        let (third, third_session) = app.visitor(json!({})).await;
        let mut third_visitor = app.visitor_socket(&third_session).await;
        let place = third_visitor.next_where("queue:position", |p| p["position"] == 2).await;
        assert_eq!(place["conversationId"], third);

        agent.close_conversation(json!({ "conversationId": first })).await;
        app.conversation_becomes(&admin, second, "active").await;
        let place = third_visitor.next_where("queue:position", |p| p["position"] == 1).await;
        assert_eq!(place["conversationId"], third);
        // One chat was served in the last minutes: the estimate has a rate to go by.
        assert!(place["estimatedWaitSeconds"].as_u64().is_some(), "{place}");
    }
}

both_backends! {
    async fn handshakes_without_valid_credentials_are_refused(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        for (auth, why) in [
            (json!({}), "missing auth.token"),
            (json!({ "token": 42 }), "missing auth.token"),
            (json!({ "token": "not-a-jwt" }), "invalid"),
        ] {
            let refusal = connect(&app.address, "/agents", auth).await.err().expect("refused");
            assert!(refusal.contains(why), "{refusal}");
        }
        for auth in [json!({}), json!({ "sessionToken": "nope" })] {
            let refusal = connect(&app.address, "/visitors", auth).await.err().expect("refused");
            assert!(refusal.contains("sessionToken") || refusal.contains("unknown session"), "{refusal}");
        }

        // A deleted agent: its open socket is disconnected and its token no longer connects.
        let (id, token) = app.agent_with_role(&admin, "agent").await;
        let mut socket = app.agent_socket(&token).await;
        app.delete_agent(&admin, id).await;
        socket.next("disconnect").await;
        let refusal = connect(&app.address, "/agents", json!({ "token": token })).await.err().expect("refused");
        assert!(refusal.contains("revoked"), "{refusal}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    // Distributed mode: the JWT secret is the test's own, so a token can be minted here.
    let app = spawn_app(Backend::Distributed).await;
    let admin = app.admin_token().await;
    let token = app.mint_token(&admin, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refusal = connect(&app.address, "/agents", json!({ "token": token }))
        .await
        .err()
        .expect("refused");
    assert!(refusal.contains("expired"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_crosses_accounts() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let other_admin = app.second_account_admin().await;
    let mut outsider = app.agent_socket(&other_admin).await;
    let mut insider = app.agent_socket(&admin).await;
    let group = app.default_group(&admin).await;
    let (_, agent_token) = app.online_agent(&admin, group, 1).await;
    let account = entity::groups::Entity::find_by_id(group)
        .one(app.db())
        .await
        .unwrap()
        .expect("the group")
        .account_id;
    let (conversation, session) = app
        .visitor(json!({ "accountId": account, "initialMessage": "hi" }))
        .await;
    app.conversation_becomes(&admin, conversation, "active")
        .await;
    let mut visitor = app.visitor_socket(&session).await;
    let agent = app.agent_socket(&agent_token).await;
    // A supervisor may watch any conversation of its account.
    insider
        .ok(
            "conversation:join",
            json!({ "conversationId": conversation }),
        )
        .await;
    agent
        .send_message(json!({ "conversationId": conversation, "content": "hello" }))
        .await;
    // The account's supervisor hears it all; the other account's admin nothing.
    insider
        .next_where("conversation:assigned", conversation_is(conversation))
        .await;
    insider
        .next_where("message:new", |e| e["content"] == "hello")
        .await;
    visitor
        .next_where("message:new", |e| e["content"] == "hello")
        .await;
    outsider
        .none("conversation:assigned", Duration::from_millis(500))
        .await;
    for event in [
        "message:new",
        "queue:update",
        "agent:status",
        "conversation:queued",
    ] {
        outsider.none(event, Duration::ZERO).await;
    }
    // Nor can it reach into the conversation.
    assert_eq!(
        outsider
            .refused(
                "conversation:join",
                json!({ "conversationId": conversation })
            )
            .await,
        "not_found"
    );
    assert_eq!(
        outsider
            .refused(
                "message:send",
                json!({ "conversationId": conversation, "content": "boo" })
            )
            .await,
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_inside_the_grace_costs_nothing_and_past_it_chats_move() {
    let storage = Storage::new(Backend::Embedded).await;
    let app = spawn_with(storage, Command::All, |s| s.presence_grace_seconds = 2).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (agent_id, token) = app.agent_in_group(&admin, group, 2).await;
    let socket = app.agent_socket(&token).await;
    socket.set_status("online").await;
    let (conversation, _) = app.visitor(json!({})).await;
    app.conversation_becomes(&admin, conversation, "active")
        .await;

    // A reload: the socket drops and a new one connects at once.
    socket.disconnect().await;
    let socket = app.agent_socket(&token).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let me = app.agent(&admin, agent_id).await;
    assert_eq!(me["status"], "online", "{me}");
    let view = app.conversation(&admin, conversation).await;
    assert_eq!(
        (view["status"].as_str(), view["assignedAgentId"].as_i64()),
        (Some("active"), Some(agent_id))
    );

    // Gone for good: after the grace the agent is offline and the chat waits again.
    socket.disconnect().await;
    eventually(
        Duration::from_secs(15),
        "the agent to go offline",
        || async {
            let me = app.try_agent(&admin, agent_id).await.body;
            (me["status"] == "offline").then_some(())
        },
    )
    .await;
    let view = app
        .conversation_becomes(&admin, conversation, "pending")
        .await;
    assert_eq!(view["assignedAgentId"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_missed_while_away_are_read_after_a_reconnect() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (_, agent_token) = app.online_agent(&admin, group, 1).await;
    let (conversation, session) = app.visitor(json!({ "initialMessage": "first" })).await;
    app.conversation_becomes(&admin, conversation, "active")
        .await;
    let visitor = app.visitor_socket(&session).await;
    let first = visitor.list_messages(json!({})).await;
    let last_seen = first["events"].as_array().unwrap().last().unwrap()["id"].clone();
    visitor.disconnect().await;

    // Written while the visitor is away: stored.
    let agent = app.agent_socket(&agent_token).await;
    for text in ["are you there?", "I can help"] {
        agent
            .send_message(json!({ "conversationId": conversation, "content": text }))
            .await;
    }
    let visitor = app.visitor_socket(&session).await;
    let missed = visitor.list_messages(json!({ "after": last_seen })).await;
    let texts: Vec<&str> = missed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["are you there?", "I can help"]);
    // Agents catch up the same way, system notes included.
    let all = agent
        .list_messages(json!({ "conversationId": conversation }))
        .await;
    assert!(
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "system")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_nodes_and_a_worker_share_their_rooms_through_redis() {
    let storage = Storage::new(Backend::Distributed).await;
    switchboard::startup::prepare_database(&storage.settings(), Command::Migrate)
        .await
        .expect("migrated");
    let node_a = spawn_with(storage.clone(), Command::Serve, |_| {}).await;
    let node_b = spawn_with(storage.clone(), Command::Serve, |_| {}).await;
    let worker = spawn_with(storage.clone(), Command::Work, |_| {}).await;
    let admin = node_a.admin_token().await;
    let group = node_a.default_group(&admin).await;
    let (agent_id, token) = node_a.online_agent(&admin, group, 1).await;
    let mut agent = node_a.agent_socket(&token).await;

    // The session is opened on node B; the worker process assigns it; node A's socket hears it.
    let (conversation, session) = node_b.visitor(json!({ "initialMessage": "hi" })).await;
    let assigned = agent
        .next_where("conversation:assigned", conversation_is(conversation))
        .await;
    assert_eq!(assigned["agentId"], agent_id);
    // The worker's push also put node A's socket in the conversation's room.
    let mut visitor = node_b.visitor_socket(&session).await;
    visitor
        .send_message(json!({ "content": "from node B" }))
        .await;
    agent
        .next_where("message:new", |e| e["content"] == "from node B")
        .await;
    agent
        .send_message(json!({ "conversationId": conversation, "content": "from node A" }))
        .await;
    visitor
        .next_where("message:new", |e| e["content"] == "from node A")
        .await;
    // A close handled by the worker reaches both nodes.
    agent
        .close_conversation(json!({ "conversationId": conversation }))
        .await;
    visitor.next("conversation:closed").await;
    agent
        .next_where("conversation:closed", conversation_is(conversation))
        .await;
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_other_origins_may_poll_and_call() {
    let app = spawn_app(Backend::Embedded).await;
    let origin = "https://shop.example";
    for path in ["/socket.io/?EIO=4&transport=polling", "/v1/widget/session"] {
        let preflight = app
            .client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", app.address))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            preflight.status().is_success(),
            "{path}: {}",
            preflight.status()
        );
        let allowed: Vec<_> = preflight
            .headers()
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        assert_eq!(allowed, ["*"], "{path}");
    }
    // A long-polling handshake answers with the CORS header once.
    let open = app
        .client
        .get(format!(
            "{}/socket.io/?EIO=4&transport=polling",
            app.address
        ))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    assert_eq!(
        open.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert!(open.text().await.unwrap().contains("\"sid\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_count_once_whether_they_close_together_or_one_stays() {
    let storage = Storage::new(Backend::Embedded).await;
    let app = spawn_with(storage, Command::All, |s| s.presence_grace_seconds = 2).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (agent_id, token) = app.agent_in_group(&admin, group, 2).await;
    let status = || async {
        app.try_agent(&admin, agent_id).await.body["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // One of two tabs closes: the other keeps the agent online past the grace.
    let first = app.agent_socket(&token).await;
    let second = app.agent_socket(&token).await;
    first.set_status("online").await;
    first.disconnect().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status().await, "online");

    // Both close at the same moment (a laptop lid): neither counts the other, the agent goes.
    let third = app.agent_socket(&token).await;
    tokio::join!(second.disconnect(), third.disconnect());
    eventually(
        Duration::from_secs(15),
        "the agent to go offline",
        || async { (status().await == "offline").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_node_died_silently_is_dropped_by_the_reconciler() {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (agent_id, _) = app.online_agent(&admin, group, 1).await;
    let (conversation, _) = app.visitor(json!({})).await;
    app.conversation_becomes(&admin, conversation, "active")
        .await;
    // What a node that crashed with the agent's socket leaves: connected, never dropped, and
    // nobody vouching for it since.
    let long_ago = chrono::Utc::now() - chrono::Duration::minutes(10);
    entity::agents::ActiveModel {
        id: Set(agent_id),
        connected_at: Set(Some(long_ago)),
        last_seen_at: Set(Some(long_ago)),
        ..Default::default()
    }
    .update(app.db())
    .await
    .unwrap();
    let repairs = jobs::reconcile::reconcile(&app.state.job_context())
        .await
        .unwrap();
    assert_eq!(repairs.agents_dropped, 1);
    // A second pass finds nothing more to do.
    let again = jobs::reconcile::reconcile(&app.state.job_context())
        .await
        .unwrap();
    assert_eq!(again.agents_dropped, 0);
    app.conversation_becomes(&admin, conversation, "pending")
        .await;
    let me = app.agent(&admin, agent_id).await;
    assert_eq!(me["status"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_lives_no_longer_than_its_token() {
    let app = spawn_app(Backend::Distributed).await;
    let admin = app.admin_token().await;
    let token = app.mint_token(&admin, Duration::from_secs(2)).await;
    let mut socket = app.agent_socket(&token).await;
    socket.set_status("away").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Expired: refused, and the socket is closed (by the request or by the heartbeat).
    let ack = socket
        .request("status:set", json!({ "status": "online" }))
        .await;
    if ack["ok"] == true {
        panic!("an expired token was accepted: {ack}");
    }
    socket.next("disconnect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_token_was_revoked_without_a_push_is_dropped_by_the_heartbeat() {
    // A revocation whose sign-out push was lost: written straight to the database, so only the
    // heartbeat's check can close the socket.
    let app = spawn_with(Storage::new(Backend::Embedded).await, Command::All, |s| {
        s.presence_grace_seconds = 3;
    })
    .await;
    let admin = app.admin_token().await;
    let (id, token) = app.agent_with_role(&admin, "agent").await;
    let (_, bystander_token) = app.agent_with_role(&admin, "agent").await;
    let mut socket = app.agent_socket(&token).await;
    let mut bystander = app.agent_socket(&bystander_token).await;
    socket.set_status("away").await;
    let agent = entity::agents::Entity::find_by_id(id)
        .one(app.db())
        .await
        .unwrap()
        .unwrap();
    entity::agents::Entity::update_many()
        .col_expr(
            entity::agents::Column::TokenVersion,
            sea_orm::sea_query::Expr::value(agent.token_version + 1),
        )
        .filter(entity::agents::Column::Id.eq(id))
        .exec(app.db())
        .await
        .unwrap();
    socket.next("disconnect").await;
    // Another agent's socket stays.
    bystander.none("disconnect", Duration::from_secs(2)).await;
    bystander.set_status("away").await;
}

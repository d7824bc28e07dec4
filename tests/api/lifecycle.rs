//! A conversation's life: queued, assigned, talked, transferred, closed — through the real jobs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

fn texts(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"].as_str().unwrap().to_owned())
        .collect()
}

both_backends! {
    async fn a_visitor_is_queued_then_assigned_to_an_online_agent(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;

        let reply = app
            .widget_session(json!({ "name": "Vera", "email": "vera@example.com", "initialMessage": "Hi, I need help" }))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        assert_eq!(reply.body["status"], "pending");
        assert_eq!(reply.body["queuePosition"], 1);
        let id = reply.body["conversationId"].as_i64().unwrap();
        let first_thread = reply.body["threadId"].as_i64().unwrap();
        let visitor = reply.body["sessionToken"].as_str().unwrap().to_owned();
        // The enqueue job says where it stands while nobody can take it.
        eventually(std::time::Duration::from_secs(10), "the queued event", || async {
            let events = app.get(&format!("/v1/threads/{first_thread}/events"), &admin).await;
            texts(&events.body["items"]).contains(&"Queued at position 1 in General".to_owned()).then_some(())
        })
        .await;
        let (agent_id, agent) = app.online_agent(&admin, group, 6).await;

        let conversation = app.conversation_becomes(&admin, id, "active").await;
        assert_eq!(conversation["assignedAgentId"], agent_id);
        let thread = conversation["activeThreadId"].as_i64().unwrap();
        assert_ne!(thread, first_thread, "assignment opens a new thread");
        let me = app.get("/v1/auth/me", &agent).await;
        assert_eq!(me.body["activeChats"], 1);

        // The pre-assignment thread says why it closed; the new one says who joined and why.
        let before = app.get(&format!("/v1/threads/{first_thread}/events"), &admin).await;
        let before = texts(&before.body["items"]);
        assert_eq!(before[0], "Hi, I need help");
        assert!(before.iter().any(|t| t == "Queued at position 1 in General"), "{before:?}");
        let after = app.get(&format!("/v1/threads/{thread}/events"), &agent).await;
        let after = texts(&after.body["items"]);
        assert!(after[0].starts_with("Assigned to A agent: least loaded, 1 of 6 chats"), "{after:?}");

        // They talk; the visitor sees the agent's card and every event.
        let reply = app.post(&format!("/v1/threads/{thread}/events"), &agent, json!({ "content": "Hello Vera!", "clientMessageId": "m-1" })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        assert_eq!(reply.body["clientMessageId"], "m-1");
        let again = app.post(&format!("/v1/threads/{thread}/events"), &agent, json!({ "content": "Hello Vera!", "clientMessageId": "m-1" })).await;
        assert_eq!(again.status, StatusCode::OK, "a resent message is stored once");
        assert_eq!(again.body["id"], reply.body["id"]);
        let sent = app.request(Method::POST, "/v1/widget/messages", Some(&visitor), Some(json!({ "content": "Thanks!" }))).await;
        assert_eq!(sent.status, StatusCode::CREATED);
        let seen = app.request(Method::GET, "/v1/widget/conversation", Some(&visitor), None).await;
        assert_eq!(seen.body["status"], "active");
        assert_eq!(seen.body["agent"]["name"], "A agent");
        assert!(
            seen.body["events"].as_array().unwrap().iter().all(|e| e["kind"] == "message" && e["metadata"].is_null()),
            "visitors see messages, not routing notes"
        );
        let all = texts(&seen.body["events"]);
        assert_eq!(all.iter().filter(|t| *t == "Hello Vera!").count(), 1);
        assert_eq!(all.last().unwrap(), "Thanks!");
        // Activity timestamps are written in batches, a moment later.
        let conversation = eventually(std::time::Duration::from_secs(5), "the first response to be recorded", || async {
            let view = app.get(&format!("/v1/conversations/{id}"), &admin).await.body;
            (view["firstResponseAt"].is_string() && view["lastVisitorActivityAt"] != view["createdAt"]).then_some(view)
        })
        .await;
        assert!(conversation["lastAgentActivityAt"].is_string());

        // The agent resolves it: capacity comes back, the visitor can no longer write.
        let closed = app.request(Method::POST, &format!("/v1/conversations/{id}/close"), Some(&agent), None).await;
        assert_eq!(closed.status, StatusCode::ACCEPTED, "{:?}", closed.body);
        let conversation = app.conversation_becomes(&admin, id, "resolved").await;
        assert!(conversation["resolvedAt"].is_string());
        assert_eq!(app.get("/v1/auth/me", &agent).await.body["activeChats"], 0);
        let late = app.request(Method::POST, "/v1/widget/messages", Some(&visitor), Some(json!({ "content": "one more" }))).await;
        assert_eq!(late.status, StatusCode::CONFLICT);
        let stats = app.get(&format!("/v1/agents/{agent_id}/stats"), &agent).await;
        assert_eq!(stats.body["assignmentsTotal"], 1);
        assert_eq!(stats.body["conversationsFinished"], 1);
    }
}

both_backends! {
    async fn the_line_is_served_by_priority_then_age_and_capacity_is_never_exceeded(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let mut ids = Vec::new();
        for priority in ["low", "normal", "high", "normal"] {
            let (id, _) = app.visitor(json!({ "priority": priority })).await;
            ids.push(id);
        }
        let (low, normal_1, high, normal_2) = (ids[0], ids[1], ids[2], ids[3]);
        let queue = app.get("/v1/queue", &admin).await;
        let line: Vec<i64> = queue.body["groups"][0]["waiting"].as_array().unwrap().iter().map(|w| w["conversationId"].as_i64().unwrap()).collect();
        assert_eq!(line, [high, normal_1, normal_2, low]);
        assert_eq!(queue.body["groups"][0]["waitingCount"], 4);
        assert_eq!(app.get(&format!("/v1/conversations/{low}"), &admin).await.body["queuePosition"], 4);

        // One agent with room for two: the two at the head, nothing more.
        let (_, agent) = app.online_agent(&admin, group, 2).await;
        app.conversation_becomes(&admin, high, "active").await;
        app.conversation_becomes(&admin, normal_1, "active").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(app.get(&format!("/v1/conversations/{normal_2}"), &admin).await.body["status"], "pending");
        assert_eq!(app.get(&format!("/v1/conversations/{normal_2}"), &admin).await.body["queuePosition"], 1);
        assert_eq!(app.get("/v1/auth/me", &agent).await.body["activeChats"], 2);

        // A freed slot goes to the next in line.
        app.request(Method::POST, &format!("/v1/conversations/{high}/close"), Some(&agent), None).await;
        app.conversation_becomes(&admin, normal_2, "active").await;
        assert_eq!(app.get(&format!("/v1/conversations/{low}"), &admin).await.body["status"], "pending");
    }
}

both_backends! {
    async fn an_agent_going_offline_hands_its_chats_to_another_and_never_gets_them_back(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (first_id, first) = app.online_agent(&admin, group, 3).await;
        let (id, _) = app.visitor(json!({})).await;
        let conversation = app.conversation_becomes(&admin, id, "active").await;
        assert_eq!(conversation["assignedAgentId"], first_id);

        let (second_id, second) = app.online_agent(&admin, group, 3).await;
        app.set_status(&first, "offline").await;
        let conversation = eventually(std::time::Duration::from_secs(15), "the hand-over", || async {
            let reply = app.get(&format!("/v1/conversations/{id}"), &admin).await;
            (reply.body["assignedAgentId"] == second_id).then_some(reply.body)
        })
        .await;
        assert_eq!(conversation["reassignmentCount"], 1);
        assert_eq!(app.get("/v1/auth/me", &first).await.body["activeChats"], 0);
        assert_eq!(app.get("/v1/auth/me", &second).await.body["activeChats"], 1);

        // The first agent comes back; the second leaves: the chat waits rather than return.
        app.set_status(&first, "online").await;
        app.set_status(&second, "offline").await;
        app.conversation_becomes(&admin, id, "pending").await;
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let conversation = app.get(&format!("/v1/conversations/{id}"), &admin).await;
        assert_eq!(conversation.body["status"], "pending", "never back to an agent that dropped it");
        assert_eq!(app.get("/v1/auth/me", &first).await.body["activeChats"], 0);
    }
}

#[tokio::test]
async fn transfers_claims_and_pickups_respect_capacity() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (ana_id, ana) = app.online_agent(&admin, group, 1).await;
    let (id, _) = app.visitor(json!({})).await;
    app.conversation_becomes(&admin, id, "active").await;
    let (bo_id, bo) = app.online_agent(&admin, group, 1).await;
    let (other_id, _) = app.visitor(json!({})).await;
    let other = app.conversation_becomes(&admin, other_id, "active").await;
    assert_eq!(other["assignedAgentId"], bo_id, "Ana is full");

    // Bo is full: a transfer to Bo is refused and nothing moves.
    let refused = app
        .post(
            &format!("/v1/conversations/{id}/transfer"),
            &ana,
            json!({ "agentId": bo_id }),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    let still = app.get(&format!("/v1/conversations/{id}"), &admin).await;
    assert_eq!(still.body["assignedAgentId"], ana_id);
    assert_eq!(still.body["reassignmentCount"], 0);
    assert_eq!(app.get("/v1/auth/me", &ana).await.body["activeChats"], 1);

    // Bo frees up; the transfer goes through at once.
    app.request(
        Method::POST,
        &format!("/v1/conversations/{other_id}/close"),
        Some(&bo),
        None,
    )
    .await;
    app.conversation_becomes(&admin, other_id, "resolved").await;
    let moved = app
        .post(
            &format!("/v1/conversations/{id}/transfer"),
            &ana,
            json!({ "agentId": bo_id, "reason": "billing question" }),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);
    assert_eq!(moved.body["assignedAgentId"], bo_id);
    assert_eq!(app.get("/v1/auth/me", &ana).await.body["activeChats"], 0);
    assert_eq!(app.get("/v1/auth/me", &bo).await.body["activeChats"], 1);
    // Ana no longer holds it: she may not transfer or close it.
    let not_hers = app
        .post(
            &format!("/v1/conversations/{id}/transfer"),
            &ana,
            json!({ "agentId": ana_id }),
        )
        .await;
    assert_eq!(not_hers.status, StatusCode::FORBIDDEN);

    // Manual assignment and pick-up go through the same claim.
    app.set_status(&ana, "away").await;
    let (waiting, _) = app.visitor(json!({})).await;
    let to_away = app
        .post(
            &format!("/v1/conversations/{waiting}/assign"),
            &admin,
            json!({ "agentId": ana_id }),
        )
        .await;
    assert_eq!(
        to_away.status,
        StatusCode::CONFLICT,
        "an away agent gets nothing"
    );
    app.set_status(&ana, "online").await;
    let picked = eventually(
        std::time::Duration::from_secs(10),
        "Ana to get the waiting chat",
        || async {
            let reply = app
                .get(&format!("/v1/conversations/{waiting}"), &admin)
                .await;
            (reply.body["status"] == "active").then_some(reply.body)
        },
    )
    .await;
    assert_eq!(picked["assignedAgentId"], ana_id);
    let (late, _) = app.visitor(json!({})).await;
    let full = app
        .request(
            Method::POST,
            &format!("/v1/conversations/{late}/pickup"),
            Some(&ana),
            None,
        )
        .await;
    assert_eq!(full.status, StatusCode::CONFLICT, "Ana is at capacity");
    let closed_assign = app
        .post(
            &format!("/v1/conversations/{other_id}/assign"),
            &admin,
            json!({ "agentId": ana_id }),
        )
        .await;
    assert_eq!(
        closed_assign.status,
        StatusCode::CONFLICT,
        "a resolved conversation is not assigned"
    );

    // A transfer to a group puts it back in line, the transferring agent excluded.
    let sales = app
        .post("/v1/groups", &admin, json!({ "name": "Sales" }))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let reply = app
        .post(
            &format!("/v1/conversations/{id}/transfer"),
            &bo,
            json!({ "groupId": sales }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let requeued = app.conversation_becomes(&admin, id, "pending").await;
    assert_eq!(requeued["groupId"], sales);
    let refused = app.delete(&format!("/v1/groups/{sales}"), &admin).await;
    assert_eq!(
        refused.status,
        StatusCode::CONFLICT,
        "a group with a waiting chat stays"
    );
    assert_eq!(requeued["assignedAgentId"], Value::Null);
    // Bo's freed slot serves what waits in his group.
    let late = app.conversation_becomes(&admin, late, "active").await;
    assert_eq!(late["assignedAgentId"], bo_id);

    // Reopen puts a resolved conversation back in line.
    let reopened = app
        .request(
            Method::POST,
            &format!("/v1/conversations/{other_id}/reopen"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(reopened.status, StatusCode::OK, "{:?}", reopened.body);
    assert_eq!(reopened.body["status"], "pending");
    let twice = app
        .request(
            Method::POST,
            &format!("/v1/conversations/{other_id}/reopen"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn round_robin_rotates_and_sticky_returns_to_the_same_agent() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let rr = app
        .post(
            "/v1/groups",
            &admin,
            json!({ "name": "Rotation", "routingStrategy": "round_robin" }),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let (a, _) = app.online_agent(&admin, rr, 10).await;
    let (b, _) = app.online_agent(&admin, rr, 10).await;
    let mut served = Vec::new();
    for _ in 0..4 {
        let (id, _) = app.visitor(json!({ "groupId": rr })).await;
        served.push(
            app.conversation_becomes(&admin, id, "active").await["assignedAgentId"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(served.iter().filter(|x| **x == a).count(), 2, "{served:?}");
    assert_eq!(served.iter().filter(|x| **x == b).count(), 2, "{served:?}");
    assert!(
        served.windows(2).all(|w| w[0] != w[1]),
        "alternates: {served:?}"
    );

    let sticky = app
        .post(
            "/v1/groups",
            &admin,
            json!({ "name": "Sticky", "routingStrategy": "sticky" }),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let (c, c_token) = app.online_agent(&admin, sticky, 10).await;
    let (d, _) = app.online_agent(&admin, sticky, 10).await;
    let (id, _) = app.visitor(json!({ "groupId": sticky })).await;
    let first = app.conversation_becomes(&admin, id, "active").await["assignedAgentId"]
        .as_i64()
        .unwrap();
    assert!(first == c || first == d);
    let holder = if first == c {
        c_token.clone()
    } else {
        app.admin_token().await
    };
    app.request(
        Method::POST,
        &format!("/v1/conversations/{id}/close"),
        Some(&holder),
        None,
    )
    .await;
    app.conversation_becomes(&admin, id, "resolved").await;
    app.request(
        Method::POST,
        &format!("/v1/conversations/{id}/reopen"),
        Some(&admin),
        None,
    )
    .await;
    let again = app.conversation_becomes(&admin, id, "active").await;
    assert_eq!(
        again["assignedAgentId"], first,
        "the visitor gets the same agent back"
    );
}

//! A conversation's life: queued, assigned, talked, transferred, closed — through the real jobs.

use reqwest::StatusCode;
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
            let events = app.try_thread_events(&admin, first_thread).await;
            texts(&events.body["items"]).contains(&"Queued at position 1 in General".to_owned()).then_some(())
        })
        .await;
        let (agent_id, agent) = app.online_agent(&admin, group, 6).await;

        let conversation = app.conversation_becomes(&admin, id, "active").await;
        assert_eq!(conversation["assignedAgentId"], agent_id);
        let thread = conversation["activeThreadId"].as_i64().unwrap();
        assert_ne!(thread, first_thread, "assignment opens a new thread");
        let me = app.me(&agent).await;
        assert_eq!(me["activeChats"], 1);

        // The pre-assignment thread says why it closed; the new one says who joined and why.
        let before = app.thread_events(&admin, first_thread).await;
        let before = texts(&before["items"]);
        assert_eq!(before[0], "Hi, I need help");
        assert!(before.iter().any(|t| t == "Queued at position 1 in General"), "{before:?}");
        let after = app.thread_events(&agent, thread).await;
        let after = texts(&after["items"]);
        assert!(after[0].starts_with("Assigned to A agent: least loaded, 1 of 6 chats"), "{after:?}");

        // They talk; the visitor sees the agent's card and every event.
        let reply = app.try_agent_says(&agent, thread, json!({ "content": "Hello Vera!", "clientMessageId": "m-1" })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        assert_eq!(reply.body["clientMessageId"], "m-1");
        let again = app.try_agent_says(&agent, thread, json!({ "content": "Hello Vera!", "clientMessageId": "m-1" })).await;
        assert_eq!(again.status, StatusCode::OK, "a resent message is stored once");
        assert_eq!(again.body["id"], reply.body["id"]);
        app.visitor_says(&visitor, "Thanks!").await;
        let seen = app.widget_conversation(&visitor).await;
        assert_eq!(seen["status"], "active");
        assert_eq!(seen["agent"]["name"], "A agent");
        assert!(
            seen["events"].as_array().unwrap().iter().all(|e| e["kind"] == "message" && e["metadata"].is_null()),
            "visitors see messages, not routing notes"
        );
        let all = texts(&seen["events"]);
        assert_eq!(all.iter().filter(|t| *t == "Hello Vera!").count(), 1);
        assert_eq!(all.last().unwrap(), "Thanks!");
        // Activity timestamps are written in batches, a moment later.
        let conversation = eventually(std::time::Duration::from_secs(5), "the first response to be recorded", || async {
            let view = app.try_conversation(&admin, id).await.body;
            (view["firstResponseAt"].is_string() && view["lastVisitorActivityAt"] != view["createdAt"]).then_some(view)
        })
        .await;
        assert!(conversation["lastAgentActivityAt"].is_string());

        // The agent resolves it: capacity comes back, the visitor can no longer write.
        app.close_conversation(&agent, id).await;
        let conversation = app.conversation_becomes(&admin, id, "resolved").await;
        assert!(conversation["resolvedAt"].is_string());
        assert_eq!(app.me(&agent).await["activeChats"], 0);
        let late = app.try_visitor_says(&visitor, json!({ "content": "one more" })).await;
        assert_eq!(late.status, StatusCode::CONFLICT);
        let stats = app.agent_stats(&agent, agent_id).await;
        assert_eq!(stats["assignmentsTotal"], 1);
        assert_eq!(stats["conversationsFinished"], 1);
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
        let queue = app.queue(&admin).await;
        let line: Vec<i64> = queue["groups"][0]["waiting"].as_array().unwrap().iter().map(|w| w["conversationId"].as_i64().unwrap()).collect();
        assert_eq!(line, [high, normal_1, normal_2, low]);
        assert_eq!(queue["groups"][0]["waitingCount"], 4);
        assert_eq!(app.conversation(&admin, low).await["queuePosition"], 4);

        // One agent with room for two: the two at the head, nothing more.
        let (_, agent) = app.online_agent(&admin, group, 2).await;
        app.conversation_becomes(&admin, high, "active").await;
        app.conversation_becomes(&admin, normal_1, "active").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(app.conversation(&admin, normal_2).await["status"], "pending");
        assert_eq!(app.conversation(&admin, normal_2).await["queuePosition"], 1);
        assert_eq!(app.me(&agent).await["activeChats"], 2);

        // A freed slot goes to the next in line.
        app.close_conversation(&agent, high).await;
        app.conversation_becomes(&admin, normal_2, "active").await;
        assert_eq!(app.conversation(&admin, low).await["status"], "pending");
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
            let reply = app.try_conversation(&admin, id).await;
            (reply.body["assignedAgentId"] == second_id).then_some(reply.body)
        })
        .await;
        assert_eq!(conversation["reassignmentCount"], 1);
        assert_eq!(app.me(&first).await["activeChats"], 0);
        assert_eq!(app.me(&second).await["activeChats"], 1);

        // The first agent comes back; the second leaves: the chat waits rather than return.
        app.set_status(&first, "online").await;
        app.set_status(&second, "offline").await;
        app.conversation_becomes(&admin, id, "pending").await;
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let conversation = app.conversation(&admin, id).await;
        assert_eq!(conversation["status"], "pending", "never back to an agent that dropped it");
        assert_eq!(app.me(&first).await["activeChats"], 0);
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
        .try_transfer(&ana, id, json!({ "agentId": bo_id }))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    let still = app.conversation(&admin, id).await;
    assert_eq!(still["assignedAgentId"], ana_id);
    assert_eq!(still["reassignmentCount"], 0);
    assert_eq!(app.me(&ana).await["activeChats"], 1);

    // Bo frees up; the transfer goes through at once.
    app.close_conversation(&bo, other_id).await;
    app.conversation_becomes(&admin, other_id, "resolved").await;
    let moved = app
        .try_transfer(
            &ana,
            id,
            json!({ "agentId": bo_id, "reason": "billing question" }),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);
    assert_eq!(moved.body["assignedAgentId"], bo_id);
    assert_eq!(app.me(&ana).await["activeChats"], 0);
    assert_eq!(app.me(&bo).await["activeChats"], 1);
    // Ana no longer holds it: she may not transfer or close it.
    let not_hers = app
        .try_transfer(&ana, id, json!({ "agentId": ana_id }))
        .await;
    assert_eq!(not_hers.status, StatusCode::FORBIDDEN);

    // Manual assignment and pick-up go through the same claim.
    app.set_status(&ana, "away").await;
    let (waiting, _) = app.visitor(json!({})).await;
    let to_away = app.try_assign(&admin, waiting, ana_id).await;
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
            let reply = app.try_conversation(&admin, waiting).await;
            (reply.body["status"] == "active").then_some(reply.body)
        },
    )
    .await;
    assert_eq!(picked["assignedAgentId"], ana_id);
    let (late, _) = app.visitor(json!({})).await;
    let full = app.try_pickup(&ana, late).await;
    assert_eq!(full.status, StatusCode::CONFLICT, "Ana is at capacity");
    let closed_assign = app.try_assign(&admin, other_id, ana_id).await;
    assert_eq!(
        closed_assign.status,
        StatusCode::CONFLICT,
        "a resolved conversation is not assigned"
    );

    // A transfer to a group puts it back in line, the transferring agent excluded.
    let sales = app.create_group(&admin, json!({ "name": "Sales" })).await["id"]
        .as_i64()
        .unwrap();
    let reply = app.try_transfer(&bo, id, json!({ "groupId": sales })).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let requeued = app.conversation_becomes(&admin, id, "pending").await;
    assert_eq!(requeued["groupId"], sales);
    let refused = app.try_delete_group(&admin, sales).await;
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
    let reopened = app.reopen(&admin, other_id).await;
    assert_eq!(reopened["status"], "pending");
    let twice = app.try_reopen(&admin, other_id).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn round_robin_rotates_and_sticky_returns_to_the_same_agent() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let rr = app
        .create_group(
            &admin,
            json!({ "name": "Rotation", "routingStrategy": "round_robin" }),
        )
        .await["id"]
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
        .create_group(
            &admin,
            json!({ "name": "Sticky", "routingStrategy": "sticky" }),
        )
        .await["id"]
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
    app.close_conversation(&holder, id).await;
    app.conversation_becomes(&admin, id, "resolved").await;
    app.reopen(&admin, id).await;
    let again = app.conversation_becomes(&admin, id, "active").await;
    assert_eq!(
        again["assignedAgentId"], first,
        "the visitor gets the same agent back"
    );
}

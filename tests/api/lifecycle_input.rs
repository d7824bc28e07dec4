//! Bad input to the conversation lifecycle gets a clear 4xx and changes nothing: no row is
//! written, no conversation moves, no agent's counter or presence changes.

use entity::{
    agents, assignments, conversations,
    enums::{AgentStatus, ConversationStatus},
    events, threads, visitors,
};
use reqwest::{Method, StatusCode};
use sea_orm::{EntityTrait, PaginatorTrait, QueryOrder};
use serde_json::{Map, Value, json};

use crate::{both_backends, helpers::*};

/// A conversation's id, status, agent, group, reassignments and active thread.
type ConversationState = (i64, ConversationStatus, Option<i64>, i64, i32, Option<i64>);

/// What a refused request must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct Footprint {
    /// Rows of conversations, visitors, events, assignments, threads.
    rows: [u64; 5],
    /// Per agent: id, counter, presence, accepting.
    agents: Vec<(i64, i32, AgentStatus, bool)>,
    conversations: Vec<ConversationState>,
}

async fn footprint(app: &TestApp) -> Footprint {
    let db = app.db();
    Footprint {
        rows: [
            conversations::Entity::find().count(db).await.unwrap(),
            visitors::Entity::find().count(db).await.unwrap(),
            events::Entity::find().count(db).await.unwrap(),
            assignments::Entity::find().count(db).await.unwrap(),
            threads::Entity::find().count(db).await.unwrap(),
        ],
        agents: agents::Entity::find()
            .order_by_asc(agents::Column::Id)
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.id, a.active_chats, a.status, a.accepting_chats))
            .collect(),
        conversations: conversations::Entity::find()
            .order_by_asc(conversations::Column::Id)
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|c| {
                (
                    c.id,
                    c.status,
                    c.assigned_agent_id,
                    c.group_id,
                    c.reassignment_count,
                    c.active_thread_id,
                )
            })
            .collect(),
    }
}

/// Asserts `reply` is the refusal `status` with its error code and a message.
fn refused(reply: &Reply, status: StatusCode, case: &str) {
    assert_eq!(reply.status, status, "{case}: {:?}", reply.body);
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        other => panic!("{case}: unexpected status {other}"),
    };
    assert_eq!(reply.code(), code, "{case}: {:?}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{case}: a message says why"
    );
}

/// Waits until every waiting conversation has been announced by its enqueue job, so that job's
/// writes do not land inside a footprint comparison.
async fn queue_settled(app: &TestApp) {
    use sea_orm::{ColumnTrait, QueryFilter};
    eventually(
        std::time::Duration::from_secs(10),
        "every waiting conversation to be announced",
        || async {
            let waiting = conversations::Entity::find()
                .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
                .all(app.db())
                .await
                .unwrap();
            for conversation in waiting {
                let announced = events::Entity::find()
                    .filter(events::Column::ConversationId.eq(conversation.id))
                    .filter(events::Column::Content.starts_with("Queued at position"))
                    .count(app.db())
                    .await
                    .unwrap();
                if announced == 0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

fn metadata_with_keys(keys: usize) -> Value {
    let map: Map<String, Value> = (0..keys).map(|n| (format!("key{n}"), json!(n))).collect();
    Value::Object(map)
}

#[tokio::test]
async fn bad_widget_sessions_are_refused_and_write_nothing() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let account = entity::groups::Entity::find_by_id(group)
        .one(app.db())
        .await
        .unwrap()
        .expect("the default group")
        .account_id;
    let before = footprint(&app).await;
    let cases: Vec<(&str, Value, StatusCode)> = vec![
        (
            "unknown group",
            json!({ "groupId": 987_654 }),
            StatusCode::NOT_FOUND,
        ),
        (
            "unknown account",
            json!({ "accountId": 987_654 }),
            StatusCode::NOT_FOUND,
        ),
        (
            "unknown priority",
            json!({ "priority": "urgent" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty initial message",
            json!({ "initialMessage": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "blank initial message",
            json!({ "initialMessage": " \n\t " }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "initial message of 4001 characters",
            json!({ "initialMessage": "a".repeat(4001) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "initial message of 4001 two-byte characters",
            json!({ "initialMessage": "é".repeat(4001) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "metadata with 51 keys",
            json!({ "metadata": metadata_with_keys(51) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "metadata over 8 KiB",
            json!({ "metadata": { "blob": "x".repeat(8 * 1024) } }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "metadata that is not an object",
            json!({ "metadata": ["a", "b"] }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            json!({ "groupId": group, "department": "sales" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "group id of the wrong type",
            json!({ "groupId": "general" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (case, body, status) in cases {
        let reply = app.widget_session(body).await;
        refused(&reply, status, case);
        assert!(reply.body.get("sessionToken").is_none(), "{case}");
    }
    assert_eq!(footprint(&app).await, before, "nothing written");

    // The limits are exact: 50 keys and 4000 characters are accepted.
    let reply = app
        .widget_session(json!({
            "accountId": account,
            "groupId": group,
            "priority": "high",
            "initialMessage": "é".repeat(4000),
            "metadata": metadata_with_keys(50),
        }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    queue_settled(&app).await;
    let after = footprint(&app).await;
    assert_eq!(
        after.rows[..3],
        [before.rows[0] + 1, before.rows[1] + 1, before.rows[2] + 2],
        "one visitor, one conversation, its message and its \"queued\" event"
    );

    // With a second account the widget must name its account, and may not borrow its groups.
    let other = app.second_account_admin().await;
    let other_group = app.default_group(&other).await;
    let before = footprint(&app).await;
    refused(
        &app.widget_session(json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no account among several",
    );
    refused(
        &app.widget_session(json!({ "accountId": account, "groupId": other_group }))
            .await,
        StatusCode::NOT_FOUND,
        "another account's group",
    );
    assert_eq!(footprint(&app).await, before, "nothing written");
}

#[tokio::test]
async fn bad_widget_messages_are_refused_and_write_nothing() {
    let app = spawn_app(Backend::Embedded).await;
    let (mine, token) = app.visitor(json!({ "initialMessage": "hello" })).await;
    let (theirs, their_token) = app.visitor(json!({ "initialMessage": "private" })).await;
    let send = |token: Option<String>, body: Value| {
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/v1/widget/messages",
                token.as_deref(),
                Some(body),
            )
            .await
        }
    };
    queue_settled(&app).await;
    let before = footprint(&app).await;
    let cases: Vec<(&str, Option<String>, Value, StatusCode)> = vec![
        (
            "empty content",
            Some(token.clone()),
            json!({ "content": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "whitespace only",
            Some(token.clone()),
            json!({ "content": "  \n\t  " }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "4001 characters",
            Some(token.clone()),
            json!({ "content": "b".repeat(4001) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a bell character",
            Some(token.clone()),
            json!({ "content": "hi\u{0007}there" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a NUL character",
            Some(token.clone()),
            json!({ "content": "hi\u{0000}" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "an escape sequence",
            Some(token.clone()),
            json!({ "content": "\u{001b}[31mred" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no content",
            Some(token.clone()),
            json!({ "clientMessageId": "m-1" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            Some(token.clone()),
            json!({ "content": "hi", "html": true }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no session token",
            None,
            json!({ "content": "hi" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "forged session token",
            Some("forged-token-forged-token-forged-token-1234".into()),
            json!({ "content": "hi" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "an agent's token instead of a session token",
            Some(app.admin_token().await),
            json!({ "content": "hi" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another visitor's conversation",
            Some(token.clone()),
            json!({ "content": "hi", "conversationId": theirs }),
            StatusCode::NOT_FOUND,
        ),
        (
            "a conversation that does not exist",
            Some(token.clone()),
            json!({ "content": "hi", "conversationId": 987_654 }),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (case, token, body, status) in cases {
        refused(&send(token, body).await, status, case);
    }
    let peek = app
        .request(
            Method::GET,
            &format!("/v1/widget/conversation?conversationId={theirs}"),
            Some(&token),
            None,
        )
        .await;
    refused(
        &peek,
        StatusCode::NOT_FOUND,
        "reading another visitor's conversation",
    );
    assert!(!peek.body.to_string().contains("private"));
    let anonymous = app
        .request(Method::GET, "/v1/widget/conversation", None, None)
        .await;
    refused(
        &anonymous,
        StatusCode::UNAUTHORIZED,
        "reading without a token",
    );
    assert_eq!(footprint(&app).await, before, "nothing written");

    // The same calls, done right, work: each visitor sees only its own conversation.
    let sent = send(
        Some(token.clone()),
        json!({ "content": "hi\nthere\t!", "conversationId": mine }),
    )
    .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    let own = app
        .request(
            Method::GET,
            &format!("/v1/widget/conversation?conversationId={theirs}"),
            Some(&their_token),
            None,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["conversationId"], theirs);
    assert_eq!(footprint(&app).await.rows[2], before.rows[2] + 1);
}

both_backends! {
    async fn impossible_assignments_and_transfers_are_refused_and_change_nothing(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        // One agent of the line with room for one; a spare agent online in another group only.
        let (full, full_token) = app.online_agent(&admin, group, 1).await;
        let sales = app.create_group(&admin, json!({ "name": "Sales" })).await["id"].as_i64().unwrap();
        let (spare, spare_token) = app.online_agent(&admin, sales, 3).await;
        let (offline, _) = app.agent_in_group(&admin, group, 3).await;
        let (deleted, _) = app.agent_in_group(&admin, group, 3).await;
        app.delete_agent(&admin, deleted).await;

        // resolved: served, then resolved; held: active with `full`; waiting: pending; ended: closed.
        let (resolved, _) = app.visitor(json!({})).await;
        app.conversation_becomes(&admin, resolved, "active").await;
        app.close_conversation(&full_token, resolved).await;
        app.conversation_becomes(&admin, resolved, "resolved").await;
        let reply = app.widget_session(json!({ "initialMessage": "help" })).await;
        let held = reply.body["conversationId"].as_i64().unwrap();
        let queue_thread = reply.body["threadId"].as_i64().unwrap();
        let held_view = app.conversation_becomes(&admin, held, "active").await;
        assert_eq!(held_view["assignedAgentId"], full);
        let (waiting, _) = app.visitor(json!({})).await;
        let (ended, ended_token) = app.visitor(json!({})).await;
        app.end_conversation(&ended_token).await;
        app.conversation_becomes(&admin, ended, "closed").await;
        let other_admin = app.second_account_admin().await;
        let (stranger, _) = app.agent_with_role(&other_admin, "agent").await;

        queue_settled(&app).await;
        let before = footprint(&app).await;
        let assign = |id: i64, body: Value| {
            let (app, admin) = (&app, admin.clone());
            async move { app.post(&format!("/v1/conversations/{id}/assign"), &admin, body).await }
        };
        let transfer = |id: i64, body: Value| {
            let (app, admin) = (&app, admin.clone());
            async move { app.post(&format!("/v1/conversations/{id}/transfer"), &admin, body).await }
        };
        refused(&assign(resolved, json!({ "agentId": spare })).await, StatusCode::CONFLICT, "assigning a resolved conversation");
        refused(&assign(ended, json!({ "agentId": spare })).await, StatusCode::CONFLICT, "assigning a closed conversation");
        refused(&assign(held, json!({ "agentId": spare })).await, StatusCode::CONFLICT, "assigning an active conversation");
        refused(&assign(waiting, json!({ "agentId": stranger })).await, StatusCode::NOT_FOUND, "assigning to another account's agent");
        refused(&assign(waiting, json!({ "agentId": deleted })).await, StatusCode::NOT_FOUND, "assigning to a deleted agent");
        refused(&assign(waiting, json!({ "agentId": 987_654 })).await, StatusCode::NOT_FOUND, "assigning to no agent");
        refused(&assign(waiting, json!({ "agentId": full })).await, StatusCode::CONFLICT, "assigning to an agent at capacity");
        refused(&assign(waiting, json!({ "agentId": offline })).await, StatusCode::CONFLICT, "assigning to an offline agent");
        refused(&assign(987_654, json!({ "agentId": spare })).await, StatusCode::NOT_FOUND, "assigning no conversation");
        refused(&assign(waiting, json!({})).await, StatusCode::UNPROCESSABLE_ENTITY, "assigning to nobody");
        refused(&assign(waiting, json!({ "agentId": spare, "force": true })).await, StatusCode::UNPROCESSABLE_ENTITY, "assigning with an unknown field");
        refused(&transfer(held, json!({ "agentId": spare, "groupId": sales })).await, StatusCode::UNPROCESSABLE_ENTITY, "transfer to an agent and a group");
        refused(&transfer(held, json!({})).await, StatusCode::UNPROCESSABLE_ENTITY, "transfer to nowhere");
        refused(&transfer(held, json!({ "agentId": full })).await, StatusCode::UNPROCESSABLE_ENTITY, "transfer to its own agent");
        refused(&transfer(held, json!({ "agentId": stranger })).await, StatusCode::NOT_FOUND, "transfer to another account's agent");
        refused(&transfer(held, json!({ "agentId": offline })).await, StatusCode::CONFLICT, "transfer to an offline agent");
        refused(&transfer(held, json!({ "groupId": 987_654 })).await, StatusCode::NOT_FOUND, "transfer to no group");
        refused(&transfer(waiting, json!({ "agentId": spare })).await, StatusCode::CONFLICT, "transfer of a pending conversation");
        refused(&transfer(resolved, json!({ "groupId": sales })).await, StatusCode::CONFLICT, "transfer of a resolved conversation");
        let close = app.request(Method::POST, &format!("/v1/conversations/{resolved}/close"), Some(&admin), None).await;
        refused(&close, StatusCode::CONFLICT, "closing a resolved conversation");
        let reopen = app.request(Method::POST, &format!("/v1/conversations/{waiting}/reopen"), Some(&admin), None).await;
        refused(&reopen, StatusCode::CONFLICT, "reopening a pending conversation");

        // A plain agent may not assign, nor see or pick up what is not in its groups.
        let reply = app.post(&format!("/v1/conversations/{waiting}/assign"), &full_token, json!({ "agentId": full })).await;
        refused(&reply, StatusCode::FORBIDDEN, "a plain agent assigning");
        for id in [waiting, held, resolved] {
            let reply = app.get(&format!("/v1/conversations/{id}"), &spare_token).await;
            refused(&reply, StatusCode::NOT_FOUND, "an agent reading outside its groups");
        }
        let reply = app.request(Method::POST, &format!("/v1/conversations/{waiting}/pickup"), Some(&spare_token), None).await;
        refused(&reply, StatusCode::NOT_FOUND, "an agent picking up outside its groups");
        let reply = app.get(&format!("/v1/threads/{queue_thread}/events"), &spare_token).await;
        refused(&reply, StatusCode::NOT_FOUND, "an agent reading a thread outside its groups");
        let listed = app.get("/v1/conversations", &spare_token).await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_eq!(listed.body["items"], json!([]), "nothing of another group is listed");

        // Writing to the thread that closed when the agent took over.
        let reply = app.post(&format!("/v1/threads/{queue_thread}/events"), &full_token, json!({ "content": "late" })).await;
        refused(&reply, StatusCode::CONFLICT, "posting to a closed thread");
        let active_thread = held_view["activeThreadId"].as_i64().unwrap();
        let reply = app.post(&format!("/v1/threads/{active_thread}/events"), &full_token, json!({ "content": "\u{0007}" })).await;
        refused(&reply, StatusCode::UNPROCESSABLE_ENTITY, "an agent message with a control character");

        // Presence and listing with values that do not exist.
        let reply = app.request(Method::PUT, "/v1/agents/me/status", Some(&full_token), Some(json!({ "status": "busy" }))).await;
        refused(&reply, StatusCode::UNPROCESSABLE_ENTITY, "an unknown status");
        let reply = app.request(Method::PUT, "/v1/agents/me/status", Some(&full_token), Some(json!({}))).await;
        refused(&reply, StatusCode::UNPROCESSABLE_ENTITY, "no status");
        let reply = app.get("/v1/conversations?status=open", &admin).await;
        refused(&reply, StatusCode::BAD_REQUEST, "listing an unknown status");
        let reply = app.get("/v1/conversations?priority=urgent", &admin).await;
        refused(&reply, StatusCode::BAD_REQUEST, "listing an unknown priority");
        let reply = app.get("/v1/conversations?groupId=general", &admin).await;
        refused(&reply, StatusCode::BAD_REQUEST, "listing a group that is not an id");

        assert_eq!(footprint(&app).await, before, "nothing changed");

        // The refusals were about the input: the spare agent can take the waiting chat.
        let reply = assign(waiting, json!({ "agentId": spare })).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["assignedAgentId"], spare);
    }
}

#[tokio::test]
async fn another_accounts_admin_gets_404_on_every_conversation_verb() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (_, agent_token) = app.online_agent(&admin, group, 1).await;
    let (resolved, _) = app.visitor(json!({})).await;
    app.conversation_becomes(&admin, resolved, "active").await;
    app.close_conversation(&agent_token, resolved).await;
    app.conversation_becomes(&admin, resolved, "resolved").await;
    let held = app.visitor(json!({})).await.0;
    let held = app.conversation_becomes(&admin, held, "active").await;
    let (waiting, _) = app.visitor(json!({})).await;
    let held_id = held["id"].as_i64().unwrap();
    let thread = held["activeThreadId"].as_i64().unwrap();

    let other = app.second_account_admin().await;
    let other_group = app.default_group(&other).await;
    let (other_agent, _) = app.online_agent(&other, other_group, 5).await;
    queue_settled(&app).await;
    let before = footprint(&app).await;
    for id in [resolved, held_id, waiting] {
        let path = format!("/v1/conversations/{id}");
        let calls = [
            ("show", app.get(&path, &other).await),
            (
                "assign",
                app.post(
                    &format!("{path}/assign"),
                    &other,
                    json!({ "agentId": other_agent }),
                )
                .await,
            ),
            (
                "pickup",
                app.request(Method::POST, &format!("{path}/pickup"), Some(&other), None)
                    .await,
            ),
            (
                "transfer to an agent",
                app.post(
                    &format!("{path}/transfer"),
                    &other,
                    json!({ "agentId": other_agent }),
                )
                .await,
            ),
            (
                "transfer to a group",
                app.post(
                    &format!("{path}/transfer"),
                    &other,
                    json!({ "groupId": other_group }),
                )
                .await,
            ),
            (
                "close",
                app.request(Method::POST, &format!("{path}/close"), Some(&other), None)
                    .await,
            ),
            (
                "reopen",
                app.request(Method::POST, &format!("{path}/reopen"), Some(&other), None)
                    .await,
            ),
            (
                "tags",
                app.request(
                    Method::PUT,
                    &format!("{path}/tags"),
                    Some(&other),
                    Some(json!({ "tagIds": [] })),
                )
                .await,
            ),
        ];
        for (verb, reply) in calls {
            refused(&reply, StatusCode::NOT_FOUND, &format!("{verb} of {id}"));
        }
    }
    let reply = app
        .get(&format!("/v1/threads/{thread}/events"), &other)
        .await;
    refused(&reply, StatusCode::NOT_FOUND, "reading the thread");
    let reply = app
        .post(
            &format!("/v1/threads/{thread}/events"),
            &other,
            json!({ "content": "hello from elsewhere" }),
        )
        .await;
    refused(&reply, StatusCode::NOT_FOUND, "writing to the thread");
    let listed = app.get("/v1/conversations", &other).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.body["items"],
        json!([]),
        "no conversation of the first account is listed"
    );
    let queue = app.queue(&other).await;
    let waiting_ids: Vec<&Value> = queue["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["waiting"].as_array().unwrap())
        .collect();
    assert!(waiting_ids.is_empty(), "{waiting_ids:?}");
    assert_eq!(footprint(&app).await, before, "nothing changed");
    // The owner still can.
    assert_eq!(app.conversation(&admin, waiting).await["status"], "pending");
}

use reqwest::StatusCode;
use serde_json::json;

use crate::{both_backends, helpers::*};

both_backends! {
    async fn agents_are_created_updated_soft_deleted_and_restored(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let reply = app
            .post("/v1/agents", &admin, json!({
                "name": "Ana", "email": "Ana@Example.com", "password": "password-123",
                "role": "supervisor", "maxConcurrentChats": 4
            }))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let id = reply.body["id"].as_i64().unwrap();
        assert_eq!(reply.body["email"], "ana@example.com");
        assert_eq!(reply.body["role"], "supervisor");
        assert_eq!(reply.body["status"], "offline");
        assert_eq!(reply.body["acceptingChats"], false);
        assert_eq!(reply.body["maxConcurrentChats"], 4);
        assert_eq!(reply.body["activeChats"], 0);

        let reply = app.patch(&format!("/v1/agents/{id}"), &admin, json!({
            "name": "Ana Lima", "maxConcurrentChats": 8, "avatarUrl": "https://cdn.example.com/ana.png"
        })).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["name"], "Ana Lima");
        assert_eq!(reply.body["maxConcurrentChats"], 8);
        assert_eq!(reply.body["avatarUrl"], "https://cdn.example.com/ana.png");
        let reply = app.patch(&format!("/v1/agents/{id}"), &admin, json!({ "avatarUrl": null })).await;
        assert_eq!(reply.body["avatarUrl"], serde_json::Value::Null, "null clears");
        assert_eq!(reply.body["name"], "Ana Lima", "absent fields are kept");

        assert_eq!(app.delete(&format!("/v1/agents/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
        let listed = app.get("/v1/agents", &admin).await;
        assert!(listed.body["items"].as_array().unwrap().iter().all(|a| a["id"] != id));
        let deleted = app.get("/v1/agents?deleted=only", &admin).await;
        assert_eq!(deleted.body["items"][0]["id"], id);
        assert!(deleted.body["items"][0]["deletedAt"].is_string());
        assert_eq!(app.delete(&format!("/v1/agents/{id}"), &admin).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.patch(&format!("/v1/agents/{id}"), &admin, json!({ "name": "x" })).await.status, StatusCode::NOT_FOUND);

        let restored = app.post(&format!("/v1/agents/{id}/restore"), &admin, json!({})).await;
        assert_eq!(restored.status, StatusCode::OK);
        assert_eq!(restored.body["deletedAt"], serde_json::Value::Null);
        let again = app.post(&format!("/v1/agents/{id}/restore"), &admin, json!({})).await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        // A restored agent can sign in again.
        app.token_for("ana@example.com", "password-123").await;
    }
}

both_backends! {
    async fn groups_hold_members_and_routing_settings(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let (agent_id, _) = app.agent_with_role(&admin, "agent").await;
        let reply = app.post("/v1/groups", &admin, json!({
            "name": "Sales", "description": "Buyers", "routingStrategy": "round_robin",
            "agentResponseTimeoutSeconds": 90, "maxQueueWaitSeconds": 600
        })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let id = reply.body["id"].as_i64().unwrap();
        assert_eq!(reply.body["routingStrategy"], "round_robin");
        assert_eq!(reply.body["agentResponseTimeoutSeconds"], 90);
        assert_eq!(reply.body["visitorIdleTimeoutSeconds"], 900, "defaults fill the rest");
        assert_eq!(reply.body["firstResponseSlaSeconds"], 60);
        assert_eq!(reply.body["maxReassignments"], 3);
        assert_eq!(reply.body["maxQueueWaitSeconds"], 600);
        assert_eq!(reply.body["isDefault"], false);

        let members = app.post(&format!("/v1/groups/{id}/agents"), &admin, json!({ "agentId": agent_id })).await;
        assert_eq!(members.status, StatusCode::OK);
        assert_eq!(members.body["agentIds"], json!([agent_id]));
        let twice = app.post(&format!("/v1/groups/{id}/agents"), &admin, json!({ "agentId": agent_id })).await;
        assert_eq!(twice.body["agentIds"], json!([agent_id]), "adding twice adds once");
        let agent = app.get(&format!("/v1/agents/{agent_id}"), &admin).await;
        assert_eq!(agent.body["groupIds"], json!([id]));

        let unknown = app.post(&format!("/v1/groups/{id}/agents"), &admin, json!({ "agentId": 999_999 })).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        let removed = app.delete(&format!("/v1/groups/{id}/agents/{agent_id}"), &admin).await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        let gone = app.delete(&format!("/v1/groups/{id}/agents/{agent_id}"), &admin).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);

        // Exactly one default group: making Sales the default unsets General.
        let reply = app.patch(&format!("/v1/groups/{id}"), &admin, json!({ "isDefault": true, "maxQueueWaitSeconds": null })).await;
        assert_eq!(reply.body["isDefault"], true);
        assert_eq!(reply.body["maxQueueWaitSeconds"], serde_json::Value::Null);
        let groups = app.get("/v1/groups", &admin).await;
        let defaults: Vec<_> = groups.body["items"].as_array().unwrap().iter().filter(|g| g["isDefault"] == true).collect();
        assert_eq!(defaults.len(), 1);
        assert_eq!(defaults[0]["id"], id);
        let refused = app.delete(&format!("/v1/groups/{id}"), &admin).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "the default group stays");
        let refused = app.patch(&format!("/v1/groups/{id}"), &admin, json!({ "isDefault": false })).await;
        assert_eq!(refused.status, StatusCode::CONFLICT);

        let general = groups.body["items"].as_array().unwrap().iter().find(|g| g["name"] == "General").unwrap()["id"].as_i64().unwrap();
        assert_eq!(app.delete(&format!("/v1/groups/{general}"), &admin).await.status, StatusCode::NO_CONTENT);
        assert!(app.get(&format!("/v1/groups/{general}"), &admin).await.body["deletedAt"].is_string());
        assert_eq!(app.post(&format!("/v1/groups/{general}/restore"), &admin, json!({})).await.status, StatusCode::OK);
    }
}

both_backends! {
    async fn tags_are_managed_and_names_are_unique(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let reply = app.post("/v1/tags", &admin, json!({ "name": "vip", "color": "#FF0000" })).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body["color"], "#ff0000");
        let id = reply.body["id"].as_i64().unwrap();
        let duplicate = app.post("/v1/tags", &admin, json!({ "name": "vip" })).await;
        assert_eq!(duplicate.status, StatusCode::CONFLICT);
        assert_eq!(duplicate.code(), "conflict");
        let renamed = app.patch(&format!("/v1/tags/{id}"), &admin, json!({ "name": "VIP", "color": null })).await;
        assert_eq!(renamed.body["name"], "VIP");
        assert_eq!(renamed.body["color"], serde_json::Value::Null);
        assert_eq!(app.delete(&format!("/v1/tags/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
        assert_eq!(app.get("/v1/tags", &admin).await.body["items"], json!([]));
        assert_eq!(app.post(&format!("/v1/tags/{id}/restore"), &admin, json!({})).await.status, StatusCode::OK);
        assert_eq!(app.get("/v1/tags", &admin).await.body["items"][0]["name"], "VIP");
    }
}

#[tokio::test]
async fn lists_page_with_a_cursor() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    for n in 0..5 {
        let reply = app
            .post("/v1/tags", &admin, json!({ "name": format!("tag-{n}") }))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/tags?limit=2".to_owned();
    loop {
        let page = app.get(&path, &admin).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        match page.body["nextCursor"].as_i64() {
            Some(cursor) => path = format!("/v1/tags?limit=2&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["tag-0", "tag-1", "tag-2", "tag-3", "tag-4"]);
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed_or_demoted() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let me = app.get("/v1/auth/me", &admin).await.body["id"]
        .as_i64()
        .unwrap();
    let self_delete = app.delete(&format!("/v1/agents/{me}"), &admin).await;
    assert_eq!(self_delete.status, StatusCode::CONFLICT);
    let demote = app
        .patch(
            &format!("/v1/agents/{me}"),
            &admin,
            json!({ "role": "agent" }),
        )
        .await;
    assert_eq!(demote.status, StatusCode::CONFLICT);
    assert_eq!(app.get("/v1/auth/me", &admin).await.body["role"], "admin");
    // With a second admin, the first may step down.
    app.agent_with_role(&admin, "admin").await;
    let demote = app
        .patch(
            &format!("/v1/agents/{me}"),
            &admin,
            json!({ "role": "supervisor" }),
        )
        .await;
    assert_eq!(demote.status, StatusCode::OK);
}

#[tokio::test]
async fn agent_stats_count_rows() {
    use chrono::{Duration, Utc};
    use entity::{
        assignments, conversations,
        enums::{ConversationStatus, Priority},
        groups, visitors,
    };
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};

    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let (agent_id, token) = app.agent_with_role(&admin, "agent").await;
    let db = app.db();
    let group = groups::Entity::find().one(db).await.unwrap().unwrap();
    let now = Utc::now();
    let visitor = visitors::ActiveModel {
        account_id: Set(group.account_id),
        metadata: Set(json!({})),
        session_token_hash: Set("hash-1".into()),
        created_at: Set(now),
        last_seen_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    for (status, response_seconds) in [
        (ConversationStatus::Active, 30),
        (ConversationStatus::Resolved, 90),
    ] {
        let conversation = conversations::ActiveModel {
            account_id: Set(group.account_id),
            visitor_id: Set(visitor.id),
            group_id: Set(group.id),
            assigned_agent_id: Set(Some(agent_id)),
            status: Set(status),
            priority: Set(Priority::Normal),
            assigned_at: Set(Some(now - Duration::minutes(10))),
            first_response_at: Set(Some(
                now - Duration::minutes(10) + Duration::seconds(response_seconds),
            )),
            reassignment_count: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
        assignments::ActiveModel {
            account_id: Set(group.account_id),
            conversation_id: Set(conversation.id),
            agent_id: Set(agent_id),
            reason: Set("test".into()),
            assigned_at: Set(now - Duration::minutes(10)),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
    }
    let stats = app
        .get(&format!("/v1/agents/{agent_id}/stats"), &token)
        .await;
    assert_eq!(stats.status, StatusCode::OK, "{:?}", stats.body);
    assert_eq!(stats.body["activeConversations"], 1);
    assert_eq!(stats.body["conversationsFinished"], 1);
    assert_eq!(stats.body["assignmentsTotal"], 2);
    assert_eq!(stats.body["assignmentsLast24h"], 2);
    assert_eq!(stats.body["averageFirstResponseSeconds"], 60.0);
    assert_eq!(stats.body["maxConcurrentChats"], 6);
}

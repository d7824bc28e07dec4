use reqwest::StatusCode;
use serde_json::json;

use crate::{both_backends, helpers::*};

both_backends! {
    async fn agents_are_created_updated_soft_deleted_and_restored(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let agent = app
            .create_agent(&admin, json!({
                "name": "Ana", "email": "Ana@Example.com", "password": "password-123",
                "role": "supervisor", "maxConcurrentChats": 4
            }))
            .await;
        let id = agent["id"].as_i64().unwrap();
        assert_eq!(agent["email"], "ana@example.com");
        assert_eq!(agent["role"], "supervisor");
        assert_eq!(agent["status"], "offline");
        assert_eq!(agent["acceptingChats"], false);
        assert_eq!(agent["maxConcurrentChats"], 4);
        assert_eq!(agent["activeChats"], 0);

        let agent = app.update_agent(&admin, id, json!({
            "name": "Ana Lima", "maxConcurrentChats": 8, "avatarUrl": "https://cdn.example.com/ana.png"
        })).await;
        assert_eq!(agent["name"], "Ana Lima");
        assert_eq!(agent["maxConcurrentChats"], 8);
        assert_eq!(agent["avatarUrl"], "https://cdn.example.com/ana.png");
        let reply = app.try_update_agent(&admin, id, json!({ "avatarUrl": null })).await;
        assert_eq!(reply.body["avatarUrl"], serde_json::Value::Null, "null clears");
        assert_eq!(reply.body["name"], "Ana Lima", "absent fields are kept");

        app.delete_agent(&admin, id).await;
        let listed = app.agents(&admin).await;
        assert!(listed["items"].as_array().unwrap().iter().all(|a| a["id"] != id));
        let deleted = app.get("/v1/agents?deleted=only", &admin).await;
        assert_eq!(deleted.body["items"][0]["id"], id);
        assert!(deleted.body["items"][0]["deletedAt"].is_string());
        assert_eq!(app.try_delete_agent(&admin, id).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.try_update_agent(&admin, id, json!({ "name": "x" })).await.status, StatusCode::NOT_FOUND);

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
        let group = app.create_group(&admin, json!({
            "name": "Sales", "description": "Buyers", "routingStrategy": "round_robin",
            "agentResponseTimeoutSeconds": 90, "maxQueueWaitSeconds": 600
        })).await;
        let id = group["id"].as_i64().unwrap();
        assert_eq!(group["routingStrategy"], "round_robin");
        assert_eq!(group["agentResponseTimeoutSeconds"], 90);
        assert_eq!(group["visitorIdleTimeoutSeconds"], 900, "defaults fill the rest");
        assert_eq!(group["firstResponseSlaSeconds"], 60);
        assert_eq!(group["maxReassignments"], 3);
        assert_eq!(group["maxQueueWaitSeconds"], 600);
        assert_eq!(group["isDefault"], false);

        let members = app.add_to_group(&admin, id, agent_id).await;
        assert_eq!(members["agentIds"], json!([agent_id]));
        let twice = app.try_add_to_group(&admin, id, agent_id).await;
        assert_eq!(twice.body["agentIds"], json!([agent_id]), "adding twice adds once");
        let agent = app.try_agent(&admin, agent_id).await;
        assert_eq!(agent.body["groupIds"], json!([id]));

        let unknown = app.try_add_to_group(&admin, id, 999_999).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        let removed = app.delete(&format!("/v1/groups/{id}/agents/{agent_id}"), &admin).await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        let gone = app.delete(&format!("/v1/groups/{id}/agents/{agent_id}"), &admin).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);

        // Exactly one default group: making Sales the default unsets General.
        let reply = app.try_update_group(&admin, id, json!({ "isDefault": true, "maxQueueWaitSeconds": null })).await;
        assert_eq!(reply.body["isDefault"], true);
        assert_eq!(reply.body["maxQueueWaitSeconds"], serde_json::Value::Null);
        let groups = app.try_groups(&admin).await;
        let defaults: Vec<_> = groups.body["items"].as_array().unwrap().iter().filter(|g| g["isDefault"] == true).collect();
        assert_eq!(defaults.len(), 1);
        assert_eq!(defaults[0]["id"], id);
        let refused = app.try_delete_group(&admin, id).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "the default group stays");
        let refused = app.try_update_group(&admin, id, json!({ "isDefault": false })).await;
        assert_eq!(refused.status, StatusCode::CONFLICT);

        let general = groups.body["items"].as_array().unwrap().iter().find(|g| g["name"] == "General").unwrap()["id"].as_i64().unwrap();
        assert_eq!(app.try_delete_group(&admin, general).await.status, StatusCode::NO_CONTENT);
        assert!(app.get(&format!("/v1/groups/{general}"), &admin).await.body["deletedAt"].is_string());
        assert_eq!(app.post(&format!("/v1/groups/{general}/restore"), &admin, json!({})).await.status, StatusCode::OK);
    }
}

both_backends! {
    async fn tags_are_managed_and_names_are_unique(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let tag = app.create_tag(&admin, json!({ "name": "vip", "color": "#FF0000" })).await;
        assert_eq!(tag["color"], "#ff0000");
        let id = tag["id"].as_i64().unwrap();
        let duplicate = app.try_create_tag(&admin, json!({ "name": "vip" })).await;
        assert_eq!(duplicate.status, StatusCode::CONFLICT);
        assert_eq!(duplicate.code(), "conflict");
        let renamed = app.patch(&format!("/v1/tags/{id}"), &admin, json!({ "name": "VIP", "color": null })).await;
        assert_eq!(renamed.body["name"], "VIP");
        assert_eq!(renamed.body["color"], serde_json::Value::Null);
        assert_eq!(app.delete(&format!("/v1/tags/{id}"), &admin).await.status, StatusCode::NO_CONTENT);
        assert_eq!(app.tags(&admin).await["items"], json!([]));
        assert_eq!(app.post(&format!("/v1/tags/{id}/restore"), &admin, json!({})).await.status, StatusCode::OK);
        assert_eq!(app.tags(&admin).await["items"][0]["name"], "VIP");
    }
}

#[tokio::test]
async fn lists_page_with_a_cursor() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    for n in 0..5 {
        app.create_tag(&admin, json!({ "name": format!("tag-{n}") }))
            .await;
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
    let me = app.me(&admin).await["id"].as_i64().unwrap();
    let self_delete = app.try_delete_agent(&admin, me).await;
    assert_eq!(self_delete.status, StatusCode::CONFLICT);
    let demote = app
        .try_update_agent(&admin, me, json!({ "role": "agent" }))
        .await;
    assert_eq!(demote.status, StatusCode::CONFLICT);
    assert_eq!(app.me(&admin).await["role"], "admin");
    // With a second admin, the first may step down.
    app.agent_with_role(&admin, "admin").await;
    app.update_agent(&admin, me, json!({ "role": "supervisor" }))
        .await;
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
    let stats = app.agent_stats(&token, agent_id).await;
    assert_eq!(stats["activeConversations"], 1);
    assert_eq!(stats["conversationsFinished"], 1);
    assert_eq!(stats["assignmentsTotal"], 2);
    assert_eq!(stats["assignmentsLast24h"], 2);
    assert_eq!(stats["averageFirstResponseSeconds"], 60.0);
    assert_eq!(stats["maxConcurrentChats"], 6);
}

both_backends! {
    async fn members_are_added_in_batches_as_the_seed_api_sends_them(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let (first, _) = app.agent_with_role(&admin, "agent").await;
        let (second, _) = app.agent_with_role(&admin, "agent").await;
        let group = app.create_group(&admin, json!({ "name": "Batch" })).await;
        let id = group["id"].as_i64().unwrap();
        let path = format!("/v1/groups/{id}/agents");

        // Both forms at once, neither, an empty or oversized list: refused, nothing added.
        let too_many: Vec<i64> = (1..=101).collect();
        for bad in [
            json!({ "agentId": first, "agentIds": [second] }),
            json!({}),
            json!({ "agentIds": [] }),
            json!({ "agentIds": too_many }),
            json!({ "agentIds": [first, "x"] }),
        ] {
            let reply = app.post(&path, &admin, bad.clone()).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        // One unknown or deleted agent refuses the whole batch.
        let unknown = app.post(&path, &admin, json!({ "agentIds": [first, 999_999] })).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        let (deleted, _) = app.agent_with_role(&admin, "agent").await;
        app.delete_agent(&admin, deleted).await;
        let gone = app.post(&path, &admin, json!({ "agentIds": [first, deleted] })).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(app.get(&format!("/v1/groups/{id}"), &admin).await.body["agentIds"], json!([]));

        let added = app.post(&path, &admin, json!({ "agentIds": [second, first, second] })).await;
        assert_eq!(added.status, StatusCode::OK);
        let mut members: Vec<i64> = serde_json::from_value(added.body["agentIds"].clone()).unwrap();
        members.sort_unstable();
        let mut expected = vec![first, second];
        expected.sort_unstable();
        assert_eq!(members, expected);
        assert_eq!(app.agent(&admin, first).await["groupIds"], json!([id]));
    }
}

#[tokio::test]
async fn a_batch_with_another_account_s_agent_adds_nobody() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let (theirs, _) = app.agent_with_role(&admin, "agent").await;
    let other = app.second_account_admin().await;
    let own = app.me(&other).await["id"].as_i64().unwrap();
    let group = app.create_group(&other, json!({ "name": "Mine" })).await;
    let id = group["id"].as_i64().unwrap();
    let path = format!("/v1/groups/{id}/agents");
    let reply = app
        .post(&path, &other, json!({ "agentIds": [own, theirs] }))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("/v1/groups/{id}"), &other).await.body["agentIds"],
        json!([])
    );
}

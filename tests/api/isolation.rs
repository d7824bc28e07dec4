use reqwest::StatusCode;
use serde_json::json;

use crate::{both_backends, helpers::*};

both_backends! {
    async fn another_accounts_rows_are_invisible(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let other = app.second_account_admin().await;
        let (agent_id, _) = app.agent_with_role(&admin, "agent").await;
        let group_id = app.create_group(&admin, json!({ "name": "Sales" })).await["id"].as_i64().unwrap();
        let tag_id = app.create_tag(&admin, json!({ "name": "vip" })).await["id"].as_i64().unwrap();

        // Lists show only the caller's account.
        let agents = app.try_agents(&other).await;
        let emails: Vec<_> = agents.body["items"].as_array().unwrap().iter().map(|a| a["email"].clone()).collect();
        assert_eq!(emails, [json!("other-admin@example.com")]);
        assert_eq!(app.tags(&other).await["items"], json!([]));
        let groups = app.try_groups(&other).await;
        let names: Vec<_> = groups.body["items"].as_array().unwrap().iter().map(|g| g["name"].clone()).collect();
        assert_eq!(names, [json!("General")], "only its own default group");

        // Every verb on a row of the first account is a 404, exactly like a missing row.
        for path in [format!("/v1/agents/{agent_id}"), format!("/v1/groups/{group_id}"), format!("/v1/tags/{tag_id}")] {
            let get = app.get(&path, &other).await;
            assert_eq!(get.status, StatusCode::NOT_FOUND, "GET {path}");
            assert_eq!(get.body, app.get(&format!("{path}999"), &other).await.body);
            assert_eq!(app.patch(&path, &other, json!({ "name": "hijack" })).await.status, StatusCode::NOT_FOUND, "PATCH {path}");
            assert_eq!(app.delete(&path, &other).await.status, StatusCode::NOT_FOUND, "DELETE {path}");
            assert_eq!(app.post(&format!("{path}/restore"), &other, json!({})).await.status, StatusCode::NOT_FOUND);
        }
        assert_eq!(app.try_agent_stats(&other, agent_id).await.status, StatusCode::NOT_FOUND);
        // Nor can another account's agent be put in one's own group.
        let other_group = app.try_create_group(&other, json!({ "name": "Sales" })).await;
        assert_eq!(other_group.status, StatusCode::CREATED, "names are unique per account only");
        let other_group = other_group.body["id"].as_i64().unwrap();
        let reply = app.try_add_to_group(&other, other_group, agent_id).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);

        // Nothing of the first account changed.
        let agent = app.try_agent(&admin, agent_id).await;
        assert_eq!(agent.body["deletedAt"], serde_json::Value::Null);
        assert_ne!(agent.body["name"], "hijack");
        assert_eq!(app.get(&format!("/v1/groups/{group_id}"), &admin).await.body["name"], "Sales");
        // The same e-mail may exist in two accounts.
        let email = agent.body["email"].as_str().unwrap();
        let reply = app.try_create_agent(&other, json!({ "name": "Twin", "email": email, "password": "password-123" })).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
}

//! Accounts made by operators on the operator listener (`POST /accounts`, `GET /accounts`).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

/// A request to the operator listener with basic auth.
async fn ops(app: &TestApp, user: (&str, &str), body: Option<Value>) -> Reply {
    let url = format!("{}/accounts", app.ops_address);
    let request = match &body {
        Some(body) => app.client.post(url).json(body),
        None => app.client.get(url),
    };
    let response = request
        .basic_auth(user.0, Some(user.1))
        .send()
        .await
        .expect("the request is sent");
    let status = response.status();
    let text = response.text().await.expect("a body");
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

both_backends! {
    async fn an_operator_opens_an_account_whose_admin_sees_only_it(backend: Backend) {
        let app = spawn_app(backend).await;
        let operator = (ADMIN_EMAIL, ADMIN_PASSWORD);
        let before = ops(&app, operator, None).await;
        assert_eq!(before.status, StatusCode::OK);
        assert_eq!(before.body["items"].as_array().unwrap().len(), 1, "the operator account");

        // Bad input is refused and creates nothing.
        for bad in [
            json!({ "name": "Acme", "adminEmail": "not-an-email", "adminPassword": "password-123" }),
            json!({ "name": "Acme", "adminEmail": "boss@acme.test", "adminPassword": "short" }),
            json!({ "name": "", "adminEmail": "boss@acme.test", "adminPassword": "password-123" }),
            json!({ "name": "Acme", "adminEmail": "boss@acme.test" }),
            json!({ "name": "Acme", "adminEmail": "boss@acme.test", "adminPassword": "password-123", "plan": "gold" }),
        ] {
            let reply = ops(&app, operator, Some(bad.clone())).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {:?}", reply.body);
        }
        assert_eq!(ops(&app, operator, None).await.body["items"].as_array().unwrap().len(), 1);

        let created = ops(&app, operator, Some(json!({
            "name": "Acme", "adminEmail": "Boss@Acme.test", "adminPassword": "password-123"
        }))).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        assert_eq!(created.body["name"], "Acme");
        let account_id = created.body["id"].as_i64().unwrap();
        let listed = ops(&app, operator, None).await;
        let ids: Vec<i64> = listed.body["items"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect();
        assert!(ids.contains(&account_id));

        // Its admin signs in to its own account: its own default group, none of the operator's rows.
        let token = app.token_for("boss@acme.test", "password-123").await;
        let me = app.me(&token).await;
        assert_eq!(me["id"], created.body["adminAgentId"]);
        assert_eq!(me["role"], "admin");
        let groups = app.groups(&token).await;
        let names: Vec<_> = groups["items"].as_array().unwrap().iter().map(|g| g["name"].clone()).collect();
        assert_eq!(names, [json!("General")]);
        let agents = app.try_agents(&token).await;
        assert_eq!(agents.body["items"].as_array().unwrap().len(), 1);

        // An admin of any other account is no operator.
        let refused = ops(&app, ("boss@acme.test", "password-123"), None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let refused = ops(&app, ("boss@acme.test", "password-123"), Some(json!({
            "name": "Mine", "adminEmail": "x@acme.test", "adminPassword": "password-123"
        }))).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(ops(&app, operator, None).await.body["items"].as_array().unwrap().len(), 2);
    }
}

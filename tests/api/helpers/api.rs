//! `TestApp`'s methods: the plumbing (raw requests), then one method per endpoint or socket the
//! tests use, grouped by resource.
//!
//! A method named after its endpoint (`create_group`, `conversation`) asserts the success status
//! and returns the JSON body; its `try_` twin returns the whole `Reply` for tests that look at a
//! refusal (or poll and tolerate one). Bodies are the tests' own `json!`, so each test still says
//! what it sends.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::{Value, json};

use super::{ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET, Reply, TestApp, eventually};
use crate::sio::{Sio, connect};

impl TestApp {
    // ---- The app and raw requests ----

    pub fn db(&self) -> &DatabaseConnection {
        &self.state.db
    }

    /// Stops the app and waits until its requests and jobs have finished.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("the app task")
                .expect("the app stops cleanly");
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the request is sent");
        let status = response.status();
        let text = response.text().await.expect("a body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("a JSON body, got {status}: {text}"))
        };
        Reply { status, body }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// Sends raw bytes with a content type (for malformed bodies).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let response = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the request is sent");
        let status = response.status();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("a JSON body, got {status}: {text}"));
        Reply { status, body }
    }

    // ---- Health ----

    /// `GET /health` (no token).
    pub async fn health(&self) -> Reply {
        self.request(Method::GET, "/health", None, None).await
    }

    /// `GET /health/ready` (no token).
    pub async fn readiness(&self) -> Reply {
        self.request(Method::GET, "/health/ready", None, None).await
    }

    // ---- Sign-in ----

    /// `POST /v1/auth/login`.
    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.request(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "email": email, "password": password })),
        )
        .await
    }

    /// A token of the bootstrap admin.
    pub async fn admin_token(&self) -> String {
        self.token_for(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// A token for `email`, whose login must succeed.
    pub async fn token_for(&self, email: &str, password: &str) -> String {
        let reply = self.login(email, password).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "login of {email}: {:?}",
            reply.body
        );
        reply.body["token"].as_str().expect("a token").to_owned()
    }

    /// A token for the agent behind `token`, signed here with the test's own secret and living
    /// `ttl` (the distributed mode only: the embedded mode keeps its secret in the data dir).
    pub async fn mint_token(&self, token: &str, ttl: Duration) -> String {
        let keys = switchboard::auth::TokenKeys::new(JWT_SECRET.as_bytes(), ttl);
        let me = self.me(token).await;
        let row = entity::agents::Entity::find_by_id(me["id"].as_i64().unwrap())
            .one(self.db())
            .await
            .unwrap()
            .expect("the agent's row");
        let (token, _) = keys
            .issue(row.id, row.account_id, row.token_version)
            .expect("a token");
        token
    }

    /// `GET /v1/auth/me`: the caller.
    pub async fn me(&self, token: &str) -> Value {
        self.try_me(token)
            .await
            .expect(StatusCode::OK, "GET /v1/auth/me")
    }

    pub async fn try_me(&self, token: &str) -> Reply {
        self.get("/v1/auth/me", token).await
    }

    // ---- Agents ----

    /// `GET /v1/agents`.
    pub async fn agents(&self, token: &str) -> Value {
        self.try_agents(token)
            .await
            .expect(StatusCode::OK, "GET /v1/agents")
    }

    pub async fn try_agents(&self, token: &str) -> Reply {
        self.get("/v1/agents", token).await
    }

    /// `GET /v1/agents/{id}`.
    pub async fn agent(&self, token: &str, id: i64) -> Value {
        self.try_agent(token, id)
            .await
            .expect(StatusCode::OK, "GET /v1/agents/{id}")
    }

    pub async fn try_agent(&self, token: &str, id: i64) -> Reply {
        self.get(&format!("/v1/agents/{id}"), token).await
    }

    /// `POST /v1/agents`.
    pub async fn create_agent(&self, admin: &str, body: Value) -> Value {
        self.try_create_agent(admin, body)
            .await
            .expect(StatusCode::CREATED, "POST /v1/agents")
    }

    pub async fn try_create_agent(&self, token: &str, body: Value) -> Reply {
        self.post("/v1/agents", token, body).await
    }

    /// `PATCH /v1/agents/{id}`.
    pub async fn update_agent(&self, admin: &str, id: i64, body: Value) -> Value {
        self.try_update_agent(admin, id, body)
            .await
            .expect(StatusCode::OK, "PATCH /v1/agents/{id}")
    }

    pub async fn try_update_agent(&self, token: &str, id: i64, body: Value) -> Reply {
        self.patch(&format!("/v1/agents/{id}"), token, body).await
    }

    /// `DELETE /v1/agents/{id}`.
    pub async fn delete_agent(&self, admin: &str, id: i64) {
        self.try_delete_agent(admin, id)
            .await
            .expect(StatusCode::NO_CONTENT, "DELETE /v1/agents/{id}");
    }

    pub async fn try_delete_agent(&self, token: &str, id: i64) -> Reply {
        self.delete(&format!("/v1/agents/{id}"), token).await
    }

    /// `GET /v1/agents/{id}/stats`.
    pub async fn agent_stats(&self, token: &str, id: i64) -> Value {
        self.try_agent_stats(token, id)
            .await
            .expect(StatusCode::OK, "GET /v1/agents/{id}/stats")
    }

    pub async fn try_agent_stats(&self, token: &str, id: i64) -> Reply {
        self.get(&format!("/v1/agents/{id}/stats"), token).await
    }

    /// `PUT /v1/agents/me/status`.
    pub async fn set_status(&self, token: &str, status: &str) -> Reply {
        let reply = self
            .request(
                Method::PUT,
                "/v1/agents/me/status",
                Some(token),
                Some(json!({ "status": status })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply
    }

    /// Creates an agent with `role` through the API; returns its id and token.
    pub async fn agent_with_role(&self, admin: &str, role: &str) -> (i64, String) {
        let email = format!(
            "{role}-{}@example.com",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let agent = self
            .create_agent(
                admin,
                json!({ "name": format!("A {role}"), "email": email, "password": "password-123", "role": role }),
            )
            .await;
        let id = agent["id"].as_i64().expect("an id");
        (id, self.token_for(&email, "password-123").await)
    }

    /// An agent with `capacity`, member of `group`, left offline (as created); returns (id, token).
    pub async fn agent_in_group(&self, admin: &str, group: i64, capacity: i64) -> (i64, String) {
        let (id, token) = self.agent_with_role(admin, "agent").await;
        self.update_agent(admin, id, json!({ "maxConcurrentChats": capacity }))
            .await;
        self.add_to_group(admin, group, id).await;
        (id, token)
    }

    /// An agent with `capacity`, member of `group`, online and accepting; returns (id, token).
    pub async fn online_agent(&self, admin: &str, group: i64, capacity: i64) -> (i64, String) {
        let (id, token) = self.agent_in_group(admin, group, capacity).await;
        self.set_status(&token, "online").await;
        (id, token)
    }

    /// A second account with its own admin, written straight to the database (accounts have no
    /// public creation endpoint); returns the admin's token.
    pub async fn second_account_admin(&self) -> String {
        let email =
            switchboard::domain::Email::try_from("other-admin@example.com".to_owned()).unwrap();
        let hash = switchboard::auth::hash_password("other-password".into())
            .await
            .unwrap();
        switchboard::bootstrap::create_account(self.db(), "Other", &email, hash)
            .await
            .expect("a second account");
        self.token_for(email.as_str(), "other-password").await
    }

    // ---- Groups ----

    /// `GET /v1/groups`.
    pub async fn groups(&self, token: &str) -> Value {
        self.try_groups(token)
            .await
            .expect(StatusCode::OK, "GET /v1/groups")
    }

    pub async fn try_groups(&self, token: &str) -> Reply {
        self.get("/v1/groups", token).await
    }

    /// The id of the account's default group.
    pub async fn default_group(&self, admin: &str) -> i64 {
        self.groups(admin).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["isDefault"] == true)
            .and_then(|g| g["id"].as_i64())
            .expect("a default group")
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, token: &str, body: Value) -> Value {
        self.try_create_group(token, body)
            .await
            .expect(StatusCode::CREATED, "POST /v1/groups")
    }

    pub async fn try_create_group(&self, token: &str, body: Value) -> Reply {
        self.post("/v1/groups", token, body).await
    }

    /// `PATCH /v1/groups/{id}`.
    pub async fn update_group(&self, token: &str, id: i64, body: Value) -> Value {
        self.try_update_group(token, id, body)
            .await
            .expect(StatusCode::OK, "PATCH /v1/groups/{id}")
    }

    pub async fn try_update_group(&self, token: &str, id: i64, body: Value) -> Reply {
        self.patch(&format!("/v1/groups/{id}"), token, body).await
    }

    /// `DELETE /v1/groups/{id}`.
    pub async fn try_delete_group(&self, token: &str, id: i64) -> Reply {
        self.delete(&format!("/v1/groups/{id}"), token).await
    }

    /// `POST /v1/groups/{group}/agents`: makes `agent` a member; returns the group's members.
    pub async fn add_to_group(&self, token: &str, group: i64, agent: i64) -> Value {
        self.try_add_to_group(token, group, agent)
            .await
            .expect(StatusCode::OK, "POST /v1/groups/{id}/agents")
    }

    pub async fn try_add_to_group(&self, token: &str, group: i64, agent: i64) -> Reply {
        self.post(
            &format!("/v1/groups/{group}/agents"),
            token,
            json!({ "agentId": agent }),
        )
        .await
    }

    // ---- Tags ----

    /// `GET /v1/tags`.
    pub async fn tags(&self, token: &str) -> Value {
        self.get("/v1/tags", token)
            .await
            .expect(StatusCode::OK, "GET /v1/tags")
    }

    /// `POST /v1/tags`.
    pub async fn create_tag(&self, token: &str, body: Value) -> Value {
        self.try_create_tag(token, body)
            .await
            .expect(StatusCode::CREATED, "POST /v1/tags")
    }

    pub async fn try_create_tag(&self, token: &str, body: Value) -> Reply {
        self.post("/v1/tags", token, body).await
    }

    // ---- Conversations ----

    /// `GET /v1/conversations/{id}`.
    pub async fn conversation(&self, token: &str, id: i64) -> Value {
        self.try_conversation(token, id)
            .await
            .expect(StatusCode::OK, "GET /v1/conversations/{id}")
    }

    pub async fn try_conversation(&self, token: &str, id: i64) -> Reply {
        self.get(&format!("/v1/conversations/{id}"), token).await
    }

    /// Waits until conversation `id` reaches `status`; returns its view.
    pub async fn conversation_becomes(&self, admin: &str, id: i64, status: &str) -> Value {
        eventually(
            Duration::from_secs(15),
            &format!("conversation {id} to be {status}"),
            || async {
                let reply = self.try_conversation(admin, id).await;
                (reply.body["status"] == status).then_some(reply.body)
            },
        )
        .await
    }

    /// `GET /v1/queue`.
    pub async fn queue(&self, token: &str) -> Value {
        self.get("/v1/queue", token)
            .await
            .expect(StatusCode::OK, "GET /v1/queue")
    }

    /// `POST /v1/conversations/{id}/close` (acknowledged, done by a job).
    pub async fn close_conversation(&self, token: &str, id: i64) -> Value {
        self.request(
            Method::POST,
            &format!("/v1/conversations/{id}/close"),
            Some(token),
            None,
        )
        .await
        .expect(StatusCode::ACCEPTED, "POST /v1/conversations/{id}/close")
    }

    /// `POST /v1/conversations/{id}/reopen`.
    pub async fn reopen(&self, token: &str, id: i64) -> Value {
        self.try_reopen(token, id)
            .await
            .expect(StatusCode::OK, "POST /v1/conversations/{id}/reopen")
    }

    pub async fn try_reopen(&self, token: &str, id: i64) -> Reply {
        self.request(
            Method::POST,
            &format!("/v1/conversations/{id}/reopen"),
            Some(token),
            None,
        )
        .await
    }

    /// `POST /v1/conversations/{id}/assign`: gives it to `agent`.
    pub async fn assign(&self, token: &str, id: i64, agent: i64) -> Value {
        self.try_assign(token, id, agent)
            .await
            .expect(StatusCode::OK, "POST /v1/conversations/{id}/assign")
    }

    pub async fn try_assign(&self, token: &str, id: i64, agent: i64) -> Reply {
        self.post(
            &format!("/v1/conversations/{id}/assign"),
            token,
            json!({ "agentId": agent }),
        )
        .await
    }

    /// `POST /v1/conversations/{id}/transfer` (to an agent: 200; to a group: 202).
    pub async fn try_transfer(&self, token: &str, id: i64, body: Value) -> Reply {
        self.post(&format!("/v1/conversations/{id}/transfer"), token, body)
            .await
    }

    /// `POST /v1/conversations/{id}/pickup`: the caller takes it.
    pub async fn pickup(&self, token: &str, id: i64) -> Value {
        self.try_pickup(token, id)
            .await
            .expect(StatusCode::OK, "POST /v1/conversations/{id}/pickup")
    }

    pub async fn try_pickup(&self, token: &str, id: i64) -> Reply {
        self.request(
            Method::POST,
            &format!("/v1/conversations/{id}/pickup"),
            Some(token),
            None,
        )
        .await
    }

    // ---- Threads ----

    /// `GET /v1/threads/{thread}/events`.
    pub async fn thread_events(&self, token: &str, thread: i64) -> Value {
        self.try_thread_events(token, thread)
            .await
            .expect(StatusCode::OK, "GET /v1/threads/{id}/events")
    }

    pub async fn try_thread_events(&self, token: &str, thread: i64) -> Reply {
        self.get(&format!("/v1/threads/{thread}/events"), token)
            .await
    }

    /// `POST /v1/threads/{thread}/events`: an agent writes `content`; returns the stored message.
    pub async fn agent_says(&self, token: &str, thread: i64, content: &str) -> Value {
        self.try_agent_says(token, thread, json!({ "content": content }))
            .await
            .expect(StatusCode::CREATED, "POST /v1/threads/{id}/events")
    }

    pub async fn try_agent_says(&self, token: &str, thread: i64, body: Value) -> Reply {
        self.post(&format!("/v1/threads/{thread}/events"), token, body)
            .await
    }

    // ---- The widget (session tokens) ----

    /// `POST /v1/widget/session` (no authentication).
    pub async fn widget_session(&self, body: Value) -> Reply {
        self.request(Method::POST, "/v1/widget/session", None, Some(body))
            .await
    }

    /// Opens a widget session that must succeed; returns (conversation id, session token).
    pub async fn visitor(&self, body: Value) -> (i64, String) {
        let reply = self.widget_session(body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        (
            reply.body["conversationId"].as_i64().unwrap(),
            reply.body["sessionToken"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /v1/widget/messages`: the visitor writes `content`; returns the stored message.
    pub async fn visitor_says(&self, session: &str, content: &str) -> Value {
        self.try_visitor_says(session, json!({ "content": content }))
            .await
            .expect(StatusCode::CREATED, "POST /v1/widget/messages")
    }

    pub async fn try_visitor_says(&self, session: &str, body: Value) -> Reply {
        self.request(
            Method::POST,
            "/v1/widget/messages",
            Some(session),
            Some(body),
        )
        .await
    }

    /// `GET /v1/widget/conversation`: what the visitor sees.
    pub async fn widget_conversation(&self, session: &str) -> Value {
        self.request(Method::GET, "/v1/widget/conversation", Some(session), None)
            .await
            .expect(StatusCode::OK, "GET /v1/widget/conversation")
    }

    /// `POST /v1/widget/conversation/end`: the visitor leaves (acknowledged, done by a job).
    pub async fn end_conversation(&self, session: &str) -> Value {
        self.request(
            Method::POST,
            "/v1/widget/conversation/end",
            Some(session),
            None,
        )
        .await
        .expect(StatusCode::ACCEPTED, "POST /v1/widget/conversation/end")
    }

    /// `PUT /v1/widget/contact`: the visitor leaves an address.
    pub async fn leave_contact(&self, session: &str, body: Value) -> Value {
        self.try_leave_contact(session, body)
            .await
            .expect(StatusCode::OK, "PUT /v1/widget/contact")
    }

    pub async fn try_leave_contact(&self, session: &str, body: Value) -> Reply {
        self.request(Method::PUT, "/v1/widget/contact", Some(session), Some(body))
            .await
    }

    // ---- Webhooks ----

    /// `GET /v1/webhooks`.
    pub async fn webhooks(&self, token: &str) -> Value {
        self.try_webhooks(token)
            .await
            .expect(StatusCode::OK, "GET /v1/webhooks")
    }

    pub async fn try_webhooks(&self, token: &str) -> Reply {
        self.get("/v1/webhooks", token).await
    }

    /// `GET /v1/webhooks/{id}`.
    pub async fn webhook(&self, token: &str, id: i64) -> Value {
        self.try_webhook(token, id)
            .await
            .expect(StatusCode::OK, "GET /v1/webhooks/{id}")
    }

    pub async fn try_webhook(&self, token: &str, id: i64) -> Reply {
        self.get(&format!("/v1/webhooks/{id}"), token).await
    }

    /// `POST /v1/webhooks`.
    pub async fn create_webhook(&self, admin: &str, body: Value) -> Value {
        self.try_create_webhook(admin, body)
            .await
            .expect(StatusCode::CREATED, "POST /v1/webhooks")
    }

    pub async fn try_create_webhook(&self, token: &str, body: Value) -> Reply {
        self.post("/v1/webhooks", token, body).await
    }

    /// `PATCH /v1/webhooks/{id}`.
    pub async fn update_webhook(&self, admin: &str, id: i64, body: Value) -> Value {
        self.try_update_webhook(admin, id, body)
            .await
            .expect(StatusCode::OK, "PATCH /v1/webhooks/{id}")
    }

    pub async fn try_update_webhook(&self, token: &str, id: i64, body: Value) -> Reply {
        self.patch(&format!("/v1/webhooks/{id}"), token, body).await
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn try_delete_webhook(&self, token: &str, id: i64) -> Reply {
        self.delete(&format!("/v1/webhooks/{id}"), token).await
    }

    /// `GET /v1/webhooks/{id}/deliveries`, of one `status` or of all.
    pub async fn webhook_deliveries(&self, admin: &str, id: i64, status: Option<&str>) -> Value {
        self.try_webhook_deliveries(admin, id, status)
            .await
            .expect(StatusCode::OK, "GET /v1/webhooks/{id}/deliveries")
    }

    pub async fn try_webhook_deliveries(
        &self,
        token: &str,
        id: i64,
        status: Option<&str>,
    ) -> Reply {
        let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
        self.get(&format!("/v1/webhooks/{id}/deliveries{query}"), token)
            .await
    }

    // ---- Stats and the audit trail ----

    /// `GET /v1/stats`.
    pub async fn stats(&self, token: &str) -> Value {
        self.try_stats(token)
            .await
            .expect(StatusCode::OK, "GET /v1/stats")
    }

    pub async fn try_stats(&self, token: &str) -> Reply {
        self.get("/v1/stats", token).await
    }

    /// `GET /v1/audit`, of one `action` or of all.
    pub async fn audit(&self, admin: &str, action: Option<&str>) -> Value {
        self.try_audit(admin, action)
            .await
            .expect(StatusCode::OK, "GET /v1/audit")
    }

    pub async fn try_audit(&self, token: &str, action: Option<&str>) -> Reply {
        match action {
            Some(action) => self.get(&format!("/v1/audit?action={action}"), token).await,
            None => self.get("/v1/audit", token).await,
        }
    }

    // ---- Sockets ----

    /// An agent's socket on `/agents`, which must connect.
    pub async fn agent_socket(&self, token: &str) -> Sio {
        connect(&self.address, "/agents", json!({ "token": token }))
            .await
            .expect("the agent connects")
    }

    /// A visitor's socket on `/visitors`, which must connect.
    pub async fn visitor_socket(&self, session: &str) -> Sio {
        connect(
            &self.address,
            "/visitors",
            json!({ "sessionToken": session }),
        )
        .await
        .expect("the visitor connects")
    }
}

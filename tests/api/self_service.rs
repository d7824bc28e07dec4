//! What agents do for themselves: their profile and password (`PATCH /v1/agents/me`), and
//! signing out everywhere (`POST /v1/auth/logout`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{both_backends, helpers::*, sio::Sio};

/// An agent signed in twice: a token, and another session with a socket open.
struct Signed {
    id: i64,
    email: String,
    token: String,
    other_session: String,
    socket: Sio,
}

async fn signed_in_twice(app: &TestApp, admin: &str) -> Signed {
    let (id, token) = app.agent_with_role(admin, "agent").await;
    let email = app.agent(admin, id).await["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_session = app.token_for(&email, "password-123").await;
    let socket = app.agent_socket(&other_session).await;
    Signed {
        id,
        email,
        token,
        other_session,
        socket,
    }
}

both_backends! {
    async fn an_agent_edits_its_profile_and_nothing_else(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let (id, token) = app.agent_with_role(&admin, "agent").await;
        let reply = app
            .patch("/v1/agents/me", &token, json!({ "name": "Ana", "avatarUrl": "https://example.com/ana.png" }))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["name"], "Ana");
        assert_eq!(app.get("/v1/agents/me", &token).await.body["avatarUrl"], "https://example.com/ana.png");
        let cleared = app.patch("/v1/agents/me", &token, json!({ "avatarUrl": null })).await;
        assert_eq!(cleared.body["avatarUrl"], serde_json::Value::Null);

        // What only an admin changes is refused, and changes nothing.
        for refused in [
            json!({ "role": "admin" }),
            json!({ "maxConcurrentChats": 50 }),
            json!({ "email": "else@example.com" }),
            json!({ "name": "" }),
            json!({ "avatarUrl": "javascript:alert(1)" }),
        ] {
            let reply = app.patch("/v1/agents/me", &token, refused.clone()).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        }
        let agent = app.agent(&admin, id).await;
        assert_eq!(agent["role"], "agent");
        assert_eq!(agent["name"], "Ana");
        assert_ne!(agent["email"], "else@example.com");
        // The two changes, by the agent itself, and nothing for the refused ones.
        let entries = eventually(Duration::from_secs(10), "two audit entries", || async {
            let audit = app.audit(&admin, Some("agent.updated")).await;
            audit["items"].as_array().filter(|items| items.len() >= 2).cloned()
        })
        .await;
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|entry| entry["actorAgentId"] == id && entry["subjectId"] == id));
    }
}

both_backends! {
    async fn a_password_change_needs_the_current_one_and_signs_out_everywhere(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let Signed { id, email, token, other_session, mut socket } = signed_in_twice(&app, &admin).await;

        for (body, why) in [
            (json!({ "password": "new-password-456" }), "give currentPassword"),
            (json!({ "password": "new-password-456", "currentPassword": "wrong-password" }), "not your password"),
            (json!({ "currentPassword": "password-123" }), "goes with a new password"),
            (json!({ "password": "short", "currentPassword": "password-123" }), "at least 8"),
        ] {
            let reply = app.patch("/v1/agents/me", &token, body).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(reply.body["error"]["message"].as_str().unwrap_or_default().contains(why), "{:?}", reply.body);
        }
        assert_eq!(app.try_me(&token).await.status, StatusCode::OK, "refused changes sign nobody out");

        let changed = app
            .patch("/v1/agents/me", &token, json!({ "password": "new-password-456", "currentPassword": "password-123" }))
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
        socket.next("disconnect").await;
        assert_eq!(app.try_me(&token).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(app.try_me(&other_session).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(app.login(&email, "password-123").await.status, StatusCode::UNAUTHORIZED);
        let fresh = app.token_for(&email, "new-password-456").await;
        assert_eq!(app.me(&fresh).await["id"], id);
    }
}

both_backends! {
    async fn logout_revokes_every_token_of_the_agent_and_closes_its_sockets(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let Signed { id, email, token, other_session, mut socket } = signed_in_twice(&app, &admin).await;

        let reply = app.post("/v1/auth/logout", &token, json!({})).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        socket.next("disconnect").await;
        assert_eq!(app.try_me(&token).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(app.try_me(&other_session).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(app.post("/v1/auth/logout", &token, json!({})).await.status, StatusCode::UNAUTHORIZED);
        // Another agent is not touched; signing in again works.
        assert_eq!(app.try_me(&admin).await.status, StatusCode::OK);
        let fresh = app.token_for(&email, "password-123").await;
        assert_eq!(app.me(&fresh).await["id"], id);
    }
}

use chrono::Utc;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{both_backends, helpers::*};

both_backends! {
    async fn an_admin_logs_in_and_sees_itself(backend: Backend) {
        let app = spawn_app(backend).await;
        let reply = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body["tokenType"], "Bearer");
        assert!(reply.body["expiresAt"].as_i64().unwrap() > Utc::now().timestamp());
        assert_eq!(reply.body["agent"]["role"], "admin");
        assert!(reply.body["agent"].get("passwordHash").is_none());
        let token = reply.body["token"].as_str().unwrap();
        assert_eq!(reply.body["access_token"], token, "the seed API's name for the same token");
        let me = app.me(token).await;
        assert_eq!(me["email"], ADMIN_EMAIL);
        assert_eq!(me["groupIds"].as_array().unwrap().len(), 1, "the admin is in the default group");
    }
}

#[tokio::test]
async fn logins_are_case_insensitive_on_email_and_refuse_wrong_passwords_alike() {
    let app = spawn_app(Backend::Embedded).await;
    assert_eq!(
        app.login("  ADMIN@Example.com ", ADMIN_PASSWORD)
            .await
            .status,
        StatusCode::OK
    );
    let wrong_password = app.login(ADMIN_EMAIL, "not the password").await;
    let unknown_email = app.login("nobody@example.com", ADMIN_PASSWORD).await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_email.status, StatusCode::UNAUTHORIZED);
    // The same answer either way: the API does not tell who has an account.
    assert_eq!(wrong_password.body, unknown_email.body);
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_401() {
    let app = spawn_app(Backend::Embedded).await;
    let no_token = app.request(Method::GET, "/v1/auth/me", None, None).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.code(), "unauthorized");

    let garbage = app.try_me("not-a-jwt").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);

    // Signed with another secret.
    let token = app.admin_token().await;
    let secret = std::fs::read_to_string(app.storage.data_dir.join("jwt.secret")).unwrap();
    let claims = app.state.tokens.verify(&token).unwrap();
    let forged = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"someone else's secret, 32+ chars long"),
    )
    .unwrap();
    assert_eq!(app.try_me(&forged).await.status, StatusCode::UNAUTHORIZED);

    // Ours, but expired.
    let mut expired = claims.clone();
    expired.exp = Utc::now().timestamp() - 5;
    let expired = jsonwebtoken::encode(
        &Header::default(),
        &expired,
        &EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .unwrap();
    let reply = app.try_me(&expired).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"]["message"], "token expired");
}

#[tokio::test]
async fn deleting_an_agent_or_changing_its_password_revokes_its_tokens() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let (id, token) = app.agent_with_role(&admin, "agent").await;
    assert_eq!(app.try_me(&token).await.status, StatusCode::OK);

    let agent = app
        .update_agent(&admin, id, json!({ "password": "a-new-password" }))
        .await;
    assert_eq!(app.try_me(&token).await.status, StatusCode::UNAUTHORIZED);

    let email = agent["email"].as_str().unwrap().to_owned();
    let token = app.token_for(&email, "a-new-password").await;
    app.delete_agent(&admin, id).await;
    let reply = app.try_me(&token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login(&email, "a-new-password").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn roles_are_enforced_per_route() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let (agent_id, agent) = app.agent_with_role(&admin, "agent").await;
    let (_, supervisor) = app.agent_with_role(&admin, "supervisor").await;
    let new_agent = json!({ "name": "X", "email": "x@example.com", "password": "password-123" });

    // Everyone reads the team.
    assert_eq!(app.try_agents(&agent).await.status, StatusCode::OK);
    assert_eq!(app.try_groups(&agent).await.status, StatusCode::OK);
    // Only admins manage agents and read the audit trail.
    for token in [&agent, &supervisor] {
        let reply = app.try_create_agent(token, new_agent.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.code(), "forbidden");
        assert_eq!(
            app.try_audit(token, None).await.status,
            StatusCode::FORBIDDEN
        );
    }
    // Supervisors manage groups and tags; agents do not.
    assert_eq!(
        app.try_create_group(&agent, json!({ "name": "Sales" }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.try_create_tag(&agent, json!({ "name": "vip" }))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.try_create_group(&supervisor, json!({ "name": "Sales" }))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.try_create_tag(&supervisor, json!({ "name": "vip" }))
            .await
            .status,
        StatusCode::CREATED
    );
    // An agent sees its own stats, not a colleague's; a supervisor sees both.
    assert_eq!(
        app.try_agent_stats(&agent, agent_id).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.try_agent_stats(&agent, 1).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.try_agent_stats(&supervisor, 1).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn login_is_rate_limited_per_client() {
    let storage = Storage::new(Backend::Embedded).await;
    let app = spawn_with(storage, switchboard::config::Command::All, |s| {
        s.login_rate_per_minute = 3
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.login(ADMIN_EMAIL, "wrong").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let reply = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.code(), "rate_limited");
    // Other endpoints are not limited by the login budget.
    assert_eq!(app.health().await.status, StatusCode::OK);
}

//! Bad input gets a clear JSON error and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Rows in the tables a bad request could touch.
async fn counts(app: &TestApp) -> [u64; 4] {
    use entity::{agent_groups, agents, groups, tags};
    use sea_orm::{EntityTrait, PaginatorTrait};
    let db = app.db();
    [
        agents::Entity::find().count(db).await.unwrap(),
        groups::Entity::find().count(db).await.unwrap(),
        tags::Entity::find().count(db).await.unwrap(),
        agent_groups::Entity::find().count(db).await.unwrap(),
    ]
}

#[tokio::test]
async fn bad_agent_bodies_are_refused_and_nothing_is_written() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let valid = json!({ "name": "Ana", "email": "ana@example.com", "password": "password-123" });
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let before = counts(&app).await;
    let cases: Vec<(&str, Value, StatusCode)> = vec![
        (
            "wrong type",
            with("name", json!(42)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing field",
            json!({ "name": "Ana", "password": "password-123" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            with("isSuperuser", json!(true)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty name",
            with("name", json!("   ")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "over-long name",
            with("name", json!("n".repeat(201))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "invalid e-mail",
            with("email", json!("ana-at-example")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "short password",
            with("password", json!("short")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown role",
            with("role", json!("root")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "capacity 0",
            with("maxConcurrentChats", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "capacity huge",
            with("maxConcurrentChats", json!(1e12)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "bad avatar",
            with("avatarUrl", json!("javascript:alert(1)")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "body is an array",
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (case, body, status) in cases {
        let reply = app.post("/v1/agents", &admin, body).await;
        assert_eq!(reply.status, status, "{case}: {:?}", reply.body);
        assert_eq!(reply.code(), "validation_failed", "{case}");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{case}"
        );
    }
    assert_eq!(counts(&app).await, before, "nothing written");

    let malformed = app
        .send_raw(
            Method::POST,
            "/v1/agents",
            &admin,
            "application/json",
            b"{\"name\": ".to_vec(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.code(), "bad_request");
    let not_json = app
        .send_raw(
            Method::POST,
            "/v1/agents",
            &admin,
            "text/plain",
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(100 * 1024));
    let too_large = app
        .send_raw(
            Method::POST,
            "/v1/agents",
            &admin,
            "application/json",
            huge.into_bytes(),
        )
        .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(counts(&app).await, before, "nothing written");

    // A duplicate e-mail, in any case, is a conflict.
    assert_eq!(
        app.post("/v1/agents", &admin, valid.clone()).await.status,
        StatusCode::CREATED
    );
    let after_first = counts(&app).await;
    let duplicate = app
        .post(
            "/v1/agents",
            &admin,
            with("email", json!("ANA@example.com")),
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.code(), "conflict");
    assert_eq!(counts(&app).await, after_first);
}

#[tokio::test]
async fn bad_ids_queries_and_updates_are_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let before = counts(&app).await;
    let bad_id = app.get("/v1/agents/not-a-number", &admin).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_id.code(), "bad_request");
    assert_eq!(
        app.get("/v1/agents/99999999", &admin).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/v1/agents?limit=0", &admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/agents?limit=1000", &admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/agents?sort=name", &admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/agents?deleted=maybe", &admin).await.status,
        StatusCode::BAD_REQUEST
    );

    let group_cases = [
        json!({ "name": "" }),
        json!({ "name": "Sales", "routingStrategy": "random" }),
        json!({ "name": "Sales", "agentResponseTimeoutSeconds": 1 }),
        json!({ "name": "Sales", "visitorIdleTimeoutSeconds": -5 }),
        json!({ "name": "Sales", "maxReassignments": 21 }),
        json!({ "name": "Sales", "description": "d".repeat(2001) }),
        json!({ "description": "no name" }),
    ];
    for body in group_cases {
        let reply = app.post("/v1/groups", &admin, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {:?}",
            reply.body
        );
    }
    for body in [
        json!({ "name": "x".repeat(101) }),
        json!({ "name": "vip", "color": "red" }),
    ] {
        assert_eq!(
            app.post("/v1/tags", &admin, body).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    let me = app.me(&admin).await["id"].as_i64().unwrap();
    let reply = app
        .patch(
            &format!("/v1/agents/{me}"),
            &admin,
            json!({ "email": "nope" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.me(&admin).await["email"], ADMIN_EMAIL);
    assert_eq!(counts(&app).await, before, "nothing written");
}

#[tokio::test]
async fn odd_logins_are_plain_401s_or_validation_errors() {
    let app = spawn_app(Backend::Embedded).await;
    let cases = [
        (
            json!({ "email": "a".repeat(10_000), "password": "x" }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({ "email": ADMIN_EMAIL, "password": "p".repeat(10_000) }),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({ "email": ADMIN_EMAIL }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "email": ADMIN_EMAIL, "password": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, status) in cases {
        let reply = app
            .request(Method::POST, "/v1/auth/login", None, Some(body))
            .await;
        assert_eq!(reply.status, status);
    }
}

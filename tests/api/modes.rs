//! The two ways to run: embedded restarts keep their data; distributed API and worker nodes share
//! PostgreSQL and Redis.

use std::time::Duration;

use entity::{accounts, agents, audit_log};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use switchboard::{
    config::Command,
    startup::{Application, prepare_database},
};

use crate::helpers::*;

#[tokio::test]
async fn an_embedded_restart_keeps_the_data_and_the_tokens() {
    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let (agent_id, agent_token) = app.agent_with_role(&admin, "agent").await;
    let storage = app.storage.clone();
    app.stop().await;

    let app = spawn_with(storage, Command::All, |_| {}).await;
    assert_eq!(
        app.try_me(&agent_token).await.status,
        StatusCode::OK,
        "the secret is kept"
    );
    assert_eq!(app.try_agent(&admin, agent_id).await.status, StatusCode::OK);
    assert_eq!(
        accounts::Entity::find().count(app.db()).await.unwrap(),
        1,
        "no second bootstrap"
    );
    assert_eq!(agents::Entity::find().count(app.db()).await.unwrap(), 2);
    assert!(app.storage.data_dir.join("switchboard.db").exists());
    assert!(app.storage.data_dir.join("jobs.db").exists());
}

#[tokio::test]
async fn distributed_api_and_worker_nodes_share_postgres_and_redis() {
    let storage = Storage::new(Backend::Distributed).await;
    prepare_database(&storage.settings(), Command::Migrate)
        .await
        .expect("migrate");
    let api = spawn_with(storage.clone(), Command::Serve, |_| {}).await;
    let admin = api.admin_token().await;
    let (agent_id, _) = api.agent_with_role(&admin, "agent").await;

    // The API node runs no workers: the audit job waits in Redis.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = || {
        audit_log::Entity::find()
            .filter(audit_log::Column::SubjectId.eq(agent_id))
            .count(api.db())
    };
    assert_eq!(recorded().await.unwrap(), 0);

    let worker = spawn_with(storage.clone(), Command::Work, |_| {}).await;
    assert!(worker.address.is_empty(), "a worker node serves no HTTP");
    eventually(
        Duration::from_secs(10),
        "the worker node to record the audit entry",
        || async { (recorded().await.unwrap() == 1).then_some(()) },
    )
    .await;

    // A second API node accepts the first one's tokens (shared secret) and sees the same data.
    let api2 = spawn_with(storage, Command::Serve, |_| {}).await;
    api2.agent(&admin, agent_id).await;
    let audit = api2.audit(&admin, Some("agent.created")).await;
    assert_eq!(audit["items"][0]["subjectId"], json!(agent_id));
}

#[tokio::test]
async fn api_and_worker_nodes_refuse_an_unmigrated_database() {
    let storage = Storage::new(Backend::Distributed).await;
    for command in [Command::Serve, Command::Work] {
        let Err(err) = Application::build(storage.settings(), command).await else {
            panic!("{command:?} started on an empty database");
        };
        assert!(
            format!("{err:#}").contains("switchboard migrate"),
            "{err:#}"
        );
    }
}

#[tokio::test]
async fn the_distributed_mode_requires_a_shared_jwt_secret() {
    let storage = Storage::new(Backend::Distributed).await;
    let mut settings = storage.settings();
    settings.jwt_secret = None;
    let Err(err) = Application::build(settings.clone(), Command::All).await else {
        panic!("started without a JWT secret");
    };
    assert!(
        format!("{err:#}").contains("SWITCHBOARD_JWT_SECRET"),
        "{err:#}"
    );
    settings.jwt_secret = Some("too short".into());
    assert!(Application::build(settings, Command::All).await.is_err());
}

//! The example job (audit records) end to end on both job storages, and its idempotency.

use std::time::Duration;

use entity::audit_log;
use jobs::{Job, JobContext, JobError, audit::RecordAudit};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Statement};
use serde_json::json;

use crate::{both_backends, helpers::*};

fn context(app: &TestApp) -> JobContext {
    app.state.job_context()
}

both_backends! {
    async fn creating_an_agent_records_an_audit_entry_through_the_job_queue(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let admin_id = app.me(&admin).await["id"].as_i64().unwrap();
        let (agent_id, _) = app.agent_with_role(&admin, "agent").await;
        let entry = eventually(Duration::from_secs(10), "the audit entry", || async {
            let audit = app.audit(&admin, Some("agent.created")).await;
            audit["items"].as_array().and_then(|items| items.first().cloned())
        })
        .await;
        assert_eq!(entry["subjectType"], "agent");
        assert_eq!(entry["subjectId"], agent_id);
        assert_eq!(entry["actorAgentId"], admin_id);
        assert_eq!(entry["details"]["role"], "agent");
        assert!(entry["details"].get("password").is_none(), "no secrets in the trail");
    }
}

both_backends! {
    async fn an_audit_job_run_twice_records_once(backend: Backend) {
        let app = spawn_app(backend).await;
        let ctx = context(&app);
        let job = RecordAudit::new(1, None, "test.twice", "test", Some(7), json!({ "n": 1 }));
        let first = job.clone().run(&ctx).await.expect("the first run succeeds");
        let second = job.clone().run(&ctx).await.expect("the second run succeeds");
        assert_eq!(first, "test.twice recorded");
        assert_eq!(second, "test.twice already recorded");
        // Delivered twice through the storage as well.
        app.state.jobs.submit(job.clone()).await.unwrap();
        app.state.jobs.submit(job.clone()).await.unwrap();
        let rows = || audit_log::Entity::find().filter(audit_log::Column::Action.eq("test.twice")).count(app.db());
        assert_eq!(rows().await.unwrap(), 1);
        if backend == Backend::Embedded {
            let jobs::JobStore::Sqlite(pool) = &app.state.jobs else { unreachable!() };
            eventually(Duration::from_secs(10), "both deliveries done", || async {
                let done: i64 = sqlx_count(pool, "SELECT COUNT(*) FROM Jobs WHERE job_type = 'record-audit' AND status = 'Done'").await;
                (done >= 2).then_some(())
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(rows().await.unwrap(), 1);
    }
}

async fn sqlx_count(pool: &apalis_sqlite::SqlitePool, sql: &str) -> i64 {
    let db = sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool.clone());
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

both_backends! {
    async fn an_audit_job_for_a_missing_account_fails_permanently(backend: Backend) {
        let app = spawn_app(backend).await;
        let job = RecordAudit::new(987_654, None, "test.orphan", "test", None, json!({}));
        let result = job.run(&context(&app)).await;
        assert!(matches!(result, Err(JobError::Permanent(_))), "{result:?}");
    }
}

#[tokio::test]
async fn a_permanently_failing_task_is_killed_after_one_attempt() {
    let app = spawn_app(Backend::Embedded).await;
    let job = RecordAudit::new(987_654, None, "test.orphan", "test", None, json!({}));
    app.state.jobs.submit(job).await.unwrap();
    let jobs::JobStore::Sqlite(pool) = &app.state.jobs else {
        unreachable!()
    };
    eventually(Duration::from_secs(10), "the task to be killed", || async {
        let killed = sqlx_count(
            pool,
            "SELECT COUNT(*) FROM Jobs WHERE job_type = 'record-audit' AND status = 'Killed'",
        )
        .await;
        (killed == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = sqlx_count(
        pool,
        "SELECT MAX(attempts) FROM Jobs WHERE job_type = 'record-audit'",
    )
    .await;
    assert_eq!(attempts, 1, "a permanent failure is not retried");
}

//! The apalis-redis backlog defect (docs/stack-notes.md, "apalis-redis backlog"): with workers stopped, a backlog of due tasks
//! larger than its Lua promotion can unpack made every fetch fail. Ours must drain it.

use std::time::{Duration, Instant};

use entity::audit_log;
use futures::{StreamExt, stream};
use jobs::{JobStore, audit::RecordAudit, backlog};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use switchboard::config::Command;

use crate::helpers::*;

const BACKLOG: usize = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_jobs_submitted_while_workers_are_down_all_complete() {
    let storage = Storage::new(Backend::Distributed).await;
    switchboard::startup::prepare_database(&storage.settings(), Command::Migrate)
        .await
        .expect("migrate");
    // An API node only: it submits, nobody works.
    let api = spawn_with(storage.clone(), Command::Serve, |_| {}).await;
    let store = api.state.jobs.clone();
    let started = Instant::now();
    stream::iter(0..BACKLOG)
        .map(|n| {
            let store = store.clone();
            async move {
                let job =
                    RecordAudit::new(1, None, "backlog.test", "test", Some(n as i64), json!({}));
                store.submit(job).await.expect("submitted");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let JobStore::Redis { conn, .. } = &store else {
        panic!("distributed uses redis")
    };
    let queue = store.queue_name::<RecordAudit>();
    let waiting = backlog::scheduled_len(conn, &queue).await.unwrap();
    assert_eq!(
        waiting, BACKLOG,
        "every push sits in the scheduled set, far past what one unpack takes"
    );
    eprintln!("submitted {BACKLOG} jobs in {:?}", started.elapsed());

    let started = Instant::now();
    let worker = spawn_with(storage.clone(), Command::Work, |s| {
        s.worker_concurrency = 32
    })
    .await;
    let done = || {
        audit_log::Entity::find()
            .filter(audit_log::Column::Action.eq("backlog.test"))
            .count(worker.db())
    };
    eventually(
        Duration::from_secs(240),
        "every backlogged job to complete",
        || async { (done().await.unwrap() == BACKLOG as u64).then_some(()) },
    )
    .await;
    eprintln!("worked off {BACKLOG} jobs in {:?}", started.elapsed());
    assert_eq!(backlog::scheduled_len(conn, &queue).await.unwrap(), 0);

    // Finished tasks do not stay in Redis for ever: pruning removes them and their data.
    assert!(
        backlog::done_len(conn, &queue).await.unwrap() > 0,
        "finished tasks are kept for a while"
    );
    // (The workers' guard prunes tasks older than a minute meanwhile; this prunes the rest.)
    for _ in 0..1000 {
        if backlog::done_len(conn, &queue).await.unwrap() == 0 {
            break;
        }
        backlog::prune_done(conn, &queue, backlog::Retention::only(Duration::ZERO))
            .await
            .unwrap();
    }
    assert_eq!(backlog::done_len(conn, &queue).await.unwrap(), 0);
    let left: usize = redis::cmd("HLEN")
        .arg(format!("{queue}:data"))
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(left, 0, "their data went too");
}

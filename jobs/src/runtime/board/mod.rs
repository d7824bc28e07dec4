//! What the apalis board reads: one backend per job queue, for every queue of
//! [`crate::runtime::queues`].
//!
//! The board (apalis-board, served by the root crate on the operator listener) asks a backend for
//! queues, statistics, tasks and workers through apalis-core's `Metrics`, `ListQueues`,
//! `ListTasks`, `ListAllTasks`, `ListWorkers` and `FetchById`. apalis-sqlite's storage answers
//! them, but leaves out each task's last error ([`SqliteBoard`] adds it). apalis-redis 1.0.0's
//! answers are wrong or fail (see [`redis`]), so on Redis the board reads through
//! [`RedisBoard`], which reads the keys apalis-redis really writes. One backend type per
//! deployment: the board's root routes (`/queues`, `/tasks`, `/workers`, `/overview`) are
//! answered by the first registered queue, which therefore speaks for all.
//!
//! This module only reads; it never changes a task.

mod redis;
mod sqlite;

use std::sync::Arc;

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{
        Backend, BackendConfig, FetchById, ListAllTasks, ListQueues, ListTasks, ListWorkers,
        Metrics, TaskSink, WireFormatBackend, finalize::Durable,
    },
    task::{ExecutionContext, Task},
};
use serde_json::{Value, json};

pub use self::{redis::RedisBoard, sqlite::SqliteBoard};
use crate::{
    Job, JobStore,
    runtime::queues::{JobVisitor, each_job},
};

/// Everything the board needs from one queue's backend (a trait alias).
pub trait BoardBackend<J>:
    Backend<Task = Task<Vec<u8>>>
    + BackendConfig<Args = J, Kind = Durable>
    + WireFormatBackend<Codec = JsonCodec<Vec<u8>>, Compact = Vec<u8>>
    + TaskSink<J, Durable>
    + Metrics
    + ListQueues
    + ListTasks
    + ListAllTasks
    + ListWorkers
    + FetchById
    + Send
    + Sync
    + 'static
{
}

impl<J, B> BoardBackend<J> for B where
    B: Backend<Task = Task<Vec<u8>>>
        + BackendConfig<Args = J, Kind = Durable>
        + WireFormatBackend<Codec = JsonCodec<Vec<u8>>, Compact = Vec<u8>>
        + TaskSink<J, Durable>
        + Metrics
        + ListQueues
        + ListTasks
        + ListAllTasks
        + ListWorkers
        + FetchById
        + Send
        + Sync
        + 'static
{
}

/// Receives the board backend of each queue (see [`each_queue`]).
pub trait BoardVisitor {
    /// Called once per job type with the queue's name as the board shows it (`Job::QUEUE`).
    fn queue<J: Job, B: BoardBackend<J>>(&mut self, name: &'static str, backend: B);
}

/// Hands `visitor` the board backend of every job queue on `store`, in [`each_job`] order.
pub fn each_queue(store: &JobStore, visitor: &mut impl BoardVisitor) {
    enum Source {
        Sqlite(apalis_sqlite::SqlitePool),
        Redis(apalis_redis::ConnectionManager, redis::Queues),
    }
    struct Adapter<'a, V> {
        source: Source,
        visitor: &'a mut V,
    }
    impl<V: BoardVisitor> JobVisitor for Adapter<'_, V> {
        fn job<J: Job>(&mut self) {
            match &self.source {
                Source::Sqlite(pool) => self
                    .visitor
                    .queue::<J, _>(J::QUEUE, SqliteBoard::<J>::new(pool)),
                Source::Redis(conn, queues) => self
                    .visitor
                    .queue::<J, _>(J::QUEUE, RedisBoard::<J>::new(conn.clone(), queues.clone())),
            }
        }
    }
    let source = match store {
        JobStore::Sqlite(pool) => Source::Sqlite(pool.clone()),
        JobStore::Redis { conn, prefix } => Source::Redis(conn.clone(), redis::Queues::new(prefix)),
    };
    each_job(&mut Adapter { source, visitor });
}

/// The error in a stored result (`{"Err": "..."}`, how both storages keep a task's last outcome),
/// if it is one.
fn error_of(result: &str) -> Option<String> {
    match serde_json::from_str::<Result<Value, String>>(result) {
        Ok(Err(error)) => Some(error),
        _ => None,
    }
}

/// `task` with `error` as the outcome of its last attempt, where the board's web app shows it
/// ("Result" on the task's page). That is the task's list of runs, which apalis-core lets no one
/// set but its own deserialisation: the context goes through JSON. A successful outcome is not
/// shown: a run holds it as bytes.
fn with_error(task: Task<Vec<u8>>, error: String) -> Task<Vec<u8>> {
    let ctx = task.ctx();
    let mut value = match serde_json::to_value(ctx.as_ref()) {
        Ok(value) => value,
        Err(_) => return task,
    };
    value["runs"] = json!([{
        "result": {
            "task_id": ctx.task_id(),
            "attempt": ctx.attempt(),
            "status": ctx.status(),
            "result": { "Err": error },
        },
        "lock_at": ctx.lock_at().unwrap_or_default(),
        "lock_by": ctx.lock_by().unwrap_or_default(),
        "done_at": ctx.done_at(),
    }]);
    match serde_json::from_value::<ExecutionContext>(value) {
        Ok(with_run) => Task::new_with_ctx(task.args, Arc::new(with_run)),
        Err(_) => task,
    }
}

#[cfg(test)]
mod tests {
    use apalis_core::task::{builder::TaskBuilder, status::Status, task_id::TaskId};

    use super::*;

    #[test]
    fn a_stored_error_becomes_the_last_run() {
        assert_eq!(
            error_of(r#"{"Err":"no such table"}"#).as_deref(),
            Some("no such table")
        );
        assert_eq!(error_of(r#"{"Ok":"done"}"#), None);
        assert_eq!(error_of("not json"), None);

        let task = TaskBuilder::new(b"{}".to_vec())
            .task_id("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<TaskId>().unwrap())
            .status(Status::Failed)
            .attempt(3)
            .build();
        let task = with_error(task, "no such table".into());
        assert_eq!(task.args, b"{}");
        assert_eq!(task.ctx().attempt(), 3);
        let runs = serde_json::to_value(task.ctx().runs()).unwrap();
        assert_eq!(
            runs[0]["result"]["result"]["Err"], "no such table",
            "{runs}"
        );
        assert_eq!(runs[0]["result"]["attempt"], 3, "{runs}");
    }
}

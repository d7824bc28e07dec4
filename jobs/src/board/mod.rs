//! What the apalis board reads: one backend per job queue, for every queue of [`crate::queues`].
//!
//! The board (apalis-board, served by the root crate on the operator listener) asks a backend for
//! queues, statistics, tasks and workers through apalis-core's `Metrics`, `ListQueues`,
//! `ListTasks`, `ListAllTasks`, `ListWorkers` and `FetchById`. apalis-sqlite's storage answers
//! them as it is. apalis-redis 1.0.0's answers are wrong or fail (see [`redis`]), so on Redis the
//! board reads through [`RedisBoard`], which reads the keys apalis-redis really writes. One
//! backend type per deployment: the board's root routes (`/queues`, `/tasks`, `/workers`,
//! `/overview`) are answered by the first registered queue, which therefore speaks for all.
//!
//! This module only reads; it never changes a task.

mod redis;

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{
        Backend, BackendConfig, FetchById, ListAllTasks, ListQueues, ListTasks, ListWorkers,
        Metrics, TaskSink, WireFormatBackend, finalize::Durable,
    },
    task::Task,
};

pub use self::redis::RedisBoard;
use crate::{
    Job, JobStore,
    queues::{JobVisitor, each_job},
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
                    .queue::<J, _>(J::QUEUE, JobStore::sqlite_storage::<J>(pool)),
                Source::Redis(conn, queues) => self.visitor.queue::<J, _>(
                    J::QUEUE,
                    RedisBoard::<J>::new(conn.clone(), queues.clone()),
                ),
            }
        }
    }
    let source = match store {
        JobStore::Sqlite(pool) => Source::Sqlite(pool.clone()),
        JobStore::Redis { conn, prefix } => Source::Redis(conn.clone(), redis::Queues::new(prefix)),
    };
    each_job(&mut Adapter { source, visitor });
}

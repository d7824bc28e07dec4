//! The board's reader of apalis-sqlite 1.0.0: its own, plus each task's last error.
//!
//! apalis-sqlite answers the board correctly, but drops the `last_result` column when it turns a
//! row into a task, so a failed task's error never reaches the board. [`SqliteBoard`] hands every
//! question to the wrapped `SqliteStorage` and adds that error to the tasks it lists.

use std::{
    collections::HashMap,
    pin::Pin,
    task::{Context, Poll},
};

use apalis_core::{
    backend::{
        Backend, BackendConfig, FetchById, Filter, ListAllTasks, ListQueues, ListTasks,
        ListWorkers, Metrics, QueueInfo, RunningWorker, Statistic, WireFormatBackend,
    },
    task::{Task, task_id::TaskId},
    worker::context::WorkerContext,
};
use apalis_sqlite::{Error, SqlitePool, SqliteStorage};
use futures::Sink;

use super::with_error;
use crate::{Job, JobStore};

/// One queue as the board sees it on apalis-sqlite.
#[derive(Debug)]
pub struct SqliteBoard<J> {
    storage: SqliteStorage<J>,
    pool: SqlitePool,
}

impl<J: Job> SqliteBoard<J> {
    pub(super) fn new(pool: &SqlitePool) -> Self {
        Self {
            storage: JobStore::sqlite_storage::<J>(pool),
            pool: pool.clone(),
        }
    }
}

/// `tasks` with the error of their last attempt, read from apalis-sqlite's `last_result`.
async fn with_errors(
    pool: &SqlitePool,
    tasks: Vec<Task<Vec<u8>>>,
) -> Result<Vec<Task<Vec<u8>>>, Error> {
    let ids: Vec<String> = tasks
        .iter()
        .filter_map(|task| task.ctx().task_id().map(ToString::to_string))
        .collect();
    if ids.is_empty() {
        return Ok(tasks);
    }
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, last_result FROM Jobs WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(serde_json::to_string(&ids).unwrap_or_default())
    .fetch_all(pool)
    .await
    .map_err(Error::from)?;
    let errors: HashMap<String, String> = rows
        .into_iter()
        .filter_map(|(id, result)| Some((id, super::error_of(&result?)?)))
        .collect();
    Ok(tasks
        .into_iter()
        .map(|task| {
            let error = task
                .ctx()
                .task_id()
                .and_then(|id| errors.get(&id.to_string()).cloned());
            match error {
                Some(error) => with_error(task, error),
                None => task,
            }
        })
        .collect())
}

impl<J: Job> ListTasks for SqliteBoard<J> {
    async fn list_tasks(&self, filter: &Filter) -> Result<Vec<Task<Vec<u8>>>, Error> {
        with_errors(&self.pool, self.storage.list_tasks(filter).await?).await
    }
}

impl<J: Job> ListAllTasks for SqliteBoard<J> {
    async fn list_all_tasks(&self, filter: &Filter) -> Result<Vec<Task<Vec<u8>>>, Error> {
        with_errors(&self.pool, self.storage.list_all_tasks(filter).await?).await
    }
}

impl<J: Job> FetchById for SqliteBoard<J> {
    async fn fetch_by_id(&mut self, task_id: &TaskId) -> Result<Option<Task<Vec<u8>>>, Error> {
        let Some(task) = self.storage.fetch_by_id(task_id).await? else {
            return Ok(None);
        };
        Ok(with_errors(&self.pool, vec![task]).await?.pop())
    }
}

// Everything else is the wrapped storage's.

impl<J: Job> Metrics for SqliteBoard<J> {
    async fn global(&self) -> Result<Vec<Statistic>, Error> {
        self.storage.global().await
    }

    async fn fetch_by_queue(&self) -> Result<Vec<Statistic>, Error> {
        self.storage.fetch_by_queue().await
    }
}

impl<J: Job> ListQueues for SqliteBoard<J> {
    async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        // apalis-sqlite lists every worker type as a queue, the scheduler's too: keep the queues.
        let names = crate::queues::names();
        let mut queues = self.storage.list_queues().await?;
        queues.retain(|queue| names.contains(&queue.name.as_str()));
        Ok(queues)
    }
}

impl<J: Job> ListWorkers for SqliteBoard<J> {
    async fn list_workers(&self) -> Result<Vec<RunningWorker>, Error> {
        self.storage.list_workers().await
    }

    async fn list_all_workers(&self) -> Result<Vec<RunningWorker>, Error> {
        self.storage.list_all_workers().await
    }
}

impl<J: Job> Backend for SqliteBoard<J> {
    type Task = Task<Vec<u8>>;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        self.storage.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Error>>> {
        self.storage.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        Backend::poll_close(&mut self.storage, cx, worker)
    }
}

impl<J: Job> BackendConfig for SqliteBoard<J> {
    type Args = J;
    type Id = <SqliteStorage<J> as BackendConfig>::Id;
    type Kind = <SqliteStorage<J> as BackendConfig>::Kind;
    type Config = <SqliteStorage<J> as BackendConfig>::Config;
    type Layer = <SqliteStorage<J> as BackendConfig>::Layer;

    fn config(&self) -> &Self::Config {
        self.storage.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        self.storage.middleware(worker)
    }
}

impl<J: Job> WireFormatBackend for SqliteBoard<J> {
    type Codec = <SqliteStorage<J> as WireFormatBackend>::Codec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &Self::Codec {
        self.storage.codec()
    }
}

impl<J: Job> Sink<Task<Vec<u8>>> for SqliteBoard<J> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Sink::poll_ready(Pin::new(&mut self.get_mut().storage), cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Task<Vec<u8>>) -> Result<(), Error> {
        Sink::start_send(Pin::new(&mut self.get_mut().storage), item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Sink::poll_flush(Pin::new(&mut self.get_mut().storage), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Sink::poll_close(Pin::new(&mut self.get_mut().storage), cx)
    }
}

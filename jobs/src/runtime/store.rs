//! Where jobs wait: apalis-sqlite in the embedded mode, apalis-redis in the distributed one.
//!
//! Job code never sees which; it submits through [`JobStore::submit`].

use std::{fmt, path::Path, sync::Arc, time::Duration};

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteStorage};

use crate::{Job, runtime::backlog::Retention};

/// How often each apalis-redis worker says it is alive (and looks for other workers' orphans).
const HEARTBEAT: Duration = Duration::from_secs(3);
/// Heartbeats a worker may miss before its in-flight tasks go back to the queue for others: a
/// worker killed with -9 holds its tasks at most `HEARTBEAT × (MISSED_HEARTBEATS + 1)`, about
/// 12 s (apalis-redis's default is 30 s × 10, five minutes). The heartbeat runs beside the tasks,
/// so a busy worker never looks dead.
const MISSED_HEARTBEATS: usize = 3;

/// Longest wait for Redis to take one task.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle on the job storage; cloning shares the connection pool.
#[derive(Clone)]
pub enum JobStore {
    /// One SQLite file of its own (the embedded mode), never the application database: apalis-sqlite
    /// sets `synchronous=OFF` and slows down as its table grows (docs/stack-notes.md, "apalis-sqlite").
    Sqlite(SqlitePool),
    /// Redis (the distributed mode). Every key starts with `prefix`, so several deployments or test
    /// runs can share one server.
    Redis {
        /// Multiplexed, auto-reconnecting connection.
        conn: ConnectionManager,
        /// Namespace of every queue key.
        prefix: Arc<str>,
    },
}

impl fmt::Debug for JobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(_) => f.write_str("JobStore::Sqlite"),
            Self::Redis { prefix, .. } => write!(f, "JobStore::Redis({prefix})"),
        }
    }
}

/// The job storage could not be reached or refused a task.
#[derive(Debug, thiserror::Error)]
#[error("job storage: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn new(err: impl fmt::Display) -> Self {
        Self(err.to_string())
    }
}

impl JobStore {
    /// Opens (creating if needed) the apalis-sqlite file and its tables.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(StoreError::new)?;
        SqliteStorage::setup(&pool).await.map_err(StoreError::new)?;
        Ok(Self::Sqlite(pool))
    }

    /// Connects to Redis; `prefix` namespaces every queue.
    pub async fn open_redis(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let conn = apalis_redis::connect(url).await.map_err(StoreError::new)?;
        Ok(Self::Redis {
            conn,
            prefix: prefix.into(),
        })
    }

    /// "sqlite" or "redis", for logs and health output.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Redis { .. } => "redis",
        }
    }

    /// The storage-level queue name of job `J`.
    pub fn queue_name<J: Job>(&self) -> String {
        match self {
            Self::Sqlite(_) => J::QUEUE.to_owned(),
            Self::Redis { prefix, .. } => format!("{prefix}:{}", J::QUEUE),
        }
    }

    /// The key of job `J`'s in-process wake-up signal: storage location and queue.
    pub fn wake_key<J: Job>(&self) -> String {
        match self {
            Self::Sqlite(pool) => format!(
                "{}#{}",
                pool.connect_options().get_filename().display(),
                J::QUEUE
            ),
            Self::Redis { .. } => self.queue_name::<J>(),
        }
    }

    pub(crate) fn sqlite_storage<J: Job>(pool: &SqlitePool) -> SqliteStorage<J> {
        SqliteStorage::new(pool).with_config(apalis_sqlite::Config::default().queue(J::QUEUE))
    }

    pub(crate) fn redis_storage<J: Job>(conn: &ConnectionManager, prefix: &str) -> RedisStorage<J> {
        let config = apalis_redis::Config::default()
            .queue(format!("{prefix}:{}", J::QUEUE))
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS);
        RedisStorage::new(conn.clone()).with_config(config)
    }

    /// Submits one job with its retry budget. Returns once the storage has accepted it.
    pub async fn submit<J: Job>(&self, job: J) -> Result<(), StoreError> {
        self.push(TaskBuilder::new(job)).await
    }

    /// Submits one job that must not start before `delay` has passed (whole seconds: the
    /// storages keep run times in Unix seconds, so it may start up to a second later).
    pub async fn submit_after<J: Job>(&self, job: J, delay: Duration) -> Result<(), StoreError> {
        self.push(TaskBuilder::new(job).run_after(delay)).await
    }

    async fn push<J: Job>(&self, task: TaskBuilder<J>) -> Result<(), StoreError> {
        let task = task.max_attempts(J::BUDGET.deliveries).build();
        let pushed = match self {
            Self::Sqlite(pool) => Self::sqlite_storage::<J>(pool)
                .push_task(task)
                .await
                .map_err(StoreError::new),
            // While Redis is down its connection retries for seconds; callers would wait that
            // long for an answer the database already made durable (intents, state the sweep
            // reads), so a push gives up sooner.
            Self::Redis { conn, prefix } => tokio::time::timeout(
                SUBMIT_TIMEOUT,
                Self::redis_storage::<J>(conn, prefix).push_task(task),
            )
            .await
            .map_err(|_| StoreError::new("timed out"))
            .and_then(|pushed| pushed.map_err(StoreError::new)),
        };
        if pushed.is_ok() {
            super::poll::wake(&self.wake_key::<J>());
        }
        pushed
    }

    /// Deletes finished tasks from apalis-sqlite: done ones after `keep_done.keep` but for the
    /// newest `keep_done.recent` of each queue, which stay until `keep_done.recent_for` (the board
    /// shows them); killed or exhausted ones after `keep_failed` (operators look at those).
    /// apalis-sqlite's fetch and acknowledgement slow down as its table grows
    /// (docs/stack-notes.md, "apalis-sqlite"), so this runs periodically. Returns how many rows
    /// went. A no-op on Redis.
    pub async fn prune(
        &self,
        keep_done: Retention,
        keep_failed: Duration,
    ) -> Result<u64, StoreError> {
        let Self::Sqlite(pool) = self else {
            return Ok(0);
        };
        let secs = |keep: Duration| i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        let done = sqlx::query(
            "DELETE FROM Jobs WHERE status = 'Done' AND done_at < strftime('%s', 'now') - ?1 \
             AND (done_at < strftime('%s', 'now') - ?2 OR id NOT IN ( \
               SELECT id FROM ( \
                 SELECT id, ROW_NUMBER() OVER (PARTITION BY job_type ORDER BY done_at DESC, id DESC) AS n \
                 FROM Jobs WHERE status = 'Done' AND done_at >= strftime('%s', 'now') - ?2 \
               ) WHERE n <= ?3))",
        )
        .bind(secs(keep_done.keep))
        .bind(secs(keep_done.recent_for.max(keep_done.keep)))
        .bind(i64::try_from(keep_done.recent).unwrap_or(i64::MAX))
        .execute(pool)
        .await
        .map_err(StoreError::new)?;
        let failed = sqlx::query(
            "DELETE FROM Jobs WHERE (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts)) \
             AND done_at < strftime('%s', 'now') - ?1",
        )
        .bind(i64::try_from(keep_failed.as_secs()).unwrap_or(i64::MAX))
        .execute(pool)
        .await
        .map_err(StoreError::new)?;
        Ok(done.rows_affected() + failed.rows_affected())
    }

    /// Says that the workers `names` of `queue`, which no storage runs (the scheduler's, on
    /// apalis-cron), are alive, where the board reads workers: apalis-sqlite's `Workers` table, or
    /// the keys apalis-redis writes for its own workers (`{queue}:workers`, a sorted set of last
    /// heartbeats, and `{queue}:workers:metadata:{name}`). `backend` names what runs them.
    /// Records of workers silent for a day go.
    pub async fn record_workers(
        &self,
        queue: &str,
        names: &[String],
        backend: &str,
        started_at: u64,
    ) -> Result<(), StoreError> {
        const FORGET_AFTER: u64 = 24 * 3600;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let secs = |at: u64| i64::try_from(at).unwrap_or(i64::MAX);
        match self {
            Self::Sqlite(pool) => {
                for name in names {
                    sqlx::query(
                        "INSERT INTO Workers (id, worker_type, storage_name, layers, last_seen, started_at) \
                         VALUES (?1, ?2, ?3, '', ?4, ?5) \
                         ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                    )
                    .bind(name)
                    .bind(queue)
                    .bind(backend)
                    .bind(secs(now))
                    .bind(secs(started_at))
                    .execute(pool)
                    .await
                    .map_err(StoreError::new)?;
                }
                sqlx::query("DELETE FROM Workers WHERE worker_type = ?1 AND last_seen < ?2")
                    .bind(queue)
                    .bind(secs(now.saturating_sub(FORGET_AFTER)))
                    .execute(pool)
                    .await
                    .map_err(StoreError::new)?;
                Ok(())
            }
            Self::Redis { conn, prefix } => {
                let workers = format!("{prefix}:{queue}:workers");
                let mut pipe = redis::pipe();
                for name in names {
                    let meta = format!("{workers}:metadata:{name}");
                    pipe.zadd(&workers, name, now)
                        .ignore()
                        .hset_multiple(&meta, &[("backend_name", backend), ("service", "")])
                        .ignore()
                        .expire(&meta, i64::try_from(FORGET_AFTER).unwrap_or(i64::MAX))
                        .ignore();
                }
                pipe.zrembyscore(&workers, 0, now.saturating_sub(FORGET_AFTER))
                    .ignore();
                pipe.query_async::<()>(&mut conn.clone())
                    .await
                    .map_err(StoreError::new)
            }
        }
    }

    /// Round-trips to the storage, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)
                .map_err(StoreError::new),
            Self::Redis { conn, .. } => redis::cmd("PING")
                .query_async::<String>(&mut conn.clone())
                .await
                .map(drop)
                .map_err(StoreError::new),
        }
    }
}

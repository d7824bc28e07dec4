//! The board's reader of apalis-redis 1.0.0, which cannot answer the board itself.
//!
//! What `RedisStorage`'s own board traits do wrong (each checked against the crate's source):
//! - `list_queues` reads `core:apalis:queues:list`, a global set of every deployment sharing the
//!   server that is never cleaned, and parses the stats script's answer as `Vec<QueueInfo>` when
//!   it is a `Vec<Statistic>`: every call fails.
//! - `fetch_by_queue` and `global` count the done and dead sets with `ZCARD`/`ZCOUNT`, but
//!   apalis-redis writes them with `SADD` (a Redis type error), never pass the `now` the stats
//!   script compares with, count a `{queue}:inflight` set nobody writes (workers hold
//!   `{queue}:inflight:{worker}`), and `global` reads a `core:apalis:queues` key nothing writes.
//! - `list_workers` reads worker metadata at `{queue}:workers:{name}` but registration writes
//!   `{queue}:workers:metadata:{name}`; `list_all_workers` decodes that hash as JSON.
//! - `list_tasks` pages through the list named by the bare queue name, which does not exist
//!   (pending tasks are in `{queue}:active`), so a queue's tasks are always empty.
//! - `list_all_tasks` sees this queue only.
//!
//! [`RedisBoard`] answers the same traits from the keys apalis-redis does write: `{queue}:active`
//! (waiting), `{queue}:scheduled` (delayed and retrying), `{queue}:inflight:{worker}` (running),
//! `{queue}:done` and `{queue}:dead` (sets), `{queue}:data` and `{queue}:meta:{id}` (each task),
//! `{queue}:workers` (heartbeats); tasks are decoded with the crate's own `deserialize_with_meta`.
//! Everything else (running workers, pushing) is the wrapped `RedisStorage`'s.

use std::{
    pin::Pin,
    str::FromStr,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{
        Backend, BackendConfig, FetchById, Filter, ListAllTasks, ListQueues, ListTasks,
        ListWorkers, Metrics, QueueInfo, RunningWorker, StatType, Statistic, WireFormatBackend,
        finalize::Durable, persistence::TaskPersistLayer, queue::Queue,
    },
    task::{Task, builder::TaskBuilder, metadata::MetadataStore, status::Status, task_id::TaskId},
    worker::context::WorkerContext,
};
use apalis_redis::{Config, ConnectionManager, Error, RedisStorage, queries::CompactTask};
use futures::Sink;
use redis::Script;
use serde_json::Value;
use ulid::Ulid;

use crate::{Job, queues, runtime::scheduler};

static COUNTS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/counts.lua")));
static IDS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/ids.lua")));
static TASKS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/tasks.lua")));
static WORKERS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/workers.lua")));

/// Largest page the board may ask for; bigger requests get this many.
const MAX_PAGE: u32 = 100;

/// The apalis-redis configuration (key names) of queue `name` under `prefix`, as the workers use.
fn config(prefix: &str, name: &str) -> Config {
    Config::default().queue(format!("{prefix}:{name}"))
}

/// Every queue of the deployment: board name and apalis-redis configuration.
#[derive(Clone, Debug)]
pub(super) struct Queues {
    prefix: Arc<str>,
    all: Arc<[(&'static str, Config)]>,
}

impl Queues {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
            all: queues::names()
                .into_iter()
                .map(|name| (name, config(prefix, name)))
                .collect(),
        }
    }
}

/// One queue as the board sees it on Redis (see the module documentation).
#[derive(Debug)]
pub struct RedisBoard<J> {
    storage: RedisStorage<J>,
    conn: ConnectionManager,
    config: Config,
    queues: Queues,
}

impl<J: Job> RedisBoard<J> {
    pub(super) fn new(conn: ConnectionManager, queues: Queues) -> Self {
        let config = config(&queues.prefix, J::QUEUE);
        Self {
            storage: RedisStorage::new(conn.clone()).with_config(config.clone()),
            conn,
            config,
            queues,
        }
    }

    fn this(&self) -> (&'static str, &Config) {
        (J::QUEUE, &self.config)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Counts of one queue by status.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pending: u64,
    running: u64,
    failed: u64,
    killed: u64,
    done: u64,
}

impl Counts {
    fn add(mut self, other: Self) -> Self {
        self.pending += other.pending;
        self.running += other.running;
        self.failed += other.failed;
        self.killed += other.killed;
        self.done += other.done;
        self
    }

    fn statistics(self) -> Vec<Statistic> {
        let total = self.pending + self.running + self.failed + self.killed + self.done;
        [
            ("RUNNING_JOBS", self.running),
            ("PENDING_JOBS", self.pending),
            ("FAILED_JOBS", self.failed),
            ("KILLED_JOBS", self.killed),
            ("DONE_JOBS", self.done),
            ("TOTAL_JOBS", total),
        ]
        .into_iter()
        .zip(1..)
        .map(|((title, value), priority)| Statistic {
            title: title.to_owned(),
            stat_type: StatType::Number,
            value: value.to_string(),
            priority: Some(priority),
        })
        .collect()
    }
}

async fn counts(conn: &ConnectionManager, config: &Config) -> Result<Counts, Error> {
    let [pending, running, failed, killed, done]: [u64; 5] = COUNTS
        .key(config.active_jobs_list())
        .key(config.scheduled_jobs_set())
        .key(config.workers_set())
        .key(config.done_jobs_set())
        .key(config.dead_jobs_set())
        .arg(config.queue.as_ref())
        .invoke_async(&mut conn.clone())
        .await?;
    Ok(Counts {
        pending,
        running,
        failed,
        killed,
        done,
    })
}

/// Ids of `config`'s tasks with `status` (any status when `None`).
async fn ids(
    conn: &ConnectionManager,
    config: &Config,
    status: Option<&Status>,
) -> Result<Vec<String>, Error> {
    let want = status.map(Status::to_string).unwrap_or_default();
    Ok(IDS
        .key(config.active_jobs_list())
        .key(config.scheduled_jobs_set())
        .key(config.workers_set())
        .key(config.done_jobs_set())
        .key(config.dead_jobs_set())
        .key(config.job_data_hash())
        .arg(config.queue.as_ref())
        .arg(want)
        .invoke_async(&mut conn.clone())
        .await?)
}

/// The tasks with `ids` (those still stored), decoded the way apalis-redis decodes them.
async fn tasks(
    conn: &ConnectionManager,
    name: &'static str,
    config: &Config,
    ids: &[String],
) -> Result<Vec<Task<Vec<u8>>>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let reply: Vec<redis::Value> = TASKS
        .key(config.job_data_hash())
        .key(config.scheduled_jobs_set())
        .arg(config.queue.as_ref())
        .arg(ids)
        .invoke_async(&mut conn.clone())
        .await?;
    Ok(apalis_redis::queries::deserialize_with_meta(reply)?
        .into_iter()
        .map(|task| board_task(name, task))
        .collect())
}

/// A stored task as the board shows it: the queue it belongs to, when it runs (its schedule, or
/// its submission, which its ULID records), when it finished and its last error; the rest of the
/// metadata stays in the metadata.
fn board_task(name: &'static str, task: CompactTask) -> Task<Vec<u8>> {
    let mut meta = task.meta;
    let number = |value: Option<String>| value.and_then(|v| v.parse::<f64>().ok());
    let submitted = task
        .task_id
        .as_ulid()
        .map(|id| id.timestamp_ms() / 1000)
        .unwrap_or_default();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let run_at = number(meta.remove("run_at")).map_or(submitted, |at| at as u64);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let done_at = number(meta.get("done_at").cloned()).map(|at| at as u64);
    let error = meta
        .get("result")
        .and_then(|result| super::error_of(result));
    let mut builder = TaskBuilder::new(task.data)
        .task_id(task.task_id)
        .queue(Queue::from(name))
        .status(task.status)
        .attempt(task.attempts as usize)
        .max_attempts(task.max_attempts as usize)
        .run_at_timestamp(run_at)
        .done_at(done_at)
        .lock_at(task.lock_at)
        .lock_by(task.lock_by)
        .with_metadata(MetadataStore::from_map(meta));
    if let Some(key) = task.idempotency_key {
        builder = builder.idempotency_key(key);
    }
    match error {
        Some(error) => super::with_error(builder.build(), error),
        None => builder.build(),
    }
}

/// Newest first (ULIDs sort by creation time), then the page `filter` asks for.
fn page(mut ids: Vec<String>, filter: &Filter) -> Vec<String> {
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    let size = filter.page_size.unwrap_or(10).clamp(1, MAX_PAGE) as usize;
    let skip = (filter.page.max(1) as usize - 1).saturating_mul(size);
    ids.into_iter().skip(skip).take(size).collect()
}

async fn workers(
    conn: &ConnectionManager,
    name: &'static str,
    config: &Config,
) -> Result<Vec<RunningWorker>, Error> {
    // apalis-redis hands a silent worker's tasks to others after this long: until then it counts.
    let alive_since = now().saturating_sub(config.orphaned_duration().as_secs());
    let flat: Vec<String> = WORKERS
        .key(config.workers_set())
        .arg(config.queue.as_ref())
        .arg(alive_since)
        .invoke_async(&mut conn.clone())
        .await?;
    Ok(flat
        .chunks_exact(4)
        .map(|worker| RunningWorker {
            id: worker[0].clone(),
            queue: name.to_owned(),
            backend: worker[2].clone(),
            // apalis-redis does not record when a worker started.
            started_at: 0,
            last_heartbeat: worker[1].parse().unwrap_or_default(),
            layers: worker[3].clone(),
        })
        .collect())
}

impl<J: Job> Metrics for RedisBoard<J> {
    async fn global(&self) -> Result<Vec<Statistic>, Error> {
        let mut total = Counts::default();
        for (_, config) in self.queues.all.iter() {
            total = total.add(counts(&self.conn, config).await?);
        }
        Ok(total.statistics())
    }

    async fn fetch_by_queue(&self) -> Result<Vec<Statistic>, Error> {
        Ok(counts(&self.conn, self.this().1).await?.statistics())
    }
}

impl<J: Job> ListQueues for RedisBoard<J> {
    async fn list_queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let mut queues = Vec::with_capacity(self.queues.all.len());
        for (name, config) in self.queues.all.iter() {
            queues.push(QueueInfo {
                name: (*name).to_owned(),
                stats: counts(&self.conn, config).await?.statistics(),
                workers: workers(&self.conn, name, config)
                    .await?
                    .into_iter()
                    .map(|worker| worker.id)
                    .collect(),
                // apalis-redis keeps no history to draw it from.
                activity: Vec::new(),
            });
        }
        Ok(queues)
    }
}

impl<J: Job> ListWorkers for RedisBoard<J> {
    async fn list_workers(&self) -> Result<Vec<RunningWorker>, Error> {
        let (name, config) = self.this();
        workers(&self.conn, name, config).await
    }

    async fn list_all_workers(&self) -> Result<Vec<RunningWorker>, Error> {
        let mut all = Vec::new();
        for (name, config) in self.queues.all.iter() {
            all.extend(workers(&self.conn, name, config).await?);
        }
        // The scheduler's workers, which apalis-cron runs outside any storage.
        let cron = config(&self.queues.prefix, scheduler::BOARD_QUEUE);
        all.extend(workers(&self.conn, scheduler::BOARD_QUEUE, &cron).await?);
        Ok(all)
    }
}

impl<J: Job> ListTasks for RedisBoard<J> {
    async fn list_tasks(&self, filter: &Filter) -> Result<Vec<Task<Vec<u8>>>, Error> {
        let (name, config) = self.this();
        let ids = ids(&self.conn, config, filter.status.as_ref()).await?;
        tasks(&self.conn, name, config, &page(ids, filter)).await
    }
}

impl<J: Job> ListAllTasks for RedisBoard<J> {
    async fn list_all_tasks(&self, filter: &Filter) -> Result<Vec<Task<Vec<u8>>>, Error> {
        let mut tagged = Vec::new();
        for (index, (_, config)) in self.queues.all.iter().enumerate() {
            let found = ids(&self.conn, config, filter.status.as_ref()).await?;
            tagged.extend(found.into_iter().map(|id| format!("{id}\0{index}")));
        }
        // Ids lead, so the order is by id across queues; the queue index rides along.
        let mut found = Vec::new();
        for entry in page(tagged, filter) {
            let Some((id, index)) = entry.split_once('\0') else {
                continue;
            };
            let Some((name, config)) = index
                .parse::<usize>()
                .ok()
                .and_then(|i| self.queues.all.get(i))
            else {
                continue;
            };
            found.extend(tasks(&self.conn, name, config, &[id.to_owned()]).await?);
        }
        Ok(found)
    }
}

impl<J: Job> FetchById for RedisBoard<J> {
    async fn fetch_by_id(&mut self, task_id: &TaskId) -> Result<Option<Task<Vec<u8>>>, Error> {
        let (name, config) = self.this();
        // Only ULIDs are ever stored; anything else is simply not here.
        let Ok(id) = Ulid::from_str(&task_id.to_string()) else {
            return Ok(None);
        };
        Ok(tasks(&self.conn, name, config, &[id.to_string()])
            .await?
            .into_iter()
            .next())
    }
}

// What follows hands the rest to the wrapped storage: the board registers a backend, so it must
// be one, but it never runs a worker on it (and the operator listener refuses pushes).

impl<J: Job> Backend for RedisBoard<J> {
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

impl<J: Job> BackendConfig for RedisBoard<J> {
    type Args = J;
    type Id = <RedisStorage<J> as BackendConfig>::Id;
    type Kind = Durable;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        self.storage.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        self.storage.middleware(worker)
    }
}

impl<J: Job> WireFormatBackend for RedisBoard<J> {
    type Codec = JsonCodec<Vec<u8>>;
    type Compact = Vec<u8>;

    fn codec(&self) -> &Self::Codec {
        self.storage.codec()
    }
}

impl<J: Job> Sink<Task<Vec<u8>>> for RedisBoard<J> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(page: u32, page_size: Option<u32>) -> Filter {
        Filter {
            status: None,
            page,
            page_size,
        }
    }

    #[test]
    fn pages_are_newest_first_and_bounded() {
        let ids: Vec<String> = ["01A", "01C", "01B", "01C", "01D"].map(String::from).into();
        assert_eq!(page(ids.clone(), &filter(1, Some(2))), ["01D", "01C"]);
        assert_eq!(page(ids.clone(), &filter(2, Some(2))), ["01B", "01A"]);
        assert!(page(ids.clone(), &filter(3, Some(2))).is_empty());
        // Page 0 is page 1; a page size of 0 is 1, and sizes beyond the cap are capped.
        assert_eq!(page(ids.clone(), &filter(0, Some(0))), ["01D"]);
        assert_eq!(page(ids, &filter(1, Some(10_000))).len(), 4);
    }

    #[test]
    fn statistics_name_what_the_board_reads() {
        let counts = Counts {
            pending: 1,
            running: 2,
            failed: 3,
            killed: 4,
            done: 5,
        };
        let stats = counts.statistics();
        let value = |title: &str| {
            stats
                .iter()
                .find(|s| s.title == title)
                .map(|s| s.value.clone())
        };
        assert_eq!(value("PENDING_JOBS").as_deref(), Some("1"));
        assert_eq!(value("FAILED_JOBS").as_deref(), Some("3"));
        assert_eq!(value("TOTAL_JOBS").as_deref(), Some("15"));
    }
}

//! Wiring of every job queue into one apalis [`Monitor`]: the only place that names backends.

use std::time::Duration;

use apalis::{
    layers::retry::{
        BackoffRetryPolicy, HasherRng, RetryIfPolicy,
        backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
    },
    prelude::*,
};
use apalis_codec::json::JsonCodec;
use apalis_core::backend::{
    BackendConfig, WireFormatBackend, finalize::Durable, persistence::TaskPersistLayer,
};
use serde_json::Value;

use super::{
    backlog::{self, Retention},
    poll::Every,
    queues::{JobVisitor, each_job},
};
use crate::{Job, JobContext, JobError, JobStore};

/// How this process runs its workers.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Tasks of one queue run at once in this process.
    pub concurrency: usize,
    /// How often an idle worker looks for tasks submitted by other processes (and for retries).
    /// Tasks this process submits wake their worker at once.
    pub poll_interval: Duration,
    /// How often this process repairs what crashes can leave (see `reconcile`).
    pub reconcile_period: Duration,
    /// How often this process looks for expired timers (see `timers`).
    pub sweep_period: Duration,
    /// Unique name of this process among all worker processes (host, pid and a random part): apalis
    /// refuses a second worker with the same name while the first one's heartbeat is fresh.
    pub node: String,
}

/// The workers of this process: one per job queue, plus the Redis backlog guard.
pub struct Workers {
    monitor: Monitor,
    /// Storage-level names of every queue.
    queues: Vec<String>,
    store: JobStore,
    /// The scheduler's workers, which the board lists from their heartbeat.
    scheduler: Vec<String>,
}

impl Workers {
    /// Every queue's storage-level name.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Runs until `shutdown` resolves; in-flight tasks then finish (up to 30 s).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), apalis_core::monitor::MonitorError> {
        let run = self.monitor.run_with_signal(async move {
            shutdown.await;
            Ok(())
        });
        let heartbeat = super::scheduler::heartbeat(self.store.clone(), self.scheduler);
        let storage = async move {
            match self.store {
                JobStore::Redis { conn, .. } => {
                    backlog::guard(conn, self.queues, BACKLOG_PERIOD).await;
                }
                store @ JobStore::Sqlite(_) => {
                    let mut tick = tokio::time::interval(PRUNE_PERIOD);
                    loop {
                        tick.tick().await;
                        if let Err(err) = store.prune(KEEP_DONE, KEEP_FAILED).await {
                            tracing::warn!(%err, "could not prune finished jobs");
                        }
                    }
                }
            }
        };
        // The housekeeping loops never end: the workers' run decides when this returns.
        tokio::select! {
            result = run => result,
            () = storage => Ok(()),
            () = heartbeat => Ok(()),
        }
    }
}

/// How often finished apalis-sqlite tasks are pruned, and how long they are kept. apalis-sqlite
/// slows down steeply as its table grows (measured: a 200 chats/s load degraded from 0.2 s to
/// 30 s enqueue→assigned once 60 s of done tasks, about 30k rows, were kept), so done tasks go
/// almost at once, but for the newest 20 of each queue, kept five minutes so the board shows a
/// quiet queue's counts and last tasks (at most 20 rows a queue, which fetches do not feel);
/// failed ones stay a day for operators.
const PRUNE_PERIOD: Duration = Duration::from_secs(1);
const KEEP_DONE: Retention = Retention {
    keep: Duration::from_secs(2),
    recent: 20,
    recent_for: Duration::from_secs(5 * 60),
};
const KEEP_FAILED: Duration = Duration::from_secs(24 * 3600);

/// How often the Redis backlog guard promotes due tasks.
const BACKLOG_PERIOD: Duration = Duration::from_millis(250);

/// The workers of every job queue on the context's job store (`queues::each_job`), plus the
/// scheduler's.
pub fn workers(ctx: JobContext, options: &WorkerOptions) -> Workers {
    let store = ctx.jobs.clone();
    let monitor = Monitor::new()
        .shutdown_timeout(Duration::from_secs(30))
        // A worker ends when its storage fails (a Redis restart, a locked SQLite file); without
        // a restart that queue would stop for good while the process looks healthy.
        .should_restart(|worker, error| {
            tracing::warn!(worker = %worker.name(), %error, restarts = worker.restarts(), "worker failed; restarting");
            true
        });
    let mut each = Registrar {
        monitor,
        queues: Vec::new(),
        ctx: &ctx,
        options,
    };
    each_job(&mut each);
    let monitor = super::scheduler::register(
        each.monitor,
        &ctx,
        &options.node,
        options.sweep_period,
        options.reconcile_period,
    );
    Workers {
        monitor,
        queues: each.queues,
        store,
        scheduler: super::scheduler::worker_names(&options.node),
    }
}

/// Registers one worker per job type.
struct Registrar<'a> {
    monitor: Monitor,
    queues: Vec<String>,
    ctx: &'a JobContext,
    options: &'a WorkerOptions,
}

impl JobVisitor for Registrar<'_> {
    fn job<J: Job>(&mut self) {
        let monitor = std::mem::replace(&mut self.monitor, Monitor::new());
        self.monitor = register::<J>(monitor, self.ctx, self.options);
        self.queues.push(self.ctx.jobs.queue_name::<J>());
    }
}

fn register<J: Job>(monitor: Monitor, ctx: &JobContext, options: &WorkerOptions) -> Monitor {
    let name = format!("{}@{}", J::QUEUE, options.node);
    let poll = options.poll_interval;
    let wake_key = ctx.jobs.wake_key::<J>();
    match &ctx.jobs {
        JobStore::Sqlite(pool) => {
            let pool = pool.clone();
            register_on::<J, _>(monitor, name, ctx, options, move || {
                JobStore::sqlite_storage::<J>(&pool).poll_with_strategy(Every::new(&wake_key, poll))
            })
        }
        JobStore::Redis { conn, prefix } => {
            let (conn, prefix) = (conn.clone(), prefix.clone());
            let backlog_conn = conn.clone();
            let queue = ctx.jobs.queue_name::<J>();
            let drain = move || {
                let (conn, queue) = (backlog_conn.clone(), queue.clone());
                async move {
                    // A backlog too large for apalis-redis's own promotion makes every fetch
                    // fail: clear it before the first one.
                    match backlog::drain(&conn, &queue).await {
                        Ok(moved) if moved > 0 => {
                            tracing::info!(queue, moved, "promoted due tasks before start")
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(queue, %err, "could not promote due tasks"),
                    }
                }
            };
            register_on::<J, _>(monitor, name, ctx, options, move || {
                let drain = drain.clone();
                JobStore::redis_storage::<J>(&conn, &prefix)
                    .poll_with_strategy(Every::new(&wake_key, poll))
                    .before_start(move |_| {
                        let drain = drain();
                        async move {
                            drain.await;
                            Ok(())
                        }
                    })
            })
        }
    }
}

fn register_on<J, B>(
    monitor: Monitor,
    name: String,
    ctx: &JobContext,
    options: &WorkerOptions,
    backend: impl Fn() -> B + Send + Sync + 'static,
) -> Monitor
where
    J: Job,
    B: Backend<Task = Task<Vec<u8>>>
        + BackendConfig<Args = J, Kind = Durable, Layer = TaskPersistLayer<JsonCodec<Value>, Value>>
        + WireFormatBackend<Codec = JsonCodec<Vec<u8>>, Compact = Vec<u8>>
        + Send
        + Unpin
        + 'static,
    B::Error: Into<BoxDynError> + Send + 'static,
{
    let ctx = ctx.clone();
    let concurrency = options.concurrency;
    monitor.register(move |restarts| {
        // A restarted worker waits before its first poll, so a storage outage costs a retry every
        // few seconds instead of a busy loop of restarts.
        let delay = restart_delay(restarts);
        let backend = backend().before_start(move |_| async move {
            tokio::time::sleep(delay).await;
            Ok(())
        });
        WorkerBuilder::new(name.clone())
            .backend(backend)
            .data(ctx.clone())
            .concurrency(concurrency)
            // Order matters (apalis checks it): retries wrap a panic guard and a per-attempt
            // timeout, and tracing sees every attempt.
            .retry(retry_policy(J::BUDGET.in_process, J::BUDGET.backoff_min))
            .catch_panic()
            .timeout(J::BUDGET.timeout)
            .enable_tracing()
            .build(execute::<J>)
    })
}

/// No wait on the first start; then 100 ms, doubling up to 5 s.
fn restart_delay(restarts: usize) -> Duration {
    if restarts == 0 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(restarts - 1).unwrap_or(u32::MAX).min(6);
    Duration::from_millis(100 * 2u64.pow(exponent)).min(Duration::from_secs(5))
}

/// In-process retries with exponential backoff and jitter, for transient errors only.
type Retry = RetryIfPolicy<BackoffRetryPolicy<ExponentialBackoff>, fn(&BoxDynError) -> bool>;

fn retry_policy(retries: usize, min: Duration) -> Retry {
    let backoff =
        ExponentialBackoffMaker::new(min, Duration::from_secs(30), 0.5, HasherRng::default())
            .map(|mut maker| maker.make_backoff());
    RetryPolicy::retries(retries)
        .with_backoff(backoff.expect("the backoff bounds are valid constants"))
        .retry_if(is_transient as fn(&BoxDynError) -> bool)
}

fn is_transient(err: &BoxDynError) -> bool {
    err.downcast_ref::<AbortError>().is_none()
}

/// The task function of every queue: runs the job and turns a permanent failure into an
/// [`AbortError`], which apalis records as `Killed` and never hands out again.
///
/// Counts every run for operators (`switchboard_jobs_*_total{queue}`): processed, failed, retried
/// (a run after a failed attempt) and dead (a permanent failure, or the budget's last attempt).
async fn execute<J: Job>(
    job: J,
    ctx: Data<JobContext>,
    attempt: Attempt,
) -> Result<String, BoxDynError> {
    let queue = J::QUEUE;
    // The attempt counter includes this run.
    let attempt = attempt.current();
    if attempt > 1 {
        metrics::counter!("switchboard_jobs_retried_total", "queue" => queue).increment(1);
    }
    let last = attempt >= (J::BUDGET.in_process + 1).max(J::BUDGET.deliveries);
    let result = job.run(&ctx).await;
    if result.is_ok() {
        metrics::counter!("switchboard_jobs_processed_total", "queue" => queue).increment(1);
    } else {
        metrics::counter!("switchboard_jobs_failed_total", "queue" => queue).increment(1);
    }
    match result {
        Ok(summary) => Ok(summary),
        Err(JobError::Permanent(reason)) => {
            metrics::counter!("switchboard_jobs_dead_total", "queue" => queue).increment(1);
            Err(Box::new(AbortError::new(reason)))
        }
        Err(err @ JobError::Transient(_)) => {
            if last {
                metrics::counter!("switchboard_jobs_dead_total", "queue" => queue).increment(1);
            }
            Err(Box::new(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_up_to_five_seconds() {
        let delays: Vec<u64> = (0..10)
            .map(|n| restart_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(restart_delay(usize::MAX), Duration::from_secs(5));
    }
}

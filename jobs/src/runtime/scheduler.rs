//! The scheduler: apalis-cron workers that run on every worker process.
//!
//! - `sweep` (every `sweep_period`): finds expired timers and submits their jobs (see `timers`),
//!   and recovers what a lost job storage leaves (see `reconcile::recover`).
//! - `reconcile` (every `reconcile_period`): repairs what a crash can leave (see `reconcile`).
//! - `redeliver` (every [`REDELIVER_PERIOD`]): records the deliveries of outcomes left in the
//!   outbox (see `fanout::left_behind`), resubmits webhook and e-mail deliveries whose job was
//!   lost, and every [`PRUNE_EVERY`]th tick deletes finished ones past their retention (see
//!   `deliveries`).
//!
//! Neither needs a leader: both only submit idempotent jobs or write what the rows dictate, so two
//! nodes ticking at once, or a tick repeated, act once. A tick that fails is logged and the next
//! one tries again (ticks are not stored, so nothing piles up while a node is down).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_cron::{CronScheduler, Schedule, Tick};

use crate::{
    JobContext,
    delivery::{deliveries, fanout},
    reconcile, timers,
};

/// How often lost webhook and e-mail deliveries are looked for.
pub const REDELIVER_PERIOD: Duration = Duration::from_secs(15);

/// Finished deliveries are pruned on one redeliver tick in this many (about once a minute).
pub const PRUNE_EVERY: u64 = 4;

/// A fixed period in whole seconds (a cron tick is a Unix second), in this node's own phase
/// rather than aligned to the clock, so nodes do not all sweep at the same instant.
#[derive(Debug, Clone)]
pub struct Every {
    period: u64,
    next: Option<u64>,
}

impl Every {
    pub fn new(period: Duration) -> Self {
        Self {
            period: period.as_secs().max(1),
            next: None,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Schedule<chrono::Utc> for Every {
    fn next_tick(&mut self, _: &chrono::Utc) -> Option<Tick<chrono::Utc>> {
        let now = unix_now();
        // After a slow tick, skip what was missed instead of firing a burst.
        let next = self
            .next
            .map_or(now + self.period, |last| (last + self.period).max(now + 1));
        self.next = Some(next);
        Some(Tick::new(next))
    }
}

/// The periodic passes of a worker process, one cron worker each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Sweep,
    Reconcile,
    Redeliver,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Sweep => "sweep",
            Pass::Reconcile => "reconcile",
            Pass::Redeliver => "redeliver",
        }
    }

    /// Runs the pass once; the summary is logged when something was done.
    async fn run(self, tick: Tick<chrono::Utc>, ctx: &JobContext) -> Result<String, BoxDynError> {
        Ok(match self {
            Pass::Sweep => {
                let swept = timers::sweep(ctx).await?;
                if swept.total() > 0 {
                    tracing::info!(expired = ?swept.expired, "timers expired");
                }
                let recovered = reconcile::recover(ctx).await?;
                if recovered != reconcile::Recovered::default() {
                    tracing::info!(?recovered, "recovered lost jobs");
                }
                format!("{} expired, {recovered:?}", swept.total())
            }
            Pass::Reconcile => {
                let repairs = reconcile::reconcile(ctx).await?;
                if repairs != reconcile::Repairs::default() {
                    tracing::info!(?repairs, "reconciled");
                }
                format!("{repairs:?}")
            }
            Pass::Redeliver => {
                // Not a reason to skip the resubmissions below.
                match fanout::left_behind(ctx).await {
                    Ok(0) => {}
                    Ok(staged) => tracing::info!(
                        staged,
                        "recorded the deliveries of outcomes left in the outbox"
                    ),
                    Err(err) => tracing::warn!(%err, "the outbox sweep failed"),
                }
                let count = deliveries::redeliver(ctx).await?;
                if count > 0 {
                    tracing::info!(count, "resubmitted deliveries whose job was lost");
                }
                if !prunes_on(tick.get_timestamp()) {
                    return Ok(format!("{count} resubmitted"));
                }
                let pruned = deliveries::prune(ctx).await?;
                if pruned > 0 {
                    tracing::info!(pruned, "pruned finished deliveries past their retention");
                }
                format!("{count} resubmitted, {pruned} pruned")
            }
        })
    }
}

/// The task function of every pass.
async fn tick(
    tick: Tick<chrono::Utc>,
    ctx: Data<JobContext>,
    pass: Data<Pass>,
) -> Result<String, BoxDynError> {
    pass.run(tick, &ctx).await
}

/// Whether the redeliver tick at `timestamp` prunes: ticks are [`REDELIVER_PERIOD`] apart, so
/// their number since the epoch goes up by one each, and one in [`PRUNE_EVERY`] prunes.
fn prunes_on(timestamp: u64) -> bool {
    (timestamp / REDELIVER_PERIOD.as_secs().max(1)).is_multiple_of(PRUNE_EVERY)
}

/// The queue the board lists the scheduler's workers under: apalis-cron stores none of them, so
/// [`heartbeat`] records them where the board reads workers.
pub const BOARD_QUEUE: &str = "scheduler";

/// How often [`heartbeat`] records the scheduler's workers.
pub const HEARTBEAT_PERIOD: std::time::Duration = std::time::Duration::from_secs(3);

/// The names of this node's scheduler workers (one per pass), as [`register`] names them.
pub fn worker_names(node: &str) -> Vec<String> {
    [Pass::Sweep, Pass::Reconcile, Pass::Redeliver]
        .into_iter()
        .map(|pass| format!("{}@{node}", pass.name()))
        .collect()
}

/// Records this node's scheduler workers as alive every [`HEARTBEAT_PERIOD`], forever (run it
/// beside the workers), so the board lists them.
pub async fn heartbeat(store: crate::JobStore, names: Vec<String>) {
    let started_at = unix_now();
    let mut tick = tokio::time::interval(HEARTBEAT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = store
            .record_workers(BOARD_QUEUE, &names, "apalis-cron", started_at)
            .await
        {
            tracing::warn!(%err, "could not record the scheduler's workers");
        }
    }
}

/// Registers the scheduler's workers. The reconciler's first pass comes one period after start,
/// so a restart storm does not become a repair storm.
pub fn register(
    monitor: Monitor,
    ctx: &JobContext,
    node: &str,
    sweep_period: Duration,
    reconcile_period: Duration,
) -> Monitor {
    [
        (Pass::Sweep, sweep_period),
        (Pass::Reconcile, reconcile_period),
        (Pass::Redeliver, REDELIVER_PERIOD),
    ]
    .into_iter()
    .fold(monitor, |monitor, (pass, period)| {
        let (name, ctx) = (format!("{}@{node}", pass.name()), ctx.clone());
        monitor.register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(CronScheduler::new(Every::new(period)))
                .data(ctx.clone())
                .data(pass)
                .build(tick)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_keep_the_period_and_skip_what_was_missed() {
        let mut every = Every::new(Duration::from_secs(5));
        let first = every.next_tick(&chrono::Utc).map(|t| t.get_timestamp());
        let second = every.next_tick(&chrono::Utc).map(|t| t.get_timestamp());
        assert_eq!(second.zip(first).map(|(b, a)| b - a), Some(5));
        // A tick far in the past (a stalled node) is not caught up tick by tick.
        every.next = Some(1);
        let now = unix_now();
        let next = every.next_tick(&chrono::Utc).map(|t| t.get_timestamp());
        assert!(next.is_some_and(|n| n > now && n <= now + 2), "{next:?}");
    }

    #[test]
    fn one_redeliver_tick_in_four_prunes_whatever_the_phase() {
        let period = REDELIVER_PERIOD.as_secs();
        for phase in 0..period {
            let first = 1_700_000_000 + phase;
            let pruning = (0..40).filter(|n| prunes_on(first + n * period)).count();
            assert_eq!(pruning, 10, "phase {phase}");
        }
    }
}

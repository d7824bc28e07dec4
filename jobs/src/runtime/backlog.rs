//! Keeps apalis-redis small: its scheduled set, and its finished tasks.
//!
//! apalis-redis 1.0.0 stores every pushed task in the queue's *scheduled* sorted set (it clamps
//! `run_at` to now), and each fetch promotes every due entry with a single Lua `unpack`. Past
//! about 8,000 due tasks that call fails ("too many results to unpack"), so a burst, or workers
//! that were down for a while, leave a queue whose workers fail on every fetch until the backlog
//! is gone — which never happens. We promote due tasks ourselves, in chunks small enough for
//! `unpack`: before a worker (re)starts, and periodically while workers run. The script is atomic,
//! so any number of nodes may run it at once.

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apalis_redis::ConnectionManager;
use redis::{RedisError, Script};

/// Due tasks moved per script call: far below what `unpack` accepts.
const CHUNK: usize = 1000;

static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local ids = redis.call('zrangebyscore', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
        if #ids > 0 then
            redis.call('rpush', KEYS[2], unpack(ids))
            redis.call('zrem', KEYS[1], unpack(ids))
            redis.call('del', KEYS[3])
            redis.call('lpush', KEYS[3], 1)
        end
        return #ids
        ",
    )
});

/// Moves every due task of `queue` (the storage-level name) from the scheduled set to the list
/// workers fetch from, `CHUNK` at a time. Returns how many moved.
pub async fn drain(conn: &ConnectionManager, queue: &str) -> Result<usize, RedisError> {
    let config = apalis_redis::Config::default().queue(queue);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut conn = conn.clone();
    let mut moved = 0;
    loop {
        let count: usize = PROMOTE
            .key(config.scheduled_jobs_set())
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .arg(now)
            .arg(CHUNK)
            .invoke_async(&mut conn)
            .await?;
        moved += count;
        if count < CHUNK {
            return Ok(moved);
        }
    }
}

static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local ids = redis.call('srandmember', KEYS[1], tonumber(ARGV[2]))
        local cutoff = tonumber(ARGV[1])
        local recent_cutoff = tonumber(ARGV[3])
        local keep_recent = tonumber(ARGV[4])
        local left = redis.call('scard', KEYS[1])
        local deleted = 0
        for _, id in ipairs(ids) do
            local meta = KEYS[3] .. ':' .. id
            local done_at = tonumber(redis.call('hget', meta, 'done_at') or '0') or 0
            if done_at <= recent_cutoff or (done_at <= cutoff and left > keep_recent) then
                redis.call('srem', KEYS[1], id)
                redis.call('hdel', KEYS[2], id)
                redis.call('hdel', KEYS[3] .. ':result', id)
                redis.call('del', meta)
                deleted = deleted + 1
                left = left - 1
            end
        end
        return deleted
        ",
    )
});

/// How long done tasks stay, and how many of them may stay longer so operators see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Done tasks older than this go, but for the few kept for the board.
    pub keep: Duration,
    /// Up to this many done tasks of a queue may stay past `keep`, until `recent_for`.
    pub recent: usize,
    /// No done task stays longer than this.
    pub recent_for: Duration,
}

impl Retention {
    /// Every done task goes once older than `keep`.
    pub const fn only(keep: Duration) -> Self {
        Self {
            keep,
            recent: 0,
            recent_for: keep,
        }
    }
}

/// Deletes up to `CHUNK` tasks of `queue` that finished successfully longer ago than
/// `retention` allows.
///
/// apalis-redis keeps every finished task's data and metadata forever (its own vacuum reads the
/// whole data hash in one call, blocking Redis); at hundreds of tasks a second that is a memory
/// leak. Failed and dead tasks are left for operators. Done tasks older than `retention.keep` go
/// while the queue keeps more than `retention.recent` of them, and none outlives
/// `retention.recent_for`. The few kept past `keep` are a sample of the recent ones (the done set
/// is not ordered): enough for the board to show a quiet queue's counts and last tasks.
pub async fn prune_done(
    conn: &ConnectionManager,
    queue: &str,
    retention: Retention,
) -> Result<usize, RedisError> {
    let config = apalis_redis::Config::default().queue(queue);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    PRUNE
        .key(config.done_jobs_set())
        .key(config.job_data_hash())
        .key(config.job_meta_hash())
        .arg(now.saturating_sub(retention.keep.as_secs()))
        .arg(CHUNK)
        .arg(now.saturating_sub(retention.recent_for.max(retention.keep).as_secs()))
        .arg(retention.recent)
        .invoke_async(&mut conn.clone())
        .await
}

/// Done tasks are kept a minute, and up to 20 per queue for five minutes, so the board shows a
/// quiet queue's counts and last tasks; then they are pruned.
const KEEP_DONE: Retention = Retention {
    keep: Duration::from_secs(60),
    recent: 20,
    recent_for: Duration::from_secs(5 * 60),
};

/// Drains and prunes every queue each `period`, forever (run it beside the workers).
pub async fn guard(conn: ConnectionManager, queues: Vec<String>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for queue in &queues {
            match drain(&conn, queue).await {
                Ok(moved) if moved >= CHUNK => {
                    tracing::info!(queue, moved, "promoted a backlog of due tasks");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(queue, %err, "could not promote due tasks"),
            }
            if let Err(err) = prune_done(&conn, queue, KEEP_DONE).await {
                tracing::warn!(queue, %err, "could not prune finished tasks");
            }
        }
    }
}

/// Number of finished tasks `queue` still keeps (for tests and operators).
pub async fn done_len(conn: &ConnectionManager, queue: &str) -> Result<usize, RedisError> {
    let config = apalis_redis::Config::default().queue(queue);
    redis::cmd("SCARD")
        .arg(config.done_jobs_set())
        .query_async(&mut conn.clone())
        .await
}

/// Size of `queue`'s scheduled set (for tests and operators).
pub async fn scheduled_len(conn: &ConnectionManager, queue: &str) -> Result<usize, RedisError> {
    let config = apalis_redis::Config::default().queue(queue);
    redis::cmd("ZCARD")
        .arg(config.scheduled_jobs_set())
        .query_async(&mut conn.clone())
        .await
}

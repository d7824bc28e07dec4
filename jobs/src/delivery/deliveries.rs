//! The `deliveries` rows that webhook calls and e-mails are sent from: claiming one attempt,
//! recording its outcome, keeping the order, and finding rows no job is handling.
//!
//! The row is the source of truth, the job only a trigger:
//! - an attempt starts by claiming a lease (`claimed_until`) with a conditional update, so two
//!   copies of a job running at once send once; a copy that finds the row delivered, dead or
//!   leased does nothing;
//! - the attempt counter lives on the row, so the budget holds whatever apalis redelivers;
//! - webhook rows of one `(webhook, order_key)` go out in id order: a row waits while an earlier
//!   one is pending (being retried), and whoever finishes a row (delivered or dead) submits the
//!   next one;
//! - [`redeliver`] resubmits pending rows whose job was lost (a crash, a storage outage);
//! - [`prune`] deletes finished rows after the retention (they hold copies of what was sent).

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::deliveries;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Alias, Expr, Query},
};
use serde::{Deserialize, Serialize};

use super::{
    channels::Retries,
    send::{Channel, submit},
};
use crate::{JobContext, JobError};

/// Where a row stands. Stored in `deliveries.status` and shown to admins as `pending`,
/// `delivered` or `dead` ([`DeliveryStatus::as_str`], and the serde form); the strings never
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting to be sent, or between two attempts.
    Pending,
    /// Sent and accepted.
    Delivered,
    /// Given up: the budget is spent or the failure is permanent. Operators see it.
    Dead,
}

impl DeliveryStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }
}

impl From<DeliveryStatus> for sea_orm::Value {
    fn from(status: DeliveryStatus) -> Self {
        status.as_str().into()
    }
}

/// How long one attempt holds its row: longer than any attempt can take (a webhook call times
/// out after seconds, an SMTP session after 15 s), so a live sender never loses its lease.
const LEASE: Duration = Duration::from_secs(60);
/// A job that arrives this much before the row's due time waits for it in place (the job
/// storages schedule in whole seconds); earlier than that, it leaves the row to the task
/// scheduled for that time.
const EARLY_WAIT: Duration = Duration::from_secs(2);
/// A pending row this far past due with no lease has lost its job: [`redeliver`] resubmits it.
const LOST_AFTER: Duration = Duration::from_secs(30);

/// Rows one delete statement names at most.
const PRUNE_CHUNK: usize = 500;
/// Delete statements one [`prune`] pass runs at most: a pass stays short, the rest waits for the
/// next one.
const PRUNE_CHUNKS_PER_PASS: usize = 20;

/// What an attempt may do with a row.
pub(crate) enum Claim {
    /// Send it: the lease is ours, `attempts` already counts this attempt.
    Go(Box<deliveries::Model>),
    /// Nothing to do, and why.
    Skip(String),
}

fn at(offset: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(offset).unwrap_or(chrono::Duration::MAX)
}

/// Claims row `id` for one attempt on `channel`. A row whose budget is spent (its last attempt
/// was claimed but never recorded: a crash, a lost job) is made dead instead.
pub(crate) async fn claim(ctx: &JobContext, id: i64, channel: Channel) -> Result<Claim, JobError> {
    let db = &ctx.db;
    let Some(row) = deliveries::Entity::find_by_id(id).one(db).await? else {
        return Ok(Claim::Skip("no such delivery".into()));
    };
    if row.channel != channel.as_str() {
        return Err(JobError::Permanent(format!(
            "delivery {id} is not a {channel} delivery"
        )));
    }
    if row.status != DeliveryStatus::Pending.as_str() {
        return Ok(Claim::Skip(format!("already {}", row.status)));
    }
    if row.attempts >= row.max_attempts.max(1) {
        abandon(
            ctx,
            &row,
            "the attempt budget is spent (the last attempt did not finish)",
        )
        .await?;
        return Ok(Claim::Skip("budget spent: dead".into()));
    }
    if let Some(earlier) = earlier_pending(db, &row).await? {
        return Ok(Claim::Skip(format!("waits for delivery {earlier}")));
    }
    if let Some(due) = row.next_attempt_at {
        let early = (due - Utc::now()).to_std().unwrap_or_default();
        if early > EARLY_WAIT {
            return Ok(Claim::Skip("not due yet".into()));
        }
        tokio::time::sleep(early).await;
    }
    let now = Utc::now();
    let claimed = deliveries::Entity::update_many()
        .col_expr(deliveries::Column::ClaimedUntil, Expr::value(at(LEASE)))
        .col_expr(deliveries::Column::Attempts, Expr::value(row.attempts + 1))
        .col_expr(deliveries::Column::UpdatedAt, Expr::value(now))
        .filter(deliveries::Column::Id.eq(id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .filter(deliveries::Column::Attempts.eq(row.attempts))
        .filter(
            Condition::any()
                .add(deliveries::Column::ClaimedUntil.is_null())
                .add(deliveries::Column::ClaimedUntil.lt(now)),
        )
        .exec(db)
        .await?
        .rows_affected;
    if claimed == 0 {
        return Ok(Claim::Skip("another worker is sending it".into()));
    }
    Ok(Claim::Go(Box::new(deliveries::Model {
        attempts: row.attempts + 1,
        ..row
    })))
}

/// The earliest pending webhook row before `row` in its line, if any (e-mails keep no order).
async fn earlier_pending(
    db: &DatabaseConnection,
    row: &deliveries::Model,
) -> Result<Option<i64>, sea_orm::DbErr> {
    let Some(webhook_id) = row.webhook_id else {
        return Ok(None);
    };
    deliveries::Entity::find()
        .select_only()
        .column(deliveries::Column::Id)
        .filter(deliveries::Column::WebhookId.eq(webhook_id))
        .filter(deliveries::Column::OrderKey.eq(&row.order_key))
        .filter(deliveries::Column::Id.lt(row.id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .order_by_asc(deliveries::Column::Id)
        .into_tuple()
        .one(db)
        .await
}

/// The row's attempt succeeded.
pub(crate) async fn delivered(
    ctx: &JobContext,
    row: &deliveries::Model,
    status_code: Option<u16>,
) -> Result<(), JobError> {
    let now = Utc::now();
    deliveries::Entity::update_many()
        .col_expr(
            deliveries::Column::Status,
            Expr::value(DeliveryStatus::Delivered),
        )
        .col_expr(deliveries::Column::DeliveredAt, Expr::value(now))
        .col_expr(
            deliveries::Column::ClaimedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(
            deliveries::Column::NextAttemptAt,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(deliveries::Column::LastError, Expr::value(None::<String>))
        .col_expr(
            deliveries::Column::LastStatusCode,
            Expr::value(status_code.map(i32::from)),
        )
        .col_expr(deliveries::Column::UpdatedAt, Expr::value(now))
        .filter(deliveries::Column::Id.eq(row.id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .exec(&ctx.db)
        .await?;
    count(&row.channel, "delivered");
    next_in_line(ctx, row).await
}

/// What became of a failed attempt.
pub(crate) enum Failed {
    /// Tried again after this wait.
    Retry(Duration),
    /// Given up.
    Dead,
}

/// The row's attempt failed with `error` (short, no secrets). A `permanent` failure, or the
/// last attempt of the budget, makes it dead; otherwise the next attempt is scheduled.
pub(crate) async fn failed(
    ctx: &JobContext,
    row: &deliveries::Model,
    retries: Retries,
    error: &str,
    status_code: Option<u16>,
    permanent: bool,
) -> Result<Failed, JobError> {
    let now = Utc::now();
    let error: String = error.chars().take(500).collect();
    let attempts = u32::try_from(row.attempts).unwrap_or(0);
    let max_attempts = u32::try_from(row.max_attempts).unwrap_or(1).max(1);
    let dead = permanent || attempts >= max_attempts;
    let wait = retries.backoff_after(attempts);
    let update = deliveries::Entity::update_many()
        .col_expr(
            deliveries::Column::ClaimedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(deliveries::Column::LastError, Expr::value(error))
        .col_expr(
            deliveries::Column::LastStatusCode,
            Expr::value(status_code.map(i32::from)),
        )
        .col_expr(deliveries::Column::UpdatedAt, Expr::value(now))
        .filter(deliveries::Column::Id.eq(row.id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending));
    let update = if dead {
        update
            .col_expr(
                deliveries::Column::Status,
                Expr::value(DeliveryStatus::Dead),
            )
            .col_expr(
                deliveries::Column::NextAttemptAt,
                Expr::value(None::<DateTime<Utc>>),
            )
    } else {
        update.col_expr(deliveries::Column::NextAttemptAt, Expr::value(at(wait)))
    };
    update.exec(&ctx.db).await?;
    if dead {
        count(&row.channel, "failed");
        count(&row.channel, "dead");
        next_in_line(ctx, row).await?;
        return Ok(Failed::Dead);
    }
    count(&row.channel, "failed");
    // The retry is its own task, scheduled for when it is due: no worker slot waits meanwhile.
    submit(ctx, Channel::of(&row.channel), row.id, Some(wait)).await?;
    Ok(Failed::Retry(wait))
}

/// Marks a row dead without an attempt (its webhook is gone, the channel is off here).
pub(crate) async fn abandon(
    ctx: &JobContext,
    row: &deliveries::Model,
    why: &str,
) -> Result<(), JobError> {
    let now = Utc::now();
    let changed = deliveries::Entity::update_many()
        .col_expr(
            deliveries::Column::Status,
            Expr::value(DeliveryStatus::Dead),
        )
        .col_expr(
            deliveries::Column::ClaimedUntil,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(
            deliveries::Column::NextAttemptAt,
            Expr::value(None::<DateTime<Utc>>),
        )
        .col_expr(deliveries::Column::LastError, Expr::value(why))
        .col_expr(deliveries::Column::UpdatedAt, Expr::value(now))
        .filter(deliveries::Column::Id.eq(row.id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .exec(&ctx.db)
        .await?
        .rows_affected;
    if changed == 1 {
        count(&row.channel, "dead");
    }
    next_in_line(ctx, row).await
}

/// Submits the next pending webhook row after `row` in its line, now that `row` is finished.
async fn next_in_line(ctx: &JobContext, row: &deliveries::Model) -> Result<(), JobError> {
    let Some(webhook_id) = row.webhook_id else {
        return Ok(());
    };
    let next: Option<i64> = deliveries::Entity::find()
        .select_only()
        .column(deliveries::Column::Id)
        .filter(deliveries::Column::WebhookId.eq(webhook_id))
        .filter(deliveries::Column::OrderKey.eq(&row.order_key))
        .filter(deliveries::Column::Id.gt(row.id))
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .order_by_asc(deliveries::Column::Id)
        .into_tuple()
        .one(&ctx.db)
        .await?;
    if let Some(next) = next {
        submit(ctx, Channel::Webhook, next, None).await?;
    }
    Ok(())
}

/// Counts one delivery outcome (`delivered`, `failed`, `dead`) of `channel`.
fn count(channel: &str, outcome: &'static str) {
    if Channel::of(channel) == Channel::Email {
        metrics::counter!("switchboard_email_deliveries_total", "outcome" => outcome).increment(1);
    } else {
        metrics::counter!("switchboard_webhook_deliveries_total", "outcome" => outcome)
            .increment(1);
    }
}

/// Resubmits pending rows that no job is handling: due (or never tried) for a while, not leased,
/// and first in their line (no earlier pending row of the same webhook and order key, decided in
/// the query, so a long line behind a failing endpoint costs nothing here). Returns how many were
/// resubmitted. Safe on any number of nodes: a row submitted twice is sent once (the lease).
pub async fn redeliver(ctx: &JobContext) -> Result<usize, JobError> {
    use sea_orm::sea_query::ExprTrait;
    let stale = at(Duration::ZERO)
        - chrono::Duration::from_std(LOST_AFTER).unwrap_or(chrono::Duration::MAX);
    // Only rows first in their line: the ones behind a pending row (an endpoint that is down)
    // cannot go yet, and would otherwise fill the batch and hide lost rows after them.
    let earlier = Alias::new("earlier");
    let first_in_line = Expr::not_exists(
        Query::select()
            .expr(Expr::value(1))
            .from_as(deliveries::Entity, earlier.clone())
            .and_where(
                Expr::col((earlier.clone(), deliveries::Column::WebhookId))
                    .equals((deliveries::Entity, deliveries::Column::WebhookId)),
            )
            .and_where(
                Expr::col((earlier.clone(), deliveries::Column::OrderKey))
                    .equals((deliveries::Entity, deliveries::Column::OrderKey)),
            )
            .and_where(
                Expr::col((earlier.clone(), deliveries::Column::Id))
                    .lt(Expr::col((deliveries::Entity, deliveries::Column::Id))),
            )
            .and_where(Expr::col((earlier, deliveries::Column::Status)).eq(DeliveryStatus::Pending))
            .to_owned(),
    );
    let ids: Vec<(i64, String)> = deliveries::Entity::find()
        .select_only()
        .column(deliveries::Column::Id)
        .column(deliveries::Column::Channel)
        .filter(deliveries::Column::Status.eq(DeliveryStatus::Pending))
        .filter(
            Condition::any()
                .add(deliveries::Column::ClaimedUntil.is_null())
                .add(deliveries::Column::ClaimedUntil.lt(Utc::now())),
        )
        .filter(
            Condition::any()
                .add(deliveries::Column::NextAttemptAt.lt(stale))
                .add(
                    Condition::all()
                        .add(deliveries::Column::NextAttemptAt.is_null())
                        .add(deliveries::Column::CreatedAt.lt(stale)),
                ),
        )
        .filter(first_in_line)
        .order_by_asc(deliveries::Column::Id)
        .limit(500)
        .into_tuple()
        .all(&ctx.db)
        .await?;
    for (id, channel) in &ids {
        submit(ctx, Channel::of(channel), *id, None).await?;
    }
    Ok(ids.len())
}

/// Deletes delivered and dead rows finished longer than the retention ago
/// (`SWITCHBOARD_DELIVERY_RETENTION_DAYS`), in chunks of [`PRUNE_CHUNK`], at most
/// [`PRUNE_CHUNKS_PER_PASS`] of them per call. Returns how many rows went. Pending rows are never
/// touched. Safe on any number of nodes: two passes at once delete each row once.
pub async fn prune(ctx: &JobContext) -> Result<u64, JobError> {
    let retention = chrono::Duration::from_std(ctx.channels.delivery_retention())
        .unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = Utc::now().checked_sub_signed(retention) else {
        return Ok(0);
    };
    let mut pruned = 0;
    for _ in 0..PRUNE_CHUNKS_PER_PASS {
        let ids: Vec<i64> = deliveries::Entity::find()
            .select_only()
            .column(deliveries::Column::Id)
            .filter(
                deliveries::Column::Status.is_in([DeliveryStatus::Delivered, DeliveryStatus::Dead]),
            )
            .filter(deliveries::Column::UpdatedAt.lt(cutoff))
            .limit(PRUNE_CHUNK as u64)
            .into_tuple()
            .all(&ctx.db)
            .await?;
        if ids.is_empty() {
            break;
        }
        let full = ids.len() == PRUNE_CHUNK;
        pruned += deliveries::Entity::delete_many()
            .filter(deliveries::Column::Id.is_in(ids))
            .exec(&ctx.db)
            .await?
            .rows_affected;
        if !full {
            break;
        }
    }
    Ok(pruned)
}

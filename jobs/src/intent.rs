//! Intents: what an acknowledged request leaves in the database until its job has taken effect.
//!
//! A close, an end or a transfer to a group is answered "accepted" and done by a job. Before the
//! answer, [`submit`] writes an `intents` row and then submits the job carrying the row's id; the
//! job deletes the row ([`consume`]) in the very transaction that makes its change. So:
//! - the job storage may lose the job (Redis restarted empty, a worker killed mid-task): the row
//!   is still there, and the sweep ([`resubmit_due`]) submits the job again once it is due;
//! - a job delivered twice, or resubmitted after the first one did take effect, finds its row
//!   gone and changes nothing: the row makes the effect happen once;
//! - a reopen drops the conversation's outstanding closes ([`cancel`]), so a close requested
//!   before it cannot land after it.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::Utc;
use entity::intents;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, sea_query::Expr,
};

use crate::{
    Job, JobContext, JobError, JobStore, batch::Batches, close_conversation::CloseConversation,
    reassign_conversation::ReassignConversation,
};

/// How long a fresh intent waits for its own job before the sweep submits another: longer than
/// a job takes under load, short enough that a lost job costs seconds.
pub const GRACE: Duration = Duration::from_secs(5);

/// Longest wait between two resubmissions of one intent (the wait doubles from [`GRACE`]).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Most intents one sweep resubmits (the rest wait for the next).
const PER_SWEEP: u64 = 1_000;

/// A job that can carry the id of the intent it fulfils.
pub trait Intended: Job {
    /// The job, carrying intent `id`.
    fn with_intent(self, id: i64) -> Self;
}

/// An intent to record: the job's queue and arguments, and what it concerns.
#[derive(Debug, Clone)]
pub struct NewIntent {
    account_id: i64,
    conversation_id: Option<i64>,
    queue: &'static str,
    job: serde_json::Value,
}

/// Records the intent to run `job` and submits it. Returns once the intent is stored: a
/// submission that fails is only logged, since the sweep submits it when it falls due. Intents
/// recorded at once share a commit (see `batch`).
pub async fn submit<J: Intended>(
    batches: &Batches,
    jobs: &JobStore,
    account_id: i64,
    conversation_id: Option<i64>,
    job: J,
) -> Result<(), DbErr> {
    let intent = NewIntent {
        account_id,
        conversation_id,
        queue: J::QUEUE,
        job: serde_json::to_value(&job).map_err(|err| DbErr::Json(err.to_string()))?,
    };
    let id = batches.intents.run(intent).await?;
    if let Err(err) = jobs.submit(job.with_intent(id)).await {
        tracing::warn!(intent = id, queue = J::QUEUE, %err, "job not submitted; the sweep submits it when its intent falls due");
    }
    Ok(())
}

/// Inserts `intents` in one transaction; their ids, in order.
pub(crate) async fn record_many(
    db: &DatabaseConnection,
    intents: Vec<NewIntent>,
) -> Result<Vec<i64>, DbErr> {
    let now = Utc::now();
    let rows = intents::Entity::insert_many(intents.iter().map(|intent| intents::ActiveModel {
        account_id: Set(intent.account_id),
        conversation_id: Set(intent.conversation_id),
        queue: Set(intent.queue.to_owned()),
        job: Set(intent.job.clone()),
        attempts: Set(0),
        created_at: Set(now),
        due_at: Set(now + GRACE),
        ..Default::default()
    }))
    .exec_with_returning(db)
    .await?;
    // Rows come back in the order inserted; matched by what they concern all the same, in that
    // order, so an input never takes the id of another conversation's or queue's intent.
    let mut ids: HashMap<(Option<i64>, String), Vec<i64>> = HashMap::new();
    for row in rows.into_iter().rev() {
        ids.entry((row.conversation_id, row.queue))
            .or_default()
            .push(row.id);
    }
    intents
        .iter()
        .map(|intent| {
            ids.get_mut(&(intent.conversation_id, intent.queue.to_owned()))
                .and_then(Vec::pop)
                .ok_or_else(|| DbErr::Custom("an inserted intent did not come back".into()))
        })
        .collect()
}

/// Deletes the intents `ids` (inside the transaction that makes their jobs' change) and returns
/// those that were still there: a job whose intent is gone has already taken effect, or was
/// cancelled, and must change nothing.
pub async fn consume(
    txn: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = i64>,
) -> Result<HashSet<i64>, DbErr> {
    let ids: Vec<i64> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(intents::Entity::delete_many()
        .filter(intents::Column::Id.is_in(ids))
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .map(|row| row.id)
        .collect())
}

/// Whether the job carrying `intent` may act: no intent (the system's own request), or its
/// intent was still there and is now consumed by `txn`.
pub async fn take(txn: &impl ConnectionTrait, intent: Option<i64>) -> Result<bool, DbErr> {
    match intent {
        None => Ok(true),
        Some(id) => Ok(consume(txn, [id]).await?.contains(&id)),
    }
}

/// A job delivered again found its intent consumed: an earlier run made the change and may have
/// died before telling anyone (or its commit's answer was lost and its batch ran again). The
/// conversation's sockets re-read it (`agent_id`: the agent to tell, else its holder); webhooks
/// and e-mails are not sent twice.
pub async fn resync_after_done(
    ctx: &JobContext,
    conversation_id: i64,
    agent_id: Option<i64>,
) -> Result<(), JobError> {
    let Some(conversation) = entity::conversations::Entity::find_by_id(conversation_id)
        .one(&ctx.db)
        .await?
    else {
        return Ok(());
    };
    ctx.notifier.notify(crate::notify::Outcome::SyncRequired {
        account_id: conversation.account_id,
        conversation_id,
        agent_id: agent_id.or(conversation.assigned_agent_id),
    });
    Ok(())
}

/// Drops the outstanding intents of `queue` for `conversation_id` (a reopen drops its closes).
pub async fn cancel(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
    queue: &str,
) -> Result<u64, DbErr> {
    Ok(intents::Entity::delete_many()
        .filter(intents::Column::ConversationId.eq(conversation_id))
        .filter(intents::Column::Queue.eq(queue))
        .exec(txn)
        .await?
        .rows_affected)
}

/// Submits again the job of every intent that fell due (its job was lost, or is failing), each
/// claimed first by moving its due time, so that of several nodes sweeping at once one submits
/// it. Returns how many were resubmitted.
pub async fn resubmit_due(ctx: &JobContext) -> Result<usize, JobError> {
    let now = Utc::now();
    let due = intents::Entity::find()
        .filter(intents::Column::DueAt.lte(now))
        .order_by_asc(intents::Column::DueAt)
        .limit(PER_SWEEP)
        .all(&ctx.db)
        .await?;
    let mut resubmitted = 0;
    for intent in due {
        let claimed = intents::Entity::update_many()
            .col_expr(
                intents::Column::DueAt,
                Expr::value(now + backoff(intent.attempts)),
            )
            .col_expr(intents::Column::Attempts, Expr::value(intent.attempts + 1))
            .filter(intents::Column::Id.eq(intent.id))
            .filter(intents::Column::DueAt.eq(intent.due_at))
            .exec(&ctx.db)
            .await?
            .rows_affected;
        if claimed != 1 {
            continue;
        }
        let submitted = match intent.queue.as_str() {
            CloseConversation::QUEUE => resubmit::<CloseConversation>(ctx, &intent).await,
            ReassignConversation::QUEUE => resubmit::<ReassignConversation>(ctx, &intent).await,
            other => Err(JobError::Permanent(format!(
                "no job type for queue {other}"
            ))),
        };
        match submitted {
            Ok(()) => {
                tracing::info!(
                    intent = intent.id,
                    queue = intent.queue,
                    conversation_id = intent.conversation_id,
                    attempts = intent.attempts + 1,
                    "resubmitted a job whose intent fell due (its job was lost or is failing)"
                );
                resubmitted += 1;
            }
            Err(JobError::Permanent(err)) => {
                tracing::error!(intent = intent.id, %err, "an intent that cannot be resubmitted is dropped");
                intents::Entity::delete_by_id(intent.id)
                    .exec(&ctx.db)
                    .await?;
            }
            Err(err) => {
                // The storage is down: this was no attempt. Try again at the next sweep, so the
                // job goes out as soon as the storage is back, however long the outage.
                intents::Entity::update_many()
                    .col_expr(intents::Column::DueAt, Expr::value(now))
                    .col_expr(intents::Column::Attempts, Expr::value(intent.attempts))
                    .filter(intents::Column::Id.eq(intent.id))
                    .exec(&ctx.db)
                    .await?;
                return Err(err);
            }
        }
    }
    Ok(resubmitted)
}

async fn resubmit<J: Intended>(ctx: &JobContext, intent: &intents::Model) -> Result<(), JobError> {
    let job: J = serde_json::from_value(intent.job.clone())
        .map_err(|err| JobError::Permanent(err.to_string()))?;
    ctx.jobs
        .submit(job.with_intent(intent.id))
        .await
        .map_err(|err| JobError::Transient(err.to_string()))
}

/// The wait after the `attempts`th resubmission: [`GRACE`] doubling, at most [`MAX_BACKOFF`].
fn backoff(attempts: i32) -> chrono::Duration {
    let exponent = u32::try_from(attempts).unwrap_or(0).min(10);
    let wait = GRACE.saturating_mul(2u32.pow(exponent)).min(MAX_BACKOFF);
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resubmissions_back_off_from_the_grace_up_to_five_minutes() {
        let waits: Vec<i64> = (0..9).map(|n| backoff(n).num_seconds()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(i32::MAX).num_seconds(), 300);
    }
}

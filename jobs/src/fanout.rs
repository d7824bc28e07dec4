//! Fan-out: staged outcomes become webhook deliveries and e-mails (one `deliveries` row and one
//! job each), beside the Socket.IO pushes of the wrapped notifier.
//!
//! An outcome reaches the fan-out only when its change staged it in the outbox (see
//! [`crate::outbox`]): [`Notifications::notify_staged`] never blocks and never touches the
//! database; it hands the staged outcome to a delivery task, which records its rows and deletes
//! its outbox row in one transaction. Tasks are sharded by conversation (or agent), so one
//! conversation's rows are inserted in the order its outcomes happened; that row order is the
//! delivery order. What a task never got to (the process died, its backlog was full) is fanned
//! out by the sweep ([`left_behind`]) from the outbox rows themselves.

use std::sync::Arc;

use chrono::Utc;
use entity::{
    agents, assignments, conversations, deliveries,
    enums::{AgentRole, AuthorType, EventKind},
    events, outbox, visitors,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::OnConflict,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    JobContext, JobError,
    deliveries::{EMAIL, PENDING, WEBHOOK, submit},
    email,
    notify::{Notifier, Outcome, SlaKind},
    outbox::{LEFT_BEHIND, Outbox},
    webhook::{data_of, kind_bit, kind_of, scope_of},
};

/// Parallel fan-out tasks.
const SHARDS: usize = 8;
/// Staged outcomes waiting per task before new ones are left to the sweep (and logged).
const BACKLOG: usize = 8192;
/// Outbox rows the sweep fans out per pass at most.
const SWEEP_BATCH: u64 = 500;

/// The process's notifier: the wrapped one (Socket.IO) plus webhooks and e-mail.
pub struct Notifications {
    inner: Arc<dyn Notifier>,
    outbox: Outbox,
    shards: Vec<mpsc::Sender<(String, Outcome)>>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("inner", &self.inner)
            .field("outbox", &self.outbox)
            .finish()
    }
}

impl Notifications {
    /// Wraps `inner` and starts the fan-out tasks (they end when the last handle is dropped).
    /// `ctx` supplies the database, job store, channels and outbox; its notifier is not used.
    pub fn start(inner: Arc<dyn Notifier>, ctx: JobContext) -> Arc<Self> {
        let outbox = ctx.outbox.clone();
        let shards = (0..SHARDS)
            .map(|_| {
                let (outcomes, inbox) = mpsc::channel(BACKLOG);
                tokio::spawn(FanOut { ctx: ctx.clone() }.run(inbox));
                outcomes
            })
            .collect();
        Arc::new(Self {
            inner,
            outbox,
            shards,
        })
    }
}

impl Notifier for Notifications {
    fn notify(&self, outcome: Outcome) {
        self.inner.notify(outcome);
    }

    fn notify_staged(&self, outcome: Outcome, staged: Option<String>) {
        if let Some(key) = staged {
            let order = scope_of(&outcome).map(|(_, key)| key).unwrap_or_default();
            let shard = order
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                % self.shards.len();
            if let Err(err) = self.shards[shard].try_send((key, outcome.clone())) {
                metrics::counter!("switchboard_fanout_left_to_sweep_total").increment(1);
                tracing::warn!(%err, "fan-out backlog full: the sweep will record this outcome's deliveries");
            }
        }
        self.inner.notify(outcome);
    }

    fn subscriptions_changed(&self, account_id: i64) {
        self.outbox.subscriptions_changed(account_id);
        self.inner.subscriptions_changed(account_id);
    }
}

/// Fans out outbox rows older than [`LEFT_BEHIND`]: staged by a process that died, or left by a
/// full backlog. Oldest first; returns how many rows it took. Safe on any number of nodes: each
/// row is taken once (its delete decides).
pub async fn left_behind(ctx: &JobContext) -> Result<usize, JobError> {
    let before = Utc::now() - chrono::Duration::from_std(LEFT_BEHIND).unwrap_or_default();
    let rows = outbox::Entity::find()
        .filter(outbox::Column::CreatedAt.lt(before))
        .order_by_asc(outbox::Column::CreatedAt)
        .order_by_asc(outbox::Column::Key)
        .limit(SWEEP_BATCH)
        .all(&ctx.db)
        .await?;
    let fan_out = FanOut { ctx: ctx.clone() };
    let mut taken = 0;
    for row in rows {
        match serde_json::from_value::<Outcome>(row.outcome) {
            Ok(outcome) => {
                if fan_out.record(&row.key, &outcome).await? {
                    taken += 1;
                }
            }
            Err(err) => {
                // Written by a build that knew an outcome this one does not: it can never be
                // delivered by this build, and must not block the sweep.
                tracing::error!(key = %row.key, %err, "dropping an outbox row this build cannot read");
                outbox::Entity::delete_by_id(row.key).exec(&ctx.db).await?;
            }
        }
    }
    Ok(taken)
}

/// One fan-out task (or the sweep): turns staged outcomes into rows and jobs, in order.
struct FanOut {
    ctx: JobContext,
}

impl FanOut {
    async fn run(self, mut inbox: mpsc::Receiver<(String, Outcome)>) {
        while let Some((key, outcome)) = inbox.recv().await {
            if let Err(err) = self.record(&key, &outcome).await {
                tracing::warn!(%err, "deliveries not recorded now; the sweep will");
            }
        }
    }

    /// Records the deliveries of the staged row `key` and deletes it, in one transaction, then
    /// submits their jobs. `false` when the row was gone (another process took it).
    async fn record(&self, key: &str, outcome: &Outcome) -> Result<bool, JobError> {
        let txn = crate::db::begin_write(&self.ctx.db).await?;
        let taken = outbox::Entity::delete_by_id(key.to_owned())
            .exec(&txn)
            .await?
            .rows_affected;
        if taken == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        let mut rows = self.webhooks(&txn, outcome).await?;
        if self.ctx.outbox.email_on() {
            rows.extend(self.emails(&txn, outcome).await?);
        }
        let mut recorded = Vec::with_capacity(rows.len());
        for row in rows {
            // A row keyed by something else than a fresh id (a digest's window) is written once.
            let inserted = deliveries::Entity::insert(row.model)
                .on_conflict(
                    OnConflict::column(deliveries::Column::DeliveryKey)
                        .do_nothing()
                        .to_owned(),
                )
                .exec(&txn)
                .await;
            match inserted {
                Ok(done) => recorded.push((row.channel, done.last_insert_id, row.due)),
                Err(DbErr::RecordNotInserted) => {}
                Err(err) => return Err(err.into()),
            }
        }
        txn.commit().await?;
        for (channel, id, due) in recorded {
            let delay = due.and_then(|due| (due - Utc::now()).to_std().ok());
            // A submission that fails leaves the row pending for `deliveries::redeliver`.
            if let Err(err) = submit(&self.ctx, channel, id, delay).await {
                tracing::warn!(delivery_id = id, %err, "delivery job not submitted; the sweep will");
            }
        }
        Ok(true)
    }

    /// The webhook deliveries `outcome` makes: one per subscribed webhook.
    async fn webhooks(
        &self,
        db: &impl ConnectionTrait,
        outcome: &Outcome,
    ) -> Result<Vec<NewRow>, JobError> {
        let (Some(kind), Some((account_id, order_key))) = (kind_of(outcome), scope_of(outcome))
        else {
            return Ok(Vec::new());
        };
        let bit = kind_bit(kind).unwrap_or(0);
        let hooks = self.ctx.outbox.subscriptions(db, account_id).await?;
        let mut rows = Vec::new();
        let data = data_of(outcome);
        let attempts = self.ctx.channels.webhook_retries().attempts;
        for hook in hooks.iter().filter(|h| h.kinds & bit != 0) {
            let row = new_row(
                account_id,
                WEBHOOK,
                kind,
                &order_key,
                data.clone(),
                attempts,
            )
            .with_webhook(hook.id);
            rows.push(row);
        }
        Ok(rows)
    }

    /// The e-mails `outcome` makes.
    async fn emails(
        &self,
        db: &impl ConnectionTrait,
        outcome: &Outcome,
    ) -> Result<Vec<NewRow>, JobError> {
        let mut rows = Vec::new();
        let attempts = self.ctx.channels.email_retries().attempts;
        match outcome {
            Outcome::ConversationAssigned {
                account_id,
                conversation_id,
                agent_id,
                agent_name,
                reason,
                ..
            } => {
                let Some(agent) = agents::Entity::find_by_id(*agent_id).one(db).await? else {
                    return Ok(rows);
                };
                if connected(&agent) {
                    return Ok(rows);
                }
                let payload = json!({
                    "conversationId": conversation_id,
                    "agentId": agent_id,
                    "agentName": agent_name,
                    "reason": reason,
                });
                let order = format!("conversation:{conversation_id}");
                let row = new_row(
                    *account_id,
                    EMAIL,
                    email::ASSIGNED,
                    &order,
                    payload,
                    attempts,
                )
                .to(agent.email);
                rows.push(row);
            }
            Outcome::ConversationClosed {
                account_id,
                conversation_id,
                visitor_id,
                ..
            } => {
                let Some(visitor) = visitors::Entity::find_by_id(*visitor_id).one(db).await? else {
                    return Ok(rows);
                };
                let (Some(email), Some(given)) = (
                    visitor.email.filter(|e| !e.trim().is_empty()),
                    visitor.email_given_at,
                ) else {
                    return Ok(rows);
                };
                // The visitor's address is not verified and the visitor writes the text: a
                // transcript of a chat no agent wrote in would let anyone mail anything to
                // anyone through this server. And the address must have been given before an
                // agent joined: one named afterwards would have the agent's words (and the
                // visitor's own) mailed wherever the visitor likes.
                if !agent_wrote(db, *conversation_id).await?
                    || first_joined(db, *conversation_id)
                        .await?
                        .is_none_or(|joined| given > joined)
                {
                    return Ok(rows);
                }
                let payload = json!({ "conversationId": conversation_id });
                let order = format!("conversation:{conversation_id}");
                let row = new_row(
                    *account_id,
                    EMAIL,
                    email::TRANSCRIPT,
                    &order,
                    payload,
                    attempts,
                )
                .to(email);
                rows.push(row);
            }
            Outcome::SlaBreached {
                account_id,
                conversation_id,
                sla,
                ..
            } => {
                // One digest per supervisor per window, whatever the number of breaches in it (a
                // flood of unanswered chats must not become a flood of mail): the row is keyed by
                // its window, so the first breach records it and the others find it there. The
                // mail lists what broke in its window when it is sent, at the window's end.
                let every = self.ctx.channels.sla_digest();
                let at = breached_at(db, *conversation_id, *sla)
                    .await?
                    .unwrap_or_else(Utc::now);
                let (start, end) = digest_window(at, every);
                let supervisors = agents::Entity::find()
                    .filter(agents::Column::AccountId.eq(*account_id))
                    .filter(agents::Column::DeletedAt.is_null())
                    .filter(agents::Column::Role.is_in([AgentRole::Supervisor, AgentRole::Admin]))
                    .all(db)
                    .await?;
                let payload = json!({ "windowStart": start, "windowEnd": end });
                let order = format!("sla-digest:{account_id}");
                for supervisor in supervisors {
                    let row = new_row(
                        *account_id,
                        EMAIL,
                        email::SLA_DIGEST,
                        &order,
                        payload.clone(),
                        attempts,
                    )
                    .to(supervisor.email)
                    .keyed(format!(
                        "sla-digest-{account_id}-{}-{}",
                        supervisor.id,
                        start.timestamp()
                    ))
                    .due(end);
                    rows.push(row);
                }
            }
            _ => {}
        }
        Ok(rows)
    }
}

/// Whether an agent wrote in the conversation: its first response is recorded, or (that record
/// is written in batches, see [`crate::activity`], and may not be there yet) an agent's message
/// is stored.
async fn agent_wrote(db: &impl ConnectionTrait, conversation_id: i64) -> Result<bool, DbErr> {
    let responded = conversations::Entity::find_by_id(conversation_id)
        .one(db)
        .await?
        .is_some_and(|c| c.first_response_at.is_some());
    if responded {
        return Ok(true);
    }
    let message: Option<i64> = events::Entity::find()
        .select_only()
        .column(events::Column::Id)
        .filter(events::Column::ConversationId.eq(conversation_id))
        .filter(events::Column::Kind.eq(EventKind::Message))
        .filter(events::Column::AuthorType.eq(AuthorType::Agent))
        .into_tuple()
        .one(db)
        .await?;
    Ok(message.is_some())
}

/// When `sla` broke for the conversation, as the scheduler stamped it.
async fn breached_at(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    sla: SlaKind,
) -> Result<Option<chrono::DateTime<Utc>>, DbErr> {
    let Some(conversation) = conversations::Entity::find_by_id(conversation_id)
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(match sla {
        SlaKind::FirstResponse => conversation.first_response_breached_at,
        SlaKind::MaxReassignments => conversation.routing_held_at,
    })
}

/// The digest window `at` falls in: windows of `every` since the Unix epoch, `[start, end)`.
pub(crate) fn digest_window(
    at: chrono::DateTime<Utc>,
    every: std::time::Duration,
) -> (chrono::DateTime<Utc>, chrono::DateTime<Utc>) {
    let every = i64::try_from(every.as_secs().max(1)).unwrap_or(i64::MAX);
    let start = at.timestamp().div_euclid(every) * every;
    let start = chrono::DateTime::from_timestamp(start, 0).unwrap_or(at);
    (start, start + chrono::Duration::seconds(every))
}

/// When the first agent joined the conversation (its first assignment).
async fn first_joined(
    db: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<chrono::DateTime<Utc>>, DbErr> {
    assignments::Entity::find()
        .select_only()
        .column(assignments::Column::AssignedAt)
        .filter(assignments::Column::ConversationId.eq(conversation_id))
        .order_by_asc(assignments::Column::AssignedAt)
        .into_tuple()
        .one(db)
        .await
}

/// An agent with a live socket: its last connect is later than its last drop (as presence
/// decides, see `agent_presence`).
fn connected(agent: &agents::Model) -> bool {
    match (agent.connected_at, agent.disconnected_at) {
        (Some(connected), Some(disconnected)) => connected > disconnected,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

struct NewRow {
    channel: &'static str,
    model: deliveries::ActiveModel,
    /// Not to be sent before this.
    due: Option<chrono::DateTime<Utc>>,
}

impl NewRow {
    fn with_webhook(mut self, webhook_id: i64) -> Self {
        self.model.webhook_id = Set(Some(webhook_id));
        self
    }

    fn to(mut self, recipient: String) -> Self {
        self.model.recipient = Set(Some(recipient));
        self
    }

    /// Keyed by `key` instead of a fresh id: a second row with the same key is not written.
    fn keyed(mut self, key: String) -> Self {
        self.model.delivery_key = Set(key);
        self
    }

    fn due(mut self, at: chrono::DateTime<Utc>) -> Self {
        self.model.next_attempt_at = Set(Some(at));
        self.due = Some(at);
        self
    }
}

fn new_row(
    account_id: i64,
    channel: &'static str,
    kind: &str,
    order_key: &str,
    payload: serde_json::Value,
    max_attempts: u32,
) -> NewRow {
    let now = Utc::now();
    NewRow {
        channel,
        due: None,
        model: deliveries::ActiveModel {
            account_id: Set(account_id),
            channel: Set(channel.to_owned()),
            webhook_id: Set(None),
            delivery_key: Set(ulid::Ulid::new().to_string()),
            kind: Set(kind.to_owned()),
            order_key: Set(order_key.to_owned()),
            recipient: Set(None),
            payload: Set(payload),
            status: Set(PENDING.to_owned()),
            attempts: Set(0),
            max_attempts: Set(i32::try_from(max_attempts.max(1)).unwrap_or(i32::MAX)),
            last_error: Set(None),
            last_status_code: Set(None),
            next_attempt_at: Set(None),
            claimed_until: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            delivered_at: Set(None),
            ..Default::default()
        },
    }
}

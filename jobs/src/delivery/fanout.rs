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
    agents, conversations, deliveries,
    enums::{AgentRole, AuthorType, EventKind},
    events, outbox, visitors,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, OnConflict},
};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    deliveries::DeliveryStatus,
    email,
    send::{Channel, submit},
    webhook::{data_of, kind_bit, kind_of, scope_of},
};
use crate::{
    JobContext, JobError,
    notify::{Notifier, Outcome},
    outbox::{LEFT_BEHIND, Outbox},
};

/// Parallel fan-out tasks.
const SHARDS: usize = 8;
/// Staged outcomes waiting per task before new ones are left to the sweep (and logged).
const BACKLOG: usize = 8192;
/// Outbox rows the sweep reads at a time.
const SWEEP_BATCH: u64 = 500;
/// How long one sweep pass keeps fanning out before it leaves the rest to the next.
const SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

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
/// full backlog. Oldest first, [`SWEEP_BATCH`] at a time until none is left or
/// [`SWEEP_BUDGET`] has passed; returns how many rows it took. A row that fails is logged and
/// left for the next pass (it does not stop the others). Safe on any number of nodes: each row
/// is taken once (its delete decides).
pub async fn left_behind(ctx: &JobContext) -> Result<usize, JobError> {
    let started = std::time::Instant::now();
    let fan_out = FanOut { ctx: ctx.clone() };
    let mut taken = 0;
    let mut after: Option<String> = None;
    loop {
        let before = Utc::now() - chrono::Duration::from_std(LEFT_BEHIND).unwrap_or_default();
        let mut query = outbox::Entity::find()
            .filter(outbox::Column::CreatedAt.lt(before))
            .order_by_asc(outbox::Column::Key)
            .limit(SWEEP_BATCH);
        if let Some(after) = &after {
            query = query.filter(outbox::Column::Key.gt(after.clone()));
        }
        let rows = query.all(&ctx.db).await?;
        let full = rows.len() as u64 == SWEEP_BATCH;
        for row in rows {
            after = Some(row.key.clone());
            let outcome = match serde_json::from_value::<Outcome>(row.outcome) {
                Ok(outcome) => outcome,
                Err(err) => {
                    // Written by a build that knows an outcome this one does not (a rolling
                    // upgrade): left for a node of that build.
                    tracing::error!(key = %row.key, %err, "an outbox row this build cannot read is left for another");
                    continue;
                }
            };
            match fan_out.record(&row.key, &outcome).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(key = %row.key, %err, "an outbox row was not fanned out; the next pass tries again")
                }
            }
        }
        if !full || started.elapsed() > SWEEP_BUDGET {
            return Ok(taken);
        }
    }
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
    /// submits their jobs. Older rows of the same conversation (or agent) still in the outbox
    /// (left behind by a process that died, or by a full backlog) are recorded first, so their
    /// deliveries keep their place before this one's. `false` when the row was gone (another
    /// process took it).
    async fn record(&self, key: &str, outcome: &Outcome) -> Result<bool, JobError> {
        let order = scope_of(outcome)
            .map(|(_, order)| order)
            .unwrap_or_default();
        let txn = crate::db::begin_write(&self.ctx.db).await?;
        let older = outbox::Entity::find()
            .filter(outbox::Column::OrderKey.eq(order))
            .filter(outbox::Column::Key.lt(key))
            .order_by_asc(outbox::Column::Key)
            .all(&txn)
            .await?;
        let mut todo: Vec<(String, Outcome)> = older
            .into_iter()
            .filter_map(|row| match serde_json::from_value(row.outcome) {
                Ok(outcome) => Some((row.key, outcome)),
                Err(err) => {
                    tracing::error!(key = %row.key, %err, "an outbox row this build cannot read is left for another");
                    None
                }
            })
            .collect();
        todo.push((key.to_owned(), outcome.clone()));
        let mut took = false;
        let mut recorded = Vec::new();
        for (this, outcome) in &todo {
            let taken = outbox::Entity::delete_by_id(this.clone())
                .exec(&txn)
                .await?
                .rows_affected;
            if taken == 0 {
                continue;
            }
            took |= this == key;
            let mut rows = self.webhooks(&txn, outcome).await?;
            if self.ctx.outbox.email_on() {
                rows.extend(self.emails(&txn, outcome).await?);
                recorded.extend(self.digests(&txn, outcome).await?);
            }
            for row in rows {
                let id = deliveries::Entity::insert(row.model)
                    .exec(&txn)
                    .await?
                    .last_insert_id;
                recorded.push((row.channel, id, None));
            }
        }
        txn.commit().await?;
        for (channel, id, due) in recorded {
            let delay = due.and_then(|due: chrono::DateTime<Utc>| (due - Utc::now()).to_std().ok());
            // A submission that fails leaves the row pending for `deliveries::redeliver`.
            if let Err(err) = submit(&self.ctx, channel, id, delay).await {
                tracing::warn!(delivery_id = id, %err, "delivery job not submitted; the sweep will");
            }
        }
        Ok(took)
    }

    /// Adds an SLA breach to each supervisor's digest of the current window: one mail per
    /// supervisor and window, whatever the number of breaches (a flood of unanswered chats must
    /// not become a flood of mail). The window's row is created by its first breach and sent at
    /// the window's end; a breach is added only while no attempt has begun (an attempt composes
    /// from what the row holds then), else it goes to the next window's. Returns the rows created
    /// (to submit, due at their window's end).
    async fn digests(
        &self,
        db: &impl ConnectionTrait,
        outcome: &Outcome,
    ) -> Result<Vec<(Channel, i64, Option<chrono::DateTime<Utc>>)>, JobError> {
        let Outcome::SlaBreached {
            account_id,
            conversation_id,
            sla,
            limit,
            actual,
            ..
        } = outcome
        else {
            return Ok(Vec::new());
        };
        let every = self.ctx.channels.sla_digest();
        let attempts = self.ctx.channels.email_retries().attempts;
        let breach = json!({ "conversationId": conversation_id, "sla": sla, "limit": limit, "actual": actual });
        // In id order: two transactions adding to the same digests lock them in the same order.
        let supervisors = agents::Entity::find()
            .filter(agents::Column::AccountId.eq(*account_id))
            .filter(agents::Column::DeletedAt.is_null())
            .filter(agents::Column::Role.is_in([AgentRole::Supervisor, AgentRole::Admin]))
            .order_by_asc(agents::Column::Id)
            .all(db)
            .await?;
        let mut created = Vec::new();
        for supervisor in supervisors {
            let (mut start, mut end) = digest_window(Utc::now(), every);
            for _ in 0..2 {
                let (key, opened) =
                    open_digest(db, *account_id, &supervisor, (start, end), attempts).await?;
                if let Some(id) = opened {
                    created.push((Channel::Email, id, Some(end)));
                }
                match add_to_digest(db, &key, &breach).await? {
                    Digest::Added | Digest::Gone => break,
                    // This window's mail is on its way: the breach goes in the next one's.
                    Digest::Sending => (start, end) = (end, end + (end - start)),
                }
            }
        }
        Ok(created)
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
                Channel::Webhook,
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
                    Channel::Email,
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
                let Some(email) = visitor
                    .email
                    .filter(|e| visitor.email_before_agent && !e.trim().is_empty())
                else {
                    return Ok(rows);
                };
                // The visitor's address is not verified and the visitor writes the text: a
                // transcript of a chat no agent wrote in would let anyone mail anything to
                // anyone through this server. And the address must have been given before an
                // agent joined: one named afterwards would have the agent's words (and the
                // visitor's own) mailed wherever the visitor likes.
                if !agent_wrote(db, *conversation_id).await? {
                    return Ok(rows);
                }
                let payload = json!({ "conversationId": conversation_id });
                let order = format!("conversation:{conversation_id}");
                let row = new_row(
                    *account_id,
                    Channel::Email,
                    email::TRANSCRIPT,
                    &order,
                    payload,
                    attempts,
                )
                .to(email);
                rows.push(row);
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

/// What became of a breach offered to one digest row.
enum Digest {
    /// It is in the row, which is sent at its window's end.
    Added,
    /// The row is gone (pruned): nothing to add to.
    Gone,
    /// An attempt has begun: the row no longer changes.
    Sending,
}

/// Creates `supervisor`'s digest row of the window `(start, end)` unless it exists. Returns its
/// key, and its id when this call created it (to submit, due at `end`).
async fn open_digest(
    db: &impl ConnectionTrait,
    account_id: i64,
    supervisor: &agents::Model,
    (start, end): (chrono::DateTime<Utc>, chrono::DateTime<Utc>),
    attempts: u32,
) -> Result<(String, Option<i64>), JobError> {
    let key = format!(
        "sla-digest-{account_id}-{}-{}",
        supervisor.id,
        start.timestamp()
    );
    let row = new_row(
        account_id,
        Channel::Email,
        email::SLA_DIGEST,
        &format!("sla-digest:{account_id}"),
        json!({ "windowStart": start, "windowEnd": end, "breaches": [], "more": 0 }),
        attempts,
    )
    .to(supervisor.email.clone())
    .keyed(key.clone())
    .due(end);
    let opened = match deliveries::Entity::insert(row.model)
        .on_conflict(
            OnConflict::column(deliveries::Column::DeliveryKey)
                .do_nothing()
                .to_owned(),
        )
        .exec(db)
        .await
    {
        Ok(done) => Some(done.last_insert_id),
        Err(DbErr::RecordNotInserted) => None,
        Err(err) => return Err(err.into()),
    };
    Ok((key, opened))
}

/// Adds `breach` to the digest row `key`, read locked (PostgreSQL), while no attempt has begun.
async fn add_to_digest(
    db: &impl ConnectionTrait,
    key: &str,
    breach: &serde_json::Value,
) -> Result<Digest, DbErr> {
    let mut read = deliveries::Entity::find().filter(deliveries::Column::DeliveryKey.eq(key));
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        read = read.lock(sea_orm::sea_query::LockType::Update);
    }
    let Some(digest) = read.one(db).await? else {
        return Ok(Digest::Gone);
    };
    if digest.status != DeliveryStatus::Pending.as_str() || digest.attempts != 0 {
        return Ok(Digest::Sending);
    }
    let mut payload = digest.payload;
    add_breach(&mut payload, breach.clone());
    deliveries::Entity::update_many()
        .col_expr(deliveries::Column::Payload, Expr::value(payload))
        .col_expr(deliveries::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(deliveries::Column::Id.eq(digest.id))
        .exec(db)
        .await?;
    Ok(Digest::Added)
}

/// Adds `breach` to a digest's payload: listed while fewer than [`email::DIGEST_LISTED`] are,
/// counted in `more` after that.
fn add_breach(payload: &mut serde_json::Value, breach: serde_json::Value) {
    let listed = payload["breaches"].as_array().map_or(0, Vec::len);
    if listed < email::DIGEST_LISTED {
        match payload["breaches"].as_array_mut() {
            Some(breaches) => breaches.push(breach),
            None => payload["breaches"] = json!([breach]),
        }
    } else {
        payload["more"] = json!(payload["more"].as_u64().unwrap_or(0) + 1);
    }
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
    channel: Channel,
    model: deliveries::ActiveModel,
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

    /// Not to be sent before `at`.
    fn due(mut self, at: chrono::DateTime<Utc>) -> Self {
        self.model.next_attempt_at = Set(Some(at));
        self
    }
}

fn new_row(
    account_id: i64,
    channel: Channel,
    kind: &str,
    order_key: &str,
    payload: serde_json::Value,
    max_attempts: u32,
) -> NewRow {
    let now = Utc::now();
    NewRow {
        channel,
        model: deliveries::ActiveModel {
            account_id: Set(account_id),
            channel: Set(channel.as_str().to_owned()),
            webhook_id: Set(None),
            delivery_key: Set(ulid::Ulid::new().to_string()),
            kind: Set(kind.to_owned()),
            order_key: Set(order_key.to_owned()),
            recipient: Set(None),
            payload: Set(payload),
            status: Set(DeliveryStatus::Pending.as_str().to_owned()),
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

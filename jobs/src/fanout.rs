//! Fan-out: outcomes become webhook deliveries and e-mails (one `deliveries` row and one job
//! each), beside the Socket.IO pushes of the wrapped notifier.
//!
//! [`Notifications::notify`] never blocks and never touches the database: it decides from a
//! short-lived in-memory cache of the account's webhook subscriptions whether the outcome may be
//! wanted at all (an account without webhooks costs a map lookup per message), and hands wanted
//! ones to a delivery task. Tasks are sharded by conversation (or agent), so one conversation's
//! rows are inserted in the order its outcomes happened; that row order is the delivery order.
//! The cache is dropped for an account when its webhooks change here
//! ([`Notifier::subscriptions_changed`]) and expires after [`CACHE_TTL`] (other nodes).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    agents, conversations, deliveries,
    enums::{AgentRole, AuthorType, EventKind},
    events, visitors, webhooks,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    JobContext, JobError,
    deliveries::{EMAIL, PENDING, WEBHOOK, submit},
    email,
    notify::{Notifier, Outcome},
    webhook::{data_of, kind_bit, kind_of, scope_of},
};

/// How long an account's subscriptions are trusted without reading them again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Parallel fan-out tasks.
const SHARDS: usize = 8;
/// Outcomes waiting per task before new ones are dropped (and logged).
const BACKLOG: usize = 8192;

/// One active webhook, as the fan-out needs it.
#[derive(Debug, Clone, Copy)]
struct Subscription {
    id: i64,
    /// Bits of the subscribed kinds ([`kind_bit`]).
    kinds: u8,
}

/// Accounts' active webhook subscriptions, briefly cached.
#[derive(Debug)]
struct Cache(crate::cache::Cache<i64, Arc<[Subscription]>>);

impl Default for Cache {
    fn default() -> Self {
        Self(crate::cache::short_lived(100_000, CACHE_TTL))
    }
}

impl Cache {
    /// `Some(true/false)` when a fresh entry says whether `bit` is subscribed; `None` when unknown.
    fn subscribed(&self, account_id: i64, bit: u8) -> Option<bool> {
        let hooks = self.0.get(&account_id)?;
        Some(hooks.iter().any(|h| h.kinds & bit != 0))
    }

    fn forget(&self, account_id: i64) {
        self.0.invalidate(&account_id);
    }

    /// The account's subscriptions, from the cache or the database.
    async fn load(
        &self,
        db: &DatabaseConnection,
        account_id: i64,
    ) -> Result<Arc<[Subscription]>, sea_orm::DbErr> {
        if let Some(hooks) = self.0.get(&account_id) {
            return Ok(hooks);
        }
        let rows = webhooks::Entity::find()
            .filter(webhooks::Column::AccountId.eq(account_id))
            .filter(webhooks::Column::DeletedAt.is_null())
            .filter(webhooks::Column::Active.eq(true))
            .all(db)
            .await?;
        let hooks: Arc<[Subscription]> = rows
            .into_iter()
            .map(|row| Subscription {
                id: row.id,
                kinds: subscription_mask(&row.events),
            })
            .collect();
        self.0.insert(account_id, hooks.clone());
        Ok(hooks)
    }
}

/// The kind bits of a webhook's `events` column (a JSON array of kind names).
fn subscription_mask(events: &serde_json::Value) -> u8 {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kind| kind.as_str().and_then(kind_bit))
        .fold(0, |mask, bit| mask | bit)
}

/// The process's notifier: the wrapped one (Socket.IO) plus webhooks and e-mail.
pub struct Notifications {
    inner: Arc<dyn Notifier>,
    cache: Arc<Cache>,
    shards: Vec<mpsc::Sender<Outcome>>,
    email_on: bool,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("inner", &self.inner)
            .field("email_on", &self.email_on)
            .finish()
    }
}

impl Notifications {
    /// Wraps `inner` and starts the fan-out tasks (they end when the last handle is dropped).
    /// `ctx` supplies the database, job store and channels; its notifier is not used.
    pub fn start(inner: Arc<dyn Notifier>, ctx: JobContext) -> Arc<Self> {
        let cache = Arc::new(Cache::default());
        let email_on = ctx.channels.email_on();
        let shards = (0..SHARDS)
            .map(|_| {
                let (outcomes, inbox) = mpsc::channel(BACKLOG);
                let task = FanOut {
                    ctx: ctx.clone(),
                    cache: cache.clone(),
                };
                tokio::spawn(task.run(inbox));
                outcomes
            })
            .collect();
        Arc::new(Self {
            inner,
            cache,
            shards,
            email_on,
        })
    }

    /// Whether anything besides Socket.IO may want `outcome`.
    fn wanted(&self, outcome: &Outcome) -> bool {
        if self.email_on
            && matches!(
                outcome,
                Outcome::ConversationAssigned { .. }
                    | Outcome::ConversationClosed { .. }
                    | Outcome::SlaBreached { .. }
            )
        {
            return true;
        }
        let (Some(kind), Some((account_id, _))) = (kind_of(outcome), scope_of(outcome)) else {
            return false;
        };
        let bit = kind_bit(kind).unwrap_or(0);
        self.cache.subscribed(account_id, bit).unwrap_or(true)
    }
}

impl Notifier for Notifications {
    fn notify(&self, outcome: Outcome) {
        if self.wanted(&outcome) {
            let key = scope_of(&outcome).map(|(_, key)| key).unwrap_or_default();
            let shard = key
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                % self.shards.len();
            if let Err(err) = self.shards[shard].try_send(outcome.clone()) {
                tracing::warn!(%err, "notification dropped: the fan-out backlog is full");
            }
        }
        self.inner.notify(outcome);
    }

    fn subscriptions_changed(&self, account_id: i64) {
        self.cache.forget(account_id);
        self.inner.subscriptions_changed(account_id);
    }
}

/// One fan-out task: turns outcomes into rows and jobs, in order.
struct FanOut {
    ctx: JobContext,
    cache: Arc<Cache>,
}

impl FanOut {
    async fn run(self, mut inbox: mpsc::Receiver<Outcome>) {
        while let Some(outcome) = inbox.recv().await {
            if let Err(err) = self.webhooks(&outcome).await {
                tracing::warn!(%err, "webhook deliveries not recorded");
            }
            if self.ctx.channels.email_on()
                && let Err(err) = self.emails(&outcome).await
            {
                tracing::warn!(%err, "e-mails not recorded");
            }
        }
    }

    async fn webhooks(&self, outcome: &Outcome) -> Result<(), JobError> {
        let (Some(kind), Some((account_id, order_key))) = (kind_of(outcome), scope_of(outcome))
        else {
            return Ok(());
        };
        let bit = kind_bit(kind).unwrap_or(0);
        let hooks = self.cache.load(&self.ctx.db, account_id).await?;
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
            self.record(row).await?;
        }
        Ok(())
    }

    async fn emails(&self, outcome: &Outcome) -> Result<(), JobError> {
        let db = &self.ctx.db;
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
                    return Ok(());
                };
                if connected(&agent) {
                    return Ok(());
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
                self.record(row).await?;
            }
            Outcome::ConversationClosed {
                account_id,
                conversation_id,
                visitor_id,
                ..
            } => {
                let email = visitors::Entity::find_by_id(*visitor_id)
                    .one(db)
                    .await?
                    .and_then(|v| v.email)
                    .filter(|e| !e.trim().is_empty());
                let Some(email) = email else {
                    return Ok(());
                };
                // The visitor's address is not verified and the visitor writes the text: a
                // transcript of a chat no agent wrote in would let anyone mail anything to
                // anyone through this server.
                if !agent_wrote(db, *conversation_id).await? {
                    return Ok(());
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
                self.record(row).await?;
            }
            Outcome::SlaBreached {
                account_id,
                conversation_id,
                ..
            } => {
                let supervisors = agents::Entity::find()
                    .filter(agents::Column::AccountId.eq(*account_id))
                    .filter(agents::Column::DeletedAt.is_null())
                    .filter(agents::Column::Role.is_in([AgentRole::Supervisor, AgentRole::Admin]))
                    .all(db)
                    .await?;
                let payload = data_of(outcome);
                let order = format!("conversation:{conversation_id}");
                for supervisor in supervisors {
                    let row = new_row(
                        *account_id,
                        EMAIL,
                        email::SLA_BREACHED,
                        &order,
                        payload.clone(),
                        attempts,
                    )
                    .to(supervisor.email);
                    self.record(row).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Inserts the row and submits its job. A submission that fails leaves the row pending for
    /// [`crate::deliveries::redeliver`].
    async fn record(&self, row: NewRow) -> Result<(), JobError> {
        let channel = row.channel;
        let id = deliveries::Entity::insert(row.model)
            .exec(&self.ctx.db)
            .await?
            .last_insert_id;
        if let Err(err) = submit(&self.ctx, channel, id, None).await {
            tracing::warn!(delivery_id = id, %err, "delivery job not submitted; the sweep will");
        }
        Ok(())
    }
}

/// Whether an agent wrote in the conversation: its first response is recorded, or (that record
/// is written in batches, see [`crate::activity`], and may not be there yet) an agent's message
/// is stored.
async fn agent_wrote(db: &DatabaseConnection, conversation_id: i64) -> Result<bool, DbErr> {
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

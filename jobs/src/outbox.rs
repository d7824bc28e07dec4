//! The outbox: the webhooks and e-mails an outcome implies are staged in the transaction that
//! makes the change, so none is lost between the commit and its `deliveries` rows.
//!
//! A change stages its outcomes with [`Outbox::stage`] before it commits: each outcome that a
//! webhook subscription or e-mail may want gets an `outbox` row (one insert for the lot). Once
//! committed, [`Staged::tell`] hands them to the notifier, whose fan-out records the deliveries
//! and deletes the row in one transaction (see [`crate::delivery::fanout`]). Should the process
//! die first, or its fan-out backlog be full, the sweep fans out what is left after
//! [`LEFT_BEHIND`].
//!
//! Whether an outcome may be wanted is read from a short-lived cache of the account's webhook
//! subscriptions ([`CACHE_TTL`]): an account without webhooks and with e-mail off costs a map
//! lookup per outcome and no row.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use entity::{outbox, webhooks};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use crate::{
    delivery::webhook::wire::{kind_bit, kind_of, scope_of},
    notify::{Notifier, Outcome},
};

/// How long an account's subscriptions are trusted without reading them again (other nodes'
/// changes; this node forgets at once, see [`Outbox::subscriptions_changed`]).
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// How old a staged row must be before the sweep fans it out: the fan-out of the process that
/// staged it has had ample time.
pub const LEFT_BEHIND: Duration = Duration::from_secs(30);

/// One active webhook, as the fan-out needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscription {
    pub(crate) id: i64,
    /// Bits of the subscribed kinds ([`kind_bit`]).
    pub(crate) kinds: u8,
}

/// Where outcomes are staged; cloning shares the subscription cache.
#[derive(Clone)]
pub struct Outbox {
    cache: crate::cache::Cache<i64, Arc<[Subscription]>>,
    email_on: bool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("email_on", &self.email_on)
            .finish_non_exhaustive()
    }
}

/// The outcomes of one change, staged in its transaction: told once it commits.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "staged outcomes are told once their transaction commits"]
pub struct Staged(Vec<(Outcome, Option<String>)>);

impl Staged {
    /// Outcomes that nothing but Socket.IO wants: no row.
    pub fn unstaged(outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        Self(outcomes.into_iter().map(|o| (o, None)).collect())
    }

    /// Hands the outcomes to `notifier`, in order (after the commit).
    pub fn tell(self, notifier: &dyn Notifier) {
        for (outcome, key) in self.0 {
            notifier.notify_staged(outcome, key);
        }
    }
}

impl Outbox {
    /// An outbox for a process that sends e-mail (`email_on`) or not.
    pub fn new(email_on: bool) -> Self {
        Self {
            cache: crate::cache::short_lived(100_000, CACHE_TTL),
            email_on,
        }
    }

    /// Stages `outcomes` in `conn`'s transaction: see [`Outbox::stage_each`].
    pub async fn stage(
        &self,
        conn: &impl ConnectionTrait,
        outcomes: impl IntoIterator<Item = Outcome>,
    ) -> Result<Staged, DbErr> {
        let mut staged = self
            .stage_each(conn, vec![outcomes.into_iter().collect()])
            .await?;
        Ok(staged.pop().unwrap_or_default())
    }

    /// Stages the outcomes of several changes made in `conn`'s transaction (one [`Staged`] per
    /// change, in order), with one insert for all the rows.
    pub async fn stage_each(
        &self,
        conn: &impl ConnectionTrait,
        changes: Vec<Vec<Outcome>>,
    ) -> Result<Vec<Staged>, DbErr> {
        let now = Utc::now();
        let mut rows = Vec::new();
        let mut staged = Vec::with_capacity(changes.len());
        for outcomes in changes {
            let mut these = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                let key = match self.wants(conn, &outcome).await? {
                    Some((account_id, order_key)) => {
                        let key = next_key();
                        rows.push(outbox::ActiveModel {
                            key: Set(key.clone()),
                            account_id: Set(account_id),
                            order_key: Set(order_key),
                            outcome: Set(serde_json::to_value(&outcome)
                                .map_err(|err| DbErr::Custom(err.to_string()))?),
                            created_at: Set(now),
                        });
                        Some(key)
                    }
                    None => None,
                };
                these.push((outcome, key));
            }
            staged.push(Staged(these));
        }
        if !rows.is_empty() {
            outbox::Entity::insert_many(rows)
                .exec_without_returning(conn)
                .await?;
        }
        Ok(staged)
    }

    /// The account of `outcome` and what its order is kept within, when webhooks or e-mail may
    /// want it.
    async fn wants(
        &self,
        conn: &impl ConnectionTrait,
        outcome: &Outcome,
    ) -> Result<Option<(i64, String)>, DbErr> {
        let Some((account_id, order_key)) = scope_of(outcome) else {
            return Ok(None);
        };
        let wanted = (self.email_on && emails_may_follow(outcome))
            || match kind_of(outcome) {
                Some(kind) => self.subscribed(conn, account_id, kind).await?,
                None => false,
            };
        Ok(wanted.then_some((account_id, order_key)))
    }

    /// Whether a webhook of `account_id` subscribes to new messages.
    pub(crate) async fn wants_messages(
        &self,
        conn: &impl ConnectionTrait,
        account_id: i64,
    ) -> Result<bool, DbErr> {
        self.subscribed(conn, account_id, "message.created").await
    }

    /// Whether a webhook of `account_id` subscribes to `kind`.
    async fn subscribed(
        &self,
        conn: &impl ConnectionTrait,
        account_id: i64,
        kind: &str,
    ) -> Result<bool, DbErr> {
        let Some(bit) = kind_bit(kind) else {
            return Ok(false);
        };
        let hooks = self.subscriptions(conn, account_id).await?;
        Ok(hooks.iter().any(|hook| hook.kinds & bit != 0))
    }

    /// Whether this process sends e-mail.
    pub(crate) fn email_on(&self) -> bool {
        self.email_on
    }

    /// The webhooks of `account_id` changed: forget what was cached about them.
    pub fn subscriptions_changed(&self, account_id: i64) {
        self.cache.invalidate(&account_id);
    }

    /// The account's active subscriptions, from the cache or the database.
    pub(crate) async fn subscriptions(
        &self,
        conn: &impl ConnectionTrait,
        account_id: i64,
    ) -> Result<Arc<[Subscription]>, DbErr> {
        if let Some(hooks) = self.cache.get(&account_id) {
            return Ok(hooks);
        }
        let rows = webhooks::Entity::find()
            .filter(webhooks::Column::AccountId.eq(account_id))
            .filter(webhooks::Column::DeletedAt.is_null())
            .filter(webhooks::Column::Active.eq(true))
            .all(conn)
            .await?;
        let hooks: Arc<[Subscription]> = rows
            .into_iter()
            .map(|row| Subscription {
                id: row.id,
                kinds: subscription_mask(&row.events),
            })
            .collect();
        self.cache.insert(account_id, hooks.clone());
        Ok(hooks)
    }
}

/// A fresh outbox key: a ULID, strictly increasing within this process, so that the outcomes of
/// one change (staged in the same millisecond) keep their order when the sweep reads them.
fn next_key() -> String {
    static KEYS: std::sync::LazyLock<std::sync::Mutex<ulid::Generator>> =
        std::sync::LazyLock::new(|| std::sync::Mutex::new(ulid::Generator::new()));
    let next = KEYS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .generate();
    next.unwrap_or_else(|_| ulid::Ulid::new()).to_string()
}

/// Outcomes that may send an e-mail (see [`crate::delivery::fanout`]).
fn emails_may_follow(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::ConversationAssigned { .. }
            | Outcome::ConversationClosed { .. }
            | Outcome::SlaBreached { .. }
    )
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

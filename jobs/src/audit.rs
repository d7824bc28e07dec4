//! Record audit: the trail of who changed what in an account's setup (agents, groups, tags).
//!
//! Submitted by the HTTP layer after each administrative write. The row is keyed by an idempotency
//! key chosen at submission, so a redelivered task inserts nothing the second time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::audit_log;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, sea_query::OnConflict};
use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError, RetryBudget};

/// What happened, `noun.verb`. The string ([`AuditAction::as_str`]) is what `audit_log.action`
/// stores and what admins filter the trail by: it never changes. Its noun is the subject's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// `account.created` (by an operator)
    AccountCreated,
    /// `agent.created`
    AgentCreated,
    /// `agent.updated`
    AgentUpdated,
    /// `agent.deleted`
    AgentDeleted,
    /// `agent.restored`
    AgentRestored,
    /// `agent.counter_repaired`
    AgentCounterRepaired,
    /// `group.created`
    GroupCreated,
    /// `group.updated`
    GroupUpdated,
    /// `group.deleted`
    GroupDeleted,
    /// `group.restored`
    GroupRestored,
    /// `group.member_added`
    GroupMemberAdded,
    /// `group.member_removed`
    GroupMemberRemoved,
    /// `tag.created`
    TagCreated,
    /// `tag.updated`
    TagUpdated,
    /// `tag.deleted`
    TagDeleted,
    /// `tag.restored`
    TagRestored,
    /// `webhook.created`
    WebhookCreated,
    /// `webhook.updated`
    WebhookUpdated,
    /// `webhook.deleted`
    WebhookDeleted,
    /// `webhook.restored`
    WebhookRestored,
}

impl AuditAction {
    /// The stored form, `noun.verb`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::AccountCreated => "account.created",
            AuditAction::AgentCreated => "agent.created",
            AuditAction::AgentUpdated => "agent.updated",
            AuditAction::AgentDeleted => "agent.deleted",
            AuditAction::AgentRestored => "agent.restored",
            AuditAction::AgentCounterRepaired => "agent.counter_repaired",
            AuditAction::GroupCreated => "group.created",
            AuditAction::GroupUpdated => "group.updated",
            AuditAction::GroupDeleted => "group.deleted",
            AuditAction::GroupRestored => "group.restored",
            AuditAction::GroupMemberAdded => "group.member_added",
            AuditAction::GroupMemberRemoved => "group.member_removed",
            AuditAction::TagCreated => "tag.created",
            AuditAction::TagUpdated => "tag.updated",
            AuditAction::TagDeleted => "tag.deleted",
            AuditAction::TagRestored => "tag.restored",
            AuditAction::WebhookCreated => "webhook.created",
            AuditAction::WebhookUpdated => "webhook.updated",
            AuditAction::WebhookDeleted => "webhook.deleted",
            AuditAction::WebhookRestored => "webhook.restored",
        }
    }

    /// The kind of row the action changes (`account`, `agent`, `group`, `tag`, `webhook`): its
    /// noun.
    pub fn subject(self) -> &'static str {
        let action = self.as_str();
        action.split_once('.').map_or(action, |(noun, _)| noun)
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One administrative change to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordAudit {
    /// Unique per change (a ULID made at submission); repeats are ignored.
    pub idempotency_key: String,
    /// The account the change belongs to.
    pub account_id: i64,
    /// Who made it; `None` for the system (bootstrap, scheduler).
    pub actor_agent_id: Option<i64>,
    /// What happened, `noun.verb`: `agent.created`, `group.deleted`, ...
    pub action: String,
    /// The kind of row changed: `agent`, `group`, `tag`.
    pub subject_type: String,
    /// The id of the row changed.
    pub subject_id: Option<i64>,
    /// Extra facts (changed fields, never secrets).
    pub details: serde_json::Value,
    /// When the change was made (not when the job ran).
    pub occurred_at: DateTime<Utc>,
}

impl RecordAudit {
    /// A record of `action` on its subject `subject_id`, with a fresh idempotency key.
    pub fn of(
        account_id: i64,
        actor_agent_id: Option<i64>,
        action: AuditAction,
        subject_id: Option<i64>,
        details: serde_json::Value,
    ) -> Self {
        Self::new(
            account_id,
            actor_agent_id,
            action.as_str(),
            action.subject(),
            subject_id,
            details,
        )
    }

    /// A record for `action` on `subject_type` `subject_id`, with a fresh idempotency key.
    pub fn new(
        account_id: i64,
        actor_agent_id: Option<i64>,
        action: &str,
        subject_type: &str,
        subject_id: Option<i64>,
        details: serde_json::Value,
    ) -> Self {
        Self {
            idempotency_key: ulid::Ulid::new().to_string(),
            account_id,
            actor_agent_id,
            action: action.to_owned(),
            subject_type: subject_type.to_owned(),
            subject_id,
            details,
            occurred_at: Utc::now(),
        }
    }
}

impl Job for RecordAudit {
    const QUEUE: &'static str = "record-audit";
    // An audit row is cheap and only the database can fail it: a few quick in-process retries ride
    // out a busy SQLite file or a PostgreSQL failover; five deliveries in all, then operators see it.
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 2,
        deliveries: 5,
        backoff_min: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    };

    #[tracing::instrument(name = "job.record_audit", skip_all, fields(action = %self.action, key = %self.idempotency_key), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let action = self.action.clone();
        Ok(if self.write(&ctx.db).await? {
            format!("{action} recorded")
        } else {
            format!("{action} already recorded")
        })
    }
}

impl RecordAudit {
    /// Writes the row, once: `false` when its idempotency key was already recorded. The job
    /// does this; so do one-shot commands, which have no workers to submit to.
    pub async fn write(self, db: &impl ConnectionTrait) -> Result<bool, DbErr> {
        let row = audit_log::ActiveModel {
            account_id: Set(self.account_id),
            actor_agent_id: Set(self.actor_agent_id),
            action: Set(self.action),
            subject_type: Set(self.subject_type),
            subject_id: Set(self.subject_id),
            details: Set(self.details),
            idempotency_key: Set(self.idempotency_key),
            created_at: Set(self.occurred_at),
            ..Default::default()
        };
        let inserted = audit_log::Entity::insert(row)
            .on_conflict(
                OnConflict::column(audit_log::Column::IdempotencyKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        Ok(inserted > 0)
    }
}

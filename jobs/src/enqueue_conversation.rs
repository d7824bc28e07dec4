//! Enqueue conversation: a pending conversation takes (or keeps) its place in its group's line,
//! says where it stands, and an assignment is attempted.
//!
//! Submitted when a widget session starts, on transfer to a group, on reopen. Idempotent: the
//! place (`queued_at`) is set only when missing, and the system event is keyed by `key`.

use std::time::Duration;

use chrono::Utc;
use entity::{conversations, enums::ConversationStatus, groups};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    Job, JobContext, JobError, RetryBudget,
    assign_agent::request_assign,
    conversation::{queue_position, system_event},
    notify::Outcome,
};

/// Puts one conversation in line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnqueueConversation {
    /// The conversation.
    pub conversation_id: i64,
    /// Unique per submission (a ULID): the "queued" event of this enqueue is written once.
    pub key: String,
}

impl EnqueueConversation {
    /// An enqueue of `conversation_id` with a fresh key.
    pub fn new(conversation_id: i64) -> Self {
        Self {
            conversation_id,
            key: ulid::Ulid::new().to_string(),
        }
    }
}

impl Job for EnqueueConversation {
    const QUEUE: &'static str = "enqueue-conversation";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
    };

    #[tracing::instrument(name = "job.enqueue_conversation", skip_all, fields(conversation_id = self.conversation_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let Some(conversation) = conversations::Entity::find_by_id(self.conversation_id)
            .one(&ctx.db)
            .await?
        else {
            return Err(JobError::Permanent(format!(
                "no conversation {}",
                self.conversation_id
            )));
        };
        if conversation.status != ConversationStatus::Pending {
            return Ok(format!(
                "conversation is {:?}, nothing to enqueue",
                conversation.status
            ));
        }
        if conversation.queued_at.is_none() {
            conversations::Entity::update_many()
                .col_expr(
                    conversations::Column::QueuedAt,
                    Expr::value(Some(Utc::now())),
                )
                .filter(conversations::Column::Id.eq(conversation.id))
                .filter(conversations::Column::QueuedAt.is_null())
                .exec(&ctx.db)
                .await?;
        }
        let conversation = conversations::Entity::find_by_id(conversation.id)
            .one(&ctx.db)
            .await?
            .ok_or_else(|| JobError::Transient("conversation vanished".into()))?;
        let group_name = groups::Entity::find_by_id(conversation.group_id)
            .one(&ctx.db)
            .await?
            .map_or_else(|| "its group".to_owned(), |g| g.name);
        let position = queue_position(&ctx.db, &conversation).await?;
        system_event(
            &ctx.db,
            &conversation,
            format!("Queued at position {position} in {group_name}"),
            json!({ "action": "queued", "position": position, "groupId": conversation.group_id }),
            Some(format!("enqueue:{}", self.key)),
        )
        .await?;
        ctx.notifier.notify(Outcome::ConversationQueued {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            group_id: conversation.group_id,
            visitor_id: conversation.visitor_id,
            position,
        });
        ctx.notifier.notify(Outcome::QueueChanged {
            account_id: conversation.account_id,
            group_id: conversation.group_id,
        });
        request_assign(ctx, conversation.account_id, conversation.group_id).await?;
        Ok(format!("queued at position {position}"))
    }
}

//! Reassign: an active conversation leaves its agent and goes back to the head of the line (its
//! original place), that agent excluded — on transfer to a group, when the agent goes offline, or
//! when it did not reply in time.
//!
//! Idempotent: it acts only while the conversation is still active with `from_agent_id`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryBudget,
    assign_agent::request_assign,
    close_conversation::serve_groups_of,
    conversation::{Requeued, queue_position, requeue},
    db::begin_write,
    notify::Outcome,
};

/// Takes one conversation from an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReassignConversation {
    /// The conversation.
    pub conversation_id: i64,
    /// The agent it must be taken from.
    pub from_agent_id: i64,
    /// `transferred`, `agent_offline` or `no_response`.
    pub reason: String,
    /// Move it to this group (a transfer to a department); `None` keeps its group.
    pub to_group_id: Option<i64>,
    /// What the "reassigned" system event says instead of the reason's usual words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The intent an acknowledged request left (a transfer; see `intent`): the reassignment acts
    /// only if it is still there, and consumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<i64>,
}

impl crate::intent::Intended for ReassignConversation {
    fn with_intent(self, id: i64) -> Self {
        Self {
            intent: Some(id),
            ..self
        }
    }
}

impl Job for ReassignConversation {
    const QUEUE: &'static str = "reassign-conversation";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
    };

    #[tracing::instrument(name = "job.reassign_conversation", skip_all, fields(conversation_id = self.conversation_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let txn = begin_write(&ctx.db).await?;
        if !crate::intent::take(&txn, self.intent).await? {
            let agent = Some(self.from_agent_id);
            crate::intent::resync_after_done(ctx, self.conversation_id, agent).await?;
            return Ok("already done (its intent is gone)".into());
        }
        let requeued = requeue(
            &txn,
            self.conversation_id,
            self.from_agent_id,
            &self.reason,
            self.to_group_id,
            self.detail.as_deref(),
        )
        .await?;
        txn.commit().await?;
        let Some(requeued) = requeued else {
            return Ok("no longer active with that agent".into());
        };
        let position = after_requeue(ctx, &requeued, &self.reason).await?;
        Ok(format!("requeued at position {position}"))
    }
}

/// What follows a committed requeue: clients hear it, the line is served again, and so are the
/// released agent's other groups. Returns the conversation's place in line.
pub async fn after_requeue(
    ctx: &JobContext,
    requeued: &Requeued,
    reason: &str,
) -> Result<u64, JobError> {
    let conversation = &requeued.conversation;
    ctx.notifier.notify(Outcome::ConversationUnassigned {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        group_id: conversation.group_id,
        agent_id: requeued.agent_id,
        reason: reason.to_owned(),
    });
    let position = queue_position(&ctx.db, conversation).await?;
    ctx.notifier.notify(Outcome::ConversationQueued {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        group_id: conversation.group_id,
        visitor_id: conversation.visitor_id,
        position,
    });
    request_assign(ctx, conversation.account_id, conversation.group_id).await?;
    serve_groups_of(ctx, conversation.account_id, requeued.agent_id).await?;
    Ok(position)
}

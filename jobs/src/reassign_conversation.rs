//! Reassign: an active conversation leaves its agent and goes back to the head of the line (its
//! original place), that agent excluded — on transfer to a group, when the agent goes offline, or
//! when it did not reply in time.
//!
//! Idempotent: it acts only while the conversation is still active with `from_agent_id`.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbErr};
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryBudget,
    assign_agent::request_assign,
    close_conversation::serve_groups_of,
    conversation::{ReleaseReason, Requeued, lock_agents, queue_position, requeue},
    db::begin_write,
    notify::Outcome,
    outbox::Staged,
};

/// Takes one conversation from an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReassignConversation {
    /// The conversation.
    pub conversation_id: i64,
    /// The agent it must be taken from.
    pub from_agent_id: i64,
    /// Why: `transferred`, `agent_offline` or `no_response` in the stored args.
    pub reason: ReleaseReason,
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
        // The agent's row before the conversation's, the order a close and a claim take them
        // (`docs/architecture.md`, "Locking"): taken the other way round, a close of the same chat
        // at the same moment could deadlock with this requeue on PostgreSQL.
        lock_agents(&txn, vec![self.from_agent_id]).await?;
        let requeued = requeue(
            &txn,
            self.conversation_id,
            self.from_agent_id,
            self.reason,
            self.to_group_id,
            self.detail.as_deref(),
        )
        .await?;
        let Some(requeued) = requeued else {
            txn.commit().await?;
            return Ok("no longer active with that agent".into());
        };
        let (outcomes, position) = requeue_outcomes(&txn, &requeued, self.reason).await?;
        let staged = ctx.outbox.stage(&txn, outcomes).await?;
        txn.commit().await?;
        after_requeue(ctx, &requeued, staged).await?;
        Ok(format!("requeued at position {position}"))
    }
}

/// What a requeue tells, read in its transaction: the agent lost the conversation, and it waits
/// again at its place in line (returned too).
pub async fn requeue_outcomes(
    txn: &impl ConnectionTrait,
    requeued: &Requeued,
    reason: ReleaseReason,
) -> Result<(Vec<Outcome>, u64), DbErr> {
    let conversation = &requeued.conversation;
    let position = queue_position(txn, conversation).await?;
    let outcomes = vec![
        Outcome::unassigned(conversation, requeued.agent_id, reason),
        Outcome::queued(conversation, position),
    ];
    Ok((outcomes, position))
}

/// What follows a committed requeue: clients hear what it staged, the line is served again, and
/// so are the released agent's other groups.
pub async fn after_requeue(
    ctx: &JobContext,
    requeued: &Requeued,
    staged: Staged,
) -> Result<(), JobError> {
    let conversation = &requeued.conversation;
    ctx.tell(staged);
    request_assign(ctx, conversation.account_id, conversation.group_id).await?;
    serve_groups_of(ctx, conversation.account_id, requeued.agent_id).await?;
    Ok(())
}

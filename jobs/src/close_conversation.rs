//! Close thread: an agent resolves a conversation, the visitor ends it, or the system closes it
//! (idle). The agent's capacity comes back and its groups' lines are served again.
//!
//! Idempotent: closing a conversation that is already resolved or closed changes nothing; a retry
//! after the close committed only repeats the follow-up submissions, which are no-ops when nothing
//! waits.

use std::time::Duration;

use entity::enums::ClosedBy;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr};
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryBudget,
    assign_agent::request_assign,
    conversation::{Closed, Closing, groups_of_agent},
    notify::Outcome,
    outbox::{Outbox, Staged},
};

/// Closes one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseConversation {
    /// The conversation.
    pub conversation_id: i64,
    /// Who closes it: an agent resolves it; the visitor or the system closes it.
    pub closed_by: ClosedBy,
    /// Why, in a few words (`resolved`, `visitor_left`, `visitor_idle`).
    pub reason: String,
    /// The intent an acknowledged request left (see `intent`); the close acts only if it is still
    /// there, and consumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<i64>,
}

impl crate::intent::Intended for CloseConversation {
    fn with_intent(self, id: i64) -> Self {
        Self {
            intent: Some(id),
            ..self
        }
    }
}

impl Job for CloseConversation {
    const QUEUE: &'static str = "close-conversation";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
    };

    #[tracing::instrument(name = "job.close_conversation", skip_all, fields(conversation_id = self.conversation_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        // Closes that run at once share one transaction (see `batch`).
        let closing = Closing {
            conversation_id: self.conversation_id,
            closed_by: self.closed_by,
            reason: self.reason.clone(),
            intent: self.intent,
        };
        let Some((closed, staged)) = ctx.batches.closes.run(closing).await? else {
            if self.intent.is_some() {
                crate::intent::resync_after_done(ctx, self.conversation_id, None).await?;
            }
            return Ok("already closed".into());
        };
        after_close(ctx, &closed, staged).await?;
        Ok(format!("{:?}", closed.conversation.status).to_lowercase())
    }
}

/// Closes the conversations of `closing` in `txn` (see [`crate::conversation::close_many`])
/// with what they tell staged, commits, and reads the freed agents' groups. One output per
/// input, `None` where that conversation was already closed. Once committed nothing fails the
/// closes (a run again would find them closed and tell nobody): without the groups, the freed
/// capacity waits for the next request or the reconciler.
pub async fn commit_closes(
    db: &DatabaseConnection,
    outbox: &Outbox,
    txn: DatabaseTransaction,
    closing: &[Closing],
) -> Result<Vec<Option<(Closed, Staged)>>, DbErr> {
    let mut closed = crate::conversation::close_many(&txn, closing).await?;
    let staged = stage_closes(outbox, &txn, closing, &closed).await?;
    txn.commit().await?;
    if let Err(err) = crate::conversation::find_freed_groups(db, &mut closed).await {
        tracing::warn!(%err, "could not read the freed agents' groups");
    }
    Ok(closed
        .into_iter()
        .zip(staged)
        .map(|(closed, staged)| closed.map(|closed| (closed, staged)))
        .collect())
}

/// Stages, in the transaction of the closes of `closing`, what each one that took effect tells
/// (`closed`: one output per input, as [`crate::conversation::close_many`] gives them): the
/// conversation closed (clients, webhooks, e-mail) and its line moved. One [`Staged`] per input.
async fn stage_closes(
    outbox: &Outbox,
    txn: &impl ConnectionTrait,
    closing: &[Closing],
    closed: &[Option<Closed>],
) -> Result<Vec<Staged>, DbErr> {
    let changes = closing
        .iter()
        .zip(closed)
        .map(|(c, closed)| {
            let Some(closed) = closed else {
                return Vec::new();
            };
            let conversation = &closed.conversation;
            vec![
                Outcome::ConversationClosed {
                    account_id: conversation.account_id,
                    conversation_id: conversation.id,
                    visitor_id: conversation.visitor_id,
                    agent_id: closed.released_agent,
                    closed_by: c.closed_by,
                    reason: c.reason.clone(),
                },
                Outcome::QueueChanged {
                    account_id: conversation.account_id,
                    group_id: conversation.group_id,
                },
            ]
        })
        .collect();
    outbox.stage_each(txn, changes).await
}

/// What follows a committed close: clients hear what it staged, and the freed agent's lines are
/// served.
pub async fn after_close(
    ctx: &JobContext,
    closed: &Closed,
    staged: Staged,
) -> Result<(), JobError> {
    let conversation = &closed.conversation;
    ctx.tell(staged);
    for group_id in &closed.freed_groups {
        request_assign(ctx, conversation.account_id, *group_id).await?;
    }
    Ok(())
}

/// Capacity appeared for `agent_id`: serve the lines of every group it belongs to.
pub async fn serve_groups_of(
    ctx: &JobContext,
    account_id: i64,
    agent_id: i64,
) -> Result<(), JobError> {
    for group_id in groups_of_agent(&ctx.db, agent_id).await? {
        request_assign(ctx, account_id, group_id).await?;
    }
    Ok(())
}

//! Claims a person makes and waits for: a supervisor assigns a chat, an agent picks one up from
//! the line, a chat is transferred to another agent. They run in the caller's request, through
//! the assigner's own conditional claim, so the caller learns at once when the agent is full; a
//! transfer releases the chat through the reassigner's own requeue. What follows the commit is
//! what follows theirs: the assignment is announced, the released agent's groups are served.

use entity::conversations;
use sea_orm::DbErr;

use crate::{
    JobContext,
    assign_agent::{announce, assigned_outcomes},
    close_conversation::serve_groups_of,
    conversation::{ClaimError, Pick, ReleaseReason, claim, lock_agents, requeue},
    db::begin_write,
    notify::Outcome,
};

/// What the caller asks for.
#[derive(Debug, Clone)]
pub struct ClaimNow {
    /// The conversation, as the caller saw it.
    pub conversation: conversations::Model,
    /// The agent who takes it.
    pub agent_id: i64,
    /// Why, in words ("picked up from the queue").
    pub why: String,
    /// For a transfer: the agent holding it now, who loses it.
    pub release_from: Option<i64>,
}

/// Why a claim was refused; nothing of it (nor of the release) remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The claim itself: the agent is full or away, or the chat no longer waits.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// A transfer found the chat no longer with the agent it was to be taken from.
    #[error("the conversation changed hands meanwhile")]
    ChangedHands,
}

/// Claims `ask.conversation` for `ask.agent_id` (releasing it from `ask.release_from` first),
/// commits, and tells. Returns the conversation as it is now.
pub async fn claim_now(
    ctx: &JobContext,
    ask: ClaimNow,
) -> Result<Result<conversations::Model, Refused>, DbErr> {
    let conversation = &ask.conversation;
    let txn = begin_write(&ctx.db).await?;
    // Agents first, in id order, as the assigner does: no lock cycle with it.
    lock_agents(
        &txn,
        ask.release_from.into_iter().chain([ask.agent_id]).collect(),
    )
    .await?;
    if let Some(holder) = ask.release_from
        && requeue(
            &txn,
            conversation.id,
            holder,
            ReleaseReason::Transferred,
            None,
            None,
        )
        .await?
        .is_none()
    {
        return Ok(Err(Refused::ChangedHands));
    }
    let pick = Pick {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        agent_id: ask.agent_id,
        why: ask.why,
    };
    // On a refusal the transaction is dropped: nothing of the claim (or the release) remains.
    let done = match claim(&txn, pick).await? {
        Ok(done) => done,
        Err(refused) => return Ok(Err(refused.into())),
    };
    let released = ask
        .release_from
        .map(|holder| Outcome::unassigned(conversation, holder, ReleaseReason::Transferred));
    let told = released.into_iter().chain(assigned_outcomes(&done));
    let staged = ctx.outbox.stage(&txn, told).await?;
    txn.commit().await?;
    announce(ctx, &done, staged);
    if let Some(holder) = ask.release_from
        && let Err(err) = serve_groups_of(ctx, conversation.account_id, holder).await
    {
        tracing::warn!(%err, "could not offer the freed capacity; the reconciler will");
    }
    Ok(Ok(done.conversation))
}

//! The reconciler: repairs what a crash between two steps can leave behind.
//!
//! - An agent whose `active_chats` counter disagrees with its active conversations is corrected
//!   (first, so that the offers below see the true capacity).
//! - A pending conversation whose enqueue or assign job was lost (the process died between the
//!   HTTP write and the job push, or the job storage lost it) is offered again.
//!
//! Both are safe to run at any time, on any number of nodes: they only submit idempotent jobs or
//! write the value the rows dictate. The scheduler runs them periodically.

use entity::{agents, conversations, enums::ConversationStatus};
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, sea_query::Expr,
};

use crate::{
    JobContext, JobError, assign_agent::AssignAgent, enqueue_conversation::EnqueueConversation,
};

/// What one pass repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repairs {
    /// Groups whose waiting line was offered again.
    pub groups_offered: usize,
    /// Pending conversations that had never been put in line.
    pub conversations_enqueued: usize,
    /// Agents whose counter was corrected.
    pub counters_fixed: usize,
}

/// Offers every waiting conversation again and corrects drifted counters.
pub async fn reconcile(ctx: &JobContext) -> Result<Repairs, JobError> {
    let mut repairs = Repairs::default();
    // Counters first: a counter that says "full" would make the offers below assign nothing.
    for agent in agents::Entity::find().all(&ctx.db).await? {
        let actual = conversations::Entity::find()
            .filter(conversations::Column::AssignedAgentId.eq(agent.id))
            .filter(conversations::Column::Status.eq(ConversationStatus::Active))
            .count(&ctx.db)
            .await?;
        let actual = i32::try_from(actual).unwrap_or(i32::MAX);
        if actual != agent.active_chats {
            // Conditional on the value read, so a concurrent claim is never overwritten.
            let fixed = agents::Entity::update_many()
                .col_expr(agents::Column::ActiveChats, Expr::value(actual))
                .filter(agents::Column::Id.eq(agent.id))
                .filter(agents::Column::ActiveChats.eq(agent.active_chats))
                .exec(&ctx.db)
                .await?;
            if fixed.rows_affected == 1 {
                tracing::warn!(
                    agent_id = agent.id,
                    counter = agent.active_chats,
                    actual,
                    "repaired an agent's chat counter"
                );
                repairs.counters_fixed += 1;
            }
        }
    }
    let unqueued: Vec<i64> = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .filter(conversations::Column::QueuedAt.is_null())
        .into_tuple()
        .all(&ctx.db)
        .await?;
    for conversation_id in unqueued {
        submit(ctx, EnqueueConversation::new(conversation_id)).await?;
        repairs.conversations_enqueued += 1;
    }
    let waiting: Vec<(i64, i64)> = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::AccountId)
        .column(conversations::Column::GroupId)
        .distinct()
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .into_tuple()
        .all(&ctx.db)
        .await?;
    for (account_id, group_id) in waiting {
        submit(ctx, AssignAgent::new(account_id, group_id)).await?;
        repairs.groups_offered += 1;
    }
    Ok(repairs)
}

async fn submit<J: crate::Job>(ctx: &JobContext, job: J) -> Result<(), JobError> {
    ctx.jobs
        .submit(job)
        .await
        .map_err(|err| JobError::Transient(err.to_string()))
}

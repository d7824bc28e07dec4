//! The reconciler: repairs what a crash between two steps can leave behind.
//!
//! - An agent whose `active_chats` counter disagrees with its active conversations is corrected
//!   (first, so that the offers below see the true capacity).
//! - A pending conversation whose enqueue or assign job was lost (the process died between the
//!   HTTP write and the job push, or the job storage lost it) is offered again.
//!
//! - An active conversation held by an offline or deleted agent goes back to the line.
//! - A waiting or active conversation left in a deleted group moves to its account's default
//!   group (a delete refuses groups with live chats, so only a chat that slipped past that check
//!   is found here).
//! - An agent that looks connected but that no API node vouches for any more (its node crashed)
//!   is treated as dropped: the presence job takes it offline.
//!
//! All are safe to run at any time, on any number of nodes: they only submit idempotent jobs or
//! write the value the rows dictate. Every worker process runs a pass periodically (see
//! `scheduler`). Each repair says what it did: a system event in the conversation it concerns, or
//! an audit record (actor: the system) for an agent's counter.

use entity::{
    agents, conversations,
    enums::{AgentStatus, ConversationStatus},
    groups,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, JoinType, QueryFilter, QuerySelect,
    RelationTrait, Statement, sea_query::Expr,
};

use serde_json::json;

use crate::{
    JobContext, JobError,
    assign_agent::AssignAgent,
    audit::{AuditAction, RecordAudit},
    conversation::{ReleaseReason, system_event},
    enqueue_conversation::EnqueueConversation,
    reassign_conversation::ReassignConversation,
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
    /// Active conversations taken back from offline or deleted agents.
    pub conversations_released: usize,
    /// Agents that looked connected but whose node stopped vouching for them.
    pub agents_dropped: usize,
    /// Conversations moved out of a deleted group into their account's default group.
    pub conversations_rehomed: usize,
}

/// What one fast pass recovered (see [`recover`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Acknowledged requests whose job was resubmitted (see `intent`).
    pub intents: usize,
    /// Agents taken offline whose presence job never ran.
    pub drops: usize,
}

/// The repairs that must not wait for the reconciler, run with every sweep (seconds apart): what
/// a lost job storage (Redis restarted empty, a worker killed mid-task) leaves behind.
/// - Intents that fell due: the job of an acknowledged close, end or transfer is resubmitted.
/// - Drops past their grace with no presence job: the agent goes offline, its chats back to the
///   line.
/// - Every waiting line is asked to be served. Requests coalesce (see `assign_agent`): a line
///   whose assigner is on its way costs one conditional update, any other one assigner run (a
///   cheap no-op when no agent is free), and a request whose job was lost is replaced once its
///   mark has expired.
pub async fn recover(ctx: &JobContext) -> Result<Recovered, JobError> {
    let intents = crate::intent::resubmit_due(ctx).await?;
    let drops = crate::agent_presence::reclaim_lapsed(ctx, ctx.presence_stale).await?;
    for (account_id, group_id) in waiting_groups(ctx, true).await? {
        crate::assign_agent::request_assign(ctx, account_id, group_id).await?;
    }
    Ok(Recovered { intents, drops })
}

/// The groups with conversations waiting, and their accounts: those in line (`in_line`: read
/// through the line's partial index, for the sweep's frequent pass), or any pending one (the
/// reconciler's, which also finds those never put in line).
async fn waiting_groups(ctx: &JobContext, in_line: bool) -> Result<Vec<(i64, i64)>, JobError> {
    let mut query = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::AccountId)
        .column(conversations::Column::GroupId)
        .distinct()
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending));
    if in_line {
        query = query.filter(conversations::Column::QueuedAt.is_not_null());
    }
    Ok(query.into_tuple().all(&ctx.db).await?)
}

/// Agents whose counter disagrees with their active conversations.
const COUNTER_DRIFT: &str = "SELECT id, account_id, active_chats FROM agents WHERE active_chats <> \
    (SELECT COUNT(*) FROM conversations c WHERE c.assigned_agent_id = agents.id AND c.status = 'active')";

/// Sets one agent's counter to the number of its active conversations, if it differs.
const COUNTER_FIX: &str = "UPDATE agents SET active_chats = \
    (SELECT COUNT(*) FROM conversations c WHERE c.assigned_agent_id = agents.id AND c.status = 'active') \
    WHERE id = ? AND active_chats <> \
    (SELECT COUNT(*) FROM conversations c WHERE c.assigned_agent_id = agents.id AND c.status = 'active')";

/// Offers every waiting conversation again and corrects drifted counters.
pub async fn reconcile(ctx: &JobContext) -> Result<Repairs, JobError> {
    // Counters first: a counter that says "full" would make the offers below assign nothing.
    let counters_fixed = repair_counters(ctx).await?;
    // Agents whose node died with their sockets: their drop was never recorded.
    let agents_dropped = crate::agent_presence::reclaim_silent(ctx, ctx.presence_stale).await?;
    // Chats held by an agent who can no longer answer them (offline or deleted, and the
    // hand-over was lost) go back to the line.
    let conversations_released = release_stranded(ctx).await?;
    let conversations_enqueued = enqueue_unqueued(ctx).await?;
    let conversations_rehomed = rehome(ctx).await?;
    let groups_offered = offer_waiting(ctx).await?;
    Ok(Repairs {
        counters_fixed,
        agents_dropped,
        conversations_released,
        conversations_enqueued,
        conversations_rehomed,
        groups_offered,
    })
}

/// Sets every drifted agent counter to the count of its active conversations, each audited.
/// Returns how many were fixed.
async fn repair_counters(ctx: &JobContext) -> Result<usize, JobError> {
    let mut fixed_count = 0;
    // Find drifted counters with one read (no locks: a counter and its rows change in the same
    // transaction, so committed data never disagrees unless something went wrong), then fix each
    // with one statement, so a claim or close committing meanwhile is never overwritten.
    let backend = ctx.db.get_database_backend();
    let drifted = ctx
        .db
        .query_all_raw(Statement::from_string(backend, COUNTER_DRIFT))
        .await?;
    for row in drifted {
        let agent_id: i64 = row.try_get_by_index(0)?;
        let account_id: i64 = row.try_get_by_index(1)?;
        let counted: i32 = row.try_get_by_index(2)?;
        let fixed = ctx
            .db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                COUNTER_FIX.replace(
                    '?',
                    match backend {
                        sea_orm::DatabaseBackend::Postgres => "$1",
                        _ => "?",
                    },
                ),
                [agent_id.into()],
            ))
            .await?;
        if fixed.rows_affected() == 1 {
            tracing::warn!(agent_id, "repaired an agent's chat counter");
            fixed_count += 1;
            submit(
                ctx,
                RecordAudit::of(
                    account_id,
                    None,
                    AuditAction::AgentCounterRepaired,
                    Some(agent_id),
                    json!({ "counted": counted, "reason": "the counter disagreed with the agent's active conversations" }),
                ),
            )
            .await?;
        }
    }
    Ok(fixed_count)
}

/// Submits a reassignment for every active chat held by an offline or deleted agent. Returns how
/// many.
async fn release_stranded(ctx: &JobContext) -> Result<usize, JobError> {
    let stranded: Vec<(i64, i64)> = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .column(conversations::Column::AssignedAgentId)
        .join(
            JoinType::InnerJoin,
            conversations::Relation::AssignedAgent.def(),
        )
        .filter(conversations::Column::Status.eq(ConversationStatus::Active))
        .filter(
            Condition::any()
                .add(agents::Column::DeletedAt.is_not_null())
                .add(agents::Column::Status.eq(AgentStatus::Offline)),
        )
        .into_tuple()
        .all(&ctx.db)
        .await?;
    let released = stranded.len();
    for (conversation_id, agent_id) in stranded {
        submit(
            ctx,
            ReassignConversation {
                conversation_id,
                from_agent_id: agent_id,
                reason: ReleaseReason::AgentOffline,
                to_group_id: None,
                detail: Some("repaired: its agent was offline or deleted and still held it".into()),
                intent: None,
            },
        )
        .await?;
    }
    Ok(released)
}

/// Puts in line the pending chats never put there (their enqueue was lost), each with a
/// "Repaired" event. Returns how many.
async fn enqueue_unqueued(ctx: &JobContext) -> Result<usize, JobError> {
    let unqueued: Vec<i64> = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .filter(conversations::Column::QueuedAt.is_null())
        .into_tuple()
        .all(&ctx.db)
        .await?;
    let enqueued = unqueued.len();
    for conversation_id in unqueued {
        if let Some(conversation) = conversations::Entity::find_by_id(conversation_id)
            .one(&ctx.db)
            .await?
        {
            system_event(
                &ctx.db,
                &conversation,
                "Repaired: it was never put in line (its enqueue was lost); queued it now".into(),
                json!({ "action": "repaired", "repair": "enqueued" }),
                "repaired:enqueued",
            )
            .await?;
        }
        submit(ctx, EnqueueConversation::new(conversation_id)).await?;
    }
    Ok(enqueued)
}

/// Requests an assignment for every group with a waiting chat. Returns how many groups.
async fn offer_waiting(ctx: &JobContext) -> Result<usize, JobError> {
    let mut offered = 0;
    for (account_id, group_id) in waiting_groups(ctx, false).await? {
        submit(ctx, AssignAgent::new(account_id, group_id)).await?;
        offered += 1;
    }
    Ok(offered)
}

/// Moves the waiting and active conversations of deleted groups to their account's default
/// group, each with a system event; waiting ones keep their place (`queued_at`), active ones
/// their agent. Returns how many moved.
async fn rehome(ctx: &JobContext) -> Result<usize, JobError> {
    let stranded = conversations::Entity::find()
        .find_also_related(groups::Entity)
        .filter(
            conversations::Column::Status
                .is_in([ConversationStatus::Pending, ConversationStatus::Active]),
        )
        .filter(groups::Column::DeletedAt.is_not_null())
        .all(&ctx.db)
        .await?;
    let mut moved = 0;
    for (conversation, from) in stranded {
        let Some(from) = from else { continue };
        let Some(to) = groups::Entity::find()
            .filter(groups::Column::AccountId.eq(conversation.account_id))
            .filter(groups::Column::IsDefault.eq(true))
            .filter(groups::Column::DeletedAt.is_null())
            .one(&ctx.db)
            .await?
        else {
            tracing::warn!(
                account_id = conversation.account_id,
                "a chat in a deleted group, and no default group to move it to"
            );
            continue;
        };
        let txn = crate::db::begin_write(&ctx.db).await?;
        let Some(now) = conversations::Entity::update_many()
            .col_expr(conversations::Column::GroupId, Expr::value(to.id))
            .col_expr(
                conversations::Column::UpdatedAt,
                Expr::value(chrono::Utc::now()),
            )
            .filter(conversations::Column::Id.eq(conversation.id))
            .filter(conversations::Column::GroupId.eq(from.id))
            .filter(
                conversations::Column::Status
                    .is_in([ConversationStatus::Pending, ConversationStatus::Active]),
            )
            .exec_with_returning(&txn)
            .await?
            .pop()
        else {
            txn.rollback().await?;
            continue;
        };
        system_event(
            &txn,
            &now,
            format!("Moved to {}: its group {} was deleted", to.name, from.name),
            json!({ "action": "moved", "reason": "group_deleted", "fromGroupId": from.id, "toGroupId": to.id }),
            &format!("rehomed:{}", from.id),
        )
        .await?;
        txn.commit().await?;
        for group_id in [from.id, to.id] {
            ctx.notifier.notify(crate::notify::Outcome::QueueChanged {
                account_id: now.account_id,
                group_id,
            });
        }
        tracing::warn!(
            conversation_id = now.id,
            from = from.id,
            to = to.id,
            "moved a chat out of a deleted group"
        );
        moved += 1;
    }
    Ok(moved)
}

async fn submit<J: crate::Job>(ctx: &JobContext, job: J) -> Result<(), JobError> {
    ctx.jobs
        .submit(job)
        .await
        .map_err(|err| JobError::Transient(err.to_string()))
}

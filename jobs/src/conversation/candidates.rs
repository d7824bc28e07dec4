//! Who may take which conversation: a line's free agents, the agents excluded from a conversation,
//! a visitor's previous agent, an agent's groups.

use std::collections::HashMap;

use entity::{agent_groups, agents, assignments, conversations, enums::AgentStatus, groups};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait,
    sea_query::{Expr, ExprTrait, LockType},
};

use super::release::ReleaseReason;
use crate::routing::Candidate;

/// Agents of the group who may take a conversation now (online, accepting, not deleted, under
/// capacity), read for a change: on PostgreSQL their rows are locked, in id order (the order
/// every transaction that touches several agents uses), so nobody else changes their capacity
/// until the transaction ends. Agents whose rows another transaction holds right now (a close
/// giving their capacity back) are skipped rather than waited for: that close asks for the line
/// to be served again once it commits, so the assigner never queues behind closes.
pub async fn lock_candidates(
    txn: &impl ConnectionTrait,
    group_id: i64,
) -> Result<Vec<Candidate>, DbErr> {
    use sea_orm::sea_query::LockBehavior;
    let mut query = eligible(group_id).order_by_asc(agents::Column::Id);
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        QuerySelect::query(&mut query).lock_with_tables_behavior(
            LockType::NoKeyUpdate,
            [agents::Entity],
            LockBehavior::SkipLocked,
        );
    }
    Ok(query
        .all(txn)
        .await?
        .into_iter()
        .map(Candidate::from)
        .collect())
}

fn eligible(group_id: i64) -> sea_orm::Select<agents::Entity> {
    agents::Entity::find()
        .join(JoinType::InnerJoin, agents::Relation::AgentGroups.def())
        .filter(agent_groups::Column::GroupId.eq(group_id))
        .filter(agents::Column::DeletedAt.is_null())
        .filter(agents::Column::Status.eq(AgentStatus::Online))
        .filter(agents::Column::AcceptingChats.eq(true))
        .filter(
            Expr::col((agents::Entity, agents::Column::ActiveChats)).lt(Expr::col((
                agents::Entity,
                agents::Column::MaxConcurrentChats,
            ))),
        )
}

impl From<agents::Model> for Candidate {
    fn from(agent: agents::Model) -> Self {
        Self {
            id: agent.id,
            active_chats: agent.active_chats,
            max_concurrent_chats: agent.max_concurrent_chats,
            last_assigned_at: agent.last_assigned_at,
        }
    }
}

/// Agents who must not be offered each of `conversation_ids` again (they transferred it, went
/// offline with it or did not answer it), in one query.
pub async fn excluded_agents_of(
    db: &impl ConnectionTrait,
    conversation_ids: &[i64],
) -> Result<HashMap<i64, Vec<i64>>, DbErr> {
    let rows: Vec<(i64, i64)> = assignments::Entity::find()
        .select_only()
        .column(assignments::Column::ConversationId)
        .column(assignments::Column::AgentId)
        .filter(assignments::Column::ConversationId.is_in(conversation_ids.iter().copied()))
        .filter(
            assignments::Column::ReleaseReason
                .is_in(ReleaseReason::EXCLUDING.map(ReleaseReason::as_str)),
        )
        .into_tuple()
        .all(db)
        .await?;
    let mut excluded: HashMap<i64, Vec<i64>> = Default::default();
    for (conversation, agent) in rows {
        excluded.entry(conversation).or_default().push(agent);
    }
    Ok(excluded)
}

/// The agent who last served each of `visitor_ids`, in this conversation or an earlier one (for
/// sticky routing; an agent excluded for the conversation is filtered out by the caller).
pub async fn previous_agents(
    db: &impl ConnectionTrait,
    visitor_ids: &[i64],
) -> Result<HashMap<i64, i64>, DbErr> {
    let rows: Vec<(i64, i64)> = assignments::Entity::find()
        .select_only()
        .column(conversations::Column::VisitorId)
        .column(assignments::Column::AgentId)
        .join(
            JoinType::InnerJoin,
            assignments::Relation::Conversation.def(),
        )
        .filter(conversations::Column::VisitorId.is_in(visitor_ids.iter().copied()))
        .order_by_desc(assignments::Column::AssignedAt)
        .order_by_desc(assignments::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let mut latest = HashMap::new();
    for (visitor, agent) in rows {
        latest.entry(visitor).or_insert(agent);
    }
    Ok(latest)
}

/// Ids of the live groups an agent belongs to.
pub async fn groups_of_agent(db: &impl ConnectionTrait, agent_id: i64) -> Result<Vec<i64>, DbErr> {
    Ok(groups_of_agents(db, [agent_id])
        .await?
        .remove(&agent_id)
        .unwrap_or_default())
}

/// [`groups_of_agent`] of several agents in one query (agents in no group are left out).
pub async fn groups_of_agents(
    db: &impl ConnectionTrait,
    agent_ids: impl IntoIterator<Item = i64>,
) -> Result<HashMap<i64, Vec<i64>>, DbErr> {
    let mut agent_ids: Vec<i64> = agent_ids.into_iter().collect();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    if agent_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(i64, i64)> = agent_groups::Entity::find()
        .select_only()
        .column(agent_groups::Column::AgentId)
        .column(agent_groups::Column::GroupId)
        .join(JoinType::InnerJoin, agent_groups::Relation::Group.def())
        .filter(agent_groups::Column::AgentId.is_in(agent_ids))
        .filter(groups::Column::DeletedAt.is_null())
        .order_by_asc(agent_groups::Column::GroupId)
        .into_tuple()
        .all(db)
        .await?;
    let mut groups: HashMap<i64, Vec<i64>> = Default::default();
    for (agent, group) in rows {
        groups.entry(agent).or_default().push(group);
    }
    Ok(groups)
}

//! Who may see and act on what. Everything is scoped to the caller's account; what the caller may
//! not see answers 404, as if it did not exist.
//!
//! Visibility: supervisors and admins see every conversation of their account; an agent sees the
//! ones it holds or held, and the pending ones of its groups (to pick up).

use entity::{
    agents, assignments, conversations,
    enums::{AgentRole, ConversationStatus},
    groups, threads,
};
use jobs::conversation::groups_of_agent;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};

use crate::{
    auth::{CurrentAgent, rank},
    error::ApiError,
};

/// Supervisors and admins see (and act on) the whole account.
pub fn is_supervisor(caller: &CurrentAgent) -> bool {
    rank(caller.agent.role) >= rank(AgentRole::Supervisor)
}

/// Conversation `id` if the caller may see it (404 otherwise, as if it did not exist).
pub async fn visible(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    id: i64,
) -> Result<conversations::Model, ApiError> {
    let conversation = conversations::Entity::find_by_id(id)
        .filter(conversations::Column::AccountId.eq(caller.account_id()))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("conversation"))?;
    if is_supervisor(caller) || conversation.assigned_agent_id == Some(caller.id()) {
        return Ok(conversation);
    }
    if conversation.status == ConversationStatus::Pending
        && groups_of_agent(db, caller.id())
            .await?
            .contains(&conversation.group_id)
    {
        return Ok(conversation);
    }
    let held = assignments::Entity::find()
        .filter(assignments::Column::ConversationId.eq(id))
        .filter(assignments::Column::AgentId.eq(caller.id()))
        .count(db)
        .await?;
    if held > 0 {
        return Ok(conversation);
    }
    Err(ApiError::NotFound("conversation"))
}

/// Only the agent holding the conversation, or a supervisor, may act on it.
pub fn require_holder(
    caller: &CurrentAgent,
    conversation: &conversations::Model,
) -> Result<(), ApiError> {
    if is_supervisor(caller) || conversation.assigned_agent_id == Some(caller.id()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Conversation `id`, if the caller may see it and act on it.
pub async fn held(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    id: i64,
) -> Result<conversations::Model, ApiError> {
    let conversation = visible(db, caller, id).await?;
    require_holder(caller, &conversation)?;
    Ok(conversation)
}

/// A live agent of the caller's account (404 otherwise).
pub async fn agent_of_account(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    agent_id: i64,
) -> Result<agents::Model, ApiError> {
    agents::Entity::find_by_id(agent_id)
        .filter(agents::Column::AccountId.eq(caller.account_id()))
        .filter(agents::Column::DeletedAt.is_null())
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("agent"))
}

/// A live group of the caller's account (404 otherwise).
pub async fn group_of_account(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    group_id: i64,
) -> Result<groups::Model, ApiError> {
    groups::Entity::find_by_id(group_id)
        .filter(groups::Column::AccountId.eq(caller.account_id()))
        .filter(groups::Column::DeletedAt.is_null())
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("group"))
}

/// Thread `thread_id` and its conversation, if the caller may see the conversation (404
/// otherwise).
pub async fn thread_of(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    thread_id: i64,
) -> Result<(threads::Model, conversations::Model), ApiError> {
    let thread = threads::Entity::find_by_id(thread_id)
        .filter(threads::Column::AccountId.eq(caller.account_id()))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    let conversation = visible(db, caller, thread.conversation_id)
        .await
        .map_err(|_| ApiError::NotFound("thread"))?;
    Ok((thread, conversation))
}

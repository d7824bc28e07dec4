//! How conversations, agents, events and waiting lines look on the wire, for both faces.

use chrono::{DateTime, Utc};
use entity::{
    agent_groups, agents, conversations,
    enums::{AgentRole, AgentStatus, ConversationStatus, Priority},
};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Serialize;

use crate::error::ApiError;

pub use jobs::messages::EventView;

/// A conversation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub id: i64,
    pub visitor_id: i64,
    pub group_id: i64,
    pub assigned_agent_id: Option<i64>,
    pub status: ConversationStatus,
    pub priority: Priority,
    pub active_thread_id: Option<i64>,
    /// 1-based place in the group's line while pending.
    pub queue_position: Option<u64>,
    pub queued_at: Option<DateTime<Utc>>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub first_response_at: Option<DateTime<Utc>>,
    pub last_visitor_activity_at: Option<DateTime<Utc>>,
    pub last_agent_activity_at: Option<DateTime<Utc>>,
    pub reassignment_count: i32,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ConversationView {
    /// The view of `conversation`, with its queue position when it waits.
    pub async fn new(
        db: &impl ConnectionTrait,
        conversation: conversations::Model,
    ) -> Result<Self, ApiError> {
        let queue_position = if conversation.status == ConversationStatus::Pending {
            Some(jobs::conversation::queue_position(db, &conversation).await?)
        } else {
            None
        };
        Ok(Self {
            id: conversation.id,
            visitor_id: conversation.visitor_id,
            group_id: conversation.group_id,
            assigned_agent_id: conversation.assigned_agent_id,
            status: conversation.status,
            priority: conversation.priority,
            active_thread_id: conversation.active_thread_id,
            queue_position,
            queued_at: conversation.queued_at,
            assigned_at: conversation.assigned_at,
            first_response_at: conversation.first_response_at,
            last_visitor_activity_at: conversation.last_visitor_activity_at,
            last_agent_activity_at: conversation.last_agent_activity_at,
            reassignment_count: conversation.reassignment_count,
            resolved_at: conversation.resolved_at,
            closed_at: conversation.closed_at,
            created_at: conversation.created_at,
            updated_at: conversation.updated_at,
        })
    }
}

/// One conversation of a group's waiting line, as agents see it (`GET /v1/queue`, `queue:update`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    pub conversation_id: i64,
    pub visitor_id: i64,
    pub position: u64,
    pub priority: Priority,
    pub waited_seconds: i64,
}

impl Waiting {
    /// The first `shown` conversations of `line` (in serving order) with their places and waits.
    pub fn head(line: &[conversations::Model], shown: usize) -> Vec<Self> {
        let now = Utc::now();
        line.iter()
            .take(shown)
            .enumerate()
            .map(|(index, c)| Self {
                conversation_id: c.id,
                visitor_id: c.visitor_id,
                position: index as u64 + 1,
                priority: c.priority,
                waited_seconds: c.queued_at.map_or(0, |at| (now - at).num_seconds().max(0)),
            })
            .collect()
    }
}

/// How many conversations of group `group_id` wait.
pub async fn waiting_count(
    db: &impl ConnectionTrait,
    group_id: i64,
) -> Result<u64, sea_orm::DbErr> {
    conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .count(db)
        .await
}

/// An agent as the API shows it (never the password hash or token version).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    id: i64,
    name: String,
    email: String,
    role: AgentRole,
    status: AgentStatus,
    accepting_chats: bool,
    max_concurrent_chats: i32,
    active_chats: i32,
    avatar_url: Option<String>,
    group_ids: Vec<i64>,
    last_seen_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl AgentView {
    fn new(agent: agents::Model, group_ids: Vec<i64>) -> Self {
        Self {
            id: agent.id,
            name: agent.name,
            email: agent.email,
            role: agent.role,
            status: agent.status,
            accepting_chats: agent.accepting_chats,
            max_concurrent_chats: agent.max_concurrent_chats,
            active_chats: agent.active_chats,
            avatar_url: agent.avatar_url,
            group_ids,
            last_seen_at: agent.last_seen_at,
            created_at: agent.created_at,
            updated_at: agent.updated_at,
            deleted_at: agent.deleted_at,
        }
    }

    /// Views of `rows` with their group ids, in one query for the memberships.
    pub async fn many(
        db: &impl ConnectionTrait,
        rows: Vec<agents::Model>,
    ) -> Result<Vec<Self>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|agent| agent.id).collect();
        let memberships = agent_groups::Entity::find()
            .filter(agent_groups::Column::AgentId.is_in(ids))
            .all(db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|agent| {
                let groups = memberships
                    .iter()
                    .filter(|m| m.agent_id == agent.id)
                    .map(|m| m.group_id)
                    .collect();
                Self::new(agent, groups)
            })
            .collect())
    }

    /// The view of one agent.
    pub async fn one(db: &impl ConnectionTrait, agent: agents::Model) -> Result<Self, ApiError> {
        let mut views = Self::many(db, vec![agent]).await?;
        views
            .pop()
            .ok_or_else(|| anyhow::anyhow!("view of one agent is empty").into())
    }
}

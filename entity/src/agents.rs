//! `agents` table: people who answer chats.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::enums::{AgentRole, AgentStatus};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub account_id: i64,
    #[sea_orm(column_type = "String(StringLen::N(200))")]
    pub name: String,
    /// Stored lowercased by the application; unique per account.
    #[sea_orm(column_type = "String(StringLen::N(320))")]
    pub email: String,
    #[sea_orm(column_type = "Text")]
    pub password_hash: String,
    pub role: AgentRole,
    pub status: AgentStatus,
    pub accepting_chats: bool,
    pub max_concurrent_chats: i32,
    pub active_chats: i32,
    #[sea_orm(column_type = "String(StringLen::N(2048))", nullable)]
    pub avatar_url: Option<String>,
    /// Bumped to revoke every JWT issued before.
    pub token_version: i32,
    pub last_seen_at: Option<DateTimeUtc>,
    pub last_assigned_at: Option<DateTimeUtc>,
    /// When a socket of the agent last connected (presence; see the agent-presence job).
    pub connected_at: Option<DateTimeUtc>,
    /// When the agent's last socket last dropped.
    pub disconnected_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::accounts::Entity",
        from = "Column::AccountId",
        to = "super::accounts::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Account,
    #[sea_orm(has_many = "super::agent_groups::Entity")]
    AgentGroups,
    #[sea_orm(has_many = "super::conversations::Entity")]
    Conversations,
    #[sea_orm(has_many = "super::threads::Entity")]
    Threads,
    #[sea_orm(has_many = "super::events::Entity")]
    Events,
    #[sea_orm(has_many = "super::assignments::Entity")]
    Assignments,
}

impl Related<super::accounts::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl Related<super::agent_groups::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AgentGroups.def()
    }
}

impl Related<super::groups::Entity> for Entity {
    fn to() -> RelationDef {
        super::agent_groups::Relation::Group.def()
    }

    fn via() -> Option<RelationDef> {
        Some(super::agent_groups::Relation::Agent.def().rev())
    }
}

impl Related<super::conversations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversations.def()
    }
}

impl Related<super::threads::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Threads.def()
    }
}

impl Related<super::events::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Events.def()
    }
}

impl Related<super::assignments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Assignments.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

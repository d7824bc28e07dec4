//! `groups` table: routing groups (queues) of agents.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::enums::RoutingStrategy;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "groups")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub account_id: i64,
    #[sea_orm(column_type = "String(StringLen::N(200))")]
    pub name: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub routing_strategy: RoutingStrategy,
    pub is_default: bool,
    pub agent_response_timeout_seconds: i32,
    pub visitor_idle_timeout_seconds: i32,
    pub first_response_sla_seconds: i32,
    pub max_reassignments: i32,
    pub max_queue_wait_seconds: Option<i32>,
    /// Set while an assign job for the group is requested and not yet started (coalescing).
    pub assign_requested_at: Option<DateTimeUtc>,
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

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        super::agent_groups::Relation::Agent.def()
    }

    fn via() -> Option<RelationDef> {
        Some(super::agent_groups::Relation::Group.def().rev())
    }
}

impl Related<super::conversations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversations.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

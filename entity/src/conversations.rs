//! `conversations` table: one chat between a visitor and the account.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::enums::{ConversationStatus, Priority};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub account_id: i64,
    pub visitor_id: i64,
    pub group_id: i64,
    pub assigned_agent_id: Option<i64>,
    pub status: ConversationStatus,
    pub priority: Priority,
    /// Current thread; deliberately not a foreign key (threads reference conversations).
    pub active_thread_id: Option<i64>,
    pub queued_at: Option<DateTimeUtc>,
    pub assigned_at: Option<DateTimeUtc>,
    pub first_response_at: Option<DateTimeUtc>,
    pub last_visitor_activity_at: Option<DateTimeUtc>,
    pub last_agent_activity_at: Option<DateTimeUtc>,
    pub reassignment_count: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub notes: Option<String>,
    pub resolved_at: Option<DateTimeUtc>,
    pub closed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// When the holding agent last signalled typing (pauses the agent response clock).
    pub agent_typing_at: Option<DateTimeUtc>,
    /// When the first-response SLA was broken (raised once).
    pub first_response_breached_at: Option<DateTimeUtc>,
    /// When the visitor was told it waited past the group's limit (told once).
    pub queue_wait_exceeded_at: Option<DateTimeUtc>,
    /// Set when it reached the group's `max_reassignments`: automatic routing skips it until a
    /// person takes it (pick-up or a supervisor's assign).
    pub routing_held_at: Option<DateTimeUtc>,
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
    #[sea_orm(
        belongs_to = "super::visitors::Entity",
        from = "Column::VisitorId",
        to = "super::visitors::Column::Id",
        on_update = "NoAction",
        on_delete = "NoAction"
    )]
    Visitor,
    #[sea_orm(
        belongs_to = "super::groups::Entity",
        from = "Column::GroupId",
        to = "super::groups::Column::Id",
        on_update = "NoAction",
        on_delete = "NoAction"
    )]
    Group,
    #[sea_orm(
        belongs_to = "super::agents::Entity",
        from = "Column::AssignedAgentId",
        to = "super::agents::Column::Id",
        on_update = "NoAction",
        on_delete = "NoAction"
    )]
    AssignedAgent,
    #[sea_orm(has_many = "super::threads::Entity")]
    Threads,
    #[sea_orm(has_many = "super::events::Entity")]
    Events,
    #[sea_orm(has_many = "super::assignments::Entity")]
    Assignments,
    #[sea_orm(has_many = "super::conversation_tags::Entity")]
    ConversationTags,
}

impl Related<super::accounts::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl Related<super::visitors::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Visitor.def()
    }
}

impl Related<super::groups::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Group.def()
    }
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AssignedAgent.def()
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

impl Related<super::conversation_tags::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ConversationTags.def()
    }
}

impl Related<super::tags::Entity> for Entity {
    fn to() -> RelationDef {
        super::conversation_tags::Relation::Tag.def()
    }

    fn via() -> Option<RelationDef> {
        Some(super::conversation_tags::Relation::Conversation.def().rev())
    }
}

impl ActiveModelBehavior for ActiveModel {}

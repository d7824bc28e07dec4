//! `DeriveActiveEnum` enums shared by the entities.
//!
//! String-backed enums are stored as `varchar(16)`; [`Priority`] is stored as an
//! integer so that ascending order puts high-priority conversations first.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Permission level of an agent inside its account.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum AgentRole {
    #[sea_orm(string_value = "agent")]
    Agent,
    #[sea_orm(string_value = "supervisor")]
    Supervisor,
    #[sea_orm(string_value = "admin")]
    Admin,
}

/// Presence of an agent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    #[sea_orm(string_value = "online")]
    Online,
    #[sea_orm(string_value = "away")]
    Away,
    #[sea_orm(string_value = "offline")]
    Offline,
}

/// How a group picks the agent for a waiting conversation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    #[sea_orm(string_value = "least_loaded")]
    LeastLoaded,
    #[sea_orm(string_value = "round_robin")]
    RoundRobin,
    #[sea_orm(string_value = "sticky")]
    Sticky,
}

/// Lifecycle state of a conversation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "resolved")]
    Resolved,
    #[sea_orm(string_value = "closed")]
    Closed,
}

/// Queue priority, stored as an integer: ascending order = `High` first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "i32", db_type = "Integer")]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[sea_orm(num_value = 0)]
    High,
    #[sea_orm(num_value = 1)]
    Normal,
    #[sea_orm(num_value = 2)]
    Low,
}

/// Lifecycle state of a thread (one agent's stint on a conversation).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum ThreadStatus {
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "closed")]
    Closed,
}

/// Who closed a thread.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    #[sea_orm(string_value = "agent")]
    Agent,
    #[sea_orm(string_value = "visitor")]
    Visitor,
    #[sea_orm(string_value = "system")]
    System,
}

/// Kind of a conversation event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    #[sea_orm(string_value = "message")]
    Message,
    #[sea_orm(string_value = "system")]
    System,
}

/// Who authored a conversation event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "snake_case")]
pub enum AuthorType {
    #[sea_orm(string_value = "visitor")]
    Visitor,
    #[sea_orm(string_value = "agent")]
    Agent,
    #[sea_orm(string_value = "system")]
    System,
}

//! Entity types re-exported under their table-style names.

pub use super::accounts::Entity as Accounts;
pub use super::agent_groups::Entity as AgentGroups;
pub use super::agents::Entity as Agents;
pub use super::assignments::Entity as Assignments;
pub use super::audit_log::Entity as AuditLog;
pub use super::conversation_tags::Entity as ConversationTags;
pub use super::conversations::Entity as Conversations;
pub use super::deliveries::Entity as Deliveries;
pub use super::events::Entity as Events;
pub use super::groups::Entity as Groups;
pub use super::tags::Entity as Tags;
pub use super::threads::Entity as Threads;
pub use super::visitors::Entity as Visitors;
pub use super::webhooks::Entity as Webhooks;

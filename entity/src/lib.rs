//! SeaORM entities for the Switchboard schema.
//!
//! One module per table, mirroring the `migration` crate's initial schema;
//! [`enums`] holds the `DeriveActiveEnum` column types and [`prelude`]
//! re-exports every `Entity` under its table-style name.

pub mod prelude;

pub mod accounts;
pub mod agent_groups;
pub mod agents;
pub mod assignments;
pub mod audit_log;
pub mod conversation_tags;
pub mod conversations;
pub mod deliveries;
pub mod enums;
pub mod events;
pub mod groups;
pub mod intents;
pub mod outbox;
pub mod tags;
pub mod threads;
pub mod visitors;
pub mod webhooks;

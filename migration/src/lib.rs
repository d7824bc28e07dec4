//! Database migrations for Switchboard (SQLite and PostgreSQL).
//!
//! Run them with [`Migrator::up`](sea_orm_migration::MigratorTrait::up) at startup.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_create_schema;
mod m20261121_000002_add_group_assign_requested;
mod m20261121_000003_add_agent_presence;
mod m20261121_000004_add_conversation_timers;
mod m20261121_000005_create_deliveries;
mod m20261121_000006_index_deliveries_status_updated_at;
mod m20261121_000007_index_conversations_line;
mod m20261121_000008_index_conversations_group_assigned_at;
mod m20261207_000009_create_intents;
mod m20261207_000010_create_outbox;
mod m20261207_000011_add_visitor_email_before_agent;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_schema::Migration),
            Box::new(m20261121_000002_add_group_assign_requested::Migration),
            Box::new(m20261121_000003_add_agent_presence::Migration),
            Box::new(m20261121_000004_add_conversation_timers::Migration),
            Box::new(m20261121_000005_create_deliveries::Migration),
            Box::new(m20261121_000006_index_deliveries_status_updated_at::Migration),
            Box::new(m20261121_000007_index_conversations_line::Migration),
            Box::new(m20261121_000008_index_conversations_group_assigned_at::Migration),
            Box::new(m20261207_000009_create_intents::Migration),
            Box::new(m20261207_000010_create_outbox::Migration),
            Box::new(m20261207_000011_add_visitor_email_before_agent::Migration),
        ]
    }
}

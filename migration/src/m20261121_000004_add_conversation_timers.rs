//! Columns the scheduler needs on `conversations`:
//! - `agent_typing_at`: when the holding agent last signalled typing; it pauses the agent
//!   response clock.
//! - `first_response_breached_at`: set once when the first-response SLA was broken, so that a
//!   breach seen by two sweeps (two nodes, or the next tick) is raised once.
//! - `queue_wait_exceeded_at`: set once when the visitor was told it waited past the group's
//!   `max_queue_wait_seconds`.
//! - `routing_held_at`: set when a conversation reached its group's `max_reassignments` and was
//!   put back at the head of the line for a person to take: automatic routing skips it until an
//!   agent picks it up or a supervisor assigns it.

use sea_orm_migration::{prelude::*, schema::timestamp_with_time_zone_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Conversations {
    Table,
    AgentTypingAt,
    FirstResponseBreachedAt,
    QueueWaitExceededAt,
    RoutingHeldAt,
}

const COLUMNS: [Conversations; 4] = [
    Conversations::AgentTypingAt,
    Conversations::FirstResponseBreachedAt,
    Conversations::QueueWaitExceededAt,
    Conversations::RoutingHeldAt,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(Conversations::Table)
                        .add_column(timestamp_with_time_zone_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(Conversations::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

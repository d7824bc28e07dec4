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
//!
//! And the indexes the live stats read by (recent assignments, closes and first responses of an
//! account), so a stats push does not scan an account's whole history.

use sea_orm_migration::{prelude::*, schema::timestamp_with_time_zone_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Conversations {
    Table,
    AccountId,
    ResolvedAt,
    ClosedAt,
    FirstResponseAt,
    AgentTypingAt,
    FirstResponseBreachedAt,
    QueueWaitExceededAt,
    RoutingHeldAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Assignments {
    Table,
    AccountId,
    AssignedAt,
}

/// (name, table, columns) of each index this migration adds.
fn indexes() -> Vec<(&'static str, TableRef, Vec<DynIden>)> {
    let conversations = |column: Conversations| -> (TableRef, Vec<DynIden>) {
        (
            Conversations::Table.into_table_ref(),
            vec![Conversations::AccountId.into_iden(), column.into_iden()],
        )
    };
    let (t1, c1) = conversations(Conversations::ResolvedAt);
    let (t2, c2) = conversations(Conversations::ClosedAt);
    let (t3, c3) = conversations(Conversations::FirstResponseAt);
    vec![
        ("idx_conversations_account_id_resolved_at", t1, c1),
        ("idx_conversations_account_id_closed_at", t2, c2),
        ("idx_conversations_account_id_first_response_at", t3, c3),
        (
            "idx_assignments_account_id_assigned_at",
            Assignments::Table.into_table_ref(),
            vec![
                Assignments::AccountId.into_iden(),
                Assignments::AssignedAt.into_iden(),
            ],
        ),
    ]
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
        for (name, table, columns) in indexes() {
            let mut index = Index::create();
            index.name(name).table(table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in indexes() {
            manager
                .drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
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

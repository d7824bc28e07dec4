//! `agents.connected_at` / `agents.disconnected_at`: when the agent's first socket connected and
//! its last one dropped. The presence job compares them after the grace period: a reconnect in
//! between (a later `connected_at`) or a later drop (another `disconnected_at`) cancels it.

use sea_orm_migration::{prelude::*, schema::timestamp_with_time_zone_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Agents {
    Table,
    ConnectedAt,
    DisconnectedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [Agents::ConnectedAt, Agents::DisconnectedAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Agents::Table)
                        .add_column(timestamp_with_time_zone_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Agents::ConnectedAt, Agents::DisconnectedAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Agents::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

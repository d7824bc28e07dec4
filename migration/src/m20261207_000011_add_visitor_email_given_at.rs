//! `visitors.email_given_at`: when the visitor gave its current e-mail address. A transcript goes
//! only to an address given before an agent joined the chat, so a visitor cannot have an agent's
//! words (and its own) mailed to an address it names after the fact.

use sea_orm_migration::{prelude::*, schema::timestamp_with_time_zone_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Visitors {
    Table,
    EmailGivenAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Visitors::Table)
                    .add_column(timestamp_with_time_zone_null(Visitors::EmailGivenAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Visitors::Table)
                    .drop_column(Visitors::EmailGivenAt)
                    .to_owned(),
            )
            .await
    }
}

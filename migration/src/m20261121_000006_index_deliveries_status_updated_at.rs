//! An index for pruning `deliveries`: finished rows (delivered, dead) by when they finished, so
//! the periodic prune reads only the rows past their retention instead of the whole table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Status,
    UpdatedAt,
}

const NAME: &str = "idx_deliveries_status_updated_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Deliveries::Table)
                    .col(Deliveries::Status)
                    .col(Deliveries::UpdatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(NAME).table(Deliveries::Table).to_owned())
            .await
    }
}

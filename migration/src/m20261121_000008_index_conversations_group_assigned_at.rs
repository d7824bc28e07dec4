//! Conversations by group and time assigned: a group's recent serving rate (what the visitors'
//! wait estimates divide by) reads only the window it counts, however many conversations the
//! table holds.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Conversations {
    Table,
    GroupId,
    AssignedAt,
}

const NAME: &str = "idx_conversations_group_id_assigned_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Conversations::Table)
                    .col(Conversations::GroupId)
                    .col(Conversations::AssignedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(NAME)
                    .table(Conversations::Table)
                    .to_owned(),
            )
            .await
    }
}

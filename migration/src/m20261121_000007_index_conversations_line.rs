//! The waiting line as an index of its own: only pending, queued conversations, in serving order
//! (group, priority, time queued, id). Reading the head of a line and counting who waits ahead of
//! a conversation (its place) then touch the line and nothing else, however many conversations
//! the table holds.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Conversations {
    Table,
    GroupId,
    Priority,
    QueuedAt,
    Id,
    Status,
}

const NAME: &str = "idx_conversations_line";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(Conversations::Table)
                    .col(Conversations::GroupId)
                    .col(Conversations::Priority)
                    .col(Conversations::QueuedAt)
                    .col(Conversations::Id)
                    .and_where(Expr::col(Conversations::Status).eq("pending"))
                    .and_where(Expr::col(Conversations::QueuedAt).is_not_null())
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

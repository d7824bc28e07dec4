//! `intents`: the durable mark an acknowledged request leaves until its job has taken effect.
//!
//! A close, an end or a transfer to a group is answered "accepted" and done by a job. The row is
//! written before the answer, and the job deletes it in the transaction that makes its change,
//! so the job storage may lose the job (a Redis restart, a killed worker) without losing the
//! request: the sweep resubmits rows that are still here when they fall due.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Intents {
    Table,
    Id,
    AccountId,
    ConversationId,
    Queue,
    Job,
    Attempts,
    CreatedAt,
    DueAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Intents::Table)
                    .col(big_pk_auto(Intents::Id))
                    .col(big_integer(Intents::AccountId))
                    .col(big_integer_null(Intents::ConversationId))
                    .col(string_len(Intents::Queue, 64))
                    .col(json_binary(Intents::Job))
                    .col(integer(Intents::Attempts).default(0))
                    .col(timestamp_with_time_zone(Intents::CreatedAt))
                    .col(timestamp_with_time_zone(Intents::DueAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_intents_account_id")
                            .from(Intents::Table, Intents::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_intents_conversation_id")
                            .from(Intents::Table, Intents::ConversationId)
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .to_owned(),
            )
            .await?;
        // The sweep reads what fell due; a reopen drops a conversation's outstanding closes.
        for (name, column) in [
            ("idx_intents_due_at", Intents::DueAt),
            ("idx_intents_conversation_id", Intents::ConversationId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Intents::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Intents::Table).to_owned())
            .await
    }
}

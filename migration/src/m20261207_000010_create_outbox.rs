//! `outbox`: the webhooks and e-mails an outcome implies, staged in the outcome's own transaction.
//!
//! A change that webhooks or e-mail may want to hear about writes one row here in the transaction
//! that makes the change. The fan-out turns the row into `deliveries` rows and deletes it in one
//! transaction; the sweep fans out rows that are still here after a while (the process that made
//! the change died, or its fan-out backlog was full), so no delivery is lost between the commit
//! and its `deliveries` row.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Key,
    AccountId,
    OrderKey,
    Outcome,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(string_len(Outbox::Key, 26).primary_key())
                    .col(big_integer(Outbox::AccountId))
                    .col(string_len(Outbox::OrderKey, 64))
                    .col(json_binary(Outbox::Outcome))
                    .col(timestamp_with_time_zone(Outbox::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_outbox_account_id")
                            .from(Outbox::Table, Outbox::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .to_owned(),
            )
            .await?;
        // The sweep reads the rows left behind, oldest first; the fan-out of an outcome first
        // takes the older rows of its conversation (or agent), to keep their order.
        for (name, columns) in [
            ("idx_outbox_created_at", vec![Outbox::CreatedAt]),
            (
                "idx_outbox_order_key_key",
                vec![Outbox::OrderKey, Outbox::Key],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(Outbox::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await
    }
}

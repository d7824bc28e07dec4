//! `deliveries`: one row per notification to send on a channel other than Socket.IO (a webhook
//! call, an e-mail). The row, not the job, is the source of truth: its status, attempts, lease
//! and order live here, so a job that runs twice, late or on another node can tell what is left
//! to do, and operators can list what was delivered and what is dead.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    AccountId,
    Channel,
    WebhookId,
    DeliveryKey,
    Kind,
    OrderKey,
    Recipient,
    Payload,
    Status,
    Attempts,
    MaxAttempts,
    LastError,
    LastStatusCode,
    NextAttemptAt,
    ClaimedUntil,
    CreatedAt,
    UpdatedAt,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Webhooks {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .col(big_pk_auto(Deliveries::Id))
                    .col(big_integer(Deliveries::AccountId))
                    .col(string_len(Deliveries::Channel, 16))
                    .col(big_integer_null(Deliveries::WebhookId))
                    .col(string_len(Deliveries::DeliveryKey, 64))
                    .col(string_len(Deliveries::Kind, 64))
                    .col(string_len(Deliveries::OrderKey, 64))
                    .col(string_len_null(Deliveries::Recipient, 320))
                    .col(json_binary(Deliveries::Payload))
                    .col(string_len(Deliveries::Status, 16))
                    .col(integer(Deliveries::Attempts).default(0))
                    .col(integer(Deliveries::MaxAttempts))
                    .col(string_len_null(Deliveries::LastError, 512))
                    .col(integer_null(Deliveries::LastStatusCode))
                    .col(timestamp_with_time_zone_null(Deliveries::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(Deliveries::ClaimedUntil))
                    .col(timestamp_with_time_zone(Deliveries::CreatedAt))
                    .col(timestamp_with_time_zone(Deliveries::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Deliveries::DeliveredAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deliveries_account_id")
                            .from(Deliveries::Table, Deliveries::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deliveries_webhook_id")
                            .from(Deliveries::Table, Deliveries::WebhookId)
                            .to(Webhooks::Table, Webhooks::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .to_owned(),
            )
            .await?;
        let indexes: [(&str, Vec<Deliveries>, bool); 4] = [
            // The delivery id receivers see; a job that runs twice finds its row by it.
            (
                "idx_deliveries_delivery_key",
                vec![Deliveries::DeliveryKey],
                true,
            ),
            // Ordering: the earliest unfinished delivery of one conversation and webhook.
            (
                "idx_deliveries_webhook_id_order_key_id",
                vec![Deliveries::WebhookId, Deliveries::OrderKey, Deliveries::Id],
                false,
            ),
            // Operators' lists, newest first.
            (
                "idx_deliveries_account_id_webhook_id_id",
                vec![Deliveries::AccountId, Deliveries::WebhookId, Deliveries::Id],
                false,
            ),
            // The sweep: pending rows that no job is handling.
            (
                "idx_deliveries_status_next_attempt_at",
                vec![Deliveries::Status, Deliveries::NextAttemptAt],
                false,
            ),
        ];
        for (name, columns, unique) in indexes {
            let mut index = Index::create();
            index.name(name).table(Deliveries::Table);
            for column in columns {
                index.col(column);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Deliveries::Table).to_owned())
            .await
    }
}

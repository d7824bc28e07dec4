//! `deliveries` table: one notification to send on a webhook or by e-mail, with its attempts,
//! lease and outcome (the source of truth for the delivery jobs and for operators).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub account_id: i64,
    /// `webhook` or `email`.
    #[sea_orm(column_type = "String(StringLen::N(16))")]
    pub channel: String,
    /// The webhook called (webhook deliveries only).
    pub webhook_id: Option<i64>,
    /// The unique delivery id receivers see (a ULID).
    #[sea_orm(column_type = "String(StringLen::N(64))", unique)]
    pub delivery_key: String,
    /// The event kind (`conversation.assigned`, ...) or e-mail kind (`email.transcript`, ...).
    #[sea_orm(column_type = "String(StringLen::N(64))")]
    pub kind: String,
    /// What the order is kept within (`conversation:{id}`, `agent:{id}`), per webhook.
    #[sea_orm(column_type = "String(StringLen::N(64))")]
    pub order_key: String,
    /// The e-mail address (e-mail deliveries only).
    #[sea_orm(column_type = "String(StringLen::N(320))", nullable)]
    pub recipient: Option<String>,
    /// Webhook: the body's `data`. E-mail: what the message is rendered from.
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// `pending`, `delivered` or `dead`.
    #[sea_orm(column_type = "String(StringLen::N(16))")]
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    #[sea_orm(column_type = "String(StringLen::N(512))", nullable)]
    pub last_error: Option<String>,
    pub last_status_code: Option<i32>,
    /// When the next attempt is due (after a failure); `None` before the first one.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// A worker is sending it until then; another copy of the job leaves it alone meanwhile.
    pub claimed_until: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub delivered_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::accounts::Entity",
        from = "Column::AccountId",
        to = "super::accounts::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Account,
    #[sea_orm(
        belongs_to = "super::webhooks::Entity",
        from = "Column::WebhookId",
        to = "super::webhooks::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Webhook,
}

impl Related<super::accounts::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl Related<super::webhooks::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Webhook.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

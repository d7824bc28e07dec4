//! `outbox` table: an outcome whose webhooks and e-mails are not yet recorded as `deliveries`,
//! written in the transaction that caused it. The fan-out deletes the row as it records them;
//! the sweep fans out rows left behind.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    /// A ULID: unique, and ordered by creation (strictly, within one process).
    #[sea_orm(
        primary_key,
        auto_increment = false,
        column_type = "String(StringLen::N(26))"
    )]
    pub key: String,
    pub account_id: i64,
    /// What the outcome's order is kept within (`conversation:7`, `agent:3`).
    #[sea_orm(column_type = "String(StringLen::N(64))")]
    pub order_key: String,
    /// The outcome, as `jobs::notify::Outcome` serialises it.
    #[sea_orm(column_type = "JsonBinary")]
    pub outcome: Json,
    pub created_at: DateTimeUtc,
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
}

impl Related<super::accounts::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

//! `intents` table: an acknowledged request whose job has not taken effect yet (a close, an end,
//! a transfer to a group). The job deletes its row in the transaction that makes its change; the
//! sweep resubmits rows that fall due while still here.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "intents")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub account_id: i64,
    /// The conversation it concerns, if any (a reopen drops its outstanding closes).
    pub conversation_id: Option<i64>,
    /// The job's queue (`close-conversation`, ...).
    #[sea_orm(column_type = "String(StringLen::N(64))")]
    pub queue: String,
    /// The job's arguments, as submitted (without the intent's own id).
    #[sea_orm(column_type = "JsonBinary")]
    pub job: Json,
    /// How many times the sweep resubmitted it.
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    /// When the sweep resubmits it if it is still here.
    pub due_at: DateTimeUtc,
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
        belongs_to = "super::conversations::Entity",
        from = "Column::ConversationId",
        to = "super::conversations::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Conversation,
}

impl Related<super::accounts::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl Related<super::conversations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversation.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

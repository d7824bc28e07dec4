//! Threads: a conversation's stints, one open at a time (its active thread).

use chrono::{DateTime, Utc};
use entity::{
    conversations,
    enums::{ClosedBy, ThreadStatus},
    threads,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter, sea_query::Expr,
};

/// Opens a new active thread and makes it the conversation's active one.
pub(super) async fn open_thread(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
    agent_id: Option<i64>,
    now: DateTime<Utc>,
) -> Result<conversations::Model, DbErr> {
    let thread = threads::ActiveModel {
        account_id: Set(conversation.account_id),
        conversation_id: Set(conversation.id),
        agent_id: Set(agent_id),
        status: Set(ThreadStatus::Active),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?;
    conversations::ActiveModel {
        id: Set(conversation.id),
        active_thread_id: Set(Some(thread.id)),
        ..Default::default()
    }
    .update(db)
    .await
}

/// Closes the conversation's active thread.
pub(super) async fn close_thread(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    closed_by: ClosedBy,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    threads::Entity::update_many()
        .col_expr(threads::Column::Status, Expr::value(ThreadStatus::Closed))
        .col_expr(threads::Column::ClosedBy, Expr::value(Some(closed_by)))
        .col_expr(
            threads::Column::ClosedReason,
            Expr::value(Some(reason.to_owned())),
        )
        .col_expr(threads::Column::ClosedAt, Expr::value(Some(now)))
        .filter(threads::Column::ConversationId.eq(conversation_id))
        .filter(threads::Column::Status.eq(ThreadStatus::Active))
        .exec(db)
        .await?;
    Ok(())
}

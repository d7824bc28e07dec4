//! A group's waiting line: its serving order (priority, then `queued_at`, then id, the partial
//! index `idx_conversations_line`), its head, and a conversation's place in it.

use std::collections::{BTreeMap, HashMap};

use entity::{conversations, enums::ConversationStatus};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
    sea_query::{Expr, ExprTrait},
};

/// The 1-based place of a pending conversation in its group's line: priority first (high before
/// normal before low), then the time it was queued, then its id. 0 when it is not in line.
pub async fn queue_position(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
) -> Result<u64, DbErr> {
    Ok(queue_positions(db, std::slice::from_ref(conversation))
        .await?
        .get(&conversation.id)
        .copied()
        .unwrap_or(0))
}

/// [`queue_position`] of several conversations (as read by the caller, pending and in line;
/// others are left out), with two queries per group whatever their number: how many wait ahead
/// of the first, and the stretch of the line from the first to the last.
pub async fn queue_positions(
    db: &impl ConnectionTrait,
    members: &[conversations::Model],
) -> Result<HashMap<i64, u64>, DbErr> {
    let key = |c: &conversations::Model| (c.priority.to_value(), c.queued_at, c.id);
    let mut by_group: BTreeMap<i64, (&conversations::Model, &conversations::Model)> =
        BTreeMap::new();
    for c in members
        .iter()
        .filter(|c| c.status == ConversationStatus::Pending && c.queued_at.is_some())
    {
        let span = by_group.entry(c.group_id).or_insert((c, c));
        if key(c) < key(span.0) {
            span.0 = c;
        }
        if key(c) > key(span.1) {
            span.1 = c;
        }
    }
    let mut places = HashMap::new();
    for (group, (first, last)) in by_group {
        let in_line = || {
            conversations::Entity::find()
                .filter(conversations::Column::GroupId.eq(group))
                .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
                .filter(conversations::Column::QueuedAt.is_not_null())
        };
        // One statement: the stretch, each row carrying the count of those ahead of it.
        let ahead = in_line()
            .filter(ahead_of(first))
            .select_only()
            .expr(Expr::col(conversations::Column::Id).count())
            .into_query();
        let stretch: Vec<(i64, i64)> = in_line()
            .select_only()
            .column(conversations::Column::Id)
            .expr(Expr::SubQuery(None, Box::new(ahead.into())))
            .filter(serving_key().gte(serving_key_of(first)))
            .filter(serving_key().lte(serving_key_of(last)))
            .order_by_asc(conversations::Column::Priority)
            .order_by_asc(conversations::Column::QueuedAt)
            .order_by_asc(conversations::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        for (n, (id, ahead)) in stretch.into_iter().enumerate() {
            places.insert(id, u64::try_from(ahead).unwrap_or(0) + 1 + n as u64);
        }
    }
    // Only the callers' conversations: the stretch may hold others.
    places.retain(|id, _| members.iter().any(|c| c.id == *id));
    Ok(places)
}

/// The place in serving order of a conversation, as one row value: `(priority, queued_at, id)`.
/// Compared as a row, it is a range on the line's index (`idx_conversations_line`).
fn serving_key() -> Expr {
    Expr::tuple([
        Expr::col((conversations::Entity, conversations::Column::Priority)),
        Expr::col((conversations::Entity, conversations::Column::QueuedAt)),
        Expr::col((conversations::Entity, conversations::Column::Id)),
    ])
}

fn serving_key_of(c: &conversations::Model) -> Expr {
    Expr::tuple([
        Expr::value(c.priority),
        Expr::value(c.queued_at),
        Expr::value(c.id),
    ])
}

/// Conversations served before `c`: a higher priority, or the same one and queued earlier (ties
/// by id).
fn ahead_of(c: &conversations::Model) -> Expr {
    serving_key().lt(serving_key_of(c))
}

/// The head of a group's waiting line, in serving order.
pub async fn waiting_line(
    db: &impl ConnectionTrait,
    group_id: i64,
    limit: u64,
) -> Result<Vec<conversations::Model>, DbErr> {
    line(group_id, limit).all(db).await
}

/// The head of the part of a group's line that automatic routing serves: without the
/// conversations held for a person after too many reassignments (they keep their place in
/// [`waiting_line`], so a held chat never blocks the ones behind it).
pub async fn routable_line(
    db: &impl ConnectionTrait,
    group_id: i64,
    limit: u64,
) -> Result<Vec<conversations::Model>, DbErr> {
    line(group_id, limit)
        .filter(conversations::Column::RoutingHeldAt.is_null())
        .all(db)
        .await
}

fn line(group_id: i64, limit: u64) -> sea_orm::Select<conversations::Entity> {
    conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group_id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        // Not yet queued (a crash mid-way): the reconciler enqueues it first.
        .filter(conversations::Column::QueuedAt.is_not_null())
        .order_by_asc(conversations::Column::Priority)
        .order_by_asc(conversations::Column::QueuedAt)
        .order_by_asc(conversations::Column::Id)
        .limit(limit)
}

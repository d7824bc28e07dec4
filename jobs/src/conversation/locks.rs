//! Row locks, taken in one order everywhere: agents first, in id order; then conversations, in id
//! order (`docs/architecture.md`, "Locking"). On SQLite every helper is a plain read or nothing:
//! its write transactions run one at a time. The assigner's lock on a line's free agents is
//! [`super::lock_candidates`].

use std::collections::HashMap;

use entity::{agents, conversations, enums::ConversationStatus};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, sea_query::LockType,
};

/// The conversations of `ids` that still wait, each with the thread it waits in, locked for the
/// claim (PostgreSQL, in id order; SQLite's write transactions run one at a time).
pub(super) async fn lock_waiting(
    txn: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = i64>,
) -> Result<HashMap<i64, Option<i64>>, DbErr> {
    let mut read = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .column(conversations::Column::ActiveThreadId)
        .filter(conversations::Column::Id.is_in(ids))
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending))
        .order_by_asc(conversations::Column::Id);
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        read = read.lock(LockType::NoKeyUpdate);
    }
    Ok(read
        .into_tuple::<(i64, Option<i64>)>()
        .all(txn)
        .await?
        .into_iter()
        .collect())
}

/// Locks a conversation's row for update (PostgreSQL), after its holder's agent row: the order
/// every claim uses (agents first), so a close or timer racing a claim waits instead of
/// deadlocking. Reads the row on SQLite, whose write transactions run one at a time.
pub async fn lock_conversation(
    txn: &impl ConnectionTrait,
    conversation_id: i64,
) -> Result<Option<conversations::Model>, DbErr> {
    Ok(lock_conversations(txn, &[conversation_id])
        .await?
        .remove(&conversation_id))
}

/// Locks the rows of `agents` in id order (PostgreSQL; SQLite transactions already run one at a
/// time). A transaction that touches several agents — a transfer releases one and claims another,
/// an assigner claims for many — takes their locks first, in a fixed order, so two such
/// transactions never deadlock.
pub async fn lock_agents(txn: &impl ConnectionTrait, mut agents: Vec<i64>) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    agents.sort_unstable();
    agents.dedup();
    agents::Entity::find()
        .filter(agents::Column::Id.is_in(agents))
        .order_by_asc(agents::Column::Id)
        .lock(LockType::NoKeyUpdate)
        .all(txn)
        .await?;
    Ok(())
}

/// Reads conversations for a change, locked (PostgreSQL) after their holders' agent rows: the
/// order every claim uses (agents first), so a close racing a claim or a requeue waits instead of
/// deadlocking. SQLite's write transactions run one at a time: a plain read.
async fn lock_conversations(
    txn: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<HashMap<i64, conversations::Model>, DbErr> {
    lock_holders(txn, ids).await?;
    let mut read =
        conversations::Entity::find().filter(conversations::Column::Id.is_in(ids.iter().copied()));
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        // If a holder changed meanwhile, its new agent row is locked by the update that follows.
        read = read
            .order_by_asc(conversations::Column::Id)
            .lock(LockType::NoKeyUpdate);
    }
    Ok(read
        .all(txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect())
}

/// Locks the agent rows of the conversations' holders, in id order, in one statement
/// (PostgreSQL; SQLite's write transactions run one at a time).
pub(super) async fn lock_holders(txn: &impl ConnectionTrait, ids: &[i64]) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    let holders = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::AssignedAgentId)
        .filter(conversations::Column::Id.is_in(ids.iter().copied()))
        .filter(conversations::Column::AssignedAgentId.is_not_null())
        .into_query();
    agents::Entity::find()
        .select_only()
        .column(agents::Column::Id)
        .filter(agents::Column::Id.in_subquery(holders))
        .order_by_asc(agents::Column::Id)
        .lock(LockType::NoKeyUpdate)
        .into_tuple::<i64>()
        .all(txn)
        .await?;
    Ok(())
}

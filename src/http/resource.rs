//! What agents, groups and tags share: account-scoped lookups, cursor pages and soft delete.
//!
//! Every read and write here filters by the caller's account first, so a row of another account
//! is indistinguishable from a row that does not exist (404).

use chrono::Utc;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select,
    sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use serde_json::json;

use jobs::audit::AuditAction;

use crate::{auth::CurrentAgent, chat::audit, error::ApiError, state::AppState};

/// An account-scoped, soft-deletable table.
pub trait Scoped: EntityTrait {
    /// How the resource is named in errors ("agent").
    const NOUN: &'static str;
    /// What a soft delete of a row records in the audit trail.
    const DELETED: AuditAction;
    /// What a restore records.
    const RESTORED: AuditAction;
    /// Primary key column.
    fn id() -> Self::Column;
    /// Owning account column.
    fn account() -> Self::Column;
    /// Soft-delete marker column.
    fn deleted_at() -> Self::Column;
}

/// Which rows a list shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deleted {
    /// Live rows only.
    #[default]
    Exclude,
    /// Live and deleted rows.
    Include,
    /// Deleted rows only (to find what to restore).
    Only,
}

/// `?limit=&after=&deleted=` on every list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u64>,
    /// Cursor: the `nextCursor` of the previous page.
    pub after: Option<i64>,
    /// Soft-deleted rows filter.
    #[serde(default)]
    pub deleted: Deleted,
}

/// A page size from `?limit=`, checked: 1 to 200, default 50.
pub fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit.unwrap_or(50) {
        limit @ 1..=200 => Ok(limit),
        other => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 200, got {other}"
        ))),
    }
}

/// Cuts `rows` (fetched with `limit + 1`) to a page and the cursor of the next one.
pub fn split_page<T>(
    mut rows: Vec<T>,
    limit: u64,
    id_of: impl Fn(&T) -> i64,
) -> (Vec<T>, Option<i64>) {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(id_of) } else { None };
    (rows, next)
}

/// One page of a list, oldest first; `nextCursor` is null on the last page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page.
    pub next_cursor: Option<i64>,
}

/// Rows of `account` in `E` in the caller's account.
pub fn scoped<E: Scoped>(account: i64) -> Select<E> {
    E::find().filter(E::account().eq(account))
}

/// The row `id` of `account`, live unless `include_deleted`; 404 otherwise.
pub async fn fetch<E: Scoped>(
    db: &impl ConnectionTrait,
    account: i64,
    id: i64,
    include_deleted: bool,
) -> Result<E::Model, ApiError> {
    let mut query = scoped::<E>(account).filter(E::id().eq(id));
    if !include_deleted {
        query = query.filter(E::deleted_at().is_null());
    }
    query.one(db).await?.ok_or(ApiError::NotFound(E::NOUN))
}

/// One page of `E` in `account`, plus the id to continue after.
pub async fn page<E: Scoped>(
    db: &impl ConnectionTrait,
    account: i64,
    params: &ListParams,
    id_of: impl Fn(&E::Model) -> i64,
) -> Result<(Vec<E::Model>, Option<i64>), ApiError> {
    let limit = page_limit(params.limit)?;
    let mut query = scoped::<E>(account);
    query = match params.deleted {
        Deleted::Exclude => query.filter(E::deleted_at().is_null()),
        Deleted::Include => query,
        Deleted::Only => query.filter(E::deleted_at().is_not_null()),
    };
    if let Some(after) = params.after {
        query = query.filter(E::id().gt(after));
    }
    let rows = query.order_by_asc(E::id()).limit(limit + 1).all(db).await?;
    Ok(split_page(rows, limit, id_of))
}

/// Marks the row deleted (`true`) or live again (`false`). A row already in that state is 404 for
/// delete (it is gone) and 409 for restore (nothing to restore).
pub async fn set_deleted<E: Scoped>(
    db: &impl ConnectionTrait,
    account: i64,
    id: i64,
    deleted: bool,
) -> Result<(), ApiError> {
    let now = Utc::now();
    let mut update = E::update_many()
        .col_expr(
            E::deleted_at(),
            Expr::value(if deleted { Some(now) } else { None }),
        )
        .filter(E::account().eq(account))
        .filter(E::id().eq(id));
    update = if deleted {
        update.filter(E::deleted_at().is_null())
    } else {
        update.filter(E::deleted_at().is_not_null())
    };
    if update.exec(db).await?.rows_affected == 1 {
        return Ok(());
    }
    // Nothing changed: tell "no such row" from "already in that state".
    fetch::<E>(db, account, id, true).await?;
    if deleted {
        Err(ApiError::NotFound(E::NOUN))
    } else {
        Err(ApiError::Conflict(format!("{} is not deleted", E::NOUN)))
    }
}

/// Soft-deletes row `id` of the caller's account and records it in the audit trail.
pub async fn soft_delete<E: Scoped>(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
) -> Result<(), ApiError> {
    set_deleted::<E>(&state.db, caller.account_id(), id, true).await?;
    audit::record(state, caller, E::DELETED, id, json!({})).await;
    Ok(())
}

/// Restores row `id` of the caller's account, records it, and returns the live row.
pub async fn restore<E: Scoped>(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
) -> Result<E::Model, ApiError> {
    set_deleted::<E>(&state.db, caller.account_id(), id, false).await?;
    audit::record(state, caller, E::RESTORED, id, json!({})).await;
    fetch::<E>(&state.db, caller.account_id(), id, false).await
}

macro_rules! scoped_entity {
    ($module:ident, $noun:literal, $deleted:ident, $restored:ident) => {
        impl Scoped for entity::$module::Entity {
            const NOUN: &'static str = $noun;
            const DELETED: AuditAction = AuditAction::$deleted;
            const RESTORED: AuditAction = AuditAction::$restored;
            fn id() -> Self::Column {
                entity::$module::Column::Id
            }
            fn account() -> Self::Column {
                entity::$module::Column::AccountId
            }
            fn deleted_at() -> Self::Column {
                entity::$module::Column::DeletedAt
            }
        }
    };
}

scoped_entity!(agents, "agent", AgentDeleted, AgentRestored);
scoped_entity!(groups, "group", GroupDeleted, GroupRestored);
scoped_entity!(tags, "tag", TagDeleted, TagRestored);

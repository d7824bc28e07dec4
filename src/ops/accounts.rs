//! Accounts, for operators: `GET /accounts` lists them, `POST /accounts` creates one with its
//! first admin and default group (the same as the first start does for the operator account).
//! Only operators open accounts: an account's own admins never see others. A repeated `POST`
//! opens another account (names need not be unique).

use axum::{Extension, Router, extract::State, http::StatusCode, routing::get};
use chrono::{DateTime, Utc};
use entity::accounts;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use crate::{
    chat::accounts::{NewAccount, open_account},
    error::ApiError,
    http::{
        extract::{Json, Query},
        resource::{Page, page_limit, split_page},
    },
    ops::auth::Operator,
    state::AppState,
};

pub fn router(state: &AppState) -> Router {
    Router::new()
        .route("/accounts", get(list).post(create))
        .with_state(state.clone())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AccountView {
    id: i64,
    name: String,
    created_at: DateTime<Utc>,
    /// Set when the account was just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_agent_id: Option<i64>,
}

impl From<accounts::Model> for AccountView {
    fn from(account: accounts::Model) -> Self {
        Self {
            id: account.id,
            name: account.name,
            created_at: account.created_at,
            admin_agent_id: None,
        }
    }
}

async fn create(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    Json(body): Json<NewAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    // A database that cannot be reached is a 503 to retry, as on the public API.
    let (account, admin, record) = open_account(&state.db, body, Some(operator.agent_id))
        .await
        .map_err(|err| match err.downcast::<DbErr>() {
            Ok(err) => ApiError::from(err),
            Err(err) => ApiError::Internal(err),
        })?;
    if let Err(err) = state.jobs.submit(record).await {
        tracing::warn!(account_id = account.id, %err, "audit record not submitted");
    }
    let view = AccountView {
        admin_agent_id: Some(admin.id),
        ..account.into()
    };
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    limit: Option<u64>,
    after: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<AccountView>>, ApiError> {
    let limit = page_limit(params.limit)?;
    let rows = accounts::Entity::find()
        .filter(accounts::Column::Id.gt(params.after.unwrap_or(0)))
        .order_by_asc(accounts::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |account| account.id);
    let items = rows.into_iter().map(AccountView::from).collect();
    Ok(Json(Page { items, next_cursor }))
}

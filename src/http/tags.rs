//! `/v1/tags`: labels for conversations. Any agent reads; supervisors and admins change.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use entity::{enums::AgentRole, tags};
use jobs::audit::AuditAction;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    extract::{Json, Path, Query},
    resource::{self, ListParams, Page},
};
use crate::{
    auth::CurrentAgent,
    chat::audit,
    domain::{Color, TagName, nullable},
    error::ApiError,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tags", get(list).post(create))
        .route("/tags/{id}", get(show).patch(update).delete(remove))
        .route("/tags/{id}/restore", post(restore))
}

/// A tag as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagView {
    id: i64,
    name: String,
    color: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl From<tags::Model> for TagView {
    fn from(tag: tags::Model) -> Self {
        Self {
            id: tag.id,
            name: tag.name,
            color: tag.color,
            created_at: tag.created_at,
            updated_at: tag.updated_at,
            deleted_at: tag.deleted_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTag {
    name: TagName,
    color: Option<Color>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateTag {
    name: Option<TagName>,
    #[serde(default, deserialize_with = "nullable")]
    color: Option<Option<Color>>,
}

const DUPLICATE_NAME: &str =
    "a tag with this name already exists in the account (if it was deleted, restore it)";

async fn list(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<TagView>>, ApiError> {
    let (rows, next_cursor) =
        resource::page::<tags::Entity>(&state.db, caller.account_id(), &params, |t| t.id).await?;
    Ok(Json(Page {
        items: rows.into_iter().map(TagView::from).collect(),
        next_cursor,
    }))
}

async fn show(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<TagView>, ApiError> {
    let tag = resource::fetch::<tags::Entity>(&state.db, caller.account_id(), id, true).await?;
    Ok(Json(tag.into()))
}

async fn create(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Json(body): Json<CreateTag>,
) -> Result<(StatusCode, Json<TagView>), ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let now = Utc::now();
    let tag = tags::ActiveModel {
        account_id: Set(caller.account_id()),
        name: Set(body.name.into()),
        color: Set(body.color.map(Into::into)),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&state.db)
    .await
    .map_err(ApiError::conflict_on_unique(DUPLICATE_NAME))?;
    audit::record(
        &state,
        &caller,
        AuditAction::TagCreated,
        tag.id,
        json!({ "name": tag.name }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(tag.into())))
}

async fn update(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<UpdateTag>,
) -> Result<Json<TagView>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let tag = resource::fetch::<tags::Entity>(&state.db, caller.account_id(), id, false).await?;
    let mut row: tags::ActiveModel = tag.into();
    if let Some(name) = body.name {
        row.name = Set(name.into());
    }
    if let Some(color) = body.color {
        row.color = Set(color.map(Into::into));
    }
    row.updated_at = Set(Utc::now());
    let tag = row
        .update(&state.db)
        .await
        .map_err(ApiError::conflict_on_unique(DUPLICATE_NAME))?;
    audit::record(
        &state,
        &caller,
        AuditAction::TagUpdated,
        id,
        json!({ "name": tag.name }),
    )
    .await;
    Ok(Json(tag.into()))
}

async fn remove(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    resource::soft_delete::<tags::Entity>(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<TagView>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let tag = resource::restore::<tags::Entity>(&state, &caller, id).await?;
    Ok(Json(tag.into()))
}

//! `/v1/webhooks`: an account's signed HTTP callbacks, and what was delivered to them. Admins only.
//!
//! The secret signs every call, so it is stored as given; it is never shown again (answers carry
//! its last four characters) and never logged or audited. URLs are checked here (http or https,
//! at most 2048 characters, and no loopback, private, link-local or unspecified address unless
//! `SWITCHBOARD_WEBHOOK_ALLOW_PRIVATE`) and again at every call, on the addresses connected to.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use entity::{deliveries, enums::AgentRole, webhooks};
use jobs::{
    audit::AuditAction,
    delivery::{guard::check_url, webhook::KINDS},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    extract::{Json, Path, Query},
    resource::{self, ListParams, Page, Scoped},
};
use crate::{auth::CurrentAgent, chat::audit, error::ApiError, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{id}", get(show).patch(update).delete(remove))
        .route("/webhooks/{id}/restore", post(restore))
        .route("/webhooks/{id}/deliveries", get(deliveries_of))
}

impl Scoped for webhooks::Entity {
    const DELETED: AuditAction = AuditAction::WebhookDeleted;
    const RESTORED: AuditAction = AuditAction::WebhookRestored;
    const NOUN: &'static str = "webhook";
    fn id() -> Self::Column {
        webhooks::Column::Id
    }
    fn account() -> Self::Column {
        webhooks::Column::AccountId
    }
    fn deleted_at() -> Self::Column {
        webhooks::Column::DeletedAt
    }
}

/// Shortest secret accepted: a signature is only as strong as its key.
pub const MIN_SECRET: usize = 16;
/// Longest secret (the column's size).
pub const MAX_SECRET: usize = 256;

/// A webhook secret: 16 to 256 characters, no spaces or control characters.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
struct Secret(String);

impl TryFrom<String> for Secret {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let length = value.chars().count();
        if length < MIN_SECRET {
            return Err(format!("secret must be at least {MIN_SECRET} characters"));
        }
        if value.len() > MAX_SECRET {
            return Err(format!("secret must be at most {MAX_SECRET} bytes"));
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("secret must not contain spaces or control characters".into());
        }
        Ok(Self(value))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Subscribed kinds: at least one, each from [`KINDS`], without repeats (kept in that order).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vec<String>")]
struct Kinds(Vec<String>);

impl TryFrom<Vec<String>> for Kinds {
    type Error = String;
    fn try_from(value: Vec<String>) -> Result<Self, String> {
        if value.is_empty() {
            return Err("events must name at least one kind".into());
        }
        if let Some(unknown) = value.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(format!(
                "unknown event kind {unknown:?}; known kinds: {}",
                KINDS.join(", ")
            ));
        }
        Ok(Self(
            KINDS
                .iter()
                .filter(|k| value.iter().any(|v| v == *k))
                .map(|k| (*k).to_owned())
                .collect(),
        ))
    }
}

/// A webhook as the API shows it (the secret masked).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    id: i64,
    url: String,
    events: serde_json::Value,
    active: bool,
    /// The secret's last four characters, for telling secrets apart.
    secret: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl From<webhooks::Model> for WebhookView {
    fn from(hook: webhooks::Model) -> Self {
        let tail: String = {
            let chars: Vec<char> = hook.secret.chars().collect();
            chars[chars.len().saturating_sub(4)..].iter().collect()
        };
        Self {
            id: hook.id,
            url: hook.url,
            events: hook.events,
            active: hook.active,
            secret: format!("••••{tail}"),
            created_at: hook.created_at,
            updated_at: hook.updated_at,
            deleted_at: hook.deleted_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateWebhook {
    url: String,
    secret: Secret,
    events: Kinds,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateWebhook {
    url: Option<String>,
    secret: Option<Secret>,
    events: Option<Kinds>,
    active: Option<bool>,
}

/// The URL, checked against the rules (422 names the one broken).
async fn valid_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    check_url(raw.trim(), state.settings.webhook_allow_private)
        .await
        .map(String::from)
        .map_err(ApiError::Unprocessable)
}

async fn list(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<WebhookView>>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let (rows, next_cursor) =
        resource::page::<webhooks::Entity>(&state.db, caller.account_id(), &params, |w| w.id)
            .await?;
    Ok(Json(Page {
        items: rows.into_iter().map(WebhookView::from).collect(),
        next_cursor,
    }))
}

async fn show(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let hook =
        resource::fetch::<webhooks::Entity>(&state.db, caller.account_id(), id, true).await?;
    Ok(Json(hook.into()))
}

async fn create(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Json(body): Json<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    caller.require(AgentRole::Admin)?;
    let url = valid_url(&state, &body.url).await?;
    let now = Utc::now();
    let hook = webhooks::ActiveModel {
        account_id: Set(caller.account_id()),
        url: Set(url),
        secret: Set(body.secret.0),
        events: Set(json!(body.events.0)),
        active: Set(body.active),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&state.db)
    .await?;
    state.notifier.subscriptions_changed(caller.account_id());
    audit::record(
        &state,
        &caller,
        AuditAction::WebhookCreated,
        hook.id,
        json!({ "events": hook.events, "active": hook.active }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(hook.into())))
}

async fn update(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let hook =
        resource::fetch::<webhooks::Entity>(&state.db, caller.account_id(), id, false).await?;
    // Everything is checked before anything is written.
    let url = match &body.url {
        Some(raw) => Some(valid_url(&state, raw).await?),
        None => None,
    };
    let mut row: webhooks::ActiveModel = hook.into();
    let mut changed = Vec::new();
    if let Some(url) = url {
        row.url = Set(url);
        changed.push("url");
    }
    if let Some(secret) = body.secret {
        row.secret = Set(secret.0);
        changed.push("secret");
    }
    if let Some(events) = body.events {
        row.events = Set(json!(events.0));
        changed.push("events");
    }
    if let Some(active) = body.active {
        row.active = Set(active);
        changed.push("active");
    }
    row.updated_at = Set(Utc::now());
    let hook = row.update(&state.db).await?;
    state.notifier.subscriptions_changed(caller.account_id());
    audit::record(
        &state,
        &caller,
        AuditAction::WebhookUpdated,
        id,
        json!({ "changed": changed }),
    )
    .await;
    Ok(Json(hook.into()))
}

async fn remove(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require(AgentRole::Admin)?;
    resource::soft_delete::<webhooks::Entity>(&state, &caller, id).await?;
    state.notifier.subscriptions_changed(caller.account_id());
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let hook = resource::restore::<webhooks::Entity>(&state, &caller, id).await?;
    state.notifier.subscriptions_changed(caller.account_id());
    Ok(Json(hook.into()))
}

/// One delivery as operators see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryView {
    id: i64,
    delivery_id: String,
    kind: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    last_error: Option<String>,
    last_status_code: Option<i32>,
    next_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeliveryParams {
    limit: Option<u64>,
    after: Option<i64>,
    status: Option<jobs::delivery::deliveries::DeliveryStatus>,
}

async fn deliveries_of(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Query(params): Query<DeliveryParams>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let limit = resource::page_limit(params.limit)?;
    resource::fetch::<webhooks::Entity>(&state.db, caller.account_id(), id, true).await?;
    let mut query = deliveries::Entity::find()
        .filter(deliveries::Column::AccountId.eq(caller.account_id()))
        .filter(deliveries::Column::WebhookId.eq(id))
        .filter(deliveries::Column::Id.gt(params.after.unwrap_or(0)));
    if let Some(status) = params.status {
        query = query.filter(deliveries::Column::Status.eq(status));
    }
    let rows = query
        .order_by_asc(deliveries::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let (rows, next_cursor) = resource::split_page(rows, limit, |row| row.id);
    let items = rows
        .into_iter()
        .map(|row| DeliveryView {
            id: row.id,
            delivery_id: row.delivery_key,
            kind: row.kind,
            status: row.status,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            last_error: row.last_error,
            last_status_code: row.last_status_code,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
            data: row.payload,
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

//! The audit trail: admins read it here (every administrative change records itself through
//! [`crate::chat::audit::record`]).

use axum::{Router, extract::State, routing::get};
use chrono::{DateTime, Utc};
use entity::{audit_log, enums::AgentRole};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use super::{
    extract::{Json, Query},
    resource::{self, Page},
};
use crate::{auth::CurrentAgent, error::ApiError, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

/// One audit entry.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditEntry {
    id: i64,
    actor_agent_id: Option<i64>,
    action: String,
    subject_type: String,
    subject_id: Option<i64>,
    details: serde_json::Value,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuditParams {
    limit: Option<u64>,
    after: Option<i64>,
    action: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Query(params): Query<AuditParams>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let limit = resource::page_limit(params.limit)?;
    let mut query = audit_log::Entity::find()
        .filter(audit_log::Column::AccountId.eq(caller.account_id()))
        .filter(audit_log::Column::Id.gt(params.after.unwrap_or(0)));
    if let Some(action) = params.action {
        query = query.filter(audit_log::Column::Action.eq(action));
    }
    let rows = query
        .order_by_asc(audit_log::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let (rows, next_cursor) = resource::split_page(rows, limit, |row| row.id);
    let items = rows
        .into_iter()
        .map(|row| AuditEntry {
            id: row.id,
            actor_agent_id: row.actor_agent_id,
            action: row.action,
            subject_type: row.subject_type,
            subject_id: row.subject_id,
            details: row.details,
            created_at: row.created_at,
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

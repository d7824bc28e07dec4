//! `/v1/agents`: the people who take chats. Any agent may read the team; admins change it.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, patch, post, put},
};
use chrono::{Duration, Utc};
use entity::{
    agents, assignments, conversations,
    enums::{AgentRole, AgentStatus, ConversationStatus},
};
use jobs::{audit::AuditAction, notify::Outcome};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    extract::{Json, Path, Query},
    rate_limit,
    resource::{self, ListParams, Page},
};
use crate::{
    auth::{CurrentAgent, hash_password, verify_password},
    chat::{
        self,
        agents::{StatusBody, offer_capacity, release, sign_out},
        audit,
        views::AgentView,
    },
    domain::{Capacity, Email, HttpUrl, Name, Password, Secret, nullable},
    error::ApiError,
    state::AppState,
};

pub fn router(state: &AppState) -> Router<AppState> {
    // A password change checks the current password: it draws from a budget like sign-ins.
    let checks = rate_limit::per_client(state.settings.login_rate_per_minute);
    Router::new()
        .route("/agents", get(list).post(create))
        .route("/agents/me", get(me).merge(patch(update_me).layer(checks)))
        .route("/agents/{id}", get(show).patch(update).delete(remove))
        .route("/agents/{id}/restore", post(restore))
        .route("/agents/{id}/stats", get(stats))
        .route("/agents/me/status", put(set_status))
}

/// Sets the caller's presence (see `chat::agents::set_status`).
async fn set_status(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Json(body): Json<StatusBody>,
) -> Result<Json<AgentView>, ApiError> {
    chat::agents::set_status(&state, caller, body)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateAgent {
    name: Name,
    email: Email,
    password: Password,
    #[serde(default = "default_role")]
    role: AgentRole,
    max_concurrent_chats: Option<Capacity>,
    avatar_url: Option<HttpUrl>,
}

fn default_role() -> AgentRole {
    AgentRole::Agent
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateAgent {
    name: Option<Name>,
    email: Option<Email>,
    password: Option<Password>,
    role: Option<AgentRole>,
    max_concurrent_chats: Option<Capacity>,
    #[serde(default, deserialize_with = "nullable")]
    avatar_url: Option<Option<HttpUrl>>,
}

/// What agents may change of their own profile (`PATCH /v1/agents/me`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateMe {
    name: Option<Name>,
    #[serde(default, deserialize_with = "nullable")]
    avatar_url: Option<Option<HttpUrl>>,
    /// The new password; needs `currentPassword`.
    password: Option<Password>,
    current_password: Option<Secret>,
}

/// The profile fields an update writes, and the names of those it changed (for the audit).
struct Profile {
    name: Option<Name>,
    avatar_url: Option<Option<HttpUrl>>,
    /// The new password's hash; writing it signs the agent out everywhere.
    password_hash: Option<String>,
}

impl Profile {
    fn apply(
        self,
        agent: &agents::Model,
        row: &mut agents::ActiveModel,
        changed: &mut Vec<&'static str>,
    ) {
        if let Some(name) = self.name {
            row.name = Set(name.into());
            changed.push("name");
        }
        if let Some(avatar) = self.avatar_url {
            row.avatar_url = Set(avatar.map(Into::into));
            changed.push("avatarUrl");
        }
        if let Some(hash) = self.password_hash {
            row.password_hash = Set(hash);
            // A new password signs the agent out everywhere.
            row.token_version = Set(agent.token_version + 1);
            changed.push("password");
        }
    }
}

const DUPLICATE_EMAIL: &str =
    "an agent with this e-mail already exists in the account (if it was deleted, restore it)";

async fn list(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<AgentView>>, ApiError> {
    let (rows, next_cursor) =
        resource::page::<agents::Entity>(&state.db, caller.account_id(), &params, |a| a.id).await?;
    let items = AgentView::many(&state.db, rows).await?;
    Ok(Json(Page { items, next_cursor }))
}

async fn show(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<AgentView>, ApiError> {
    let agent = resource::fetch::<agents::Entity>(&state.db, caller.account_id(), id, true).await?;
    Ok(Json(AgentView::one(&state.db, agent).await?))
}

async fn create(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Json(body): Json<CreateAgent>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    caller.require(AgentRole::Admin)?;
    let password_hash = hash_password(body.password.expose().to_owned()).await?;
    let now = Utc::now();
    let agent = agents::ActiveModel {
        account_id: Set(caller.account_id()),
        name: Set(body.name.into()),
        email: Set(body.email.into()),
        password_hash: Set(password_hash),
        role: Set(body.role),
        status: Set(AgentStatus::Offline),
        accepting_chats: Set(false),
        max_concurrent_chats: Set(body.max_concurrent_chats.map_or(6, Capacity::get)),
        active_chats: Set(0),
        avatar_url: Set(body.avatar_url.map(Into::into)),
        token_version: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&state.db)
    .await
    .map_err(ApiError::conflict_on_unique(DUPLICATE_EMAIL))?;
    audit::record(
        &state,
        &caller,
        AuditAction::AgentCreated,
        agent.id,
        json!({ "email": agent.email, "role": agent.role }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(AgentView::one(&state.db, agent).await?),
    ))
}

async fn update(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<UpdateAgent>,
) -> Result<Json<AgentView>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let password_hash = match &body.password {
        Some(password) => Some(hash_password(password.expose().to_owned()).await?),
        None => None,
    };
    let txn = jobs::db::begin_write(&state.db).await?;
    let agent = resource::fetch::<agents::Entity>(&txn, caller.account_id(), id, false).await?;
    if agent.role == AgentRole::Admin && body.role.is_some_and(|role| role != AgentRole::Admin) {
        ensure_another_admin(&txn, &agent).await?;
    }
    let mut changed = Vec::new();
    let mut row: agents::ActiveModel = agent.clone().into();
    if let Some(email) = body.email {
        row.email = Set(email.into());
        changed.push("email");
    }
    if let Some(role) = body.role {
        row.role = Set(role);
        changed.push("role");
    }
    if let Some(capacity) = body.max_concurrent_chats {
        row.max_concurrent_chats = Set(capacity.get());
        changed.push("maxConcurrentChats");
    }
    let profile = Profile {
        name: body.name,
        avatar_url: body.avatar_url,
        password_hash,
    };
    profile.apply(&agent, &mut row, &mut changed);
    row.updated_at = Set(Utc::now());
    let agent = row
        .update(&txn)
        .await
        .map_err(ApiError::conflict_on_unique(DUPLICATE_EMAIL))?;
    txn.commit().await?;
    if changed.iter().any(|c| matches!(*c, "password" | "role")) {
        // Signed-out sockets go; a role change reconnects into the rooms of the new role.
        sign_out(&state, agent.account_id, id);
    }
    if body.max_concurrent_chats.is_some() {
        offer_capacity(&state, &agent).await;
    }
    audit::record(
        &state,
        &caller,
        AuditAction::AgentUpdated,
        id,
        json!({ "changed": changed }),
    )
    .await;
    Ok(Json(AgentView::one(&state.db, agent).await?))
}

/// The caller's own profile.
async fn me(
    State(state): State<AppState>,
    caller: CurrentAgent,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(AgentView::one(&state.db, caller.agent).await?))
}

/// Changes the caller's own name, picture or password (with the current one). A new password
/// signs the agent out everywhere, this session included: it signs in again with it.
async fn update_me(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Json(body): Json<UpdateMe>,
) -> Result<Json<AgentView>, ApiError> {
    let password_hash = match (body.password, body.current_password) {
        (None, None) => None,
        (Some(new), Some(current)) => {
            let hash = caller.agent.password_hash.clone();
            if current.expose().len() > 1024 || !verify_password(current.into_inner(), hash).await?
            {
                return Err(ApiError::Unprocessable(
                    "currentPassword is not your password".into(),
                ));
            }
            Some(hash_password(new.expose().to_owned()).await?)
        }
        (Some(_), None) => {
            return Err(ApiError::Unprocessable(
                "give currentPassword to change the password".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::Unprocessable(
                "currentPassword goes with a new password".into(),
            ));
        }
    };
    let agent = caller.agent.clone();
    let mut row = <agents::ActiveModel as Default>::default();
    let mut changed = Vec::new();
    let profile = Profile {
        name: body.name,
        avatar_url: body.avatar_url,
        password_hash,
    };
    profile.apply(&agent, &mut row, &mut changed);
    if changed.is_empty() {
        return Ok(Json(AgentView::one(&state.db, agent).await?));
    }
    row.updated_at = Set(Utc::now());
    // Only the agent as the caller's token knows it: a sign-out, a deletion or another password
    // change since (the password check above may have waited its turn) wins, and nothing is written.
    let written = agents::Entity::update_many()
        .set(row)
        .filter(agents::Column::Id.eq(agent.id))
        .filter(agents::Column::AccountId.eq(agent.account_id))
        .filter(agents::Column::TokenVersion.eq(agent.token_version))
        .filter(agents::Column::DeletedAt.is_null())
        .exec(&state.db)
        .await?;
    if written.rows_affected == 0 {
        return Err(ApiError::Unauthorized("token revoked"));
    }
    let agent = agents::Entity::find_by_id(agent.id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::NotFound("agent"))?;
    if changed.contains(&"password") {
        sign_out(&state, agent.account_id, agent.id);
    }
    audit::record(
        &state,
        &caller,
        AuditAction::AgentUpdated,
        agent.id,
        json!({ "changed": changed }),
    )
    .await;
    Ok(Json(AgentView::one(&state.db, agent).await?))
}

async fn remove(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.require(AgentRole::Admin)?;
    if id == caller.id() {
        return Err(ApiError::Conflict("you cannot delete yourself".into()));
    }
    let txn = jobs::db::begin_write(&state.db).await?;
    let agent = resource::fetch::<agents::Entity>(&txn, caller.account_id(), id, false).await?;
    if agent.role == AgentRole::Admin {
        ensure_another_admin(&txn, &agent).await?;
    }
    resource::set_deleted::<agents::Entity>(&txn, caller.account_id(), id, true).await?;
    // A deleted agent is signed out, offline and takes nothing new (invariant 5).
    agents::ActiveModel {
        id: Set(id),
        status: Set(AgentStatus::Offline),
        accepting_chats: Set(false),
        token_version: Set(agent.token_version + 1),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(&txn)
    .await?;
    let went_offline = (agent.status != AgentStatus::Offline || agent.accepting_chats)
        .then(|| Outcome::went_offline(&agent));
    let staged = state.outbox.stage(&txn, went_offline).await?;
    txn.commit().await?;
    staged.tell(&*state.notifier);
    sign_out(&state, agent.account_id, id);
    release(&state, agent.id).await?;
    audit::record(&state, &caller, AuditAction::AgentDeleted, id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<AgentView>, ApiError> {
    caller.require(AgentRole::Admin)?;
    let agent = resource::restore::<agents::Entity>(&state, &caller, id).await?;
    Ok(Json(AgentView::one(&state.db, agent).await?))
}

/// Refuses to take the admin role away from the account's last live admin.
async fn ensure_another_admin(
    db: &impl ConnectionTrait,
    agent: &agents::Model,
) -> Result<(), ApiError> {
    // Locking every admin row (PostgreSQL; SQLite runs write transactions one at a time) makes
    // two admins demoting each other at once take turns: the second sees the first's change.
    let mut admins = resource::scoped::<agents::Entity>(agent.account_id)
        .filter(agents::Column::Role.eq(AgentRole::Admin))
        .filter(agents::Column::DeletedAt.is_null())
        .order_by_asc(agents::Column::Id);
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        admins = admins.lock_exclusive();
    }
    let others = admins
        .all(db)
        .await?
        .iter()
        .filter(|admin| admin.id != agent.id)
        .count();
    if others == 0 {
        return Err(ApiError::Conflict(
            "the account must keep at least one admin".into(),
        ));
    }
    Ok(())
}

/// Workload and service numbers of one agent.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentStats {
    agent_id: i64,
    status: AgentStatus,
    accepting_chats: bool,
    max_concurrent_chats: i32,
    /// The maintained counter.
    active_chats: i32,
    /// Active conversations counted from their rows (equal to `activeChats` unless repairing).
    active_conversations: u64,
    assignments_total: u64,
    assignments_last_24h: u64,
    /// Conversations the agent resolved or closed.
    conversations_finished: u64,
    /// Mean seconds from assignment to the agent's first reply, last 30 days.
    average_first_response_seconds: Option<f64>,
}

async fn stats(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<AgentStats>, ApiError> {
    if id != caller.id() {
        caller.require(AgentRole::Supervisor)?;
    }
    let account = caller.account_id();
    let agent = resource::fetch::<agents::Entity>(&state.db, account, id, true).await?;
    let now = Utc::now();
    let conversations_of_agent = || {
        conversations::Entity::find()
            .filter(conversations::Column::AccountId.eq(account))
            .filter(conversations::Column::AssignedAgentId.eq(id))
    };
    let assignments_of_agent = || {
        assignments::Entity::find()
            .filter(assignments::Column::AccountId.eq(account))
            .filter(assignments::Column::AgentId.eq(id))
    };
    let active_conversations = conversations_of_agent()
        .filter(conversations::Column::Status.eq(ConversationStatus::Active))
        .count(&state.db)
        .await?;
    let conversations_finished = conversations_of_agent()
        .filter(
            conversations::Column::Status
                .is_in([ConversationStatus::Resolved, ConversationStatus::Closed]),
        )
        .count(&state.db)
        .await?;
    let assignments_total = assignments_of_agent().count(&state.db).await?;
    let assignments_last_24h = assignments_of_agent()
        .filter(assignments::Column::AssignedAt.gte(now - Duration::hours(24)))
        .count(&state.db)
        .await?;
    type Moments = (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>);
    let response_times: Vec<Moments> = conversations_of_agent()
        .filter(conversations::Column::AssignedAt.gte(now - Duration::days(30)))
        .filter(conversations::Column::FirstResponseAt.is_not_null())
        .select_only()
        .column(conversations::Column::AssignedAt)
        .column(conversations::Column::FirstResponseAt)
        .limit(10_000)
        .into_tuple()
        .all(&state.db)
        .await?;
    let seconds: Vec<f64> = response_times
        .into_iter()
        .filter_map(|(assigned, first)| Some((first? - assigned?).num_milliseconds() as f64 / 1e3))
        .collect();
    let average_first_response_seconds =
        (!seconds.is_empty()).then(|| seconds.iter().sum::<f64>() / seconds.len() as f64);
    Ok(Json(AgentStats {
        agent_id: agent.id,
        status: agent.status,
        accepting_chats: agent.accepting_chats,
        max_concurrent_chats: agent.max_concurrent_chats,
        active_chats: agent.active_chats,
        active_conversations,
        assignments_total,
        assignments_last_24h,
        conversations_finished,
        average_first_response_seconds,
    }))
}

//! `/v1/auth`: sign in with e-mail and password, ask who you are, sign out everywhere.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use entity::agents;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::{Deserialize, Serialize};

use super::{extract::Json, rate_limit};
use crate::{
    auth::{CurrentAgent, verify_decoy, verify_password},
    chat::{
        agents::{revoking_tokens, sign_out},
        views::AgentView,
    },
    domain::Secret,
    error::ApiError,
    state::AppState,
};

pub fn router(state: &AppState) -> Router<AppState> {
    let login_limit = rate_limit::per_client(state.settings.login_rate_per_minute);
    Router::new()
        .route("/auth/login", post(login).layer(login_limit))
        .route("/auth/me", get(me))
        .route("/auth/logout", post(logout))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Login {
    email: String,
    password: Secret,
    /// Needed only when the same e-mail belongs to agents of several accounts.
    account_id: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    token: String,
    /// The same token under the name the API Switchboard replaces (and OAuth 2) gives it.
    #[serde(rename = "access_token")]
    access_token: String,
    token_type: &'static str,
    /// Unix seconds.
    expires_at: i64,
    agent: AgentView,
}

async fn login(
    State(state): State<AppState>,
    Json(body): Json<Login>,
) -> Result<Json<Session>, ApiError> {
    const REFUSED: ApiError = ApiError::Unauthorized("wrong e-mail or password");
    // Control characters (NUL above all, which PostgreSQL refuses in text) match nobody.
    if body.email.len() > 320
        || body.password.expose().len() > 1024
        || body.email.chars().any(char::is_control)
    {
        return Err(REFUSED);
    }
    let mut query = agents::Entity::find()
        .filter(agents::Column::Email.eq(body.email.trim().to_lowercase()))
        .filter(agents::Column::DeletedAt.is_null());
    if let Some(account) = body.account_id {
        query = query.filter(agents::Column::AccountId.eq(account));
    }
    let candidates = query.limit(10).all(&state.db).await?;
    if candidates.is_empty() {
        // Take as long as a wrong password would, so the answer does not tell who has an account.
        verify_decoy(body.password.into_inner()).await?;
        return Err(REFUSED);
    }
    for agent in candidates {
        if verify_password(
            body.password.expose().to_owned(),
            agent.password_hash.clone(),
        )
        .await?
        {
            let (token, expires_at) =
                state
                    .tokens
                    .issue(agent.id, agent.account_id, agent.token_version)?;
            return Ok(Json(Session {
                access_token: token.clone(),
                token,
                token_type: "Bearer",
                expires_at,
                agent: AgentView::one(&state.db, agent).await?,
            }));
        }
    }
    Err(REFUSED)
}

async fn me(
    State(state): State<AppState>,
    caller: CurrentAgent,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(AgentView::one(&state.db, caller.agent).await?))
}

/// Revokes every token of the caller (this one included) and closes its sockets on every node.
async fn logout(
    State(state): State<AppState>,
    caller: CurrentAgent,
) -> Result<StatusCode, ApiError> {
    revoking_tokens(agents::Entity::update_many())
        .filter(agents::Column::Id.eq(caller.id()))
        .filter(agents::Column::AccountId.eq(caller.account_id()))
        .exec(&state.db)
        .await?;
    sign_out(&state, caller.account_id(), caller.id());
    Ok(StatusCode::NO_CONTENT)
}

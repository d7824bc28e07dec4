//! Agent authentication: argon2 password hashes, signed expiring tokens, and the extractor that
//! turns a bearer token into the calling agent.
//!
//! Rules: a token is checked against the agent's current row on every request (deleted agents and
//! bumped `token_version`s are refused at once); the role comes from the row, not the token; every
//! handler scopes its queries by `CurrentAgent::account_id`.

mod password;
pub mod token;
pub mod visitor;

use axum::{extract::FromRequestParts, http::request::Parts};
use entity::{agents, enums::AgentRole};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

pub use password::{PasswordError, hash_password, verify_decoy, verify_password};
pub use token::{Claims, TokenKeys};

use crate::{error::ApiError, state::AppState};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct CurrentAgent {
    /// The agent's row as it is now.
    pub agent: agents::Model,
}

impl CurrentAgent {
    /// The caller's account: every query of the request is scoped to it.
    pub fn account_id(&self) -> i64 {
        self.agent.account_id
    }

    /// The caller's id.
    pub fn id(&self) -> i64 {
        self.agent.id
    }

    /// Refuses with 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: AgentRole) -> Result<(), ApiError> {
        if rank(self.agent.role) >= rank(role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// Roles are ordered: each one can do what the one below can.
pub fn rank(role: AgentRole) -> u8 {
    match role {
        AgentRole::Agent => 0,
        AgentRole::Supervisor => 1,
        AgentRole::Admin => 2,
    }
}

impl FromRequestParts<AppState> for CurrentAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header =
            parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or(ApiError::Unauthorized(
                    "missing Authorization: Bearer token",
                ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized(
                "expected Authorization: Bearer <token>",
            ))?;
        Self::from_token(state, token).await
    }
}

impl CurrentAgent {
    /// The agent a bearer token names, checked against its row as it is now (HTTP header or
    /// socket handshake).
    pub async fn from_token(state: &AppState, token: &str) -> Result<Self, ApiError> {
        let claims = state.tokens.verify(token.trim())?;
        Self::reload(
            &state.db,
            TokenKeys::agent_id(&claims)?,
            claims.acc,
            claims.ver,
        )
        .await
    }

    /// The agent as it is now, if it still exists in `account_id` at token version `version`:
    /// sockets call it for each event, so a deletion or revocation takes effect at once.
    pub async fn reload(
        db: &impl sea_orm::ConnectionTrait,
        agent_id: i64,
        account_id: i64,
        version: i32,
    ) -> Result<Self, ApiError> {
        let agent = agents::Entity::find_by_id(agent_id)
            .filter(agents::Column::AccountId.eq(account_id))
            .filter(agents::Column::DeletedAt.is_null())
            .one(db)
            .await?
            .filter(|agent| agent.token_version == version)
            .ok_or(ApiError::Unauthorized("token revoked"))?;
        Ok(Self { agent })
    }
}

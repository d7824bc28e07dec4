//! Visitor sessions: a random bearer token handed out once, stored only as its SHA-256.
//!
//! A session token has 256 bits of entropy, so a fast hash is enough (unlike passwords): the
//! database never holds a usable token, and lookups stay one indexed query.

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use entity::visitors;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

use crate::{error::ApiError, state::AppState};

/// A fresh session token and the hash to store.
pub fn new_session_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_session_token(&token);
    (token, hash)
}

/// The stored form of a session token.
pub fn hash_session_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The visitor calling a widget endpoint (`Authorization: Bearer <sessionToken>`).
#[derive(Debug, Clone)]
pub struct CurrentVisitor {
    /// The visitor's row.
    pub visitor: visitors::Model,
}

impl FromRequestParts<AppState> for CurrentVisitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized(
                "expected Authorization: Bearer <sessionToken>",
            ))?;
        let current = Self::from_token(&state.db, token).await?;
        current.seen(&state.db).await;
        Ok(current)
    }
}

/// How stale a visitor's `last_seen_at` may get before a request of theirs refreshes it (the
/// timer that closes chats whose visitor left counts in minutes; see `jobs::timers`).
pub const SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl CurrentVisitor {
    /// Records that the visitor is around (`last_seen_at`), at most every [`SEEN_EVERY`]. A
    /// failure is only logged: it must not fail the request.
    pub async fn seen(&self, db: &impl sea_orm::ConnectionTrait) {
        use sea_orm::sea_query::Expr;
        let now = chrono::Utc::now();
        if now - self.visitor.last_seen_at
            < chrono::Duration::from_std(SEEN_EVERY).unwrap_or_default()
        {
            return;
        }
        let stamped = visitors::Entity::update_many()
            .col_expr(visitors::Column::LastSeenAt, Expr::value(now))
            .filter(visitors::Column::Id.eq(self.visitor.id))
            .filter(visitors::Column::LastSeenAt.lt(now))
            .exec(db)
            .await;
        if let Err(err) = stamped {
            tracing::warn!(%err, "could not record that a visitor was seen");
        }
    }

    /// The visitor whose session token is `token` (HTTP header or socket handshake).
    pub async fn from_token(
        db: &impl sea_orm::ConnectionTrait,
        token: &str,
    ) -> Result<Self, ApiError> {
        let visitor = visitors::Entity::find()
            .filter(visitors::Column::SessionTokenHash.eq(hash_session_token(token.trim())))
            .one(db)
            .await?
            .ok_or(ApiError::Unauthorized("unknown session token"))?;
        Ok(Self { visitor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (token, hash) = new_session_token();
        let (other, _) = new_session_token();
        assert_ne!(token, other);
        assert_eq!(token.len(), 43);
        assert_eq!(hash, hash_session_token(&token));
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&token));
    }
}

//! Agent tokens: HS256 JWTs carrying the agent, its account and its token version.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Agent id (a string, as the JWT spec wants `sub`).
    pub sub: String,
    /// Account id.
    pub acc: i64,
    /// The agent's `token_version` when issued; a bump revokes the token.
    pub ver: i32,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// Signs and checks tokens with one shared secret.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys for `secret`; tokens live `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// A token for agent `agent_id` of `account_id` at `version`, and its expiry (Unix seconds).
    pub fn issue(
        &self,
        agent_id: i64,
        account_id: i64,
        version: i32,
    ) -> anyhow::Result<(String, i64)> {
        let now = Utc::now().timestamp();
        let exp = now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: agent_id.to_string(),
            acc: account_id,
            ver: version,
            iat: now,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, exp))
    }

    /// The agent id of valid claims.
    pub fn agent_id(claims: &Claims) -> Result<i64, ApiError> {
        claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized("invalid token"))
    }

    /// The claims of a valid, unexpired token signed with our secret.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => ApiError::Unauthorized("token expired"),
                _ => ApiError::Unauthorized("invalid token"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_other_secrets_fail() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let (token, exp) = keys.issue(7, 3, 1).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.acc, claims.ver, claims.exp),
            ("7", 3, 1, exp)
        );
        let other = TokenKeys::new(
            b"another secret of thirty-two chars",
            Duration::from_secs(60),
        );
        assert!(matches!(
            other.verify(&token),
            Err(ApiError::Unauthorized("invalid token"))
        ));
        assert!(keys.verify("not.a.token").is_err());
    }

    #[test]
    fn an_expired_token_says_so() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let past = Utc::now().timestamp() - 10;
        let claims = Claims {
            sub: "1".into(),
            acc: 1,
            ver: 0,
            iat: past - 60,
            exp: past,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &keys.encoding).unwrap();
        assert!(matches!(
            keys.verify(&token),
            Err(ApiError::Unauthorized("token expired"))
        ));
    }
}

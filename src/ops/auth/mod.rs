//! HTTP basic auth for the whole operator listener: admin agents (role `admin`, not deleted) of
//! the operator account (the first account, created at bootstrap: the board and the metrics show
//! every account's jobs and queues) with their own e-mail and password, checked with the same
//! argon2 verification as `/v1/auth/login`.
//!
//! Rules:
//! - A successful check is remembered for [`REMEMBER`] (`remembered.rs`), so a password change,
//!   a demotion or a deletion takes effect within that. Remembered checks always pass.
//! - Failed checks are counted per client address and per admin's e-mail, [`FAILURES`] per
//!   [`FAILURE_WINDOW`] each, before the check runs (`failures.rs`). An e-mail past its budget is
//!   answered 429 without a check until the window ends, even with the right password, except
//!   from an address that signed in for it within [`KNOWN_FOR`]: strangers' wrong guesses cannot
//!   lock an admin out of where it works from. An address past its budget is answered 429 too,
//!   except for the right password of an admin: an attacker sharing the admin's address (a NAT, a
//!   proxy) cannot lock the admin out.
//! - Only admins' e-mails are counted (no other can pass); a blocked address finds them in a list
//!   read at most every [`ADMINS_FOR`], so it costs no query either. From a blocked address only
//!   e-mails of admins cost a check (each within its own budget) or are counted, so it cannot
//!   grow the table of counts either.
//! - Checks share the process's bound on password checks (`auth::password`): beyond it a request
//!   is answered 503 with `Retry-After` at once.
//! - A refusal is a 401 with `WWW-Authenticate: Basic`, whether the e-mail is unknown, the
//!   password wrong or the agent not an admin (unknown e-mails cost a decoy verification, so the
//!   timing does not tell them apart). Credentials are never logged.

mod failures;
mod remembered;

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use entity::{accounts, agents, enums::AgentRole};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, sea_query::Query,
};
use sha2::{Digest, Sha256};

pub use self::{
    failures::{FAILURE_WINDOW, FAILURES},
    remembered::REMEMBER,
};
use self::{
    failures::{Failures, TRACKED_CLIENTS, Who},
    remembered::Remembered,
};
use crate::{
    auth::{PasswordError, verify_decoy, verify_password},
    client_ip::ClientIp,
    error::ApiError,
};

/// How long an address that signed in for an e-mail passes that e-mail's block.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);
/// How long the list of admin e-mails is trusted.
const ADMINS_FOR: Duration = Duration::from_secs(5);

const CHALLENGE: &str = "Basic realm=\"Switchboard operators\", charset=\"UTF-8\"";

/// The checker shared by every request of the operator listener.
#[derive(Clone)]
pub struct OpsAuth(Arc<Inner>);

struct Inner {
    db: DatabaseConnection,
    /// Random per process: remembered digests mean nothing outside it.
    key: [u8; 32],
    remembered: Remembered,
    failures: Failures,
    /// (e-mail slot, address) pairs that signed in recently: their right password passes the
    /// e-mail's block, so strangers' wrong guesses cannot lock an admin out of a place it uses.
    known: jobs::cache::Cache<([u8; 32], IpAddr), ()>,
    /// The operator account's admin e-mails, read again every [`ADMINS_FOR`]: an e-mail that is
    /// none costs no query.
    admin_emails: tokio::sync::Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
}

/// The admin a request of the operator listener came from (a request extension, set by
/// [`require_admin`]).
#[derive(Debug, Clone, Copy)]
pub struct Operator {
    pub agent_id: i64,
}

/// What a check found.
enum Verdict {
    /// The admin (its agent id) with this password.
    Admin(i64),
    /// Anything else.
    Refused,
}

/// E-mail and password from an `Authorization: Basic` header.
struct Credentials {
    email: String,
    password: String,
}

impl std::fmt::Debug for OpsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpsAuth")
    }
}

impl OpsAuth {
    /// A checker of admin agents in `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Self(Arc::new(Inner {
            db,
            key,
            remembered: Remembered::default(),
            failures: Failures::default(),
            known: jobs::cache::short_lived(TRACKED_CLIENTS as u64, KNOWN_FOR),
            admin_emails: tokio::sync::Mutex::default(),
        }))
    }

    /// Passes a request carrying the credentials of an admin agent; refuses any other.
    async fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<Operator, Refusal> {
        let Some(credentials) = Credentials::from_headers(headers) else {
            return Err(Refusal::Unauthorized);
        };
        let (slot, digest) = self.digests(&credentials);
        if let Some(agent_id) = self.0.remembered.passes(&slot, &digest) {
            return Ok(Operator { agent_id });
        }
        // Counted before the check runs, given back when it passes or cannot run.
        let client = crate::chat::budget::client_key(client);
        let address = Who::Address(client);
        let address_count = self.0.failures.reserve(address);
        let address_blocked = address_count.err();
        let give_back_address = || {
            if let Ok(window) = address_count {
                self.0.failures.refund(address, window);
            }
        };
        let admins = match self
            .admins(&credentials.email, address_blocked.is_some())
            .await
        {
            Ok(admins) => admins,
            Err(err) => {
                give_back_address();
                return Err(err);
            }
        };
        if let Some(wait) = address_blocked
            && admins.is_empty()
        {
            // No check, and nothing counted: a blocked address cannot fill the table with
            // e-mails, nor spend anyone's budget but an admin's.
            return Err(Refusal::TooMany(wait));
        }
        // Only admins' e-mails have a budget: no other e-mail can ever pass, and counting them
        // would let anyone fill the table.
        let email = Who::Email(slot);
        let known = self.0.known.contains_key(&(slot, client));
        let email_count = if admins.is_empty() {
            Ok(None)
        } else {
            match self.0.failures.reserve(email) {
                Ok(window) => Ok(window),
                // An address this admin signed in from lately keeps its way in.
                Err(_) if known => Ok(None),
                Err(wait) => Err(wait),
            }
        };
        let email_window = match email_count {
            Ok(window) => window,
            Err(wait) => {
                give_back_address();
                return Err(Refusal::TooMany(wait));
            }
        };
        let verdict = Self::verify(credentials.password, admins).await;
        if !matches!(verdict, Ok(Verdict::Refused)) {
            self.0.failures.refund(email, email_window);
            give_back_address();
        }
        match verdict? {
            Verdict::Admin(agent_id) => {
                self.0.remembered.insert(slot, digest, agent_id);
                self.0.known.insert((slot, client), ());
                Ok(Operator { agent_id })
            }
            Verdict::Refused => {
                Err(address_blocked.map_or(Refusal::Unauthorized, Refusal::TooMany))
            }
        }
    }

    /// The cache slot (a hash of the e-mail) and the keyed digest of the whole credentials.
    fn digests(&self, credentials: &Credentials) -> ([u8; 32], [u8; 32]) {
        let slot = Sha256::new()
            .chain_update(self.0.key)
            .chain_update(credentials.email.as_bytes())
            .finalize();
        let whole = Sha256::new()
            .chain_update(self.0.key)
            .chain_update(credentials.email.as_bytes())
            .chain_update([0])
            .chain_update(credentials.password.as_bytes())
            .finalize();
        (slot.into(), whole.into())
    }

    /// The admins of the operator account with this e-mail (none for an e-mail nobody can have).
    async fn admins(&self, email: &str, blocked: bool) -> Result<Vec<agents::Model>, Refusal> {
        // Control characters (NUL above all, which PostgreSQL refuses in text) match nobody.
        if email.len() > 320 || email.chars().any(char::is_control) {
            return Ok(Vec::new());
        }
        // A blocked address costs no query for an e-mail that is no admin's: the list, read at
        // most every few seconds, says so (an admin's row is read below all the same, so a
        // stale entry changes nothing). Other addresses pay for their queries from their budget.
        if blocked && !self.admin_emails().await?.contains(email) {
            return Ok(Vec::new());
        }
        agents::Entity::find()
            .filter(agents::Column::Email.eq(email))
            .filter(agents::Column::Role.eq(AgentRole::Admin))
            .filter(agents::Column::AccountId.in_subquery(operator_account()))
            .filter(agents::Column::DeletedAt.is_null())
            .limit(10)
            .all(&self.0.db)
            .await
            .map_err(|err| Refusal::Internal(err.into()))
    }

    /// The operator account's admin e-mails, read at most every [`ADMINS_FOR`].
    async fn admin_emails(&self) -> Result<Arc<HashSet<String>>, Refusal> {
        let mut cached = self.0.admin_emails.lock().await;
        if let Some((at, emails)) = &*cached
            && at.elapsed() < ADMINS_FOR
        {
            return Ok(emails.clone());
        }
        let emails: Vec<String> = agents::Entity::find()
            .select_only()
            .column(agents::Column::Email)
            .filter(agents::Column::Role.eq(AgentRole::Admin))
            .filter(agents::Column::AccountId.in_subquery(operator_account()))
            .filter(agents::Column::DeletedAt.is_null())
            .into_tuple()
            .all(&self.0.db)
            .await
            .map_err(|err| Refusal::Internal(err.into()))?;
        let emails = Arc::new(emails.into_iter().collect::<HashSet<_>>());
        *cached = Some((Instant::now(), emails.clone()));
        Ok(emails)
    }

    /// Whether `password` is one of `admins`' (an empty list costs a decoy check, so the time
    /// taken does not tell who is an admin).
    async fn verify(password: String, admins: Vec<agents::Model>) -> Result<Verdict, Refusal> {
        if admins.is_empty() || password.len() > 1024 {
            verify_decoy(password).await?;
            return Ok(Verdict::Refused);
        }
        for admin in admins {
            if verify_password(password.clone(), admin.password_hash).await? {
                return Ok(Verdict::Admin(admin.id));
            }
        }
        Ok(Verdict::Refused)
    }
}

/// The operator listener shows every account's jobs and queues: only the admins of the operator
/// account (the first one, created at bootstrap) may sign in.
fn operator_account() -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .expr(accounts::Column::Id.min())
        .from(accounts::Entity)
        .to_owned()
}

impl Credentials {
    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (email, password) = decoded.split_once(':')?;
        Some(Self {
            email: email.trim().to_lowercase(),
            password: password.to_owned(),
        })
    }
}

/// Why a request was refused.
#[derive(Debug)]
enum Refusal {
    Unauthorized,
    TooMany(Duration),
    /// The process's password checks are all taken.
    Busy,
    Internal(anyhow::Error),
}

impl From<PasswordError> for Refusal {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::Busy => Self::Busy,
            PasswordError::Failed(err) => Self::Internal(err),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized => {
                let mut response =
                    ApiError::Unauthorized("sign in with an admin's e-mail and password")
                        .into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                );
                response
            }
            Self::TooMany(wait) => ApiError::TooManyRequests(wait.as_secs().max(1)).into_response(),
            Self::Busy => ApiError::from(PasswordError::Busy).into_response(),
            Self::Internal(err) => ApiError::Internal(err).into_response(),
        }
    }
}

/// Middleware: lets a request through only with an admin's credentials.
pub async fn require_admin(
    State(auth): State<OpsAuth>,
    ClientIp(client): ClientIp,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.check(client, request.headers()).await {
        Ok(operator) => {
            request.extensions_mut().insert(operator);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let encoded = STANDARD.encode(" Admin@Example.com :pass:word");
        let credentials = Credentials::from_headers(&headers(&format!("basic {encoded}"))).unwrap();
        assert_eq!(credentials.email, "admin@example.com");
        assert_eq!(credentials.password, "pass:word");
        for bad in [
            "Bearer abc".to_owned(),
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            format!("Basic {}", STANDARD.encode("no-colon")),
            format!("Basic {}", STANDARD.encode([0xff, b':', b'x'])),
        ] {
            assert!(Credentials::from_headers(&headers(&bad)).is_none(), "{bad}");
        }
        assert!(Credentials::from_headers(&HeaderMap::new()).is_none());
    }

    #[tokio::test]
    async fn remembered_credentials_match_exactly_and_expire() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let auth = OpsAuth::new(db);
        let right = Credentials {
            email: "a@b.c".into(),
            password: "secret".into(),
        };
        let wrong = Credentials {
            email: "a@b.c".into(),
            password: "secreT".into(),
        };
        let (slot, digest) = auth.digests(&right);
        assert_eq!(auth.0.remembered.passes(&slot, &digest), None);
        auth.0.remembered.insert(slot, digest, 7);
        assert_eq!(
            auth.0.remembered.passes(&slot, &digest),
            Some(7),
            "and who it was"
        );
        let (wrong_slot, wrong_digest) = auth.digests(&wrong);
        assert_eq!(slot, wrong_slot, "the slot is the e-mail's");
        assert_eq!(auth.0.remembered.passes(&wrong_slot, &wrong_digest), None);
        auth.0.remembered.expire(&slot);
        assert_eq!(auth.0.remembered.passes(&slot, &digest), None);
    }
}

//! HTTP basic auth for the whole operator listener: admin agents (role `admin`, not deleted) of
//! the operator account (the first account, created at bootstrap: the board and the metrics show
//! every account's jobs and queues) with their own e-mail and password, checked with the same
//! argon2 verification as `/v1/auth/login`.
//!
//! Rules:
//! - Argon2 costs tens of milliseconds of CPU, and a board page loads several files and polls
//!   every few seconds: a successful check is remembered for [`REMEMBER`], so a password change,
//!   a demotion or a deletion takes effect within that. The cache is keyed by a hash of the
//!   e-mail and holds a keyed SHA-256 of the whole credentials (the key is random per process),
//!   compared in constant time; it never holds a password, and it is bounded ([`CACHE_SIZE`]).
//! - Failed checks are counted per client address (IPv6: per /64) and per e-mail, [`FAILURES`]
//!   per [`FAILURE_WINDOW`] each, and counted *before* the check runs (a success gives its count
//!   back), so concurrent requests cannot run more checks than that. An e-mail past its budget is
//!   answered 429 without a check until the window ends, even with the right password, except
//!   from an address that signed in for it within [`KNOWN_FOR`]: strangers' wrong guesses cannot
//!   lock an admin out of where it works from. An address
//!   past its budget is answered 429 too, except for the right password of an admin: an attacker
//!   sharing the admin's address (a NAT, a proxy) cannot lock the admin out. Only admins' e-mails
//!   are counted (no other can pass); a blocked address finds them in a list read at most every
//!   [`ADMINS_FOR`], so it costs no query either. From a blocked
//!   address only e-mails of admins cost a check (each within its own budget) or are counted, so
//!   it cannot grow the table of counts either. Remembered checks always pass.
//! - Checks share the process's bound on password checks (`auth::password`): beyond it a request
//!   is answered 503 with `Retry-After` at once.
//! - A refusal is a 401 with `WWW-Authenticate: Basic`, whether the e-mail is unknown, the
//!   password wrong or the agent not an admin (unknown e-mails cost a decoy verification, so the
//!   timing does not tell them apart). Credentials are never logged.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
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
use subtle::ConstantTimeEq;

use crate::{
    auth::{PasswordError, verify_decoy, verify_password},
    error::ApiError,
};

/// How long a successful check is remembered.
pub const REMEMBER: Duration = Duration::from_secs(5);
/// Most credentials remembered at once.
const CACHE_SIZE: usize = 1024;
/// Failed checks a client address, and an e-mail, may make per [`FAILURE_WINDOW`].
pub const FAILURES: u32 = 10;
/// The window failed checks are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses and e-mails whose failures are tracked at once. Past it (stale counts are
/// swept out at most once a second), a new address is not counted: the budgets of the admins'
/// e-mails and the process's bound on password checks still hold.
const TRACKED_CLIENTS: usize = 10_000;
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
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
    failures: Mutex<Tracked>,
    /// (e-mail slot, address) pairs that signed in recently: their right password passes the
    /// e-mail's block, so strangers' wrong guesses cannot lock an admin out of a place it uses.
    known: jobs::cache::Cache<([u8; 32], IpAddr), ()>,
    /// The operator account's admin e-mails, read again every [`ADMINS_FOR`]: an e-mail that is
    /// none costs no query.
    admin_emails: tokio::sync::Mutex<Option<(Instant, Arc<std::collections::HashSet<String>>)>>,
}

/// Failure counts, and when stale ones were last swept out.
#[derive(Default)]
struct Tracked {
    counts: HashMap<Who, Failures>,
    swept: Option<Instant>,
}

/// Whose failed checks are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    /// A client address (IPv6: its /64).
    Address(IpAddr),
    /// An e-mail (its cache slot: a keyed hash).
    Email([u8; 32]),
}

/// What a check found.
enum Verdict {
    /// An admin with this password.
    Admin,
    /// Anything else.
    Refused,
}

struct Remembered {
    credentials: [u8; 32],
    until: Instant,
}

struct Failures {
    count: u32,
    since: Instant,
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
            remembered: Mutex::default(),
            failures: Mutex::default(),
            known: jobs::cache::short_lived(TRACKED_CLIENTS as u64, KNOWN_FOR),
            admin_emails: tokio::sync::Mutex::default(),
        }))
    }

    /// Passes a request carrying the credentials of an admin agent; refuses any other.
    async fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(credentials) = Credentials::from_headers(headers) else {
            return Err(Refusal::Unauthorized);
        };
        let (slot, digest) = self.digests(&credentials);
        if self.remembers(&slot, &digest) {
            return Ok(());
        }
        // Counted before the check runs, given back when it passes or cannot run.
        let client = crate::chat::budget::client_key(client);
        let address = Who::Address(client);
        let address_count = self.reserve(address);
        let address_blocked = address_count.err();
        let give_back_address = || {
            if let Ok(window) = address_count {
                self.refund(address, window);
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
            match self.reserve(email) {
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
            self.refund(email, email_window);
            give_back_address();
        }
        match verdict? {
            Verdict::Admin => {
                self.remember(slot, digest);
                self.0.known.insert((slot, client), ());
                Ok(())
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

    fn remembers(&self, slot: &[u8; 32], digest: &[u8; 32]) -> bool {
        let remembered = self
            .0
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        remembered.get(slot).is_some_and(|entry| {
            entry.until > Instant::now() && bool::from(entry.credentials.ct_eq(digest))
        })
    }

    fn remember(&self, slot: [u8; 32], credentials: [u8; 32]) {
        let now = Instant::now();
        let mut remembered = self
            .0
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= CACHE_SIZE {
            remembered.retain(|_, entry| entry.until > now);
            if remembered.len() >= CACHE_SIZE {
                remembered.clear();
            }
        }
        remembered.insert(
            slot,
            Remembered {
                credentials,
                until: now + REMEMBER,
            },
        );
    }

    /// Counts a failed check of `who` in advance: `Ok` with the window it was counted in (`None`
    /// when the table is full and `who` is not tracked), `Err` with the wait when its budget is
    /// spent.
    fn reserve(&self, who: Who) -> Result<Option<Instant>, Duration> {
        let now = Instant::now();
        let mut tracked = self
            .0
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tracked.counts.len() >= TRACKED_CLIENTS
            && !tracked.counts.contains_key(&who)
            && tracked
                .swept
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracked.swept = Some(now);
            tracked
                .counts
                .retain(|_, entry| now < entry.since + FAILURE_WINDOW);
        }
        if tracked.counts.len() >= TRACKED_CLIENTS && !tracked.counts.contains_key(&who) {
            return Ok(None);
        }
        let entry = tracked.counts.entry(who).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now >= entry.since + FAILURE_WINDOW {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        if entry.count >= FAILURES {
            let wait = (entry.since + FAILURE_WINDOW).saturating_duration_since(now);
            return Err(wait.max(Duration::from_secs(1)));
        }
        entry.count += 1;
        if entry.count == FAILURES {
            match who {
                Who::Address(client) => {
                    tracing::warn!(%client, "operator listener: too many failed sign-ins from one address, refusing it for a while")
                }
                Who::Email(_) => tracing::warn!(
                    "operator listener: too many failed sign-ins for one e-mail, refusing it for a while"
                ),
            }
        }
        Ok(Some(entry.since))
    }

    /// Gives back a count taken by [`Self::reserve`] in `window` (the check passed, or did not
    /// run); nothing once that window is over. An entry back at zero is forgotten.
    fn refund(&self, who: Who, window: Option<Instant>) {
        let Some(window) = window else {
            return;
        };
        let mut tracked = self
            .0
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = tracked.counts.get_mut(&who)
            && entry.since == window
        {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                tracked.counts.remove(&who);
            }
        }
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
    async fn admin_emails(&self) -> Result<Arc<std::collections::HashSet<String>>, Refusal> {
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
        let emails = Arc::new(emails.into_iter().collect::<std::collections::HashSet<_>>());
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
                return Ok(Verdict::Admin);
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(peer.ip(), request.headers()).await {
        Ok(()) => next.run(request).await,
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
        assert!(!auth.remembers(&slot, &digest));
        auth.remember(slot, digest);
        assert!(auth.remembers(&slot, &digest));
        let (wrong_slot, wrong_digest) = auth.digests(&wrong);
        assert_eq!(slot, wrong_slot, "the slot is the e-mail's");
        assert!(!auth.remembers(&wrong_slot, &wrong_digest));
        auth.0
            .remembered
            .lock()
            .unwrap()
            .get_mut(&slot)
            .unwrap()
            .until = Instant::now();
        assert!(!auth.remembers(&slot, &digest));
    }

    #[tokio::test]
    async fn a_budget_is_spent_in_advance_given_back_and_renewed() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let auth = OpsAuth::new(db);
        let client = Who::Address("10.0.0.1".parse().unwrap());
        let other = Who::Address("10.0.0.2".parse().unwrap());
        let mut window = None;
        for _ in 0..FAILURES {
            window = auth.reserve(client).unwrap();
        }
        let wait = auth.reserve(client).expect_err("blocked");
        assert!(wait <= FAILURE_WINDOW);
        let theirs = auth
            .reserve(other)
            .expect("another address has its own budget");
        // A check that passed gives its count back.
        auth.refund(client, window);
        auth.reserve(client).expect("one count was given back");
        assert!(auth.reserve(client).is_err());
        // An entry given back to zero is forgotten.
        auth.refund(other, theirs);
        assert!(!auth.0.failures.lock().unwrap().counts.contains_key(&other));
        // The window ends; a refund of the old window changes nothing in the new one.
        auth.0
            .failures
            .lock()
            .unwrap()
            .counts
            .get_mut(&client)
            .unwrap()
            .since = Instant::now() - FAILURE_WINDOW;
        let renewed = auth.reserve(client).expect("a new window");
        auth.refund(client, window);
        assert_eq!(auth.0.failures.lock().unwrap().counts[&client].count, 1);
        assert_ne!(renewed, window);
    }

    #[tokio::test]
    async fn a_full_table_counts_no_newcomer_and_sweeps_at_most_once_a_second() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let auth = OpsAuth::new(db);
        for n in 0..TRACKED_CLIENTS as u32 {
            let who = Who::Address(std::net::Ipv4Addr::from(n).into());
            auth.reserve(who).unwrap();
        }
        let newcomer = Who::Address("192.0.2.1".parse().unwrap());
        assert_eq!(auth.reserve(newcomer), Ok(None), "not tracked, not refused");
        assert_eq!(
            auth.0.failures.lock().unwrap().counts.len(),
            TRACKED_CLIENTS
        );
    }
}

//! Password hashing with argon2id (the crate's recommended parameters), off the async threads.
//!
//! Each hash or check holds about 19 MiB and tens of milliseconds of a core. A process runs at
//! most one per core at once ([`Gate`]); a few more may wait for a turn, and a check beyond those
//! is refused at once with [`PasswordError::Busy`] (a 503 with `Retry-After`), so a burst of
//! sign-ins, from any number of addresses, neither queues without bound nor grows the memory.

use std::sync::{Arc, LazyLock};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Checks that may wait for a free core, per core.
const WAITING_PER_CORE: usize = 4;

/// Why a password could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every core is checking passwords and the waiting room is full: try again in a moment.
    #[error("too many password checks at once")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<PasswordError> for ApiError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::Busy => ApiError::Unavailable("sign-in"),
            PasswordError::Failed(err) => ApiError::Internal(err),
        }
    }
}

/// The process's bound on password work.
struct Gate {
    /// Checks admitted (running or waiting for a core).
    admitted: Arc<Semaphore>,
    /// Hashes and checks running.
    running: Arc<Semaphore>,
}

static GATE: LazyLock<Gate> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tracing::debug!(cores, "password checks run at most one per core");
    Gate {
        admitted: Arc::new(Semaphore::new(cores * (1 + WAITING_PER_CORE))),
        running: Arc::new(Semaphore::new(cores)),
    }
});

/// Runs `work` on a blocking thread once a core is free for it. The permits go with the work,
/// not with the caller: a request dropped meanwhile (its client hung up, a timeout) cannot free
/// a place while its check still runs (a started blocking task is never cancelled).
async fn run<T: Send + 'static>(
    admitted: Option<OwnedSemaphorePermit>,
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let running = GATE.running.clone().acquire_owned().await?;
    Ok(tokio::task::spawn_blocking(move || {
        let held = (admitted, running);
        let done = work();
        drop(held);
        done
    })
    .await?)
}

/// Hashes `password` into a PHC string (algorithm, parameters and salt included). Only
/// authenticated admins and the first start hash: a hash waits for a core, it is never refused.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    run(None, move || {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let salt = SaltString::encode_b64(&salt)
            .map_err(|err| anyhow::anyhow!("encoding a salt: {err}"))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|err| anyhow::anyhow!("hashing a password: {err}"))
    })
    .await?
}

/// True when `password` matches `phc_hash`. A malformed hash never matches. Refused at once with
/// [`PasswordError::Busy`] when the process already has as many checks as it admits.
pub async fn verify_password(password: String, phc_hash: String) -> Result<bool, PasswordError> {
    let Ok(admitted) = GATE.admitted.clone().try_acquire_owned() else {
        metrics::counter!("switchboard_password_checks_total", "outcome" => "refused").increment(1);
        return Err(PasswordError::Busy);
    };
    let matched = run(Some(admitted), move || {
        PasswordHash::new(&phc_hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await?;
    metrics::counter!("switchboard_password_checks_total", "outcome" => "checked").increment(1);
    Ok(matched)
}

/// Verifies `password` against a hash nobody's password matches, costing what a real check costs.
pub async fn verify_decoy(password: String) -> Result<(), PasswordError> {
    static DECOY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let decoy = DECOY
        .get_or_try_init(|| hash_password(ulid::Ulid::new().to_string()))
        .await?;
    verify_password(password, decoy.clone()).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong horse".into(), hash).await.unwrap());
        assert!(
            !verify_password("x".into(), "not a hash".into())
                .await
                .unwrap()
        );
    }
}

//! Successful checks, remembered for [`REMEMBER`]: argon2 costs tens of milliseconds, and a board
//! page loads several files and polls every few seconds. An entry is keyed by the e-mail's slot
//! (a keyed hash) and holds a keyed digest of the whole credentials, compared in constant time;
//! no password is ever held, and at most [`CACHE_SIZE`] entries are.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use subtle::ConstantTimeEq;

/// How long a successful check is remembered.
pub const REMEMBER: Duration = Duration::from_secs(5);
/// Most credentials remembered at once.
const CACHE_SIZE: usize = 1024;

/// The credentials that passed lately, by e-mail slot.
#[derive(Default)]
pub(super) struct Remembered(Mutex<HashMap<[u8; 32], Entry>>);

struct Entry {
    credentials: [u8; 32],
    agent_id: i64,
    until: Instant,
}

impl Remembered {
    /// The admin whose exact credentials these are, if they passed within [`REMEMBER`].
    pub(super) fn passes(&self, slot: &[u8; 32], digest: &[u8; 32]) -> Option<i64> {
        let remembered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        remembered
            .get(slot)
            .filter(|entry| {
                entry.until > Instant::now() && bool::from(entry.credentials.ct_eq(digest))
            })
            .map(|entry| entry.agent_id)
    }

    /// Remembers credentials that just passed (replacing the e-mail's previous ones).
    pub(super) fn insert(&self, slot: [u8; 32], credentials: [u8; 32], agent_id: i64) {
        let now = Instant::now();
        let mut remembered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= CACHE_SIZE {
            remembered.retain(|_, entry| entry.until > now);
            if remembered.len() >= CACHE_SIZE {
                remembered.clear();
            }
        }
        remembered.insert(
            slot,
            Entry {
                credentials,
                agent_id,
                until: now + REMEMBER,
            },
        );
    }

    /// Ends an entry's time now.
    #[cfg(test)]
    pub(super) fn expire(&self, slot: &[u8; 32]) {
        if let Some(entry) = self.0.lock().unwrap().get_mut(slot) {
            entry.until = Instant::now();
        }
    }
}

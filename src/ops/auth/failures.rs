//! Failed checks counted per client address (IPv6: per /64) and per admin's e-mail,
//! [`FAILURES`] per [`FAILURE_WINDOW`] each. A check is counted *before* it runs and its count
//! given back when it passes or cannot run, so concurrent requests cannot run more checks than
//! the budget. At most [`TRACKED_CLIENTS`] are tracked at once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Failed checks a client address, and an e-mail, may make per [`FAILURE_WINDOW`].
pub const FAILURES: u32 = 10;
/// The window failed checks are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses and e-mails whose failures are tracked at once. Past it (stale counts are
/// swept out at most once a second), a new address is not counted: the budgets of the admins'
/// e-mails and the process's bound on password checks still hold.
pub(super) const TRACKED_CLIENTS: usize = 10_000;

/// Whose failed checks are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Who {
    /// A client address (IPv6: its /64).
    Address(IpAddr),
    /// An e-mail (its cache slot: a keyed hash).
    Email([u8; 32]),
}

/// The failure counts of a process.
#[derive(Default)]
pub(super) struct Failures(Mutex<Tracked>);

/// Failure counts, and when stale ones were last swept out.
#[derive(Default)]
struct Tracked {
    counts: HashMap<Who, Count>,
    swept: Option<Instant>,
}

struct Count {
    count: u32,
    since: Instant,
}

impl Failures {
    /// Counts a failed check of `who` in advance: `Ok` with the window it was counted in (`None`
    /// when the table is full and `who` is not tracked), `Err` with the wait when its budget is
    /// spent.
    pub(super) fn reserve(&self, who: Who) -> Result<Option<Instant>, Duration> {
        let now = Instant::now();
        let mut tracked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
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
        let entry = tracked.counts.entry(who).or_insert(Count {
            count: 0,
            since: now,
        });
        if now >= entry.since + FAILURE_WINDOW {
            *entry = Count {
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
    pub(super) fn refund(&self, who: Who, window: Option<Instant>) {
        let Some(window) = window else {
            return;
        };
        let mut tracked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = tracked.counts.get_mut(&who)
            && entry.since == window
        {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                tracked.counts.remove(&who);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Failures {
        fn count_of(&self, who: Who) -> Option<u32> {
            self.0.lock().unwrap().counts.get(&who).map(|c| c.count)
        }

        fn tracked(&self) -> usize {
            self.0.lock().unwrap().counts.len()
        }

        fn age(&self, who: Who, by: Duration) {
            self.0.lock().unwrap().counts.get_mut(&who).unwrap().since -= by;
        }
    }

    #[test]
    fn a_budget_is_spent_in_advance_given_back_and_renewed() {
        let failures = Failures::default();
        let client = Who::Address("10.0.0.1".parse().unwrap());
        let other = Who::Address("10.0.0.2".parse().unwrap());
        let mut window = None;
        for _ in 0..FAILURES {
            window = failures.reserve(client).unwrap();
        }
        let wait = failures.reserve(client).expect_err("blocked");
        assert!(wait <= FAILURE_WINDOW);
        let theirs = failures
            .reserve(other)
            .expect("another address has its own budget");
        // A check that passed gives its count back.
        failures.refund(client, window);
        failures.reserve(client).expect("one count was given back");
        assert!(failures.reserve(client).is_err());
        // An entry given back to zero is forgotten.
        failures.refund(other, theirs);
        assert_eq!(failures.count_of(other), None);
        // The window ends; a refund of the old window changes nothing in the new one.
        failures.age(client, FAILURE_WINDOW);
        let renewed = failures.reserve(client).expect("a new window");
        failures.refund(client, window);
        assert_eq!(failures.count_of(client), Some(1));
        assert_ne!(renewed, window);
    }

    #[test]
    fn a_full_table_counts_no_newcomer_and_sweeps_at_most_once_a_second() {
        let failures = Failures::default();
        for n in 0..TRACKED_CLIENTS as u32 {
            let who = Who::Address(std::net::Ipv4Addr::from(n).into());
            failures.reserve(who).unwrap();
        }
        let newcomer = Who::Address("192.0.2.1".parse().unwrap());
        assert_eq!(
            failures.reserve(newcomer),
            Ok(None),
            "not tracked, not refused"
        );
        assert_eq!(failures.tracked(), TRACKED_CLIENTS);
    }
}

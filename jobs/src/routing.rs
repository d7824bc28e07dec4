//! Routing strategies: pure functions over a snapshot of a group's eligible agents.
//!
//! "Eligible" is decided before these run (online, accepting, in the group, not deleted, under
//! capacity, not excluded for this conversation); a strategy only orders the candidates.

use chrono::{DateTime, Utc};
use entity::enums::RoutingStrategy;

/// What routing needs to know about an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Agent id.
    pub id: i64,
    /// Conversations it holds now.
    pub active_chats: i32,
    /// Its capacity.
    pub max_concurrent_chats: i32,
    /// When it was last given a conversation (`None`: never).
    pub last_assigned_at: Option<DateTime<Utc>>,
}

impl Candidate {
    /// Slots still open.
    pub fn free_slots(&self) -> i32 {
        self.max_concurrent_chats - self.active_chats
    }
}

/// Why an agent was chosen, for the system event ("assigned to Ana: least loaded, 2 of 6 chats").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Most free slots.
    LeastLoaded,
    /// Next in rotation (longest since its last assignment).
    RoundRobin,
    /// The visitor's previous agent.
    Sticky,
}

impl Reason {
    /// The words used in system events and assignment rows.
    pub fn describe(self) -> &'static str {
        match self {
            Self::LeastLoaded => "least loaded",
            Self::RoundRobin => "round robin",
            Self::Sticky => "same agent as last time",
        }
    }
}

/// Picks an agent among `candidates` with `strategy`; `previous` is the visitor's last agent
/// (used by `sticky`). Candidates without a free slot are never picked. Ties break on the agent
/// idle longest, then on the lowest id, so the result is deterministic.
pub fn choose(
    strategy: RoutingStrategy,
    candidates: &[Candidate],
    previous: Option<i64>,
) -> Option<(i64, Reason)> {
    let open = candidates.iter().filter(|c| c.free_slots() > 0);
    match strategy {
        RoutingStrategy::LeastLoaded => least_loaded(open).map(|id| (id, Reason::LeastLoaded)),
        RoutingStrategy::RoundRobin => round_robin(open).map(|id| (id, Reason::RoundRobin)),
        RoutingStrategy::Sticky => {
            let mut open = open.peekable();
            let sticky = previous.and_then(|prev| {
                candidates
                    .iter()
                    .find(|c| c.id == prev && c.free_slots() > 0)
                    .map(|c| c.id)
            });
            match sticky {
                Some(id) => Some((id, Reason::Sticky)),
                None => least_loaded(&mut open).map(|id| (id, Reason::LeastLoaded)),
            }
        }
    }
}

/// Idle longest first: never-assigned agents before any assigned one, then by time.
fn idle_key(candidate: &Candidate) -> (Option<DateTime<Utc>>, i64) {
    (candidate.last_assigned_at, candidate.id)
}

fn least_loaded<'a>(candidates: impl Iterator<Item = &'a Candidate>) -> Option<i64> {
    candidates
        .min_by(|a, b| {
            b.free_slots()
                .cmp(&a.free_slots())
                .then_with(|| idle_key(a).cmp(&idle_key(b)))
        })
        .map(|c| c.id)
}

fn round_robin<'a>(candidates: impl Iterator<Item = &'a Candidate>) -> Option<i64> {
    candidates.min_by_key(|c| idle_key(c)).map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    fn at(minute: i64) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap() + Duration::minutes(minute))
    }

    fn agent(id: i64, active: i32, max: i32, last: Option<DateTime<Utc>>) -> Candidate {
        Candidate {
            id,
            active_chats: active,
            max_concurrent_chats: max,
            last_assigned_at: last,
        }
    }

    #[test]
    fn least_loaded_takes_the_most_free_slots() {
        let agents = [
            agent(1, 2, 6, at(0)),
            agent(2, 1, 6, at(5)),
            agent(3, 0, 2, at(1)),
        ];
        assert_eq!(
            choose(RoutingStrategy::LeastLoaded, &agents, None),
            Some((2, Reason::LeastLoaded))
        );
    }

    #[test]
    fn least_loaded_ties_go_to_the_longest_idle() {
        let agents = [
            agent(1, 1, 3, at(10)),
            agent(2, 1, 3, at(2)),
            agent(3, 1, 3, at(7)),
        ];
        assert_eq!(
            choose(RoutingStrategy::LeastLoaded, &agents, None).map(|c| c.0),
            Some(2)
        );
        let never = [agent(1, 1, 3, at(10)), agent(4, 1, 3, None)];
        assert_eq!(
            choose(RoutingStrategy::LeastLoaded, &never, None).map(|c| c.0),
            Some(4)
        );
    }

    #[test]
    fn round_robin_rotates_by_last_assignment_whatever_the_load() {
        let agents = [
            agent(1, 0, 6, at(9)),
            agent(2, 5, 6, at(1)),
            agent(3, 0, 6, at(4)),
        ];
        assert_eq!(
            choose(RoutingStrategy::RoundRobin, &agents, None),
            Some((2, Reason::RoundRobin))
        );
    }

    #[test]
    fn sticky_prefers_the_previous_agent_while_it_has_room() {
        let agents = [agent(1, 0, 6, at(0)), agent(2, 3, 6, at(1))];
        assert_eq!(
            choose(RoutingStrategy::Sticky, &agents, Some(2)),
            Some((2, Reason::Sticky))
        );
        let full = [agent(1, 0, 6, at(0)), agent(2, 6, 6, at(1))];
        assert_eq!(
            choose(RoutingStrategy::Sticky, &full, Some(2)),
            Some((1, Reason::LeastLoaded))
        );
        assert_eq!(
            choose(RoutingStrategy::Sticky, &agents, Some(99)),
            Some((1, Reason::LeastLoaded))
        );
    }

    #[test]
    fn nobody_at_capacity_is_ever_chosen() {
        let full = [agent(1, 6, 6, None), agent(2, 7, 6, None)];
        for strategy in [
            RoutingStrategy::LeastLoaded,
            RoutingStrategy::RoundRobin,
            RoutingStrategy::Sticky,
        ] {
            assert_eq!(choose(strategy, &full, Some(1)), None);
            assert_eq!(choose(strategy, &[], None), None);
        }
    }
}

//! What the database says after (and during) a scenario, the invariants checked against it and
//! against what the clients saw, and the numbers reported.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, Statement};
use tokio_util::sync::CancellationToken;

use crate::{
    agents::{AgentLog, CloseState, Heard, Via},
    services::Clock,
    visitors::Visit,
};

async fn rows(db: &DatabaseConnection, sql: &str) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> T {
    row.try_get::<T>("", column)
        .unwrap_or_else(|err| panic!("column {column}: {err}"))
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: i64,
    pub status: String,
    pub holder: Option<i64>,
    pub created: f64,
    pub queued: Option<f64>,
    pub reassignments: i32,
}

#[derive(Debug, Clone)]
pub struct Assignment {
    pub conversation_id: i64,
    pub agent_id: i64,
    pub reason: String,
    pub assigned: f64,
    pub released: Option<f64>,
    pub release_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: i64,
    pub status: String,
    pub accepting: bool,
    pub active_chats: i32,
    pub max: i32,
    /// Active conversations it holds.
    pub held: i64,
    /// Its assignments not released.
    pub open: i64,
}

const AGENTS_SQL: &str = "SELECT a.id, a.status, a.accepting_chats, a.active_chats, \
     a.max_concurrent_chats, \
     (SELECT count(*) FROM conversations c WHERE c.assigned_agent_id = a.id \
        AND c.status = 'active') AS held, \
     (SELECT count(*) FROM assignments s WHERE s.agent_id = a.id \
        AND s.released_at IS NULL) AS open \
     FROM agents a WHERE a.deleted_at IS NULL ORDER BY a.id";

const DOUBLE_OPEN_SQL: &str = "SELECT conversation_id, count(*) AS n FROM assignments \
     WHERE released_at IS NULL GROUP BY conversation_id HAVING count(*) > 1";

fn agent_rows(rows: Vec<QueryResult>) -> Vec<AgentRow> {
    rows.iter()
        .map(|r| AgentRow {
            id: get(r, "id"),
            status: get(r, "status"),
            accepting: get(r, "accepting_chats"),
            active_chats: get(r, "active_chats"),
            max: get(r, "max_concurrent_chats"),
            held: get(r, "held"),
            open: get(r, "open"),
        })
        .collect()
}

/// The rows the checks read, on the scenario's clock.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub conversations: BTreeMap<i64, Conversation>,
    pub assignments: HashMap<i64, Vec<Assignment>>,
    pub agents: Vec<AgentRow>,
    /// Conversations with more than one open assignment: (conversation, count).
    pub double_open: Vec<(i64, i64)>,
}

impl Snapshot {
    pub async fn load(db: &DatabaseConnection, clock: Clock) -> Result<Self, DbErr> {
        let mut snapshot = Self::default();
        for r in rows(
            db,
            "SELECT id, status, assigned_agent_id, reassignment_count, \
             EXTRACT(EPOCH FROM created_at)::float8 AS created, \
             EXTRACT(EPOCH FROM queued_at)::float8 AS queued FROM conversations",
        )
        .await?
        {
            let c = Conversation {
                id: get(&r, "id"),
                status: get(&r, "status"),
                holder: get(&r, "assigned_agent_id"),
                created: clock.at_unix(get(&r, "created")),
                queued: get::<Option<f64>>(&r, "queued").map(|t| clock.at_unix(t)),
                reassignments: get(&r, "reassignment_count"),
            };
            snapshot.conversations.insert(c.id, c);
        }
        for r in rows(
            db,
            "SELECT conversation_id, agent_id, reason, release_reason, \
             EXTRACT(EPOCH FROM assigned_at)::float8 AS assigned, \
             EXTRACT(EPOCH FROM released_at)::float8 AS released \
             FROM assignments ORDER BY id",
        )
        .await?
        {
            let a = Assignment {
                conversation_id: get(&r, "conversation_id"),
                agent_id: get(&r, "agent_id"),
                reason: get(&r, "reason"),
                assigned: clock.at_unix(get(&r, "assigned")),
                released: get::<Option<f64>>(&r, "released").map(|t| clock.at_unix(t)),
                release_reason: get(&r, "release_reason"),
            };
            snapshot
                .assignments
                .entry(a.conversation_id)
                .or_default()
                .push(a);
        }
        snapshot.agents = agent_rows(rows(db, AGENTS_SQL).await?);
        snapshot.double_open = rows(db, DOUBLE_OPEN_SQL)
            .await?
            .iter()
            .map(|r| (get(r, "conversation_id"), get(r, "n")))
            .collect();
        Ok(snapshot)
    }

    /// Nothing waiting or open, every counter at zero: the scenario's chats are all done.
    pub fn settled(&self) -> bool {
        self.conversations
            .values()
            .all(|c| c.status == "resolved" || c.status == "closed")
            && self
                .agents
                .iter()
                .all(|a| a.active_chats == 0 && a.held == 0 && a.open == 0)
            && self.double_open.is_empty()
    }

    pub fn count(&self, status: &str) -> usize {
        self.conversations
            .values()
            .filter(|c| c.status == status)
            .count()
    }

    fn first_assigned(&self, id: i64) -> Option<f64> {
        self.assignments
            .get(&id)?
            .iter()
            .map(|a| a.assigned)
            .min_by(f64::total_cmp)
    }
}

/// Samples the invariants that must hold at every moment (capacity, one open assignment per
/// chat) while the scenario runs; counters that differ from their rows are noted.
pub struct Sampler {
    /// The most chats held at once by all agents together, and when.
    pub peak_held: Arc<Mutex<(i64, f64)>>,
    pub violations: Arc<Mutex<BTreeMap<String, (f64, String)>>>,
    pub drift: Arc<Mutex<BTreeMap<i64, (f64, String)>>>,
    pub samples: Arc<Mutex<(u32, u32)>>,
}

impl Sampler {
    pub fn start(db: DatabaseConnection, clock: Clock, stop: CancellationToken) -> Self {
        let sampler = Self {
            peak_held: Arc::default(),
            violations: Arc::default(),
            drift: Arc::default(),
            samples: Arc::default(),
        };
        let peak_held = sampler.peak_held.clone();
        let (violations, drift, samples) = (
            sampler.violations.clone(),
            sampler.drift.clone(),
            sampler.samples.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let at = clock.now();
                let sampled = async {
                    let agents = agent_rows(rows(&db, AGENTS_SQL).await?);
                    let double = rows(&db, DOUBLE_OPEN_SQL).await?;
                    Ok::<_, DbErr>((agents, double))
                };
                match tokio::time::timeout(Duration::from_secs(3), sampled).await {
                    Ok(Ok((agents, double))) => {
                        samples.lock().expect("not poisoned").0 += 1;
                        let held: i64 = agents.iter().map(|a| a.held).sum();
                        let mut peak = peak_held.lock().expect("not poisoned");
                        if held > peak.0 {
                            *peak = (held, at);
                        }
                        drop(peak);
                        let mut v = violations.lock().expect("not poisoned");
                        for a in &agents {
                            if a.active_chats > a.max || a.held > i64::from(a.max) {
                                v.entry(format!("capacity agent {}", a.id)).or_insert((
                                    at,
                                    format!(
                                        "agent {}: active_chats {} / holds {} active chats, capacity {}",
                                        a.id, a.active_chats, a.held, a.max
                                    ),
                                ));
                            }
                            if i64::from(a.active_chats) != a.held || a.held != a.open {
                                drift.lock().expect("not poisoned").entry(a.id).or_insert((
                                    at,
                                    format!(
                                        "agent {}: active_chats {}, active chats held {}, open assignments {}",
                                        a.id, a.active_chats, a.held, a.open
                                    ),
                                ));
                            }
                        }
                        for r in &double {
                            let id: i64 = get(r, "conversation_id");
                            let n: i64 = get(r, "n");
                            v.entry(format!("double {id}")).or_insert((
                                at,
                                format!("conversation {id}: {n} open assignments"),
                            ));
                        }
                    }
                    _ => samples.lock().expect("not poisoned").1 += 1,
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = stop.cancelled() => {}
                }
            }
        });
        sampler
    }
}

/// One broken invariant, with the conversations (or processes, or answers) that break it.
pub struct Failure {
    pub invariant: &'static str,
    pub count: usize,
    pub examples: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "FAILED: {} ({})", self.invariant, self.count)?;
        for e in &self.examples {
            writeln!(f, "    {e}")?;
        }
        if self.count > self.examples.len() {
            writeln!(f, "    … and {} more", self.count - self.examples.len())?;
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct Failures(pub Vec<Failure>);

impl Failures {
    pub fn add(&mut self, invariant: &'static str, items: Vec<String>) {
        if !items.is_empty() {
            self.0.push(Failure {
                invariant,
                count: items.len(),
                examples: items.into_iter().take(8).collect(),
            });
        }
    }
}

/// Everything the clients saw, indexed by conversation.
pub struct Seen<'a> {
    pub visits: &'a [Visit],
    pub agents: Vec<(i64, &'a AgentLog)>,
    /// conversation → (agent, heard).
    pub heard: HashMap<i64, Vec<(i64, Heard)>>,
    /// conversation → (agent, close).
    pub closes: HashMap<i64, Vec<(i64, CloseState)>>,
    pub created: BTreeMap<i64, f64>,
}

impl<'a> Seen<'a> {
    pub fn new(visits: &'a [Visit], agents: Vec<(i64, &'a AgentLog)>) -> Self {
        let mut heard: HashMap<i64, Vec<(i64, Heard)>> = HashMap::new();
        let mut closes: HashMap<i64, Vec<(i64, CloseState)>> = HashMap::new();
        for (id, log) in &agents {
            for (c, h) in &log.heard {
                heard.entry(*c).or_default().push((*id, h.clone()));
            }
            for (c, s) in &log.closes {
                closes.entry(*c).or_default().push((*id, s.clone()));
            }
        }
        let created = visits
            .iter()
            .filter_map(|v| Some((v.conversation_id?, v.sent)))
            .collect();
        Self {
            visits,
            agents,
            heard,
            closes,
            created,
        }
    }

    fn heard_by(&self, conversation: i64, agent: i64) -> bool {
        self.heard
            .get(&conversation)
            .is_some_and(|h| h.iter().any(|(a, _)| *a == agent))
    }

    fn acked(&self, conversation: i64) -> Option<(i64, f64)> {
        self.closes
            .get(&conversation)?
            .iter()
            .find_map(|(a, s)| Some((*a, s.acked_at?)))
    }

    /// One line of everything known about `conversation`, times relative to `fault`.
    pub fn describe(&self, snapshot: &Snapshot, id: i64, fault: f64) -> String {
        let t = |at: f64| format!("{:+.2}s", at - fault);
        let mut out = format!("conversation {id}:");
        if let Some(sent) = self.created.get(&id) {
            let _ = write!(out, " opened {}", t(*sent));
        }
        match snapshot.conversations.get(&id) {
            Some(c) => {
                let _ = write!(out, ", now {}", c.status);
                match (c.holder, c.status.as_str()) {
                    (Some(h), "active") => {
                        let _ = write!(out, " held by agent {h}");
                    }
                    (Some(h), _) => {
                        let _ = write!(out, " (last agent {h})");
                    }
                    (None, _) => {}
                }
                match c.queued {
                    Some(q) => {
                        let _ = write!(out, ", queued {}", t(q));
                    }
                    None => out.push_str(", never queued (queued_at null)"),
                }
                if c.reassignments > 0 {
                    let _ = write!(out, ", {} reassignments", c.reassignments);
                }
            }
            None => out.push_str(", NOT IN THE DATABASE"),
        }
        let assignments = snapshot
            .assignments
            .get(&id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if assignments.is_empty() {
            out.push_str("; no assignment row");
        }
        for a in assignments {
            let _ = write!(
                out,
                "; assigned to agent {} ({}) {}",
                a.agent_id,
                a.reason,
                t(a.assigned)
            );
            match a.released {
                Some(r) => {
                    let _ = write!(
                        out,
                        ", released {} ({})",
                        t(r),
                        a.release_reason.as_deref().unwrap_or("?")
                    );
                }
                None => out.push_str(", open"),
            }
        }
        for (agent, h) in self.heard.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
            let via = match h.via {
                Via::Push => "push",
                Via::Sync => "sync",
            };
            let _ = write!(out, "; heard by agent {agent} via {via} {}", t(h.at));
        }
        if !self.heard.contains_key(&id) {
            out.push_str("; heard by no agent");
        }
        for (agent, s) in self.closes.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
            let attempts: Vec<String> = s
                .attempts
                .iter()
                .map(|(at, what)| format!("{} {what}", t(*at)))
                .collect();
            let _ = write!(out, "; agent {agent} closes: [{}]", attempts.join(", "));
        }
        out
    }
}

/// What a scenario knows about its fault, for the checks.
pub struct FaultWindow {
    pub at: f64,
    pub recovered: f64,
    /// 503s answered between `at` and `recovered + 5 s` are allowed (PostgreSQL restarts only).
    pub allows_503: bool,
}

/// Every invariant, from the database and from what the clients saw.
pub fn check(
    snapshot: &Snapshot,
    seen: &Seen,
    sampler: &Sampler,
    fault: &FaultWindow,
    failures: &mut Failures,
) {
    let describe = |id: i64| seen.describe(snapshot, id, fault.at);
    let created: Vec<i64> = seen.created.keys().copied().collect();

    failures.add(
        "a created chat is missing from the database",
        created
            .iter()
            .filter(|id| !snapshot.conversations.contains_key(id))
            .map(|id| describe(*id))
            .collect(),
    );
    failures.add(
        "every created chat was assigned: some never were",
        created
            .iter()
            .filter(|id| snapshot.conversations.contains_key(id))
            .filter(|id| !snapshot.assignments.contains_key(id))
            .map(|id| describe(*id))
            .collect(),
    );
    failures.add(
        "every assigned chat was heard by its agent (push or sync): no agent it was assigned to heard it",
        created
            .iter()
            .filter(|id| {
                snapshot
                    .assignments
                    .get(id)
                    .is_some_and(|list| !list.iter().any(|a| seen.heard_by(**id, a.agent_id)))
            })
            .map(|id| describe(*id))
            .collect(),
    );
    failures.add(
        "a chat still active at the end was never heard by its current holder (an earlier holder heard it)",
        snapshot
            .conversations
            .values()
            .filter(|c| c.status == "active")
            .filter(|c| c.holder.is_some_and(|h| !seen.heard_by(c.id, h)))
            .filter(|c| seen.heard.contains_key(&c.id))
            .map(|c| describe(c.id))
            .collect(),
    );
    failures.add(
        "every acknowledged close took effect: these are not resolved/closed",
        seen.closes
            .keys()
            .filter(|id| seen.acked(**id).is_some())
            .filter(|id| {
                snapshot
                    .conversations
                    .get(id)
                    .is_none_or(|c| c.status != "resolved" && c.status != "closed")
            })
            .map(|id| describe(*id))
            .collect(),
    );
    failures.add(
        "a chat still active at the end although its holder heard it (its close was never acknowledged)",
        snapshot
            .conversations
            .values()
            .filter(|c| c.status == "active")
            .filter(|c| c.holder.is_some_and(|h| seen.heard_by(c.id, h)))
            .filter(|c| seen.acked(c.id).is_none())
            .map(|c| describe(c.id))
            .collect(),
    );
    failures.add(
        "no chat left waiting: these are still pending",
        snapshot
            .conversations
            .values()
            .filter(|c| c.status == "pending")
            .map(|c| describe(c.id))
            .collect(),
    );

    failures.add(
        "a chat exists only if its visitor was answered 201 (a 503 promises the request changed nothing; a visitor told 5xx opens another)",
        snapshot
            .conversations
            .keys()
            .filter(|id| !seen.created.contains_key(id))
            .map(|id| describe(*id))
            .collect(),
    );

    // Capacity, counters, assignments: at the end, and as sampled during the run.
    let mut capacity: Vec<String> = snapshot
        .agents
        .iter()
        .filter(|a| a.active_chats > a.max || a.held > i64::from(a.max))
        .map(|a| {
            format!(
                "at the end: agent {} active_chats {} / holds {} active chats, capacity {}",
                a.id, a.active_chats, a.held, a.max
            )
        })
        .collect();
    let sampled = sampler.violations.lock().expect("not poisoned");
    capacity.extend(
        sampled
            .iter()
            .filter(|(k, _)| k.starts_with("capacity"))
            .map(|(_, (at, what))| format!("sampled {:+.2}s: {what}", at - fault.at)),
    );
    failures.add("no agent over capacity", capacity);
    failures.add(
        "counters equal their rows: agents.active_chats differs from its active chats or open assignments",
        snapshot
            .agents
            .iter()
            .filter(|a| i64::from(a.active_chats) != a.held || a.held != a.open)
            .map(|a| {
                format!(
                    "agent {} ({}, accepting {}): active_chats {}, active chats held {}, open assignments {}",
                    a.id, a.status, a.accepting, a.active_chats, a.held, a.open
                )
            })
            .collect(),
    );
    let mut double: Vec<String> = snapshot
        .double_open
        .iter()
        .map(|(id, n)| format!("at the end, {n} open: {}", describe(*id)))
        .collect();
    double.extend(
        sampled
            .iter()
            .filter(|(k, _)| k.starts_with("double"))
            .map(|(_, (at, what))| format!("sampled {:+.2}s: {what}", at - fault.at)),
    );
    drop(sampled);
    failures.add("at most one open assignment per chat", double);
    failures.add(
        "an open assignment matches its conversation (active, same agent), and an active conversation has one",
        snapshot
            .conversations
            .values()
            .filter(|c| {
                let open: Vec<&Assignment> = snapshot
                    .assignments
                    .get(&c.id)
                    .map(|l| l.iter().filter(|a| a.released.is_none()).collect())
                    .unwrap_or_default();
                if c.status == "active" {
                    open.len() != 1 || Some(open[0].agent_id) != c.holder
                } else {
                    !open.is_empty()
                }
            })
            .map(|c| describe(c.id))
            .collect(),
    );

    // What the visitors got.
    let mut server_errors = Vec::new();
    let mut refused_503 = Vec::new();
    let mut unexpected = Vec::new();
    let mut unanswered = Vec::new();
    for v in seen.visits {
        let when = format!(
            "sent {:+.2}s, answered {:+.2}s",
            v.sent - fault.at,
            v.answered - fault.at
        );
        match v.status {
            Some(201) => {}
            Some(503) => {
                let in_outage =
                    fault.allows_503 && v.sent >= fault.at - 0.5 && v.sent <= fault.recovered + 5.0;
                if !in_outage {
                    refused_503.push(format!(
                        "503 outside a PostgreSQL outage, {when}: {}",
                        v.detail
                    ));
                } else if v.retry_after.is_none() {
                    refused_503.push(format!("503 without Retry-After, {when}: {}", v.detail));
                }
            }
            Some(status) if status >= 500 => {
                server_errors.push(format!("{status}, {when}: {}", v.detail));
            }
            Some(status) => unexpected.push(format!("{status}, {when}: {}", v.detail)),
            None => unanswered.push(format!("{when}: {}", v.detail)),
        }
    }
    failures.add("no 500 (or other 5xx) answered to a visitor", server_errors);
    failures.add(
        "a 503 only during a PostgreSQL outage, and with Retry-After",
        refused_503,
    );
    failures.add(
        "a visitor's session answered neither 201 nor 5xx",
        unexpected,
    );
    failures.add(
        "a visitor's request got no answer from API node B",
        unanswered,
    );
    failures.add(
        "no socket request answered `internal` (the socket's 500)",
        seen.agents
            .iter()
            .flat_map(|(id, log)| {
                log.internal.iter().map(move |(at, event, ack)| {
                    format!("agent {id} {event} {:+.2}s: {ack}", at - fault.at)
                })
            })
            .collect(),
    );
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0} ms", v * 1e3))
}

/// `p50 / p99 / max` of latencies (seconds), as text.
pub fn spread(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "n={}, p50 {}, p99 {}, max {}",
        values.len(),
        ms(percentile(&values, 50.0)),
        ms(percentile(&values, 99.0)),
        ms(values.last().copied())
    )
}

/// The numbers of the report: flow after the fault, latencies around it.
pub struct Timing {
    pub text: String,
    /// From the fault to the first assignment heard after it.
    pub flowed_again: Option<f64>,
    /// From the fault to the first assignment heard of a chat opened after it.
    pub new_flowed_again: Option<f64>,
    pub p99_around: Option<f64>,
}

pub fn timing(snapshot: &Snapshot, seen: &Seen, fault: &FaultWindow, load_end: f64) -> Timing {
    let mut text = String::new();
    let mut heard: Vec<(f64, i64)> = seen
        .heard
        .iter()
        .flat_map(|(c, list)| list.iter().map(move |(_, h)| (h.at, *c)))
        .collect();
    heard.sort_by(|a, b| a.0.total_cmp(&b.0));
    let flowed_again = heard
        .iter()
        .find(|(at, _)| *at > fault.at)
        .map(|(at, _)| at - fault.at);
    let new_flowed = heard
        .iter()
        .filter(|(_, c)| seen.created.get(c).is_some_and(|sent| *sent > fault.at))
        .map(|(at, _)| at - fault.at)
        .next();
    let mut gap = (0.0f64, 0.0f64);
    let mut last = fault.at - 1.0;
    for (at, _) in heard
        .iter()
        .filter(|(at, _)| *at >= fault.at - 1.0 && *at <= load_end)
    {
        if at - last > gap.0 {
            gap = (at - last, last);
        }
        last = *at;
    }
    if load_end - last > gap.0 {
        gap = (load_end - last, last);
    }
    let secs = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.2} s"));
    let _ = writeln!(
        text,
        "chats flowed again: first assignment heard {} after the fault; first heard of a chat opened after the fault: {}; longest silence between assignments heard: {:.2} s (from {:+.2}s)",
        secs(flowed_again),
        secs(new_flowed),
        gap.0,
        gap.1 - fault.at
    );

    // enqueue→assigned: the first assignment's time minus queued_at (set by the enqueue job);
    // created→assigned: the same from the conversation row's creation (the widget session).
    let window = (fault.at - 3.0, fault.at + 8.0);
    let mut around = Vec::new();
    let mut around_created = Vec::new();
    let mut before = Vec::new();
    let mut unassigned = 0;
    for c in snapshot.conversations.values() {
        let first = snapshot.first_assigned(c.id);
        let in_window = c.created >= window.0 && c.created <= window.1;
        match first {
            Some(first) => {
                let queued = c.queued.unwrap_or(c.created);
                if in_window {
                    around.push(first - queued);
                    around_created.push(first - c.created);
                } else if c.created < fault.at - 0.5 {
                    before.push(first - queued);
                }
            }
            None if in_window => unassigned += 1,
            None => {}
        }
    }
    let mut holds: Vec<f64> = snapshot
        .assignments
        .values()
        .flatten()
        .filter_map(|a| Some(a.released? - a.assigned))
        .collect();
    holds.sort_by(f64::total_cmp);
    // Where a chat's time in an agent's hands goes: the push (assignment row → heard), and the
    // close job (close acknowledged → assignment released).
    let mut push = Vec::new();
    let mut close_job = Vec::new();
    for (id, list) in &snapshot.assignments {
        for a in list {
            let heard_at = seen.heard.get(id).and_then(|h| {
                h.iter()
                    .find(|(agent, _)| *agent == a.agent_id)
                    .map(|(_, h)| h.at)
            });
            if let Some(at) = heard_at {
                push.push(at - a.assigned);
            }
            let acked = seen.closes.get(id).and_then(|c| {
                c.iter()
                    .find(|(agent, _)| *agent == a.agent_id)
                    .and_then(|(_, s)| s.acked_at)
            });
            if let (Some(acked), Some(released)) = (acked, a.released) {
                close_job.push(released - acked);
            }
        }
    }
    let _ = writeln!(
        text,
        "an agent held a chat (assignment → release) p50 {}, p99 {}; of which assignment → heard {}; close acknowledged → released {}",
        ms(percentile(&holds, 50.0)),
        ms(percentile(&holds, 99.0)),
        spread(push),
        spread(close_job)
    );
    let p99_around = {
        let mut sorted = around.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 99.0)
    };
    let _ = writeln!(
        text,
        "enqueue→assigned (first assignment − queued_at), chats opened {:+.0}..{:+.0} s around the fault: {}{}",
        window.0 - fault.at,
        window.1 - fault.at,
        spread(around),
        if unassigned > 0 {
            format!(" (+{unassigned} never assigned)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        text,
        "  created→assigned, same chats: {}; before the fault (enqueue→assigned): {}",
        spread(around_created),
        spread(before)
    );
    Timing {
        text,
        flowed_again,
        new_flowed_again: new_flowed,
        p99_around,
    }
}

/// Counts of what the agents saw.
pub fn agent_summary(seen: &Seen, fault_at: f64) -> String {
    let mut push = 0;
    let mut sync = 0;
    let (mut required, mut syncs, mut unknown, mut reconnects, mut server_closes) = (0, 0, 0, 0, 0);
    let mut duplicates = 0;
    let mut sync_failures = Vec::new();
    let mut errors = Vec::new();
    let mut unassigned = 0;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut retries: BTreeMap<String, usize> = BTreeMap::new();
    for (id, log) in &seen.agents {
        for h in log.heard.values() {
            match h.via {
                Via::Push => push += 1,
                Via::Sync => sync += 1,
            }
        }
        duplicates += log.duplicate_pushes;
        required += log.sync_required.len();
        syncs += log.syncs_ok;
        unknown += log.sync_unknown;
        reconnects += log.connects.len().saturating_sub(1);
        server_closes += log.closed_by_server.len();
        unassigned += log.unassigned.len();
        for (at, what) in &log.sync_failures {
            sync_failures.push(format!("agent {id} {:+.2}s: {what}", at - fault_at));
        }
        for (at, what) in &log.errors {
            errors.push(format!("agent {id} {:+.2}s: {what}", at - fault_at));
        }
        for s in log.closes.values() {
            if let Some(r) = &s.refused {
                *refused
                    .entry(r.split(':').next().unwrap_or("").to_owned())
                    .or_default() += 1;
            }
            for (_, what) in &s.attempts {
                if what != "acked" && s.refused.as_deref() != Some(what.as_str()) {
                    let key: String = what.chars().take(40).collect();
                    *retries.entry(key).or_default() += 1;
                }
            }
        }
    }
    let acked = seen
        .closes
        .values()
        .filter(|l| l.iter().any(|(_, s)| s.acked_at.is_some()))
        .count();
    let mut waits = Vec::new();
    let mut round_trips: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (_, log) in &seen.agents {
        for (event, turn, took) in &log.requests {
            waits.push(*turn);
            round_trips.entry(event).or_default().push(*took);
        }
    }
    let distinct: BTreeSet<i64> = seen.heard.keys().copied().collect();
    let mut out = format!(
        "agents heard {} chats ({push} by push, {sync} first by sync; {duplicates} duplicate pushes); closes acknowledged {acked}; \
         refused {refused:?}; retried attempts {retries:?}; `conversation:unassigned` {unassigned}\n\
         sockets: reconnections {reconnects}, disconnected by the server {server_closes}; sync:required received {required}; \
         sync answered {syncs}, answered bad_request (not implemented) {unknown}\n",
        distinct.len()
    );
    let _ = writeln!(
        out,
        "socket requests (one at a time per agent): waiting for a turn {}; {}",
        spread(waits),
        round_trips
            .into_iter()
            .map(|(event, took)| format!("{event} {}", spread(took)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for line in sync_failures.iter().take(5) {
        let _ = writeln!(out, "  sync failure: {line}");
    }
    for line in errors.iter().take(5) {
        let _ = writeln!(out, "  socket error: {line}");
    }
    out
}

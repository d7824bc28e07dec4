//! The fault suite: real `switchboard` processes (2 `serve`, 2 `work`) on a private PostgreSQL
//! cluster and a private Redis, both started (and broken) by the test; real Socket.IO agents that
//! close each chat they hear of; visitors opening chats at a steady rate. Each fault in turn, on a
//! fresh deployment (a new database and Redis prefix; the cluster and the Redis server are
//! shared):
//!
//! - `redis`: Redis killed (kill -9) mid-load and restarted empty on the same port;
//! - `worker`: one worker process killed (kill -9) mid-load, restarted 4 s later;
//! - `postgres`: `pg_ctl restart -m fast` mid-load.
//!
//! Then, once the chats settle (or a deadline passes), from the database and from what the
//! clients saw: every chat created was assigned and heard by its agent (push or `sync`); every
//! acknowledged close took effect; no agent over capacity (also sampled during the run); counters
//! equal their rows; at most one open assignment per chat (also sampled); no 500 answered (a 503
//! with Retry-After is allowed during the PostgreSQL restart only), and no chat exists whose
//! visitor was not answered 201; every process still alive; and a webhook receiver got
//! `conversation.assigned` and `conversation.closed` for every chat (nothing a committed change
//! implies is lost with the process or the job storage: see `jobs::outbox`).
//! Reported per fault: the time until chats flowed again, and enqueue→assigned p99 across it.
//!
//! `cargo test --test faults -- --nocapture`; `SWITCHBOARD_FAULTS=redis,postgres` picks faults.
//! Logs of every process: `target/tmp/faults/<fault>/` (kept after the run).

mod agents;
mod checks;
mod hooks;
mod services;
mod stack;
mod visitors;

use std::{
    fmt::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::{
    agents::Agent,
    checks::{Failures, FaultWindow, Sampler, Seen, Snapshot},
    services::{Clock, PgCluster, RedisServer, log_digest},
    stack::Stack,
};

/// Agents online, each taking this many chats at once. Measured here (debug binaries on two
/// cores), an agent holds a chat 1–1.5 s at the median and several seconds at the p99 (the
/// assignment push, ~200 ms of "reading", the close request, the close job), so 80 slots keep a
/// backlog drainable at [`RATE`]: the latencies reported are the fault's more than a full house's
/// (the report prints the peak occupancy sampled).
const AGENTS: usize = 10;
const CAPACITY: u32 = 8;
/// Widget sessions per second (debug binaries, two cores shared with PostgreSQL and Redis).
const RATE: u32 = 30;
/// Load before the fault, and in all.
const BEFORE_FAULT: Duration = Duration::from_secs(5);
const LOAD: Duration = Duration::from_secs(16);
/// How long Redis stays down before it comes back empty.
const REDIS_DOWN: Duration = Duration::from_secs(3);
/// How long the killed worker stays down.
const WORKER_DOWN: Duration = Duration::from_secs(4);
/// How long the chats get to settle after the load.
const SETTLE: Duration = Duration::from_secs(25);
/// How long the webhooks get after the chats settled: an outcome whose fan-out died with its
/// process is fanned out by a sweep once 30 s old (every 15 s), and a delivery whose job Redis
/// lost is resubmitted 30 s past due.
const WEBHOOKS_SETTLE: Duration = Duration::from_secs(75);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Redis,
    Worker,
    Postgres,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Redis, Fault::Worker, Fault::Postgres];

    fn name(self) -> &'static str {
        match self {
            Fault::Redis => "redis",
            Fault::Worker => "worker",
            Fault::Postgres => "postgres",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::Redis => "Redis killed (kill -9), down 3 s, restarted empty on its port",
            Fault::Worker => "worker work-1 killed (kill -9), restarted 4 s later",
            Fault::Postgres => "PostgreSQL restarted (pg_ctl restart -m fast)",
        }
    }
}

fn selected() -> Vec<Fault> {
    match std::env::var("SWITCHBOARD_FAULTS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|name| {
                Fault::ALL
                    .into_iter()
                    .find(|f| f.name() == name.trim())
                    .unwrap_or_else(|| panic!("unknown fault {name:?}: redis, worker, postgres"))
            })
            .collect(),
        _ => Fault::ALL.to_vec(),
    }
}

/// What one scenario ends with.
struct Outcome {
    fault: Fault,
    report: String,
    failures: Failures,
    /// Log digests, printed when something failed.
    logs: String,
    flowed_again: Option<f64>,
    new_flowed_again: Option<f64>,
    p99_around: Option<f64>,
    seconds: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults() {
    switchboard::install_crypto_provider();
    let started = Instant::now();
    services::reap_leftovers();
    let log_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
    let _ = std::fs::remove_dir_all(&log_root);
    std::fs::create_dir_all(&log_root).expect("the log directory");
    let pg = PgCluster::start(&log_root).await;
    let mut redis = RedisServer::start(&log_root).await;
    eprintln!(
        "faults: PostgreSQL on 127.0.0.1:{} and Redis on 127.0.0.1:{} ready after {:.1} s; logs in {}",
        pg.port,
        redis.port,
        started.elapsed().as_secs_f64(),
        log_root.display()
    );

    let mut outcomes = Vec::new();
    for fault in selected() {
        let scenario_started = Instant::now();
        let run = std::panic::AssertUnwindSafe(scenario(fault, &pg, &mut redis, &log_root))
            .catch_unwind()
            .await;
        let outcome = run.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into());
            let mut failures = Failures::default();
            failures.add("the scenario ran to its end", vec![message]);
            Outcome {
                fault,
                report: String::new(),
                failures,
                logs: logs_of(&log_root.join(fault.name())),
                flowed_again: None,
                new_flowed_again: None,
                p99_around: None,
                seconds: scenario_started.elapsed().as_secs_f64(),
            }
        });
        eprintln!("{}", render(&outcome, true));
        outcomes.push(outcome);
    }
    let infrastructure = {
        let mut notes = Vec::new();
        if !pg.alive() {
            notes.push(format!(
                "the PostgreSQL cluster is down\n{}",
                log_digest(&pg.log, 30)
            ));
        }
        if let Some(status) = redis.exited() {
            notes.push(format!(
                "redis-server exited ({status})\n{}",
                log_digest(&redis.log(), 30)
            ));
        }
        notes
    };
    drop(redis);
    drop(pg);
    services::forget_children();

    let wall = started.elapsed().as_secs_f64();
    let mut summary = format!("\n==== fault suite: {wall:.1} s in all ====\n");
    for o in &outcomes {
        let secs = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.2} s"));
        let _ = writeln!(
            summary,
            "{:<9} {:>5.1} s  chats flowed again after {:<7} (chats opened after the fault: {:<7})  enqueue→assigned p99 around the fault {:<9}  {}",
            o.fault.name(),
            o.seconds,
            secs(o.flowed_again),
            secs(o.new_flowed_again),
            o.p99_around
                .map_or("-".into(), |v| format!("{:.0} ms", v * 1e3)),
            if o.failures.0.is_empty() {
                "ok".to_owned()
            } else {
                format!(
                    "FAILED: {}",
                    o.failures
                        .0
                        .iter()
                        .map(|f| format!("{} ({})", f.invariant, f.count))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
    }
    for note in &infrastructure {
        let _ = writeln!(summary, "infrastructure: {note}");
    }
    eprintln!("{summary}");
    let failed = outcomes.iter().any(|o| !o.failures.0.is_empty()) || !infrastructure.is_empty();
    if failed {
        let details: String = outcomes
            .iter()
            .filter(|o| !o.failures.0.is_empty())
            .map(|o| render(o, false))
            .collect();
        panic!("{summary}\n{details}");
    }
}

/// The report of one scenario; with `logs`, the processes' log digests when it failed.
fn render(o: &Outcome, logs: bool) -> String {
    let mut out = format!(
        "\n=== fault `{}`: {} ({:.1} s) ===\n{}",
        o.fault.name(),
        o.fault.describe(),
        o.seconds,
        o.report
    );
    for f in &o.failures.0 {
        out.push_str(&f.to_string());
    }
    if o.failures.0.is_empty() {
        out.push_str("all invariants held\n");
    } else if logs {
        out.push_str("\nlogs:\n");
        out.push_str(&o.logs);
    }
    out
}

fn logs_of(dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "log"));
    paths.sort();
    paths.iter().map(|p| log_digest(p, 15)).collect()
}

async fn scenario(
    fault: Fault,
    pg: &PgCluster,
    redis: &mut RedisServer,
    log_root: &Path,
) -> Outcome {
    let begun = Instant::now();
    let log_dir = log_root.join(fault.name());
    std::fs::create_dir_all(&log_dir).expect("the scenario's log directory");
    let mut stack = Stack::start(
        &format!("sb_fault_{}", fault.name()),
        pg,
        &redis.url(),
        &log_dir,
    )
    .await;
    let (group_id, tokens) = stack.setup_agents(AGENTS, CAPACITY).await;
    let hooks = hooks::Hooks::start().await;
    stack
        .subscribe(
            &hooks.url,
            &["conversation.assigned", "conversation.closed"],
        )
        .await;
    let clock = Clock::new();
    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for (id, token) in &tokens {
        let agent = Agent::connect(&stack.api_a, *id, token, clock, stop.clone())
            .await
            .unwrap_or_else(|err| panic!("{err}\n{}", stack.log_digests(20)));
        agents.push(agent);
    }
    let sampler = Sampler::start(
        stack::connect(&stack.database_url).await,
        clock,
        stop.clone(),
    );
    let setup = begun.elapsed().as_secs_f64();
    let name = fault.name();
    let progress = |what: &str| {
        eprintln!(
            "faults[{name}] {:6.1} s: {what}",
            begun.elapsed().as_secs_f64()
        )
    };
    progress("deployment up, agents online; load starts");

    // Load on node B; the fault in the middle of it.
    let load_start = clock.now();
    let visitors = tokio::spawn(visitors::run(
        stack.http.clone(),
        stack.api_b.clone(),
        group_id,
        RATE,
        LOAD,
        clock,
    ));
    tokio::time::sleep(BEFORE_FAULT).await;
    let at = clock.now();
    progress("injecting the fault");
    let mut notes = Vec::new();
    let mut injection = Vec::new();
    match fault {
        Fault::Redis => redis.restart_empty(REDIS_DOWN).await,
        Fault::Worker => {
            let index = stack.index_of("work-1");
            stack.procs[index].kill9();
            tokio::time::sleep(WORKER_DOWN).await;
            let restarted = stack.spawn("work-1-restarted", "work", None);
            stack.wait_ready(restarted).await;
        }
        Fault::Postgres => {
            if let Err(err) = pg.restart_fast().await {
                injection.push(format!("{err}\n{}", log_digest(&pg.log, 20)));
            }
        }
    }
    let recovered = clock.now();
    progress("fault over");
    let visits = visitors.await.expect("the visitors' task");
    let load_end = clock.now();
    progress("load over; waiting for the chats to settle");

    // Let the chats settle: all closed, counters at zero, no close still being retried.
    let db = stack::connect(&stack.database_url).await;
    let deadline = load_end + SETTLE.as_secs_f64();
    let mut snapshot = Snapshot::default();
    let mut settled = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), Snapshot::load(&db, clock)).await {
            Ok(Ok(s)) => snapshot = s,
            Ok(Err(err)) => notes.push(format!("reading the database: {err}")),
            Err(_) => notes.push("reading the database took over 10 s".into()),
        }
        let closing: usize = agents.iter().map(Agent::closes_running).sum();
        if snapshot.settled() && closing == 0 {
            settled = true;
            break;
        }
        if clock.now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_after = clock.now() - load_end;
    progress(if settled {
        "settled; checking"
    } else {
        "did not settle; checking"
    });
    // Every chat's webhooks, however late.
    let webhooks_deadline = clock.now() + WEBHOOKS_SETTLE.as_secs_f64();
    let missing_webhooks = loop {
        let missing: Vec<String> = [
            ("conversation.assigned", "assigned"),
            ("conversation.closed", "closed"),
        ]
        .into_iter()
        .flat_map(|(kind, what)| {
            let delivered = hooks.delivered(kind);
            snapshot
                .conversations
                .values()
                .filter(|c| match what {
                    "assigned" => snapshot.assignments.contains_key(&c.id),
                    _ => c.status == "resolved" || c.status == "closed",
                })
                .filter(|c| !delivered.contains(&c.id))
                .map(|c| format!("{kind} for conversation {}", c.id))
                .collect::<Vec<_>>()
        })
        .collect();
        if missing.is_empty() || clock.now() > webhooks_deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let webhooks_after = clock.now() - load_end;
    progress("webhooks checked");
    stop.cancel();
    for agent in &agents {
        if tokio::time::timeout(Duration::from_secs(2), agent.disconnect())
            .await
            .is_err()
        {
            notes.push(format!("agent {}: disconnecting took over 2 s", agent.id));
        }
    }

    // CPU used (the machine is small: a saturated one makes every latency a queue's).
    let mut cpu: Vec<String> = stack
        .procs
        .iter()
        .filter(|p| !p.killed_on_purpose)
        .filter_map(|p| Some(format!("{} {:.1}", p.name, p.cpu_seconds()?)))
        .collect();
    if let Some(me) = services::cpu_seconds(std::process::id()) {
        cpu.push(format!("this test process (all scenarios so far) {me:.1}"));
    }

    // Every process alive (the one killed on purpose: its restart).
    let mut dead = Vec::new();
    for proc in &mut stack.procs {
        if let Some(status) = proc.exited()
            && !proc.killed_on_purpose
        {
            dead.push(format!(
                "{} (pid {}) exited: {status}\n{}",
                proc.name,
                proc.pid(),
                log_digest(&proc.log, 25)
            ));
        }
    }
    for (name, api) in [("serve-a", &stack.api_a), ("serve-b", &stack.api_b)] {
        let answered = stack
            .http
            .get(format!("{api}/health"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !answered {
            dead.push(format!("{name} does not answer GET /health"));
        }
    }

    let closing: usize = agents.iter().map(Agent::closes_running).sum();
    // Each agent's log stays locked from here on: nothing below may lock one again.
    let logs: Vec<_> = agents.iter().map(|a| (a.id, a.log())).collect();
    let seen = Seen::new(
        &visits,
        logs.iter().map(|(id, log)| (*id, &**log)).collect(),
    );
    let window = FaultWindow {
        at,
        recovered,
        allows_503: fault == Fault::Postgres,
    };
    let mut failures = Failures::default();
    checks::check(&snapshot, &seen, &sampler, &window, &mut failures);
    failures.add("every process still alive", dead);
    failures.add(
        "every assignment and close reached the webhook receiver",
        missing_webhooks,
    );
    failures.add(
        "the fault was injected and its service came back",
        injection,
    );

    // The report.
    let mut report = String::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for v in &visits {
        let key = v.status.map_or("no answer".into(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
    }
    let _ = writeln!(
        report,
        "setup {setup:.1} s; load {:.0} s at {RATE}/s on node B from {:+.1}s; fault at {:+.1}s (load time), over at {:+.2}s after it; load ended {:+.1}s after it",
        LOAD.as_secs_f64(),
        load_start - at,
        at - load_start,
        recovered - at,
        load_end - at
    );
    let unanswered: Vec<i64> = snapshot
        .conversations
        .keys()
        .filter(|id| !seen.created.contains_key(id))
        .copied()
        .collect();
    let _ = writeln!(
        report,
        "visitors: {} sessions sent, answers {statuses:?}; database: {} conversations ({} pending, {} active at the end; {} whose visitor was not answered 201{})",
        visits.len(),
        snapshot.conversations.len(),
        snapshot.count("pending"),
        snapshot.count("active"),
        unanswered.len(),
        if unanswered.is_empty() {
            String::new()
        } else {
            format!(": {:?}", &unanswered[..unanswered.len().min(20)])
        }
    );
    report.push_str(&checks::agent_summary(&seen, at));
    let timing = checks::timing(&snapshot, &seen, &window, load_end);
    report.push_str(&timing.text);
    let (samples, failed_samples) = *sampler.samples.lock().expect("not poisoned");
    let (peak, peak_at) = *sampler.peak_held.lock().expect("not poisoned");
    let _ = writeln!(
        report,
        "most chats held at once (sampled): {peak} of {} slots, at {:+.2}s",
        AGENTS as u32 * CAPACITY,
        peak_at - at
    );
    let _ = writeln!(
        report,
        "{}; invariants sampled {samples} times during the run ({failed_samples} samples failed to read)",
        if settled {
            format!("settled {settled_after:.1} s after the load")
        } else {
            format!(
                "did NOT settle within {:.0} s after the load ({} pending, {} active, closes still retried: {})",
                SETTLE.as_secs_f64(),
                snapshot.count("pending"),
                snapshot.count("active"),
                closing
            )
        }
    );
    for (agent, (at_drift, what)) in sampler.drift.lock().expect("not poisoned").iter().take(5) {
        let _ = writeln!(
            report,
            "  note: counter differed from its rows while sampling (agent {agent}, {:+.2}s): {what}",
            at_drift - at
        );
    }
    let _ = writeln!(
        report,
        "webhooks: {} conversation.assigned and {} conversation.closed received ({webhooks_after:.1} s after the load when checked)",
        hooks.delivered("conversation.assigned").len(),
        hooks.delivered("conversation.closed").len()
    );
    let _ = writeln!(report, "CPU seconds used: {}", cpu.join(", "));
    for note in &notes {
        let _ = writeln!(report, "  note: {note}");
    }
    let mut digests = stack.log_digests(15);
    digests.push_str(&log_digest(&redis.log(), 8));
    digests.push_str(&log_digest(&pg.log, 8));
    let outcome = Outcome {
        fault,
        report,
        failures,
        logs: digests,
        flowed_again: timing.flowed_again,
        new_flowed_again: timing.new_flowed_again,
        p99_around: timing.p99_around,
        seconds: begun.elapsed().as_secs_f64(),
    };
    drop(logs);
    outcome
}

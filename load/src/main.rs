//! Load generator against a running Switchboard; prints one JSON report.
//!
//! - Chats (default): opens widget sessions at a steady rate with M online agents, resolves each
//!   chat as soon as it is assigned, and reports throughput and the enqueue→assigned latency the
//!   server recorded (`assignedAt - queuedAt`).
//! - `sockets`: connects K agents and V visitors over Socket.IO at once, has the visitors send
//!   messages at a steady total rate, and reports visitor→agent delivery latency (send to
//!   `message:new` on the agent's socket) and the server's memory per connected socket.
//!
//! Run the server with its widget rate limit raised, then for example:
//!   switchboard-load --admin-password P --rate 200 --duration 60 --agents 20
//!   switchboard-load --admin-password P sockets --agents 50 --visitors 4950 --messages-per-second 2000
//! See the README, "Load generator".

mod sockets;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Drives widget sessions through a running server and reports what happened.
#[derive(Debug, Parser)]
#[command(name = "switchboard-load")]
struct Args {
    /// Server base URL.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin e-mail.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_EMAIL",
        default_value = "admin@localhost"
    )]
    admin_email: String,
    /// Admin password.
    #[arg(long, env = "SWITCHBOARD_ADMIN_PASSWORD")]
    admin_password: String,
    /// Widget sessions opened per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds to keep opening sessions.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Online agents serving the load.
    #[arg(long, default_value_t = 20)]
    agents: u32,
    /// Capacity of each agent.
    #[arg(long, default_value_t = 100)]
    capacity: u32,
    /// Requests in flight at most (sessions and closes each).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How often the agents look for newly assigned chats to resolve, in milliseconds (latency
    /// is measured from the server's own timestamps, so this only paces the capacity cycle).
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Another load than chats.
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Connected sockets and message delivery.
    Sockets(sockets::SocketArgs),
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }
}

/// Conversations opened and not yet seen assigned (the listing starts at the oldest), and those
/// seen assigned. A chat may be assigned before its session's answer arrives: it is then never
/// counted as waiting.
#[derive(Default)]
struct Track {
    unseen: std::collections::BTreeSet<i64>,
    seen: HashSet<i64>,
}

#[derive(Default)]
struct Tally {
    created: AtomicU64,
    failed: AtomicU64,
    session_ms: Mutex<Vec<f64>>,
    /// Which conversations were opened and which were seen assigned.
    track: Mutex<Track>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn summary(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    json!({
        "count": values.len(),
        "p50": percentile(&values, 50.0),
        "p99": percentile(&values, 99.0),
        "max": values.last().copied().unwrap_or(0.0),
    })
}

/// The same choice as the server's (`switchboard::install_crypto_provider`, docs/stack-notes.md,
/// "TLS crypto providers"): aws-lc-rs, installed before anything builds a TLS config, so an
/// `https://` URL works however many providers the dependencies compile in.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    install_crypto_provider();
    let args = Args::parse();
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?,
        base: args.url.trim_end_matches('/').to_owned(),
    });
    let post = reqwest::Method::POST;
    let login = client
        .call(
            post.clone(),
            "/v1/auth/login",
            None,
            Some(json!({ "email": args.admin_email, "password": args.admin_password })),
        )
        .await
        .context("admin login")?;
    let admin = login["token"].as_str().context("a token")?.to_owned();
    // Readiness names the job storage (503 is fine here: only the backend's name is read).
    let health: Value = client
        .http
        .get(format!("{}/health/ready", client.base))
        .send()
        .await?
        .json()
        .await
        .unwrap_or_default();
    if let Some(Mode::Sockets(socket_args)) = &args.mode {
        return sockets::run(&client, &admin, socket_args).await;
    }
    let (group_id, _) = setup_agents(&client, &admin, args.agents, args.capacity).await?;

    let tally = Arc::new(Tally::default());
    let total = u64::from(args.rate) * args.duration;
    eprintln!("opening {total} sessions at {}/s", args.rate);
    let started = Instant::now();

    // Sessions at a steady rate: one tick per session, each request on its own task.
    let opener = {
        let (client, tally) = (client.clone(), tally.clone());
        let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::with_capacity(total as usize);
            for _ in 0..total {
                tick.tick().await;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let (client, tally) = (client.clone(), tally.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let reply = client
                        .call(
                            reqwest::Method::POST,
                            "/v1/widget/session",
                            None,
                            Some(json!({ "groupId": group_id })),
                        )
                        .await;
                    drop(permit);
                    match reply {
                        Ok(session) => {
                            if let Some(id) = session["conversationId"].as_i64() {
                                let mut track = tally.track.lock().await;
                                if !track.seen.contains(&id) {
                                    track.unseen.insert(id);
                                }
                            }
                            tally.created.fetch_add(1, Ordering::Relaxed);
                            tally
                                .session_ms
                                .lock()
                                .await
                                .push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(err) => {
                            if tally.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("session failed: {err:#}");
                            }
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        })
    };

    // The agents resolve what they get, so capacity keeps cycling; each assignment is measured
    // once, from the server's own timestamps.
    let deadline_after_opening = Duration::from_secs(30);
    let mut opened_at: Option<Instant> = None;
    let mut assigned_ms = Vec::new();
    loop {
        // The group's active conversations from the oldest one not yet seen assigned, page by
        // page (the first pages may hold conversations whose close is still on its way).
        let mut fresh = Vec::new();
        let mut after = tally
            .track
            .lock()
            .await
            .unseen
            .first()
            .map_or(i64::MAX - 1, |oldest| oldest - 1);
        loop {
            let page = client
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/v1/conversations?status=active&groupId={group_id}&limit=200&after={after}"
                    ),
                    Some(&admin),
                    None,
                )
                .await?;
            for c in page["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let Some(id) = c["id"].as_i64() else { continue };
                {
                    let mut track = tally.track.lock().await;
                    if !track.seen.insert(id) {
                        continue;
                    }
                    track.unseen.remove(&id);
                }
                if let (Some(assigned), Some(queued)) =
                    (timestamp(&c["assignedAt"]), timestamp(&c["queuedAt"]))
                {
                    assigned_ms.push(
                        (assigned - queued).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3,
                    );
                }
                fresh.push(id);
            }
            match page["nextCursor"].as_i64() {
                Some(cursor) => after = cursor,
                None => break,
            }
        }
        stream::iter(fresh)
            .map(|id| {
                let (client, admin) = (client.clone(), admin.clone());
                async move {
                    let _ = client
                        .call(
                            reqwest::Method::POST,
                            &format!("/v1/conversations/{id}/close"),
                            Some(&admin),
                            None,
                        )
                        .await;
                }
            })
            .buffer_unordered(args.concurrency)
            .collect::<Vec<()>>()
            .await;
        let created = tally.created.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed);
        if opener.is_finished() && opened_at.is_none() {
            opened_at = Some(Instant::now());
        }
        let seen = tally.track.lock().await.seen.len() as u64;
        let all_measured = seen >= tally.created.load(Ordering::Relaxed);
        if created >= total && opener.is_finished() && all_measured {
            break;
        }
        if opened_at.is_some_and(|at| at.elapsed() > deadline_after_opening) {
            eprintln!(
                "gave up waiting for {} unassigned conversations",
                tally.created.load(Ordering::Relaxed) - seen
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let seen = tally.track.lock().await.seen.len();
    let created = tally.created.load(Ordering::Relaxed);
    let report = json!({
        "mode": health["checks"]["jobStorage"]["backend"],
        "agents": args.agents,
        "requestedRatePerSecond": args.rate,
        "durationSeconds": args.duration,
        "sessionsCreated": created,
        "sessionsFailed": tally.failed.load(Ordering::Relaxed),
        "assigned": seen,
        "elapsedSeconds": elapsed,
        "assignedPerSecond": seen as f64 / elapsed,
        "enqueueToAssignedMs": summary(assigned_ms),
        "sessionRequestMs": summary(std::mem::take(&mut *tally.session_ms.lock().await)),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A group of its own (so earlier runs and real traffic do not mix in) with `count` online agents
/// of `capacity`; returns the group and each agent's (id, token).
pub(crate) async fn setup_agents(
    client: &Client,
    admin: &str,
    count: u32,
    capacity: u32,
) -> anyhow::Result<(i64, Vec<(i64, String)>)> {
    let post = reqwest::Method::POST;
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let group = client
        .call(
            post.clone(),
            "/v1/groups",
            Some(admin),
            Some(json!({ "name": format!("load-{run}") })),
        )
        .await?;
    let group_id = group["id"].as_i64().context("a group id")?;
    eprintln!("setting up {count} agents in group {group_id}");
    let mut agents = Vec::new();
    for n in 0..count {
        let email = format!("load-{run}-{n}@example.com");
        let agent = client
            .call(
                post.clone(),
                "/v1/agents",
                Some(admin),
                Some(json!({
                    "name": format!("Load agent {n}"), "email": email, "password": "load-password",
                    "maxConcurrentChats": capacity
                })),
            )
            .await?;
        let agent_id = agent["id"].as_i64().context("an agent id")?;
        client
            .call(
                post.clone(),
                &format!("/v1/groups/{group_id}/agents"),
                Some(admin),
                Some(json!({ "agentId": agent_id })),
            )
            .await?;
        let session = client
            .call(
                post.clone(),
                "/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": "load-password" })),
            )
            .await?;
        let token = session["token"].as_str().context("a token")?.to_owned();
        client
            .call(
                reqwest::Method::PUT,
                "/v1/agents/me/status",
                Some(&token),
                Some(json!({ "status": "online" })),
            )
            .await?;
        agents.push((agent_id, token));
    }
    Ok((group_id, agents))
}

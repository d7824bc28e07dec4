//! `switchboard-load sockets`: K agents and V visitors connected at once, visitors sending
//! messages at a steady total rate; reports visitor→agent delivery latency and the server's
//! memory per connected socket.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{FutureExt, StreamExt, stream};
use rust_socketio::{
    Event, Payload, TransportType,
    asynchronous::{Client as Socket, ClientBuilder},
};
use serde_json::{Value, json};

use super::{Client, setup_agents, summary};

#[derive(Debug, clap::Args)]
pub struct SocketArgs {
    /// Agents connected (each takes its share of the visitors' chats).
    #[arg(long, default_value_t = 50)]
    agents: u32,
    /// Visitors connected, each in a chat assigned to one of the agents.
    #[arg(long, default_value_t = 4950)]
    visitors: u32,
    /// Messages per second, all visitors together.
    #[arg(long, default_value_t = 2000)]
    messages_per_second: u32,
    /// Seconds of messages.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// The server's process id, to read its resident memory before and after the sockets connect.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sockets connecting at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
}

/// Resident memory of `pid` in bytes (Linux).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Delivery latencies in milliseconds, from the send time carried in the message.
#[derive(Default)]
struct Deliveries {
    latencies_ms: Mutex<Vec<f64>>,
}

/// Connects one socket to `ns`; `on_message` sees every `message:new`. Waits for the server's
/// answer to the handshake.
async fn connect(
    url: &str,
    ns: &str,
    auth: Value,
    on_message: Option<(Arc<Deliveries>, Instant)>,
) -> anyhow::Result<Socket> {
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let answer = Arc::new(Mutex::new(Some(tx)));
    let (ok, refused) = (answer.clone(), answer);
    let mut builder = ClientBuilder::new(format!("{url}/"))
        .namespace(ns)
        .auth(auth)
        .transport_type(TransportType::Websocket)
        .reconnect(false)
        .on(Event::Connect, move |_, _| {
            if let Some(tx) = ok.lock().ok().and_then(|mut a| a.take()) {
                let _ = tx.send(Ok(()));
            }
            async {}.boxed()
        })
        .on(Event::Error, move |payload, _| {
            if let Some(tx) = refused.lock().ok().and_then(|mut a| a.take()) {
                let _ = tx.send(Err(format!("{payload:?}")));
            }
            async {}.boxed()
        });
    if let Some((deliveries, origin)) = on_message {
        builder = builder.on("message:new", move |payload, _| {
            if let Payload::Text(values) = payload
                && let Some(event) = values.first()
                && event["authorType"] == "visitor"
                && let Some(sent_us) = event["content"]
                    .as_str()
                    .and_then(|c| c.strip_prefix("t:"))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                let now_us = origin.elapsed().as_micros() as u64;
                let ms = now_us.saturating_sub(sent_us) as f64 / 1e3;
                if let Ok(mut all) = deliveries.latencies_ms.lock() {
                    all.push(ms);
                }
            }
            async {}.boxed()
        });
    }
    let socket = builder.connect().await?;
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(()))) => Ok(socket),
        Ok(Ok(Err(refusal))) => anyhow::bail!("refused: {refusal}"),
        _ => anyhow::bail!("no answer to the handshake"),
    }
}

pub async fn run(client: &Client, admin: &str, args: &SocketArgs) -> anyhow::Result<()> {
    let agents_n = args.agents.max(1);
    let capacity = args.visitors.div_ceil(agents_n) + 1;
    let (group_id, agents) = setup_agents(client, admin, agents_n, capacity).await?;
    let url = client.base.clone();
    let origin = Instant::now();
    let deliveries = Arc::new(Deliveries::default());
    let before = args.server_pid.and_then(rss);

    eprintln!("connecting {} agents", agents.len());
    let mut agent_sockets = Vec::new();
    for (_, token) in &agents {
        let socket = connect(
            &url,
            "/agents",
            json!({ "token": token }),
            Some((deliveries.clone(), origin)),
        )
        .await
        .context("an agent socket")?;
        agent_sockets.push(socket);
    }

    eprintln!("opening {} chats", args.visitors);
    let sessions: Vec<String> = stream::iter(0..args.visitors)
        .map(|_| async move {
            client
                .call(
                    reqwest::Method::POST,
                    "/v1/widget/session",
                    None,
                    Some(json!({ "groupId": group_id })),
                )
                .await
                .ok()
                .and_then(|s| s["sessionToken"].as_str().map(str::to_owned))
        })
        .buffer_unordered(64)
        .filter_map(|s| async move { s })
        .collect()
        .await;

    eprintln!("connecting {} visitors", sessions.len());
    let failed = AtomicU64::new(0);
    let visitor_sockets: Vec<Socket> = stream::iter(sessions)
        .map(|token| {
            let url = url.clone();
            let failed = &failed;
            async move {
                match connect(&url, "/visitors", json!({ "sessionToken": token }), None).await {
                    Ok(socket) => Some(socket),
                    Err(err) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("visitor socket: {err:#}");
                        }
                        None
                    }
                }
            }
        })
        .buffer_unordered(args.connect_concurrency.max(1))
        .filter_map(|s| async move { s })
        .collect()
        .await;
    let connected = agent_sockets.len() + visitor_sockets.len();
    // Let the server settle before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = args.server_pid.and_then(rss);

    eprintln!(
        "{connected} sockets connected; sending {} messages/s for {} s",
        args.messages_per_second, args.duration
    );
    let total = u64::from(args.messages_per_second) * args.duration;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.messages_per_second.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    if !visitor_sockets.is_empty() {
        for n in 0..total {
            tick.tick().await;
            let socket = visitor_sockets[n as usize % visitor_sockets.len()].clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let content = format!("t:{}", origin.elapsed().as_micros());
                if socket
                    .emit("message:send", json!({ "content": content }))
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let sending = started.elapsed().as_secs_f64();
    // The last messages' deliveries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latencies = std::mem::take(&mut *deliveries.latencies_ms.lock().expect("not poisoned"));
    let delivered = latencies.len();
    let report = json!({
        "agentsConnected": agent_sockets.len(),
        "visitorsConnected": visitor_sockets.len(),
        "visitorConnectFailures": failed.load(Ordering::Relaxed),
        "messagesRequestedPerSecond": args.messages_per_second,
        "messagesSent": sent.load(Ordering::Relaxed),
        "messagesDelivered": delivered,
        "sentPerSecond": sent.load(Ordering::Relaxed) as f64 / sending,
        "deliveryMs": summary(latencies),
        "serverRssBytesBefore": before,
        "serverRssBytesAfter": after,
        "serverBytesPerSocket": before.zip(after).map(|(b, a)| a.saturating_sub(b) / connected.max(1) as u64),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    for socket in agent_sockets.iter().chain(&visitor_sockets) {
        let _ = socket.disconnect().await;
    }
    Ok(())
}

//! One deployment under test: a fresh database on the private cluster, `switchboard migrate`,
//! two `serve` (API nodes A and B) and two `work` processes, and the HTTP calls that set up a
//! group of agents.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};

use crate::services::{PgCluster, Proc, free_port, log_digest};

pub const ADMIN_EMAIL: &str = "admin@localhost";
pub const ADMIN_PASSWORD: &str = "fault-admin-password-1";
const AGENT_PASSWORD: &str = "fault-agent-password-1";
const JWT_SECRET: &str = "fault-suite-secret-fault-suite-secret-0123456789";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// Connects to `url` with short timeouts (the suite connects while faults happen).
pub async fn connect(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(4)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"))
}

pub struct Stack {
    pub database_url: String,
    pub api_a: String,
    pub api_b: String,
    /// serve-a, serve-b, work-1, work-2, and any restarted process after them.
    pub procs: Vec<Proc>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Stack {
    /// A fresh database `name` on `pg`, migrated, and four processes, each answering.
    pub async fn start(name: &str, pg: &PgCluster, redis_url: &str, log_dir: &Path) -> Self {
        let admin = connect(&pg.url("postgres")).await;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .expect("dropping an old database");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("creating the database");
        admin.close().await.ok();
        let database_url = pg.url(name);
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_url),
            ("SWITCHBOARD_REDIS_PREFIX", &format!("sbfault-{name}")),
            ("SWITCHBOARD_JWT_SECRET", JWT_SECRET),
            ("SWITCHBOARD_ADMIN_EMAIL", ADMIN_EMAIL),
            ("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("SWITCHBOARD_WIDGET_RATE_PER_MINUTE", "10000000"),
            ("SWITCHBOARD_LOGIN_RATE_PER_MINUTE", "100000"),
            ("SWITCHBOARD_SOCKET_HANDSHAKES_PER_MINUTE", "100000"),
            ("SWITCHBOARD_SOCKET_EVENTS_PER_SECOND", "1000"),
            // Longer than a scenario: no agent goes offline because of a fault's hiccup.
            ("SWITCHBOARD_PRESENCE_GRACE_SECONDS", "60"),
            ("SWITCHBOARD_SWEEP_INTERVAL_SECONDS", "1"),
            // The suite's webhook receiver listens on loopback.
            ("SWITCHBOARD_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("SWITCHBOARD_WEBHOOK_BACKOFF_MS", "500"),
            ("SWITCHBOARD_RECONCILE_INTERVAL_SECONDS", "3"),
            (
                "SWITCHBOARD_DATA_DIR",
                &log_dir.join("data").display().to_string(),
            ),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
            ("RUST_BACKTRACE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut stack = Self {
            database_url,
            api_a: String::new(),
            api_b: String::new(),
            procs: Vec::new(),
            env,
            log_dir: log_dir.to_path_buf(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(40))
                .build()
                .expect("an HTTP client"),
        };
        stack.migrate().await;
        let (a, b) = (free_port(), free_port());
        stack.api_a = format!("http://127.0.0.1:{a}");
        stack.api_b = format!("http://127.0.0.1:{b}");
        stack.spawn("serve-a", "serve", Some(a));
        stack.spawn("serve-b", "serve", Some(b));
        stack.spawn("work-1", "work", None);
        stack.spawn("work-2", "work", None);
        for index in 0..stack.procs.len() {
            stack.wait_ready(index).await;
        }
        stack
    }

    fn command(&self, subcommand: &str, api_port: Option<u16>, ops_port: u16) -> Command {
        let mut command = Command::new(binary());
        // Out of the repository root, where a developer's `.env` would be read.
        command
            .arg(subcommand)
            .env_clear()
            .current_dir(&self.log_dir);
        for key in ["PATH", "HOME", "TMPDIR", "LANG"] {
            if let Ok(value) = std::env::var(key) {
                command.env(key, value);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(port) = api_port {
            command.env("SWITCHBOARD_BIND", format!("127.0.0.1:{port}"));
        }
        command.env("SWITCHBOARD_OPS_BIND", format!("127.0.0.1:{ops_port}"));
        command
    }

    async fn migrate(&self) {
        let log = self.log_dir.join("migrate.log");
        let mut proc = Proc::spawn("migrate", self.command("migrate", None, free_port()), log);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = proc.exited() {
                assert!(
                    status.success(),
                    "switchboard migrate failed ({status})\n{}",
                    log_digest(&proc.log, 40)
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "switchboard migrate did not finish in 120 s\n{}",
                log_digest(&proc.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts `name` (`serve` with an API port, or `work`); returns its index in `procs`.
    pub fn spawn(&mut self, name: &str, subcommand: &str, api_port: Option<u16>) -> usize {
        let ops = free_port();
        let command = self.command(subcommand, api_port, ops);
        let log = self.log_dir.join(format!("{name}.log"));
        let mut proc = Proc::spawn(name, command, log);
        proc.ops_port = ops;
        proc.api_port = api_port;
        self.procs.push(proc);
        self.procs.len() - 1
    }

    /// Waits until process `index` answers: `GET /health` on an API node, a TCP connection to
    /// the operator listener of a worker.
    pub async fn wait_ready(&mut self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let proc = &mut self.procs[index];
            if let Some(status) = proc.exited() {
                panic!(
                    "{} exited at start ({status})\n{}",
                    proc.name,
                    log_digest(&proc.log, 40)
                );
            }
            let ready = match proc.api_port {
                Some(port) => self
                    .http
                    .get(format!("http://127.0.0.1:{port}/health"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => tokio::net::TcpStream::connect(("127.0.0.1", proc.ops_port))
                    .await
                    .is_ok(),
            };
            if ready {
                return;
            }
            let proc = &self.procs[index];
            assert!(
                Instant::now() < deadline,
                "{} did not get ready within 60 s\n{}",
                proc.name,
                log_digest(&proc.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// A JSON call that must succeed (setup).
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let mut request = self.http.request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{url}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A webhook of the account for `kinds`, calling `url`. Through API node A.
    pub async fn subscribe(&self, url: &str, kinds: &[&str]) {
        let a = &self.api_a;
        let admin = self.admin_token().await;
        self.call(
            reqwest::Method::POST,
            format!("{a}/v1/webhooks"),
            Some(&admin),
            Some(json!({ "url": url, "secret": "fault-suite-webhook-secret", "events": kinds })),
        )
        .await;
    }

    async fn admin_token(&self) -> String {
        let a = &self.api_a;
        let admin = self
            .call(
                reqwest::Method::POST,
                format!("{a}/v1/auth/login"),
                None,
                Some(json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD })),
            )
            .await;
        admin["token"].as_str().expect("an admin token").to_owned()
    }

    /// A group of its own with `count` agents of `capacity`; returns the group and each agent's
    /// (id, token). Through API node A.
    pub async fn setup_agents(&self, count: usize, capacity: u32) -> (i64, Vec<(i64, String)>) {
        let post = reqwest::Method::POST;
        let a = &self.api_a;
        let admin = self.admin_token().await;
        let group = self
            .call(
                post.clone(),
                format!("{a}/v1/groups"),
                Some(&admin),
                Some(json!({ "name": "Faults" })),
            )
            .await;
        let group_id = group["id"].as_i64().expect("a group id");
        let mut agents = Vec::new();
        for n in 0..count {
            let email = format!("agent{n}@faults.example.com");
            let agent = self
                .call(
                    post.clone(),
                    format!("{a}/v1/agents"),
                    Some(&admin),
                    Some(json!({
                        "name": format!("Agent {n}"), "email": email,
                        "password": AGENT_PASSWORD, "maxConcurrentChats": capacity,
                    })),
                )
                .await;
            let id = agent["id"].as_i64().expect("an agent id");
            self.call(
                post.clone(),
                format!("{a}/v1/groups/{group_id}/agents"),
                Some(&admin),
                Some(json!({ "agentId": id })),
            )
            .await;
            let session = self
                .call(
                    post.clone(),
                    format!("{a}/v1/auth/login"),
                    None,
                    Some(json!({ "email": email, "password": AGENT_PASSWORD })),
                )
                .await;
            agents.push((id, session["token"].as_str().expect("a token").to_owned()));
        }
        (group_id, agents)
    }

    /// Every process's log, digested.
    pub fn log_digests(&self, lines: usize) -> String {
        self.procs
            .iter()
            .map(|p| log_digest(&p.log, lines))
            .collect::<Vec<_>>()
            .join("")
    }
}

//! Settings: every one a CLI flag with an environment fallback (names fixed in docs/architecture.md, "Configuration").

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::client_ip::TrustedProxies;

/// Switchboard: a live-chat routing server.
///
/// Every setting is global: it may come before or after the subcommand
/// (`switchboard --bind X serve` and `switchboard serve --bind X` alike).
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
pub struct Cli {
    /// What to run; `all` when omitted.
    #[command(subcommand)]
    pub command: Option<Task>,
    #[command(flatten)]
    pub settings: Settings,
}

/// The roles one binary can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// API and workers in one process; migrates and creates the first admin (the embedded default).
    All,
    /// HTTP API only: submits jobs, runs none (distributed mode, any number of nodes).
    Serve,
    /// Job workers only (distributed mode, any number of nodes).
    Work,
    /// Applies database migrations and creates the first account and admin, then exits.
    Migrate,
}

/// What one invocation does: play a role until stopped, or run a one-shot operator command.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Task {
    #[command(flatten)]
    Run(Command),
    /// Accounts, for operators.
    #[command(subcommand)]
    Account(AccountTask),
    /// Admin agents, for operators.
    #[command(subcommand)]
    Admin(AdminTask),
}

/// `switchboard account …`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AccountTask {
    /// Opens an account with its first admin and default group. The admin's password is read
    /// from SWITCHBOARD_NEW_PASSWORD, or generated and printed once.
    Create {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// The first admin's e-mail.
        #[arg(long)]
        admin_email: String,
    },
}

/// `switchboard admin …`
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AdminTask {
    /// Gives an agent who lost its password a new one and signs it out everywhere. The password
    /// is read from SWITCHBOARD_NEW_PASSWORD, or generated and printed once.
    ResetPassword {
        /// The agent's e-mail.
        #[arg(long)]
        email: String,
        /// Its account, when agents of several accounts have this e-mail.
        #[arg(long)]
        account_id: Option<i64>,
    },
}

/// Everything configurable.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// HTTP + Socket.IO listener.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_BIND",
        default_value = "127.0.0.1:8080"
    )]
    pub bind: SocketAddr,

    /// Operator listener (apalis board, metrics).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_OPS_BIND",
        default_value = "127.0.0.1:8081"
    )]
    pub ops_bind: SocketAddr,

    /// Where the embedded SQLite files and the generated JWT secret live.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// `postgres://…` for the distributed mode; unset: SQLite in the data dir.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// `redis://…` for the distributed job storage; unset: apalis-sqlite in the data dir.
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key Switchboard writes, so deployments can share a server.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_REDIS_PREFIX",
        default_value = "switchboard"
    )]
    pub redis_prefix: String,

    /// How hard the embedded SQLite application database makes each commit durable: `full`
    /// (every commit is on disk before it is acknowledged) or `normal` (in WAL mode, the last
    /// commits before a power failure or an OS crash can be lost; a process crash loses nothing).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value_t = SqliteSynchronous::Full
    )]
    pub sqlite_synchronous: SqliteSynchronous,

    /// Secret signing agent tokens (at least 32 characters). Embedded: generated once and kept in
    /// the data dir. Required with PostgreSQL, where every node must share it.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// Lifetime of an agent token, in seconds.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_JWT_TTL_SECONDS",
        default_value_t = 43_200
    )]
    pub jwt_ttl_seconds: u64,

    /// E-mail of the first admin, created only when the database has no account.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_ADMIN_EMAIL",
        default_value = "admin@localhost"
    )]
    pub admin_email: String,

    /// Password of the first admin; generated and printed once when unset.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    pub admin_password: Option<String>,

    /// Name of the first account.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_ACCOUNT_NAME",
        default_value = "Switchboard"
    )]
    pub account_name: String,

    /// Connections to PostgreSQL per process (SQLite always uses one: it has a single writer).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_DATABASE_MAX_CONNECTIONS",
        default_value_t = 32
    )]
    pub database_max_connections: u32,

    /// Tasks of one job queue run at once in a worker process. Most lifecycle jobs spend their
    /// time waiting for a shared batch (see `jobs::runtime::batch`), so many may wait at once: the more
    /// wait, the larger the batches under load.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_WORKER_CONCURRENCY",
        default_value_t = 128
    )]
    pub worker_concurrency: usize,

    /// How often an idle worker looks for tasks submitted by other processes, in milliseconds.
    /// Default: 20 with Redis (API and worker nodes are separate processes), 250 with SQLite
    /// (one process, whose own submissions wake its workers at once).
    #[arg(long, global = true, env = "SWITCHBOARD_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,

    /// Seconds between two repair passes of a worker process (lost jobs, drifted counters, chats
    /// held by agents who left).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_RECONCILE_INTERVAL_SECONDS",
        default_value_t = 30
    )]
    pub reconcile_interval_seconds: u64,

    /// Seconds between two sweeps for expired timers (agent response, visitor idle, SLA, queue
    /// wait) on each worker process. A timer acts at most this much after it expires.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SWEEP_INTERVAL_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub sweep_interval_seconds: u64,

    /// Seconds between two `stats:update` pushes to connected supervisors.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_STATS_INTERVAL_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub stats_interval_seconds: u64,

    /// Login attempts allowed per client address per minute.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOGIN_RATE_PER_MINUTE",
        default_value_t = 10
    )]
    pub login_rate_per_minute: u32,

    /// Reverse proxies whose forwarded headers are believed: comma-separated CIDRs or addresses
    /// (`10.0.0.0/8,192.0.2.7`). From such a peer the client address is read from `Forwarded` or
    /// `X-Forwarded-For` (see `client_ip`); empty: every client is its TCP peer.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_TRUSTED_PROXIES",
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true,
        value_parser = TrustedProxies::parse
    )]
    pub trusted_proxies: TrustedProxies,

    /// Widget sessions a client address may open per minute (visitor messages: ten times this).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_WIDGET_RATE_PER_MINUTE",
        default_value_t = 30
    )]
    pub widget_rate_per_minute: u32,

    /// Seconds an agent whose last socket dropped keeps its status and chats (a reload costs
    /// nothing); after it, the agent goes offline and its chats are reassigned.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_PRESENCE_GRACE_SECONDS",
        default_value_t = 30
    )]
    pub presence_grace_seconds: u64,

    /// Events one socket may send per second (bursts of twice this); beyond it they are answered
    /// with a `rate_limited` error and not handled.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SOCKET_EVENTS_PER_SECOND",
        default_value_t = 20
    )]
    pub socket_events_per_second: u32,

    /// Socket.IO handshakes a client address may open per minute (bursts of as many).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SOCKET_HANDSHAKES_PER_MINUTE",
        default_value_t = 120
    )]
    pub socket_handshakes_per_minute: u32,

    /// Sockets one visitor session may hold open on one node (tabs of the widget); the next
    /// handshake is refused.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SOCKETS_PER_VISITOR",
        default_value_t = 5
    )]
    pub sockets_per_visitor: usize,

    /// Sockets one agent may hold open on one node (tabs and devices); the next handshake is
    /// refused.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SOCKETS_PER_AGENT",
        default_value_t = 20
    )]
    pub sockets_per_agent: usize,

    /// How log lines are written (to stderr): `text` for people, `json` (one object a line,
    /// with the request's span fields) for collectors. Neither has colour codes unless stderr is
    /// a terminal (and `NO_COLOR` is unset).
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Let the Socket.IO libraries' debug and trace logs through (`RUST_LOG=socketioxide=debug`
    /// alone is not enough): they carry agents' tokens and visitors' session tokens.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_SOCKET_PAYLOADS",
        default_value_t = false
    )]
    pub log_socket_payloads: bool,

    /// SMTP server for e-mail (`smtp://user:pass@host:587`); unset: e-mail off.
    #[arg(long, global = true, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Allow webhook URLs on loopback or private addresses (tests, one-machine setups).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false
    )]
    pub webhook_allow_private: bool,

    /// Webhook and e-mail delivery settings.
    #[command(flatten)]
    pub notify: NotifySettings,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// SQLite's `synchronous` pragma for the application database (see the README's "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSynchronous {
    /// Every commit reaches the disk before it is acknowledged.
    Full,
    /// WAL commits are flushed at checkpoints only: faster, and a power failure can lose the last
    /// acknowledged writes.
    Normal,
}

impl SqliteSynchronous {
    /// The pragma's value.
    pub fn pragma(self) -> sea_orm::sqlx::sqlite::SqliteSynchronous {
        match self {
            Self::Full => sea_orm::sqlx::sqlite::SqliteSynchronous::Full,
            Self::Normal => sea_orm::sqlx::sqlite::SqliteSynchronous::Normal,
        }
    }
}

impl Settings {
    /// Settings from the environment and defaults only, ignoring the process arguments (tests).
    pub fn from_env() -> Self {
        Cli::parse_from(["switchboard"]).settings
    }

    /// True when the application data lives in PostgreSQL (the distributed mode).
    pub fn is_distributed(&self) -> bool {
        self.database_url.is_some()
    }

    /// Token lifetime.
    pub fn jwt_ttl(&self) -> Duration {
        Duration::from_secs(self.jwt_ttl_seconds)
    }

    /// Presence grace period.
    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs(self.stats_interval_seconds.max(1))
    }

    pub fn presence_grace(&self) -> Duration {
        Duration::from_secs(self.presence_grace_seconds)
    }

    /// How often an API node vouches for the agents connected to it (`last_seen_at`), and
    /// closes sockets whose token expired: a third of the grace, within [0.25 s, 10 s].
    pub fn presence_heartbeat(&self) -> Duration {
        (self.presence_grace() / 3).clamp(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// When an apparently connected agent that no node vouched for counts as dropped.
    pub fn presence_stale(&self) -> Duration {
        self.presence_grace() + self.presence_heartbeat() * 3
    }

    /// Worker poll interval.
    pub fn poll_interval(&self) -> Duration {
        let default = if self.redis_url.is_some() { 20 } else { 250 };
        Duration::from_millis(self.poll_interval_ms.unwrap_or(default))
    }
}

/// How webhooks and e-mails are delivered (`SMTP_URL` and `SWITCHBOARD_WEBHOOK_ALLOW_PRIVATE`
/// are above, with the fixed names).
#[derive(Debug, Clone, clap::Args)]
pub struct NotifySettings {
    /// Sender address of e-mails; the account's name is the display name.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_EMAIL_FROM",
        default_value = "switchboard@localhost"
    )]
    pub email_from: String,

    /// Attempts of one e-mail before it is dead.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_EMAIL_ATTEMPTS",
        default_value_t = 5
    )]
    pub email_attempts: u32,

    /// Wait after an e-mail's first failed attempt, in milliseconds (doubling, at most 1 h).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_EMAIL_BACKOFF_MS",
        default_value_t = 30_000
    )]
    pub email_backoff_ms: u64,

    /// Attempts of one webhook call before it is dead.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_WEBHOOK_ATTEMPTS",
        default_value_t = 8
    )]
    pub webhook_attempts: u32,

    /// Wait after a webhook call's first failed attempt, in milliseconds (doubling, at most 1 h).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_WEBHOOK_BACKOFF_MS",
        default_value_t = 10_000
    )]
    pub webhook_backoff_ms: u64,

    /// Timeout of one webhook call, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_WEBHOOK_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub webhook_timeout_ms: u64,

    /// Days delivered and dead webhook calls and e-mails are kept (they hold copies of what was
    /// sent, message text included).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_DELIVERY_RETENTION_DAYS",
        default_value_t = 7,
        value_parser = clap::value_parser!(u32).range(1..=3650)
    )]
    pub delivery_retention_days: u32,

    /// Seconds of one SLA digest: every supervisor and admin of an account gets at most one
    /// e-mail listing the service levels broken in each such window, sent at its end.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_SLA_DIGEST_SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u32).range(1..=86_400)
    )]
    pub sla_digest_seconds: u32,
}

impl Default for NotifySettings {
    /// The defaults above (what an unset environment gives).
    fn default() -> Self {
        Self {
            email_from: "switchboard@localhost".into(),
            email_attempts: 5,
            email_backoff_ms: 30_000,
            webhook_attempts: 8,
            webhook_backoff_ms: 10_000,
            webhook_timeout_ms: 5_000,
            delivery_retention_days: 7,
            sla_digest_seconds: 300,
        }
    }
}

impl Settings {
    /// What the webhook and e-mail channels are built from.
    pub fn channel_settings(&self) -> jobs::delivery::channels::ChannelSettings {
        use jobs::delivery::channels::Retries;
        let notify = &self.notify;
        jobs::delivery::channels::ChannelSettings {
            webhook_allow_private: self.webhook_allow_private,
            webhook_retries: Retries {
                attempts: notify.webhook_attempts.max(1),
                backoff: Duration::from_millis(notify.webhook_backoff_ms),
            },
            webhook_timeout: Duration::from_millis(notify.webhook_timeout_ms.max(1)),
            smtp_url: self.smtp_url.clone().filter(|url| !url.trim().is_empty()),
            email_from: notify.email_from.clone(),
            email_retries: Retries {
                attempts: notify.email_attempts.max(1),
                backoff: Duration::from_millis(notify.email_backoff_ms),
            },
            delivery_retention: Duration::from_secs(
                u64::from(notify.delivery_retention_days.max(1)) * 24 * 3600,
            ),
            sla_digest: Duration::from_secs(u64::from(notify.sla_digest_seconds.max(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn settings_parse_before_and_after_the_subcommand() {
        let bind: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        for args in [
            &["switchboard", "--bind", "0.0.0.0:9000", "serve"][..],
            &["switchboard", "serve", "--bind", "0.0.0.0:9000"],
            &["switchboard", "serve", "--bind=0.0.0.0:9000"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|err| panic!("{args:?}: {err}"));
            assert_eq!(cli.command, Some(Task::Run(Command::Serve)), "{args:?}");
            assert_eq!(cli.settings.bind, bind, "{args:?}");
        }
        let cli = Cli::try_parse_from([
            "switchboard",
            "--ops-bind",
            "127.0.0.1:9001",
            "work",
            "--worker-concurrency",
            "7",
            "--email-from",
            "ops@example.com",
            "--log-format",
            "json",
            "--trusted-proxies",
            "10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(cli.command, Some(Task::Run(Command::Work)));
        assert_eq!(cli.settings.ops_bind, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(cli.settings.worker_concurrency, 7);
        assert_eq!(cli.settings.notify.email_from, "ops@example.com");
        assert_eq!(cli.settings.log_format, LogFormat::Json);
        assert!(
            cli.settings
                .trusted_proxies
                .contains("10.1.2.3".parse().unwrap())
        );
        let cli = Cli::try_parse_from(["switchboard", "--sweep-interval-seconds", "9"]).unwrap();
        assert_eq!(cli.command, None);
        assert_eq!(cli.settings.sweep_interval_seconds, 9);
        for refused in [
            &["switchboard", "serve", "--no-such-flag"][..],
            &["switchboard", "serve", "--bind", "nowhere"],
            &["switchboard", "migrate", "--trusted-proxies", "10.0.0.0/99"],
        ] {
            assert!(Cli::try_parse_from(refused).is_err(), "{refused:?}");
        }
    }

    /// `.env.example` lists every setting's variable, with the code's default where there is one,
    /// and no variable the code does not read.
    #[test]
    fn the_env_example_agrees_with_the_defaults() {
        let example: std::collections::HashMap<&str, &str> = include_str!("../.env.example")
            .lines()
            .filter_map(|line| line.strip_prefix('#')?.split_once('='))
            .filter(|(name, _)| {
                name.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        let command = Cli::command();
        let mut known = vec!["RUST_LOG"];
        let mut wrong = Vec::new();
        for arg in command.get_arguments() {
            let Some(name) = arg.get_env().and_then(|name| name.to_str()) else {
                continue;
            };
            known.push(name);
            let Some(shown) = example.get(name) else {
                wrong.push(format!("{name} is missing"));
                continue;
            };
            if let [default] = arg.get_default_values()
                && default.to_str() != Some(*shown)
            {
                wrong.push(format!("{name}={shown}, the default is {default:?}"));
            }
        }
        for name in example.keys() {
            if !known.contains(name) && !name.starts_with("SWITCHBOARD_TEST_") {
                wrong.push(format!("{name}: no setting reads it"));
            }
        }
        wrong.sort();
        assert!(wrong.is_empty(), ".env.example: {wrong:#?}");
    }
}

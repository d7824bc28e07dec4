//! `spawn_app()`: the real application on a random port, with a database and job storage of its
//! own, and a `TestApp` with one method per endpoint (in `api`).

use std::{path::PathBuf, sync::Arc, time::Duration};

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::Value;
use switchboard::{
    config::{Command, Settings},
    startup::Application,
    state::AppState,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

mod api;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Which of the two deployments a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file + apalis-sqlite, in a temporary data dir.
    Embedded,
    /// A fresh PostgreSQL database + Redis under a unique key prefix.
    Distributed,
}

/// Where a test app keeps its data; shared by apps that play different roles on the same data.
#[derive(Debug, Clone)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    _dir: Arc<tempfile::TempDir>,
}

pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://switchboard:switchboard@127.0.0.1:5432/postgres".into())
}

const START_SERVICES: &str =
    "start the test services with `./scripts/test` (it installs and starts PostgreSQL and Redis)";

/// Whether the test process that named a database or key prefix after its pid is gone.
fn owner_gone(pid: &str) -> bool {
    pid.parse::<u32>().is_ok_and(|pid| {
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Drops the databases and keys that earlier test runs left, once per test process. What a test
/// process still running owns is kept, so test runs in several checkouts can share the services.
async fn clean_leftovers(admin: &DatabaseConnection) {
    static CLEANED: OnceCell<()> = OnceCell::const_new();
    CLEANED
        .get_or_init(|| async {
            let me = format!("sb_test_{}_", std::process::id());
            let rows = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    admin.get_database_backend(),
                    "SELECT datname FROM pg_database WHERE datname LIKE 'sb_test_%'",
                ))
                .await
                .unwrap_or_default();
            for row in rows {
                let Ok(name) = row.try_get::<String>("", "datname") else {
                    continue;
                };
                let pid = name.trim_start_matches("sb_test_").split('_').next();
                if !name.starts_with(&me) && pid.is_some_and(owner_gone) {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                }
            }
            // Earlier runs' Redis keys (test prefixes are unique, so none of them is in use).
            if let Ok(client) = redis::Client::open(redis_url().as_str())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
            {
                let mut cursor = 0u64;
                loop {
                    let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("sbtest:*")
                        .arg("COUNT")
                        .arg(5000)
                        .query_async(&mut conn)
                        .await
                    else {
                        break;
                    };
                    let keys: Vec<String> = keys
                        .into_iter()
                        .filter(|key| key.split(':').nth(1).is_some_and(owner_gone))
                        .collect();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        })
        .await;
}

impl Storage {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().to_path_buf();
        let suffix = ulid::Ulid::new().to_string().to_lowercase();
        let (database_url, redis_url) = match backend {
            Backend::Embedded => (None, None),
            Backend::Distributed => {
                let admin_url = postgres_admin_url();
                let admin = Database::connect(&admin_url).await.unwrap_or_else(|err| {
                    panic!("PostgreSQL at {admin_url} is unreachable ({err}): {START_SERVICES}")
                });
                clean_leftovers(&admin).await;
                let name = format!("sb_test_{}_{suffix}", std::process::id());
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("creating a test database");
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .expect("a database URL with a path");
                let redis = redis_url();
                let client = redis::Client::open(redis.as_str()).expect("a Redis URL");
                client
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap_or_else(|err| {
                        panic!("Redis at {redis} is unreachable ({err}): {START_SERVICES}")
                    });
                (Some(format!("{base}/{name}")), Some(redis))
            }
        };
        Self {
            data_dir,
            database_url,
            redis_url,
            redis_prefix: format!("sbtest:{}:{suffix}", std::process::id()),
            _dir: Arc::new(dir),
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            bind: "127.0.0.1:0".parse().expect("an address"),
            ops_bind: "127.0.0.1:0".parse().expect("an address"),
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            sqlite_synchronous: switchboard::config::SqliteSynchronous::Full,
            jwt_secret: self.database_url.as_ref().map(|_| JWT_SECRET.to_owned()),
            jwt_ttl_seconds: 3600,
            admin_email: ADMIN_EMAIL.into(),
            admin_password: Some(ADMIN_PASSWORD.into()),
            account_name: "Acme".into(),
            database_max_connections: 16,
            worker_concurrency: 4,
            poll_interval_ms: None,
            reconcile_interval_seconds: 30,
            sweep_interval_seconds: 1,
            stats_interval_seconds: 1,
            login_rate_per_minute: 1000,
            widget_rate_per_minute: 10_000,
            trusted_proxies: Default::default(),
            presence_grace_seconds: 30,
            socket_events_per_second: 200,
            socket_handshakes_per_minute: 100_000,
            sockets_per_visitor: 5,
            sockets_per_agent: 20,
            log_socket_payloads: false,
            log_format: switchboard::config::LogFormat::Text,
            smtp_url: None,
            webhook_allow_private: true,
            notify: Default::default(),
        }
    }
}

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    /// The operator listener (apalis board), `http://host:port`.
    pub ops_address: String,
    pub state: AppState,
    /// The app's push side (to push to its sockets directly).
    pub push: switchboard::realtime::Push,
    pub client: reqwest::Client,
    pub storage: Storage,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response: status and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The body of a reply that must have `status`; `what` names the endpoint.
    pub fn expect(self, status: StatusCode, what: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{what}: expected {status}, got {}: {:?}",
            self.status, self.body
        );
        self.body
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(Storage::new(backend).await, Command::All, |_| {}).await
}

/// Starts the app in `command` role on `storage`, after `tweak` adjusts its settings.
pub async fn spawn_with(
    storage: Storage,
    command: Command,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    switchboard::install_crypto_provider();
    if std::env::var("TEST_LOG").is_ok() {
        switchboard::telemetry::init("info", false, switchboard::config::LogFormat::Text);
    }
    let mut settings = storage.settings();
    tweak(&mut settings);
    let app = Application::build(settings, command)
        .await
        .expect("the application builds");
    let address = app
        .local_addr()
        .map(|addr| format!("http://{addr}"))
        .unwrap_or_default();
    let ops_address = app
        .ops_addr()
        .map(|addr| format!("http://{addr}"))
        .expect("an operator listener");
    let state = app.state().clone();
    let push = app.push();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        ops_address,
        state,
        push,
        client: reqwest::Client::new(),
        storage,
        shutdown,
        task: Some(task),
    }
}

/// Polls `probe` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs a test body against both deployments.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident: Backend) $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) $body
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() { run(Backend::Embedded).await }
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() { run(Backend::Distributed).await }
        }
    };
}

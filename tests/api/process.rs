//! The `switchboard` binary as a child process, for what only a process of its own shows: its
//! peak memory, its exit on a bad start, and its log. It binds port 0 and the test reads the
//! addresses it logs. `SWITCHBOARD_TEST_BIN` runs another build of the binary instead (to see
//! what an older one did).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// How long a start or an exit may take.
const START: Duration = Duration::from_secs(60);

fn binary() -> PathBuf {
    std::env::var_os("SWITCHBOARD_TEST_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_switchboard").into(), PathBuf::from)
}

/// An embedded server process on `data_dir`, logging to `log`, with `env` on top of the
/// defaults (loopback on ports of its choice, the test admin, `RUST_LOG=info`).
fn command(data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = bare(data_dir);
    command
        .envs([
            ("SWITCHBOARD_BIND", "127.0.0.1:0"),
            ("SWITCHBOARD_OPS_BIND", "127.0.0.1:0"),
            ("SWITCHBOARD_ADMIN_EMAIL", ADMIN_EMAIL),
            ("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("RUST_LOG", "info"),
        ])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("a log file"));
    command
}

/// The binary on `data_dir` with nothing of the test's environment but `PATH`, `HOME` and
/// `TMPDIR`, run out of the repository root (where a developer's `.env` would be read).
pub fn bare(data_dir: &Path) -> Command {
    let mut command = Command::new(binary());
    command.env_clear();
    for key in ["PATH", "HOME", "TMPDIR"] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    command
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env("NO_COLOR", "1")
        .current_dir(data_dir.parent().expect("a data dir in a directory"));
    command
}

/// A running server process; killed when dropped.
pub struct Server {
    child: Child,
    pub address: String,
    pub ops_address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL logged after `marker` (`… listening on http://127.0.0.1:1234`).
fn logged_url(log: &str, marker: &str) -> Option<String> {
    let rest = &log[log.find(marker)? + marker.len()..];
    // Text lines end it with a blank, JSON lines with the message's closing quote.
    let url: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    url.starts_with("http://").then_some(url)
}

impl Server {
    /// Starts a server on a fresh data dir and waits until both its listeners are up.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], None, env).await
    }

    /// [`Server::start`] with command-line `args`, in a working directory of its own that holds
    /// `dotenv` as its `.env` (if given).
    pub async fn start_with(args: &[&str], dotenv: Option<&str>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        if let Some(dotenv) = dotenv {
            std::fs::write(dir.path().join(".env"), dotenv).expect("a .env file");
        }
        let child = command(&data_dir, &log, env)
            .args(args)
            .spawn()
            .expect("the server starts");
        let mut server = Self {
            child,
            address: String::new(),
            ops_address: String::new(),
            log,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + START;
        loop {
            let text = server.log();
            if let (Some(api), Some(ops)) = (
                logged_url(&text, "listening on "),
                logged_url(&text, "operator listener (apalis board) on "),
            ) {
                server.address = api;
                server.ops_address = ops;
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited ({status}) while starting:\n{text}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a server on `data_dir` (prepared by the test) that must exit while starting; returns
    /// its exit status and log.
    pub async fn fails_to_start(data_dir: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
        let log = data_dir.with_extension("log");
        let mut child = command(data_dir, &log, env)
            .spawn()
            .expect("the server starts");
        let deadline = tokio::time::Instant::now() + START;
        let status = loop {
            if let Some(status) = child.try_wait().expect("the child's status") {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server kept running:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Posts `body` to `path` on the HTTP listener; returns the JSON answer.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        reqwest::Client::new()
            .post(format!("{}{path}", self.address))
            .json(&body)
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line")
    }

    /// Kills the server (nothing of its shutdown is tested here) and returns its log.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

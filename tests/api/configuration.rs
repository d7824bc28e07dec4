//! How settings reach the process: flags on either side of the subcommand, and a `.env` in the
//! working directory under the real environment.

use crate::process::Server;

/// True when the log has lines and every one is a JSON object.
fn json_lines(log: &str) -> bool {
    let mut lines = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .peekable();
    lines.peek().is_some()
        && lines.all(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| value.is_object())
        })
}

/// `switchboard all --log-format json`: a setting after the subcommand is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_after_the_subcommand_are_taken() {
    let server = Server::start_with(&["all", "--log-format", "json"], None, &[]).await;
    let log = server.stop();
    assert!(json_lines(&log), "not JSON lines:\n{log}");
}

/// A `.env` in the working directory sets what the environment does not (the log format), and
/// loses to what it does (the bind address: the environment's port 0, not the file's port 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dotenv_file_is_read_under_the_environment() {
    let server = Server::start_with(
        &[],
        Some("# a comment\nSWITCHBOARD_LOG_FORMAT=json\nSWITCHBOARD_BIND='127.0.0.1:1'\n"),
        &[],
    )
    .await;
    assert!(!server.address.ends_with(":1"), "{}", server.address);
    let health = reqwest::get(format!("{}/health", server.address))
        .await
        .expect("the server answers");
    assert!(health.status().is_success());
    let log = server.stop();
    assert!(json_lines(&log), "not JSON lines:\n{log}");
}

/// A `.env` that cannot be parsed stops the start with a message saying which file.
#[tokio::test]
async fn a_malformed_dotenv_file_refuses_the_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join(".env"), "SWITCHBOARD_BIND=\"unterminated\n").expect("a .env");
    let (status, log) = Server::fails_to_start(&dir.path().join("data"), &[]).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains(".env"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

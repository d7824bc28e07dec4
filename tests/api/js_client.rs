//! The official JavaScript client (socket.io-client from npm, what web front ends run) against
//! the running server: `tests/js/chat-flow.mjs` plays a whole chat over long-polling and the
//! WebSocket upgrade; this test prepares it, runs it with `node` and checks what was stored.
//!
//! Node and the npm packages are part of the test setup (`./scripts/test` installs them), so
//! their absence fails the test rather than skipping it: a skipped test would hide that the
//! JavaScript client is no longer covered.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{Backend, spawn_app};

/// Longest the script may run; each of its waits is bounded by 10 s, this bounds them all.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

const INSTALL: &str =
    "run `./scripts/test` (it installs Node.js and the npm packages) or `npm ci --prefix tests/js`";

/// Runs `node <script> <config as JSON>` from `root` for at most `timeout`; asserts it succeeded
/// and returns the JSON summary it prints on its last line. `install` says how to get node.
pub(crate) async fn node_script(
    root: &Path,
    script: &str,
    config: &Value,
    timeout: Duration,
    install: &str,
) -> Value {
    let run = Command::new("node")
        .arg(script)
        .arg(config.to_string())
        .current_dir(root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("{script} ran longer than {timeout:?}"))
        .unwrap_or_else(|err| panic!("`node` cannot be run ({err}): {install}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            panic!("no JSON summary from {script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        })
}

/// `node`, checked to run, and the script's directory, checked to have socket.io-client.
async fn node_and_packages(root: &Path) -> String {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|err| panic!("`node` cannot be run ({err}): {INSTALL}"));
    assert!(
        version.status.success(),
        "`node --version` failed ({}): {INSTALL}",
        version.status
    );
    let client = root.join("tests/js/node_modules/socket.io-client/package.json");
    assert!(
        client.is_file(),
        "{} is missing: {INSTALL}",
        client.display()
    );
    String::from_utf8_lossy(&version.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_javascript_client_chats_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node = node_and_packages(root).await;

    let app = spawn_app(Backend::Embedded).await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    // Offline, so the session below waits until the script, with both sockets listening, sets
    // the agent online: the assignment cannot happen before anyone hears it.
    let (agent_id, agent_token) = app.agent_in_group(&admin, group, 2).await;
    let (conversation, session) = app.visitor(json!({ "name": "Jess" })).await;
    app.conversation_becomes(&admin, conversation, "pending")
        .await;

    let config = json!({
        "url": app.address,
        "agentId": agent_id,
        "agentToken": agent_token,
        "sessionToken": session,
        "conversationId": conversation,
    });
    let summary = node_script(
        root,
        "tests/js/chat-flow.mjs",
        &config,
        SCRIPT_TIMEOUT,
        INSTALL,
    )
    .await;
    println!("chat-flow (node {node}): {summary}");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["agentName"], "A agent", "{summary}");
    for who in ["agent", "visitor"] {
        assert_eq!(
            summary["transports"][who],
            json!(["polling", "websocket"]),
            "{summary}"
        );
    }

    // What the script saw is what the server stored.
    let view = app
        .conversation_becomes(&admin, conversation, "resolved")
        .await;
    assert_eq!(view["assignedAgentId"], agent_id, "{view}");
    let thread = summary["threadId"].as_i64().expect("a thread id");
    let events = app.thread_events(&admin, thread).await;
    let messages: Vec<(&Value, &str, &str, &str)> = events["items"]
        .as_array()
        .expect("a page of events")
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| {
            (
                &e["id"],
                e["authorType"].as_str().unwrap_or_default(),
                e["content"].as_str().unwrap_or_default(),
                e["clientMessageId"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        [
            (
                &summary["visitorMessageId"],
                "visitor",
                "is my order on its way?",
                "js-v-1"
            ),
            (
                &summary["agentMessageId"],
                "agent",
                "yes, it ships today",
                "js-a-1"
            ),
        ],
        "{events}"
    );
}

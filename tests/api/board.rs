//! The operator listener: the apalis board on both backends, behind basic auth of admin agents.
//!
//! Real jobs run (a widget session, tags and their audit records), and one of them keeps failing:
//! the audit table is renamed away, so the audit job fails on every attempt with a transient
//! database error and is retried. The board's API is read with reqwest, and the board itself in
//! headless Chromium (`tests/js/board.mjs`, playwright-core), which keeps screenshots under
//! `target/`. Chromium and the npm packages are part of the test setup (`./scripts/test`
//! installs them), so their absence fails the test rather than skipping it.

use std::{path::Path, time::Duration};

use reqwest::{StatusCode, header};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use switchboard::{config::Command, startup::prepare_database};

use crate::{both_backends, helpers::*, js_client::node_script};

/// Longest the browser script may run; each of its waits is bounded by 15 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const INSTALL: &str = "run `./scripts/test` (it installs Chromium, Node.js and the npm packages), \
     or `apt-get install chromium` and `npm ci --prefix tests/js`";

/// Status, headers and body of a request to the operator listener.
struct OpsReply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl OpsReply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("a JSON body, got {}: {}", self.status, self.body))
    }
}

async fn ops_request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    credentials: Option<(&str, &str)>,
) -> OpsReply {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.ops_address));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.expect("the request is sent");
    OpsReply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.expect("a body"),
    }
}

async fn ops_get(app: &TestApp, path: &str, credentials: Option<(&str, &str)>) -> OpsReply {
    ops_request(app, reqwest::Method::GET, path, credentials).await
}

/// A board API answer read as the bootstrap admin; must be a 200.
async fn board(app: &TestApp, path: &str) -> Value {
    let reply = ops_get(app, path, Some((ADMIN_EMAIL, ADMIN_PASSWORD))).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    reply.json()
}

/// The error of a task's last attempt, as the board hands it out.
fn last_error(task: &Value) -> &str {
    task["ctx"]["runs"][0]["result"]["result"]["Err"]
        .as_str()
        .unwrap_or_default()
}

/// Runs jobs that succeed, then makes the audit table unavailable and creates a tag: its audit
/// task fails on every attempt. Returns that task as the board lists it once it was retried.
///
/// apalis-sqlite hands a failed task out again at once until its delivery budget is spent, so
/// there the task is awaited in its final state; apalis-redis retries it for minutes.
async fn a_failing_task(app: &TestApp, backend: Backend) -> Value {
    let admin = app.admin_token().await;
    let (conversation, _) = app.visitor(json!({ "name": "Board" })).await;
    app.conversation_becomes(&admin, conversation, "pending")
        .await;
    app.create_tag(&admin, json!({ "name": "recorded" })).await;
    eventually(
        Duration::from_secs(15),
        "the first audit record",
        || async {
            let reply = app.try_audit(&admin, Some("tag.created")).await;
            (reply.body["items"].as_array().map(Vec::len) == Some(1)).then_some(())
        },
    )
    .await;

    app.db()
        .execute_unprepared("ALTER TABLE audit_log RENAME TO audit_log_unavailable")
        .await
        .expect("renaming the audit table");
    app.create_tag(&admin, json!({ "name": "unrecorded" }))
        .await;
    eventually(
        Duration::from_secs(60),
        "the audit task to fail and be retried",
        || async {
            let failed = board(app, "/api/v1/queues/record-audit/tasks?status=Failed").await;
            failed.as_array()?.iter().find_map(|task| {
                let attempt = task["ctx"]["attempt"].as_u64().unwrap_or_default();
                let settled = match backend {
                    Backend::Embedded => task["ctx"]["max_attempts"].as_u64() == Some(attempt),
                    Backend::Distributed => true,
                };
                (task["args"]["details"]["name"] == "unrecorded"
                    && attempt >= 2
                    && settled
                    && last_error(task).contains("audit_log"))
                .then(|| task.clone())
            })
        },
    )
    .await
}

/// The value of the statistic `title` in a board list of statistics (a number, or a number in a
/// string as apalis-sqlite and apalis-redis write them); 0 when absent.
fn stat(stats: &Value, title: &str) -> f64 {
    let value = stats
        .as_array()
        .and_then(|stats| stats.iter().find(|stat| stat["title"] == title))
        .map(|stat| stat["value"].clone())
        .unwrap_or_default();
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|v| v.parse().ok()))
        .unwrap_or_default()
}

/// The queue names the workers of `app` run, as the board names them.
fn worker_queues(app: &TestApp) -> Vec<String> {
    let options = jobs::WorkerOptions {
        concurrency: 1,
        poll_interval: Duration::from_secs(1),
        reconcile_period: Duration::from_secs(30),
        sweep_period: Duration::from_secs(5),
        node: "unused".into(),
    };
    let prefix = format!("{}:", app.storage.redis_prefix);
    let mut names: Vec<String> = jobs::workers(app.state.job_context(), &options)
        .queues()
        .iter()
        .map(|queue| queue.strip_prefix(&prefix).unwrap_or(queue).to_owned())
        .collect();
    names.sort();
    names
}

both_backends! {
    async fn the_board_shows_every_queue_a_failed_task_and_the_workers(backend: Backend) {
        let app = spawn_app(backend).await;
        let failed = a_failing_task(&app, backend).await;
        let id = failed["ctx"]["task_id"].as_str().expect("a task id").to_owned();
        let attempt = failed["ctx"]["attempt"].as_u64().expect("an attempt");
        assert_eq!(failed["ctx"]["status"], "Failed", "{failed}");
        assert_eq!(failed["ctx"]["queue"], "record-audit", "{failed}");

        // Every queue the workers run, each once.
        let queues = board(&app, "/api/v1/queues").await;
        let mut names: Vec<String> = queues
            .as_array()
            .expect("a list of queues")
            .iter()
            .map(|queue| queue["name"].as_str().expect("a name").to_owned())
            .collect();
        names.sort();
        assert_eq!(names, worker_queues(&app), "{queues}");
        let mut listed = jobs::queues::names();
        listed.sort_unstable();
        assert_eq!(names, listed);

        // The queue's statistics count the failure (on Redis, a retry may be running: a moment
        // later it waits again); its task reads the same by id.
        eventually(Duration::from_secs(10), "one failed task in the statistics", || async {
            let stats = board(&app, "/api/v1/queues/record-audit/stats").await;
            let failed_jobs = stats.as_array()?.iter().find(|stat| stat["title"] == "FAILED_JOBS")?;
            (failed_jobs["value"] == "1").then_some(())
        })
        .await;
        let task = board(&app, &format!("/api/v1/queues/record-audit/tasks/{id}")).await;
        assert_eq!(task["ctx"]["task_id"], id.as_str(), "{task}");
        assert_eq!(task["args"]["details"]["name"], "unrecorded", "{task}");
        assert!(task["ctx"]["attempt"].as_u64() >= Some(attempt), "{task}");
        assert!(last_error(&task).contains("audit_log"), "{task}");
        // Across all queues it is the one failure: the other queues ran their tasks.
        eventually(Duration::from_secs(10), "the failed task among all tasks", || async {
            let all_failed = board(&app, "/api/v1/tasks?status=Failed&page=1&page_size=50").await;
            let all_failed = all_failed.as_array()?;
            (all_failed.len() == 1 && all_failed[0]["ctx"]["task_id"] == id.as_str()).then_some(())
        })
        .await;

        // The running workers: one per queue, on this queue and across all.
        let workers = board(&app, "/api/v1/queues/record-audit/workers").await;
        let workers = workers.as_array().expect("workers");
        assert_eq!(workers.len(), 1, "{workers:?}");
        assert!(workers[0]["id"].as_str().is_some_and(|w| w.starts_with("record-audit@")), "{workers:?}");
        let all = board(&app, "/api/v1/workers").await;
        for queue in &names {
            assert!(
                all.as_array().expect("workers").iter().any(|w| {
                    w["id"].as_str().is_some_and(|id| id.starts_with(&format!("{queue}@")))
                }),
                "no worker of {queue}: {all}"
            );
        }
        // The scheduler's workers too, which apalis-cron runs outside the job storage.
        for pass in CRON_WORKERS {
            assert!(
                all.as_array().expect("workers").iter().any(|w| {
                    w["id"].as_str().is_some_and(|id| id.starts_with(&format!("{pass}@")))
                }),
                "no {pass} worker: {all}"
            );
        }

        // Done tasks stay a while (a few per queue for minutes): the queues that ran count them
        // and list them, well after the short retention of the busy path, and so does the
        // overview. The first audit record finished before the failing one was even submitted.
        let queues = board(&app, "/api/v1/queues").await;
        let done_by_queue: Vec<(String, f64)> = queues
            .as_array()
            .expect("a list of queues")
            .iter()
            .map(|queue| (queue["name"].as_str().unwrap_or_default().to_owned(), stat(&queue["stats"], "DONE_JOBS")))
            .collect();
        let ran: Vec<&str> = done_by_queue
            .iter()
            .filter(|(_, done)| *done > 0.0)
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(ran.contains(&"record-audit"), "{queues}");
        assert!(ran.len() >= 2, "the conversation's jobs count too: {queues}");
        for name in &ran {
            let stats = board(&app, &format!("/api/v1/queues/{name}/stats")).await;
            assert!(stat(&stats, "DONE_JOBS") > 0.0, "{name}: {stats}");
            let done = board(&app, &format!("/api/v1/queues/{name}/tasks?status=Done&page=1&page_size=50")).await;
            assert!(done.as_array().is_some_and(|tasks| !tasks.is_empty()), "{name}: {done}");
        }
        let recorded = board(&app, "/api/v1/queues/record-audit/tasks?status=Done&page=1&page_size=50").await;
        assert!(
            recorded.as_array().expect("tasks").iter().any(|task| task["args"]["details"]["name"] == "recorded"),
            "{recorded}"
        );
        let overview = board(&app, "/api/v1/overview").await;
        assert!(stat(&overview, "DONE_JOBS") > 0.0, "{overview}");
        assert!(stat(&overview, "TOTAL_JOBS") >= stat(&overview, "DONE_JOBS") + 1.0, "{overview}");

        // What an operator sees in a browser.
        let label = match backend {
            Backend::Embedded => "embedded",
            Backend::Distributed => "distributed",
        };
        let summary = browse(&app, &names, &id, attempt, label).await;
        assert_eq!(summary["ok"], true, "{summary}");
    }
}

/// The scheduler's workers, one per pass (`jobs::runtime::scheduler`).
const CRON_WORKERS: [&str; 3] = ["sweep", "reconcile", "redeliver"];

/// Runs `tests/js/board.mjs` against the board of `app`; returns its summary.
async fn browse(app: &TestApp, queues: &[String], id: &str, attempt: u64, label: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("SWITCHBOARD_TEST_CHROMIUM")
        .unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).is_file(),
        "Chromium is missing at {chromium}: {INSTALL}"
    );
    let playwright = root.join("tests/js/node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "{} is missing: {INSTALL}",
        playwright.display()
    );
    let screenshots = root.join("target").join(format!("board-{label}"));
    let config = json!({
        "url": app.ops_address,
        "chromium": chromium,
        "username": ADMIN_EMAIL,
        "password": ADMIN_PASSWORD,
        "queues": queues,
        "cronWorkers": CRON_WORKERS,
        "failed": { "queue": "record-audit", "id": id, "attempt": attempt, "error": "audit_log" },
        "screenshots": screenshots,
    });
    let summary = node_script(root, "tests/js/board.mjs", &config, SCRIPT_TIMEOUT, INSTALL).await;
    println!("board ({label}): {summary}");
    summary
}

both_backends! {
    async fn the_board_refuses_bad_requests_with_json_errors_and_pushes_nothing(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = Some((ADMIN_EMAIL, ADMIN_PASSWORD));
        for (path, status) in [
            ("/api/v1/nowhere", StatusCode::NOT_FOUND),
            ("/api/v1/queues/no-such-queue/tasks", StatusCode::NOT_FOUND),
            ("/api/v1/queues/record-audit/tasks/not-a-task-id", StatusCode::NOT_FOUND),
            ("/api/v1/queues/record-audit/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV", StatusCode::NOT_FOUND),
            ("/api/v1/queues/record-audit/tasks?page=0", StatusCode::BAD_REQUEST),
            ("/api/v1/queues/record-audit/tasks?page=-1", StatusCode::BAD_REQUEST),
            ("/api/v1/queues/record-audit/tasks?page_size=100000", StatusCode::BAD_REQUEST),
            ("/api/v1/queues/record-audit/tasks?status=Exploded", StatusCode::BAD_REQUEST),
            ("/api/v1/tasks?page=x", StatusCode::BAD_REQUEST),
        ] {
            let reply = ops_get(&app, path, admin).await;
            assert_eq!(reply.status, status, "{path}: {}", reply.body);
            assert!(reply.json()["error"]["code"].is_string(), "{path}: {}", reply.body);
        }
        // The web app's way of asking for any status (`status=`) is understood.
        let reply = ops_get(&app, "/api/v1/queues/record-audit/tasks?status=&page=1&page_size=15", admin).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

        // Read-only: the board's task push is refused, and nothing reaches the queue.
        let reply = app
            .client
            .put(format!("{}/api/v1/queues/record-audit/tasks", app.ops_address))
            .basic_auth(ADMIN_EMAIL, Some(ADMIN_PASSWORD))
            .json(&json!({
                "idempotencyKey": "pushed-by-hand", "accountId": 1, "actorAgentId": null,
                "action": "tag.created", "subjectType": "tag", "subjectId": null,
                "details": {}, "occurredAt": "2026-01-01T00:00:00Z"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::METHOD_NOT_ALLOWED);
        tokio::time::sleep(Duration::from_millis(300)).await;
        for status in ["Pending", "Running", "Done", "Failed", "Killed"] {
            let tasks = board(&app, &format!("/api/v1/queues/record-audit/tasks?status={status}")).await;
            assert_eq!(tasks, json!([]), "{status}");
        }
        let token = app.admin_token().await;
        let audit = app.audit(&token, Some("tag.created")).await;
        assert_eq!(audit["items"], json!([]), "{audit:?}");
    }
}

both_backends! {
    async fn only_admins_get_past_the_operator_listener(backend: Backend) {
        let app = spawn_app(backend).await;
        let token = app.admin_token().await;
        let (supervisor, _) = app.agent_with_role(&token, "supervisor").await;
        let supervisor = app.agent(&token, supervisor).await["email"]
            .as_str()
            .unwrap()
            .to_owned();

        let refused = |reply: &OpsReply, what: &str| {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
            assert!(
                reply.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic "),
                "{what}"
            );
            assert_eq!(reply.json()["error"]["code"], "unauthorized", "{what}");
        };
        for path in ["/", "/api/v1/queues", "/queues/record-audit/Failed", "/no-such-page"] {
            refused(&ops_get(&app, path, None).await, path);
        }
        // Six failed checks, under the limit of failures per client.
        for path in ["/", "/api/v1/queues"] {
            for credentials in [
                (ADMIN_EMAIL, "wrong-password"),
                ("nobody@example.com", ADMIN_PASSWORD),
                // A real agent with its real password, but not an admin.
                (supervisor.as_str(), "password-123"),
            ] {
                let what = format!("{path} {credentials:?}");
                refused(&ops_get(&app, path, Some(credentials)).await, &what);
            }
        }
        // Malformed authorisations are refused the same way.
        for value in ["Basic", "Basic !!!", "Bearer x", "Basic YWRtaW4="] {
            let reply = app
                .client
                .get(format!("{}/api/v1/queues", app.ops_address))
                .header(header::AUTHORIZATION, value)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), StatusCode::UNAUTHORIZED, "{value}");
        }

        // An admin gets the web app and its API; e-mails are not case-sensitive.
        let page = ops_get(&app, "/", Some((&ADMIN_EMAIL.to_uppercase(), ADMIN_PASSWORD))).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("Apalis Board"), "{}", page.body);
        assert_eq!(board(&app, "/api/v1/queues").await.as_array().map(Vec::len), Some(jobs::queues::names().len()));

        // The public listener serves none of it.
        for path in ["/", "/api/v1/queues", "/api/v1/overview"] {
            let reply = app
                .client
                .get(format!("{}{path}", app.address))
                .basic_auth(ADMIN_EMAIL, Some(ADMIN_PASSWORD))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), StatusCode::NOT_FOUND, "{path}");
        }

        // A deleted admin is refused within the few seconds a successful check is remembered.
        let (second, _) = app.agent_with_role(&token, "admin").await;
        let email = app.agent(&token, second).await["email"]
            .as_str()
            .unwrap()
            .to_owned();
        let second_admin = Some((email.as_str(), "password-123"));
        assert_eq!(ops_get(&app, "/api/v1/queues", second_admin).await.status, StatusCode::OK);
        app.delete_agent(&token, second).await;
        eventually(
            switchboard::ops::auth::REMEMBER + Duration::from_secs(5),
            "the deleted admin to be refused",
            || async {
                (ops_get(&app, "/api/v1/queues", second_admin).await.status
                    == StatusCode::UNAUTHORIZED)
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited_per_client() {
    let app = spawn_app(Backend::Embedded).await;
    for attempt in 1..=switchboard::ops::auth::FAILURES {
        let reply = ops_get(&app, "/api/v1/queues", Some((ADMIN_EMAIL, "guess"))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    // Blocked now, even with the right password (it is not even checked).
    for credentials in [(ADMIN_EMAIL, "guess"), (ADMIN_EMAIL, ADMIN_PASSWORD)] {
        let reply = ops_get(&app, "/api/v1/queues", Some(credentials)).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(reply.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(reply.json()["error"]["code"], "rate_limited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_nodes_both_serve_the_board() {
    let storage = Storage::new(Backend::Distributed).await;
    prepare_database(&storage.settings(), Command::Migrate)
        .await
        .expect("migrate");
    let api = spawn_with(storage.clone(), Command::Serve, |_| {}).await;
    let worker = spawn_with(storage, Command::Work, |_| {}).await;
    for node in [&api, &worker] {
        let queues = board(node, "/api/v1/queues").await;
        assert_eq!(
            queues.as_array().map(Vec::len),
            Some(jobs::queues::names().len()),
            "{queues}"
        );
    }
    // Only the worker node runs workers (one per queue and the scheduler's), and both boards
    // see them.
    let expected = jobs::queues::names().len() + CRON_WORKERS.len();
    eventually(
        Duration::from_secs(10),
        "the worker node's workers",
        || async {
            let workers = board(&api, "/api/v1/workers").await;
            (workers.as_array()?.len() == expected).then_some(())
        },
    )
    .await;
    assert_eq!(
        board(&worker, "/api/v1/workers")
            .await
            .as_array()
            .map(Vec::len),
        Some(expected)
    );
    worker.stop().await;
    api.stop().await;
}

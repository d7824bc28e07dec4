//! What the embedded mode keeps on disk: a token secret long enough to sign with, files only the
//! server's user may read, and commits that survive a power failure.

use std::{os::unix::fs::PermissionsExt, path::Path};

use sea_orm::ConnectionTrait;
use serde_json::json;
use switchboard::config::{Command, SqliteSynchronous};

use crate::{helpers::*, process::Server};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// An empty or short `jwt.secret` (a crash right after an unsynced write could leave one; a
/// token signed with an empty key was accepted as the admin) refuses the start, as a short
/// `SWITCHBOARD_JWT_SECRET` does.
#[tokio::test]
async fn a_short_or_empty_token_secret_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in [("empty", ""), ("short", "0123456789abcdef\n")] {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::write(data_dir.join("jwt.secret"), contents).unwrap();
        let (status, log) = Server::fails_to_start(&data_dir, &[]).await;
        assert!(!status.success(), "{name}: {log}");
        assert!(
            log.contains("jwt.secret") && log.contains("must be at least 32"),
            "{name}: {log}"
        );
    }
    let data_dir = dir.path().join("env");
    let (status, log) =
        Server::fails_to_start(&data_dir, &[("SWITCHBOARD_JWT_SECRET", "too short")]).await;
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("SWITCHBOARD_JWT_SECRET") && log.contains("must be at least 32"),
        "{log}"
    );
}

/// The data dir is created 0700 and every file in it (the application database, the job
/// database, their WAL files and the token secret) is 0600; the generated secret is long enough
/// and no temporary file is left beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_its_files_are_private() {
    let storage = Storage::new(Backend::Embedded).await;
    let data_dir = storage.data_dir.join("data");
    let app = spawn_with(storage, Command::All, |settings| {
        settings.data_dir = data_dir.clone();
    })
    .await;
    // Writes to both databases (a session, its jobs).
    let (conversation, _) = app.visitor(json!({ "initialMessage": "hello" })).await;
    let admin = app.admin_token().await;
    app.conversation_becomes(&admin, conversation, "pending")
        .await;

    assert_eq!(mode(&data_dir), 0o700, "the data dir");
    let secret = std::fs::read_to_string(data_dir.join("jwt.secret")).unwrap();
    assert!(secret.trim().len() >= 32, "{} bytes", secret.trim().len());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    names.sort();
    for expected in [
        "jobs.db",
        "jwt.secret",
        "switchboard.db",
        "switchboard.db-wal",
    ] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    assert!(
        !names.iter().any(|name| name.ends_with(".tmp")),
        "{names:?}"
    );
}

/// The application database commits with `synchronous=FULL` (an acknowledged write survives a
/// power failure) unless `SWITCHBOARD_SQLITE_SYNCHRONOUS=normal` says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_database_is_durable_by_default() {
    async fn synchronous(app: &TestApp) -> i64 {
        let row = app
            .db()
            .query_one_raw(sea_orm::Statement::from_string(
                app.db().get_database_backend(),
                "PRAGMA synchronous",
            ))
            .await
            .unwrap()
            .expect("a row");
        row.try_get_by_index::<i64>(0).unwrap()
    }
    let app = spawn_app(Backend::Embedded).await;
    assert_eq!(synchronous(&app).await, 2, "FULL");
    let normal = spawn_with(
        Storage::new(Backend::Embedded).await,
        Command::All,
        |settings| settings.sqlite_synchronous = SqliteSynchronous::Normal,
    )
    .await;
    assert_eq!(synchronous(&normal).await, 1, "NORMAL when asked");
}

//! Opening the application database: a SQLite file in the data dir, or PostgreSQL.

use std::time::Duration;

use anyhow::Context;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::config::Settings;

/// Connects to the configured database (without migrating).
pub async fn connect(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    let mut options = match &settings.database_url {
        Some(url) => {
            let mut options = ConnectOptions::new(url.clone());
            options.max_connections(settings.database_max_connections.max(2));
            options
        }
        None => {
            crate::files::private_dir(&settings.data_dir)?;
            let path = settings.data_dir.join("switchboard.db");
            crate::files::private_database(&path)?;
            let mut options = ConnectOptions::new(format!("sqlite://{}?mode=rwc", path.display()));
            // One connection: SQLite has a single writer, and writers that collide sleep in its
            // busy handler for up to 100 ms at a time. Queueing them in the pool instead took
            // the embedded load test from 136 to 200 chats/s and its p99 from 9 s to 0.2 s.
            let synchronous = settings.sqlite_synchronous;
            options.max_connections(1).map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(synchronous.pragma())
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
            options
        }
    };
    options
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .context("connecting to the database")
}

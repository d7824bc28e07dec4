#![allow(clippy::unwrap_used)]
//! Integration tests: the real application against real SQLite, PostgreSQL and Redis.
//! Each test gets its own port, database and Redis key prefix (see `helpers`).

mod helpers;
mod process;
mod protocol;
mod sio;

mod accounts;
mod auth;
mod backlog;
mod bad_input;
mod board;
mod configuration;
mod data_files;
mod health;
mod invariants;
mod isolation;
mod jobs;
mod js_client;
mod lifecycle;
mod lifecycle_input;
mod logging;
mod metrics;
mod modes;
mod notify;
mod notify_rows;
mod passwords;
mod proxies;
mod realtime;
mod realtime_input;
mod receivers;
mod recovery;
mod resources;
mod scheduler;
mod self_service;
mod socket_limits;
mod stats;
mod webhooks;

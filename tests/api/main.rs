#![allow(clippy::unwrap_used)]
//! Integration tests: the real application against real SQLite, PostgreSQL and Redis.
//! Each test gets its own port, database and Redis key prefix (see `helpers`).

mod helpers;

mod auth;
mod bad_input;
mod health;
mod isolation;
mod jobs;
mod lifecycle;
mod modes;
mod resources;

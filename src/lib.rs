//! Switchboard's thin layer: configuration, start-up, HTTP and authentication.
//!
//! Rules: handlers validate at the edge (see [`domain`]), scope every query to the caller's
//! account, write what the caller must see at once and submit jobs for the rest; lifecycle logic
//! lives in the `jobs` crate.

pub mod auth;
pub mod bootstrap;
pub mod chat;
pub mod client_ip;
pub mod commands;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod files;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod realtime;
pub mod startup;
pub mod state;
pub mod telemetry;

/// Picks the TLS crypto provider once: two are compiled in (docs/stack-notes.md, "TLS crypto providers"), and rustls refuses to
/// guess between them.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

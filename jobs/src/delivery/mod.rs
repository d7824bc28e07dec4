//! Webhooks and e-mail: what leaves the process besides Socket.IO pushes, and must not be lost
//! (`docs/architecture.md`, "Outbox and deliveries").
//!
//! The modules depend on each other in one direction only, bottom first:
//! - `guard`: where webhook calls may go (public addresses), and the guarded HTTP client;
//! - `channels`: the process's configured channels (HTTP client, SMTP pool, retry budgets);
//! - `send`: the channel of a row and the job that sends it, and their submission;
//! - `deliveries`: the `deliveries` rows (lease, outcome, order, redelivery, pruning);
//! - `webhook`, `email`: the sending jobs, one per channel;
//! - `fanout`: turns staged outcomes into rows and submits their jobs.

pub mod channels;
pub mod deliveries;
pub mod email;
pub mod fanout;
pub mod guard;
pub mod send;
pub mod webhook;

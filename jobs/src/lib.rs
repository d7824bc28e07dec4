//! The domain of Switchboard: every lifecycle step is an apalis job.
//!
//! Rules of this crate:
//! - It never imports axum or socketioxide. Outcomes leave through the job context, never through a
//!   web framework type.
//! - A job is an args struct plus [`Job::run`]; the args are the whole input, serialised into the job
//!   storage, so they hold ids and values, never handles.
//! - Jobs run at least once, maybe twice, maybe on another node: each one checks the database (the
//!   source of truth) and makes its write conditional, so a second run changes nothing.
//! - The error decides retry versus abort: [`JobError::Transient`] is retried within the job's
//!   [`RetryBudget`], [`JobError::Permanent`] ends the task at once.

pub mod activity;
pub mod agent_presence;
pub mod assign_agent;
pub mod audit;
pub mod backlog;
pub mod batch;
pub mod board;
pub mod cache;
pub mod channels;
pub mod claim_now;
pub mod close_conversation;
mod context;
pub mod conversation;
pub mod db;
pub mod deliveries;
pub mod email;
pub mod enqueue_conversation;
pub mod fanout;
pub mod intent;
mod job;
pub mod messages;
pub mod notify;
pub mod outbox;
mod poll;
pub mod queues;
pub mod reassign_conversation;
pub mod reconcile;
pub mod routing;
mod scheduler;
pub mod session;
mod store;
pub mod timers;
pub mod webhook;
mod workers;

pub use context::JobContext;
pub use job::{Job, JobError, RetryBudget};
pub use store::{JobStore, StoreError};
pub use workers::{WorkerOptions, Workers, workers};

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

/// When a conversation last heard from each side: written in batches.
pub mod activity;
/// Presence: an agent whose last socket dropped goes offline after the grace; its chats go back.
pub mod agent_presence;
/// The assigner: a group's line served to its free agents.
pub mod assign_agent;
/// The audit trail of administrative changes, one job per row.
pub mod audit;
/// Short-lived caches of hot reads.
pub mod cache;
/// Claims a person waits for: a pick-up, a supervisor's assign, a transfer to an agent.
pub mod claim_now;
/// The close job, and the one close path it shares with the close batch and the timers.
pub mod close_conversation;
/// The one value every job receives.
mod context;
/// Every state change of a conversation, one module per seam.
pub mod conversation;
/// Database helpers shared by jobs and the HTTP layer.
pub mod db;
/// Webhooks and e-mail: fan-out, `deliveries` rows, the channels and the jobs that send.
pub mod delivery;
/// The enqueue job: a conversation takes its place in line.
pub mod enqueue_conversation;
/// Intents: what an acknowledged request leaves in the database until its job has acted.
pub mod intent;
/// What every job is: args, a queue, a retry budget and an idempotent `run`.
mod job;
/// Where chat messages are written, and what a new one tells.
pub mod messages;
/// Outcomes, and the `Notifier` seam they leave through.
pub mod notify;
/// The outbox: outcomes a webhook or e-mail may want, staged in the transaction of the change.
pub mod outbox;
/// The reassign job: a conversation leaves its agent and goes back to its place in line.
pub mod reassign_conversation;
/// The reconciler: re-derives from the rows what a lost job would have done.
pub mod reconcile;
/// Routing strategies: pure functions over a group's eligible agents.
pub mod routing;
/// The job machinery: storage, workers, scheduler, batches, the list of job types, the board.
pub mod runtime;
/// A visitor starts a chat: the rows of many sessions written at once.
pub mod session;
/// The timers: the sweep, and the job that acts on an expiry.
pub mod timers;

// Paths the test suite names (`jobs::queues`, `jobs::deliveries`, ...), kept where they were.
pub use delivery::{channels, deliveries, email, fanout, webhook};
pub use runtime::{backlog, batch, board, queues};

pub use context::JobContext;
pub use job::{Job, JobError, RetryBudget};
pub use runtime::store::{JobStore, StoreError};
pub use runtime::workers::{WorkerOptions, Workers, workers};

//! The use cases: what a person can do with chats, whichever face the request came through.
//!
//! Switchboard has two faces, the HTTP API ([`crate::http`]) and the Socket.IO namespaces
//! ([`crate::realtime`]). Both only translate: a request becomes a call here, its result becomes
//! a response or an acknowledgement. Neither imports the other. A use case checks who may do what
//! (the caller's account, role and hold on the conversation), does in-line what the caller must
//! see at once through the domain's own code (`jobs`), hands the rest to a job, and tells clients
//! through the [`jobs::notify::Notifier`]: no push leaves a use case, or a face, by another path.
//!
//! Why here and not in `jobs`: a use case starts from a caller (an agent's token, a visitor's
//! session) and ends in what the caller is shown (views, [`crate::error::ApiError`]); the `jobs`
//! crate knows neither, and stays the lifecycle that jobs, timers and the reconciler share.

pub mod access;
pub mod accounts;
pub mod agents;
pub mod audit;
pub mod budget;
pub mod conversations;
pub mod lines;
pub mod messages;
pub mod signals;
pub mod stats;
pub mod views;
pub mod visitors;

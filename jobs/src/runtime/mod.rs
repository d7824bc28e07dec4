//! The job machinery: where jobs wait (`store`, `backlog`), the workers that run them (`workers`,
//! `poll`), the one list of job types (`queues`), the periodic passes (`scheduler`), group commit
//! for the hot paths (`batch`) and what the apalis board reads (`board`). The lifecycle jobs
//! themselves live beside this module, in the crate's root.

pub mod backlog;
pub mod batch;
pub mod board;
pub(crate) mod poll;
pub mod queues;
pub(crate) mod scheduler;
pub(crate) mod store;
pub(crate) mod workers;

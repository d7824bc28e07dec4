//! Every state change of a conversation, shared by the jobs and the HTTP layer.
//!
//! Rules that keep the invariants under any number of workers:
//! - each change is one transaction whose `UPDATE`s are conditional on the state they start from
//!   (`WHERE status = 'pending'`, `WHERE active_chats < max_concurrent_chats`, ...); when a
//!   condition fails another worker got there first, and the caller drops the transaction;
//! - an agent's `active_chats` changes only in the transaction that moves one of its conversations
//!   into or out of `active`, so the counter always equals the rows it counts;
//! - locks are taken agents first, then conversations, so two transactions never wait on each
//!   other in a cycle;
//! - rows are locked `FOR NO KEY UPDATE` (what an `UPDATE` of non-key columns takes): it excludes
//!   other changes but not the key-share locks that inserting a row which refers to them (an
//!   event, a thread, an assignment) takes, so those inserts never wait on, or deadlock with, a
//!   lock held for a change.
//!
//! One module per seam: `claim` gives waiting conversations to agents, `release` takes them back
//! (a requeue), `close` ends them (and reopens a resolved one), `line` is the waiting line's order
//! and places, `candidates` says who may take what, `locks` holds the lock helpers, `events` the
//! system events, `threads` the stints, `message` the chat messages.

mod candidates;
mod claim;
mod close;
mod events;
mod line;
mod locks;
mod message;
mod release;
mod threads;

use sea_orm::{ColumnTrait, sea_query::Expr};

pub use candidates::{
    excluded_agents_of, groups_of_agent, groups_of_agents, lock_candidates, previous_agents,
};
pub use claim::{Assigned, ClaimError, Pick, claim, claim_many};
pub use close::{Closed, Closing, close, close_many, find_freed_groups, reopen};
pub use events::{system_event, system_event_row, write_events_once};
pub use line::{queue_position, queue_positions, routable_line, waiting_line};
pub use locks::{lock_agents, lock_conversation};
pub use message::{MessageError, Posted, client_id_of, client_key, post_message};
pub use release::{ReleaseReason, Requeued, requeue};

/// `CASE WHEN id = k THEN v ... END` over `pairs`: one value per row of a multi-row update.
pub(crate) fn by_id<C, V>(id: C, pairs: impl IntoIterator<Item = (i64, V)>) -> Expr
where
    C: ColumnTrait,
    V: Into<Expr>,
{
    let mut pairs = pairs.into_iter();
    let Some((first, value)) = pairs.next() else {
        return Expr::value(Option::<i64>::None);
    };
    pairs
        .fold(Expr::case(id.eq(first), value), |case, (key, value)| {
            case.case(id.eq(key), value)
        })
        .into()
}

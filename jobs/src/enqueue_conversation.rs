//! Enqueue conversation: a pending conversation takes (or keeps) its place in its group's line,
//! says where it stands, and an assignment is attempted.
//!
//! Submitted when a widget session starts, on transfer to a group, on reopen. Idempotent: the
//! place (`queued_at`) is set only when missing, and the system event is keyed by `key`.

use std::time::Duration;

use std::collections::HashMap;

use chrono::Utc;
use entity::{conversations, enums::ConversationStatus, groups};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, sea_query::Expr};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    Job, JobContext, JobError, RetryBudget,
    assign_agent::request_assign,
    conversation::{queue_positions, system_event_row, write_events_once},
    notify::Outcome,
    outbox::{Outbox, Staged},
};

/// Puts one conversation in line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnqueueConversation {
    /// The conversation.
    pub conversation_id: i64,
    /// Unique per submission (a ULID): the "queued" event of this enqueue is written once.
    pub key: String,
    /// Its place in line when it entered it, when the submitter already counted it (a new
    /// widget session does): the job then need not count again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered_at_position: Option<u64>,
}

impl EnqueueConversation {
    /// An enqueue of `conversation_id` with a fresh key.
    pub fn new(conversation_id: i64) -> Self {
        Self {
            conversation_id,
            key: ulid::Ulid::new().to_string(),
            entered_at_position: None,
        }
    }

    /// An enqueue of a conversation that entered the line at `position` just now.
    pub fn entered(conversation_id: i64, position: u64) -> Self {
        Self {
            entered_at_position: Some(position).filter(|p| *p > 0),
            ..Self::new(conversation_id)
        }
    }
}

impl Job for EnqueueConversation {
    const QUEUE: &'static str = "enqueue-conversation";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
    };

    #[tracing::instrument(name = "job.enqueue_conversation", skip_all, fields(conversation_id = self.conversation_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        // Enqueues that run at once are placed together (see `batch`).
        let (conversation, position) = match ctx.batches.enqueues.run(self.clone()).await? {
            Placed::Missing => {
                return Err(JobError::Permanent(format!(
                    "no conversation {}",
                    self.conversation_id
                )));
            }
            Placed::NotPending(status) => {
                return Ok(format!("conversation is {status:?}, nothing to enqueue"));
            }
            Placed::InLine {
                conversation,
                position,
                staged,
            } => {
                ctx.tell(staged);
                (conversation, position)
            }
        };
        request_assign(ctx, conversation.account_id, conversation.group_id).await?;
        Ok(format!("queued at position {position}"))
    }
}

/// Where an enqueue left its conversation.
#[derive(Debug, Clone)]
pub enum Placed {
    /// In line at `position` (1-based).
    InLine {
        /// The conversation as it is now.
        conversation: Box<conversations::Model>,
        /// Its place in its group's line.
        position: u64,
        /// What it tells (staged with its "queued" event): it waits at `position`, and the line
        /// moved.
        staged: Staged,
    },
    /// The conversation is no longer waiting (assigned, resolved or closed meanwhile).
    NotPending(ConversationStatus),
    /// There is no such conversation.
    Missing,
}

/// Places the conversations of `enqueues` in their lines: a place (`queued_at`) is given only
/// where it is missing, and each enqueue writes its "queued" system event once (keyed by its
/// `key`). Three statements for the whole batch, each safe to repeat.
pub(crate) async fn place_many(
    db: &DatabaseConnection,
    outbox: &Outbox,
    enqueues: Vec<EnqueueConversation>,
) -> Result<Vec<Placed>, DbErr> {
    let ids: Vec<i64> = enqueues.iter().map(|e| e.conversation_id).collect();
    let found = conversations::Entity::find()
        .find_also_related(groups::Entity)
        .filter(conversations::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?;
    let names: HashMap<i64, String> = found
        .iter()
        .filter_map(|(_, group)| group.as_ref().map(|g| (g.id, g.name.clone())))
        .collect();
    let mut rows: HashMap<i64, conversations::Model> =
        found.into_iter().map(|(c, _)| (c.id, c)).collect();
    // Not yet in line (a crash between the session's write and its place): in line now.
    let unplaced: Vec<i64> = rows
        .values()
        .filter(|c| c.status == ConversationStatus::Pending && c.queued_at.is_none())
        .map(|c| c.id)
        .collect();
    if !unplaced.is_empty() {
        let stamped = conversations::Entity::update_many()
            .col_expr(
                conversations::Column::QueuedAt,
                Expr::value(Some(Utc::now())),
            )
            .filter(conversations::Column::Id.is_in(unplaced))
            .filter(conversations::Column::QueuedAt.is_null())
            .exec_with_returning(db)
            .await?;
        rows.extend(stamped.into_iter().map(|c| (c.id, c)));
    }
    // Count only where the submitter did not.
    let uncounted: Vec<conversations::Model> = enqueues
        .iter()
        .filter(|e| e.entered_at_position.is_none())
        .filter_map(|e| rows.get(&e.conversation_id).cloned())
        .collect();
    let positions = queue_positions(db, &uncounted).await?;
    let mut notes = Vec::new();
    let mut told = Vec::new();
    let mut placed = Vec::with_capacity(enqueues.len());
    for enqueue in &enqueues {
        let Some(conversation) = rows.get(&enqueue.conversation_id) else {
            placed.push(Placed::Missing);
            continue;
        };
        let in_line =
            conversation.status == ConversationStatus::Pending && conversation.queued_at.is_some();
        let counted = enqueue
            .entered_at_position
            .or_else(|| positions.get(&conversation.id).copied());
        let (true, Some(position)) = (in_line, counted) else {
            placed.push(Placed::NotPending(conversation.status));
            continue;
        };
        let group_name = names
            .get(&conversation.group_id)
            .map_or("its group", String::as_str);
        if let Some(row) = system_event_row(
            conversation,
            format!("Queued at position {position} in {group_name}"),
            json!({ "action": "queued", "position": position, "groupId": conversation.group_id }),
            &format!("enqueue:{}", enqueue.key),
        ) {
            notes.push(row);
        }
        told.push(vec![
            Outcome::queued(conversation, position),
            Outcome::QueueChanged {
                account_id: conversation.account_id,
                group_id: conversation.group_id,
            },
        ]);
        placed.push(Placed::InLine {
            conversation: Box::new(conversation.clone()),
            position,
            staged: Staged::default(),
        });
    }
    let txn = crate::db::begin_write(db).await?;
    write_events_once(&txn, notes).await?;
    let mut staged = outbox.stage_each(&txn, told).await?.into_iter();
    txn.commit().await?;
    for place in &mut placed {
        if let Placed::InLine { staged: slot, .. } = place {
            *slot = staged.next().unwrap_or_default();
        }
    }
    Ok(placed)
}

//! Waiting lines as agents and visitors see them move: `queue:update` to the group's agents and
//! `queue:position` (with an estimated wait) to each watched visitor whose place changed, at most
//! every [`LINE_PERIOD`] per group.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::Utc;
use entity::{conversations, enums::ConversationStatus};
use jobs::conversation::waiting_line;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use tokio::sync::mpsc;

use super::{AGENTS, Push, VISITORS, room};
use crate::chat::views::{Waiting, waiting_count};

/// How often a changed waiting line is pushed.
pub const LINE_PERIOD: Duration = Duration::from_millis(250);
/// The part of a line whose visitors hear their place; further back they hear it once they move
/// into it.
const LINE_WATCHED: u64 = 1_000;
/// The part of a line shown to agents in `queue:update`.
const LINE_SHOWN: usize = 100;
/// The window over which the group's serving rate is measured for wait estimates.
const RATE_WINDOW_SECONDS: i64 = 900;
/// How long a group's counted serving rate is used for its pushes before it is counted again.
const RATE_REFRESH: Duration = Duration::from_secs(10);

/// Pushes the waiting lines that moved, at most every [`LINE_PERIOD`] each.
pub(super) struct Lines {
    push: Push,
    db: DatabaseConnection,
    /// Groups whose line changed since the last push: (account, group).
    changed: HashSet<(i64, i64)>,
    /// The place each watched visitor was last told, per group.
    told: HashMap<i64, HashMap<i64, u64>>,
    /// Each group's recent serving rate, kept for [`RATE_REFRESH`]: a rate over
    /// [`RATE_WINDOW_SECONDS`] moves slowly, and counting it at every push would read the
    /// window's rows four times a second.
    rates: jobs::cache::Cache<i64, u64>,
}

impl Lines {
    pub(super) fn new(push: Push, db: DatabaseConnection) -> Self {
        Self {
            push,
            db,
            changed: HashSet::new(),
            told: HashMap::new(),
            rates: jobs::cache::short_lived(100_000, RATE_REFRESH),
        }
    }

    pub(super) async fn run(mut self, mut moved: mpsc::UnboundedReceiver<(i64, i64)>) {
        let mut tick = tokio::time::interval(LINE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                line = moved.recv() => match line {
                    Some(line) => { self.changed.insert(line); }
                    None => break,
                },
                _ = tick.tick(), if !self.changed.is_empty() => self.push_lines().await,
            }
        }
    }

    async fn push_lines(&mut self) {
        for (account_id, group_id) in std::mem::take(&mut self.changed) {
            if let Err(err) = self.push_line(account_id, group_id).await {
                tracing::warn!(group_id, %err, "waiting line not pushed");
            }
        }
    }

    /// `queue:update` to the group's agents and supervisors; `queue:position` to each watched
    /// visitor whose place changed.
    async fn push_line(&mut self, account_id: i64, group_id: i64) -> Result<(), DbErr> {
        let line = waiting_line(&self.db, group_id, LINE_WATCHED).await?;
        let served = match self.rates.get(&group_id) {
            Some(served) => served,
            None => {
                let served = served_recently(&self.db, group_id).await?;
                // An empty window is not kept but counted again at every push (cheaply: it is
                // empty), so the first chat served gives the visitors an estimate at once.
                if served > 0 {
                    self.rates.insert(group_id, served);
                }
                served
            }
        };
        let waiting = Waiting::head(&line, LINE_SHOWN);
        let waiting_count = if (line.len() as u64) < LINE_WATCHED {
            line.len() as u64
        } else {
            waiting_count(&self.db, group_id).await?
        };
        let body = json!({
            "groupId": group_id,
            "waitingCount": waiting_count,
            "waiting": waiting,
        });
        let rooms = vec![room::group(group_id), room::account(account_id)];
        self.push.emit(AGENTS, rooms, "queue:update", &body).await;

        let before = self.told.remove(&group_id).unwrap_or_default();
        let mut now_told = HashMap::with_capacity(line.len());
        for (index, conversation) in line.iter().enumerate() {
            let position = index as u64 + 1;
            now_told.insert(conversation.id, position);
            if before.get(&conversation.id) == Some(&position) {
                continue;
            }
            let body = json!({
                "conversationId": conversation.id,
                "position": position,
                "estimatedWaitSeconds": estimate(position, served),
            });
            let rooms = vec![room::conversation(conversation.id)];
            self.push
                .emit(VISITORS, rooms, "queue:position", &body)
                .await;
        }
        if !now_told.is_empty() {
            self.told.insert(group_id, now_told);
        }
        Ok(())
    }
}

/// Chats of the group assigned within the rate window.
async fn served_recently(db: &DatabaseConnection, group_id: i64) -> Result<u64, DbErr> {
    conversations::Entity::find()
        .filter(conversations::Column::GroupId.eq(group_id))
        .filter(
            conversations::Column::AssignedAt
                .gt(Utc::now() - chrono::Duration::seconds(RATE_WINDOW_SECONDS)),
        )
        .count(db)
        .await
}

/// The `queue:position` body of a waiting conversation (`None` once it no longer waits): what a
/// visitor hears when it connects, before its place next changes.
pub async fn place_of(
    db: &DatabaseConnection,
    conversation: &conversations::Model,
) -> Result<Option<serde_json::Value>, DbErr> {
    if conversation.status != ConversationStatus::Pending {
        return Ok(None);
    }
    let position = jobs::conversation::queue_position(db, conversation).await?;
    let served = served_recently(db, conversation.group_id).await?;
    Ok(Some(json!({
        "conversationId": conversation.id,
        "position": position,
        "estimatedWaitSeconds": estimate(position, served),
    })))
}

/// Seconds until place `position` is served at the group's recent rate (`served` chats in the
/// window); `None` when nothing was served lately, so there is no rate to go by.
fn estimate(position: u64, served: u64) -> Option<u64> {
    if served == 0 {
        return None;
    }
    let per_chat = RATE_WINDOW_SECONDS as f64 / served as f64;
    Some((position as f64 * per_chat).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::estimate;

    #[test]
    fn estimates_follow_the_recent_rate() {
        assert_eq!(estimate(3, 0), None);
        // 90 served in 15 minutes: one every 10 s.
        assert_eq!(estimate(1, 90), Some(10));
        assert_eq!(estimate(4, 90), Some(40));
        // Faster than one a second still waits at least a second.
        assert_eq!(estimate(1, 10_000), Some(1));
    }
}

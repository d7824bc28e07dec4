//! The live state of an account's queues, for supervisors: `GET /v1/stats`, and pushed as
//! `stats:update` to connected supervisors (see `realtime::push_stats`).
//!
//! Per group: waiting conversations by priority and the oldest wait, agents online and accepting,
//! occupancy (active chats against the online agents' capacity), assignments and closes over the
//! last 5 and 60 minutes, and the median wait and first-response time over the last hour. The
//! medians are taken over the hour's latest [`MEDIAN_SAMPLE`] conversations of the account, so
//! a busy account's stats cost the same as a quiet one's.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use entity::{
    agent_groups, agents, assignments, conversations,
    enums::{AgentStatus, ConversationStatus, Priority},
    groups,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait,
};
use serde::Serialize;

/// Conversations the medians are computed over, at most.
pub const MEDIAN_SAMPLE: u64 = 1_000;

/// An account's live numbers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountStats {
    pub generated_at: DateTime<Utc>,
    pub groups: Vec<GroupStats>,
}

/// One group's live numbers.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStats {
    pub group_id: i64,
    pub name: String,
    pub waiting: Waiting,
    /// Seconds the longest-waiting conversation has waited; `null` when none waits.
    pub oldest_wait_seconds: Option<i64>,
    pub agents: AgentCounts,
    pub occupancy: Occupancy,
    pub assigned: Recent,
    pub closed: Recent,
    /// Median seconds from entering the line to being assigned, over the last hour.
    pub median_wait_seconds: Option<f64>,
    /// Median seconds from a conversation's start to its first agent reply, over the last hour.
    pub median_first_response_seconds: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    pub high: i64,
    pub normal: i64,
    pub low: i64,
    pub total: i64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCounts {
    pub members: i64,
    pub online: i64,
    pub accepting: i64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Occupancy {
    /// Active conversations of the group.
    pub active: i64,
    /// Chats the group's online agents may hold at once.
    pub capacity: i64,
    /// `active / capacity`; `null` without capacity.
    pub ratio: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recent {
    pub last5_minutes: i64,
    pub last60_minutes: i64,
}

/// Computes an account's stats (a handful of grouped queries).
pub async fn account_stats(
    db: &impl ConnectionTrait,
    account_id: i64,
) -> Result<AccountStats, DbErr> {
    let now = Utc::now();
    let mut tally = Tally::of_groups(db, account_id).await?;
    tally.waiting(db, account_id, now).await?;
    tally.agents(db, account_id).await?;
    tally.occupancy(db, account_id).await?;
    for (minutes, last5) in [(5, true), (60, false)] {
        tally
            .recent(db, account_id, now - Duration::minutes(minutes), last5)
            .await?;
    }
    tally
        .medians(db, account_id, now - Duration::hours(1))
        .await?;
    Ok(AccountStats {
        generated_at: now,
        groups: tally.groups,
    })
}

/// The numbers of an account's groups as they are counted, one query per kind.
struct Tally {
    groups: Vec<GroupStats>,
    /// Each group's place in `groups`.
    index: HashMap<i64, usize>,
}

impl Tally {
    /// The account's groups, all numbers at zero.
    async fn of_groups(db: &impl ConnectionTrait, account_id: i64) -> Result<Self, DbErr> {
        let groups: Vec<GroupStats> = groups::Entity::find()
            .filter(groups::Column::AccountId.eq(account_id))
            .filter(groups::Column::DeletedAt.is_null())
            .order_by_asc(groups::Column::Id)
            .all(db)
            .await?
            .into_iter()
            .map(|group| GroupStats {
                group_id: group.id,
                name: group.name,
                ..Default::default()
            })
            .collect();
        let index = groups
            .iter()
            .enumerate()
            .map(|(at, group)| (group.group_id, at))
            .collect();
        Ok(Self { groups, index })
    }

    /// A group's numbers (none for a group deleted since it was listed).
    fn group(&mut self, group_id: i64) -> Option<&mut GroupStats> {
        let at = *self.index.get(&group_id)?;
        self.groups.get_mut(at)
    }

    /// Waiting conversations by priority, and the oldest wait.
    async fn waiting(
        &mut self,
        db: &impl ConnectionTrait,
        account_id: i64,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        for (group_id, priority, count, oldest) in waiting_by_priority(db, Some(account_id)).await?
        {
            let Some(stats) = self.group(group_id) else {
                continue;
            };
            match priority {
                Priority::High => stats.waiting.high += count,
                Priority::Normal => stats.waiting.normal += count,
                Priority::Low => stats.waiting.low += count,
            }
            stats.waiting.total += count;
            let waited = oldest.map(|oldest| (now - oldest).num_seconds().max(0));
            stats.oldest_wait_seconds = stats.oldest_wait_seconds.max(waited);
        }
        Ok(())
    }

    /// Members, online and accepting; the online members' capacity.
    async fn agents(&mut self, db: &impl ConnectionTrait, account_id: i64) -> Result<(), DbErr> {
        let members: Vec<(i64, AgentStatus, bool, i32)> = agents::Entity::find()
            .select_only()
            .column(agent_groups::Column::GroupId)
            .column(agents::Column::Status)
            .column(agents::Column::AcceptingChats)
            .column(agents::Column::MaxConcurrentChats)
            .join(JoinType::InnerJoin, agents::Relation::AgentGroups.def())
            .filter(agents::Column::AccountId.eq(account_id))
            .filter(agents::Column::DeletedAt.is_null())
            .into_tuple()
            .all(db)
            .await?;
        for (group_id, status, accepting, capacity) in members {
            let Some(stats) = self.group(group_id) else {
                continue;
            };
            stats.agents.members += 1;
            if status == AgentStatus::Online {
                stats.agents.online += 1;
                stats.occupancy.capacity += i64::from(capacity);
                if accepting {
                    stats.agents.accepting += 1;
                }
            }
        }
        Ok(())
    }

    /// Active conversations against the capacity counted by [`Self::agents`].
    async fn occupancy(&mut self, db: &impl ConnectionTrait, account_id: i64) -> Result<(), DbErr> {
        let active: Vec<(i64, i64)> = conversations::Entity::find()
            .select_only()
            .column(conversations::Column::GroupId)
            .column_as(conversations::Column::Id.count(), "n")
            .filter(conversations::Column::AccountId.eq(account_id))
            .filter(conversations::Column::Status.eq(ConversationStatus::Active))
            .group_by(conversations::Column::GroupId)
            .into_tuple()
            .all(db)
            .await?;
        for (group_id, count) in active {
            if let Some(stats) = self.group(group_id) {
                stats.occupancy.active = count;
            }
        }
        for stats in &mut self.groups {
            let occupancy = &mut stats.occupancy;
            occupancy.ratio = (occupancy.capacity > 0)
                .then(|| occupancy.active as f64 / occupancy.capacity as f64);
        }
        Ok(())
    }

    /// Assignments and closes since `since`: the last five minutes' numbers, or the hour's.
    async fn recent(
        &mut self,
        db: &impl ConnectionTrait,
        account_id: i64,
        since: DateTime<Utc>,
        last5: bool,
    ) -> Result<(), DbErr> {
        for (group_id, count) in assigned_since(db, account_id, since).await? {
            if let Some(stats) = self.group(group_id) {
                *stats.assigned.window(last5) = count;
            }
        }
        for (group_id, count) in closed_since(db, account_id, since).await? {
            if let Some(stats) = self.group(group_id) {
                *stats.closed.window(last5) = count;
            }
        }
        Ok(())
    }

    /// The median wait and first response since `since`, over the latest [`MEDIAN_SAMPLE`].
    async fn medians(
        &mut self,
        db: &impl ConnectionTrait,
        account_id: i64,
        since: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let waits: Vec<(i64, Option<DateTime<Utc>>, DateTime<Utc>)> = assignments::Entity::find()
            .select_only()
            .column(conversations::Column::GroupId)
            .column(conversations::Column::QueuedAt)
            .column(assignments::Column::AssignedAt)
            .join(
                JoinType::InnerJoin,
                assignments::Relation::Conversation.def(),
            )
            .filter(assignments::Column::AccountId.eq(account_id))
            .filter(assignments::Column::AssignedAt.gte(since))
            .order_by_desc(assignments::Column::AssignedAt)
            .limit(MEDIAN_SAMPLE)
            .into_tuple()
            .all(db)
            .await?;
        let waits = waits
            .into_iter()
            .filter_map(|(group_id, queued, assigned)| {
                Some((group_id, seconds(assigned - queued?)))
            });
        for (group_id, median) in medians_by_group(waits) {
            if let Some(stats) = self.group(group_id) {
                stats.median_wait_seconds = median;
            }
        }

        let responses: Vec<(i64, DateTime<Utc>, Option<DateTime<Utc>>)> =
            conversations::Entity::find()
                .select_only()
                .column(conversations::Column::GroupId)
                .column(conversations::Column::CreatedAt)
                .column(conversations::Column::FirstResponseAt)
                .filter(conversations::Column::AccountId.eq(account_id))
                .filter(conversations::Column::FirstResponseAt.gte(since))
                .order_by_desc(conversations::Column::FirstResponseAt)
                .limit(MEDIAN_SAMPLE)
                .into_tuple()
                .all(db)
                .await?;
        let responses = responses
            .into_iter()
            .filter_map(|(group_id, created, answered)| {
                Some((group_id, seconds(answered? - created)))
            });
        for (group_id, median) in medians_by_group(responses) {
            if let Some(stats) = self.group(group_id) {
                stats.median_first_response_seconds = median;
            }
        }
        Ok(())
    }
}

impl Recent {
    /// The last five minutes' number, or the hour's.
    fn window(&mut self, last5: bool) -> &mut i64 {
        if last5 {
            &mut self.last5_minutes
        } else {
            &mut self.last60_minutes
        }
    }
}

/// The median of each group's samples.
fn medians_by_group(
    samples: impl Iterator<Item = (i64, f64)>,
) -> impl Iterator<Item = (i64, Option<f64>)> {
    let mut by_group: HashMap<i64, Vec<f64>> = HashMap::new();
    for (group_id, value) in samples {
        by_group.entry(group_id).or_default().push(value);
    }
    by_group
        .into_iter()
        .map(|(group_id, mut values)| (group_id, median(&mut values)))
}

pub async fn waiting_by_priority(
    db: &impl ConnectionTrait,
    account_id: Option<i64>,
) -> Result<Vec<(i64, Priority, i64, Option<DateTime<Utc>>)>, DbErr> {
    let mut query = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::GroupId)
        .column(conversations::Column::Priority)
        .column_as(conversations::Column::Id.count(), "n")
        .column_as(conversations::Column::QueuedAt.min(), "oldest")
        .filter(conversations::Column::Status.eq(ConversationStatus::Pending));
    if let Some(account_id) = account_id {
        query = query.filter(conversations::Column::AccountId.eq(account_id));
    }
    query
        .group_by(conversations::Column::GroupId)
        .group_by(conversations::Column::Priority)
        .into_tuple()
        .all(db)
        .await
}

/// Assignments made since `since`, per (current) group of the conversation.
async fn assigned_since(
    db: &impl ConnectionTrait,
    account_id: i64,
    since: DateTime<Utc>,
) -> Result<Vec<(i64, i64)>, DbErr> {
    assignments::Entity::find()
        .select_only()
        .column(conversations::Column::GroupId)
        .column_as(assignments::Column::Id.count(), "n")
        .join(
            JoinType::InnerJoin,
            assignments::Relation::Conversation.def(),
        )
        .filter(assignments::Column::AccountId.eq(account_id))
        .filter(assignments::Column::AssignedAt.gte(since))
        .group_by(conversations::Column::GroupId)
        .into_tuple()
        .all(db)
        .await
}

/// Conversations resolved or closed since `since`, per group.
async fn closed_since(
    db: &impl ConnectionTrait,
    account_id: i64,
    since: DateTime<Utc>,
) -> Result<Vec<(i64, i64)>, DbErr> {
    conversations::Entity::find()
        .select_only()
        .column(conversations::Column::GroupId)
        .column_as(conversations::Column::Id.count(), "n")
        .filter(conversations::Column::AccountId.eq(account_id))
        .filter(
            Condition::any()
                .add(
                    Condition::all()
                        .add(conversations::Column::Status.eq(ConversationStatus::Resolved))
                        .add(conversations::Column::ResolvedAt.gte(since)),
                )
                .add(
                    Condition::all()
                        .add(conversations::Column::Status.eq(ConversationStatus::Closed))
                        .add(conversations::Column::ClosedAt.gte(since)),
                ),
        )
        .group_by(conversations::Column::GroupId)
        .into_tuple()
        .all(db)
        .await
}

fn seconds(duration: Duration) -> f64 {
    duration.num_milliseconds().max(0) as f64 / 1e3
}

/// The median of `values` (sorted in place); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_odd_and_even_samples() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}

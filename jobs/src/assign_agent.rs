//! Assign agent: serves a group's waiting line, head first, while an eligible agent is free.
//!
//! Submitted after every enqueue and whenever capacity may have appeared (an agent goes online or
//! starts accepting, a chat closes, capacity is raised, an agent joins the group). Any number may
//! run at once on any node: each assignment is one conditional claim (see `conversation::claim`),
//! so a lost race only means re-reading the line. Running it when nothing can be assigned is a
//! cheap no-op, which is what makes it safe to submit liberally.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use chrono::Utc;
use entity::groups;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, JobStore, RetryBudget,
    conversation::{
        Assigned, ClaimError, Pick, claim_many, excluded_agents_of, lock_candidates,
        previous_agents, routable_line,
    },
    db::begin_write,
    notify::Outcome,
    outbox::Staged,
    routing::choose,
};

/// Assignments made by one run before it hands over to a fresh job, so one busy group cannot hold
/// a worker for long.
const ASSIGNMENTS_PER_RUN: usize = 500;
/// How deep into the line a run looks for a conversation some free agent may take.
const LOOKAHEAD: u64 = 50;

/// Serves one group's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignAgent {
    /// The group's account.
    pub account_id: i64,
    /// The group whose line to serve.
    pub group_id: i64,
}

impl AssignAgent {
    /// Serve `group_id` of `account_id`.
    pub fn new(account_id: i64, group_id: i64) -> Self {
        Self {
            account_id,
            group_id,
        }
    }
}

/// The in-process lock of one group's line.
fn group_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(key.to_owned()).or_default().clone()
}

/// How long a request stays "in flight": after this, another request submits a fresh job even if
/// the first one has not started (it may have been lost).
const REQUEST_TTL: chrono::Duration = chrono::Duration::seconds(5);

/// Asks for the group's line to be served, coalescing requests: a job is submitted only when none
/// is waiting to start. The job clears the mark *before* it reads the line, so a conversation
/// queued after that clearing makes a new request, and one queued before it is seen by the job:
/// no wake-up is lost. A mark left by a crash expires after `REQUEST_TTL`, and the reconciler
/// submits directly. Requests made at once are coalesced in this process too (see `batch`): one
/// conditional update per group for the lot.
pub async fn request_assign(
    ctx: &JobContext,
    account_id: i64,
    group_id: i64,
) -> Result<(), JobError> {
    ctx.batches
        .requests
        .run((account_id, group_id))
        .await?
        .map_err(JobError::Transient)
}

/// [`request_assign`] for a batch of `(account, group)` requests: one mark, and at most one job,
/// per group. Each step is conditional, so running it again is harmless.
pub(crate) async fn request_many(
    db: &DatabaseConnection,
    jobs: &JobStore,
    requests: Vec<(i64, i64)>,
) -> Result<Vec<Result<(), String>>, DbErr> {
    let mut outcome: HashMap<i64, Result<(), String>> = HashMap::new();
    for &(account_id, group_id) in &requests {
        if outcome.contains_key(&group_id) {
            continue;
        }
        let now = Utc::now();
        let marked = groups::Entity::update_many()
            .col_expr(groups::Column::AssignRequestedAt, Expr::value(Some(now)))
            .filter(groups::Column::Id.eq(group_id))
            .filter(
                Condition::any()
                    .add(groups::Column::AssignRequestedAt.is_null())
                    .add(groups::Column::AssignRequestedAt.lt(now - REQUEST_TTL)),
            )
            .exec(db)
            .await?;
        let submitted = if marked.rows_affected == 1 {
            match jobs.submit(AssignAgent::new(account_id, group_id)).await {
                Ok(()) => Ok(()),
                Err(err) => {
                    // No job will clear the mark: clear it, so the next request submits.
                    groups::Entity::update_many()
                        .col_expr(
                            groups::Column::AssignRequestedAt,
                            Expr::value(Option::<chrono::DateTime<Utc>>::None),
                        )
                        .filter(groups::Column::Id.eq(group_id))
                        .filter(groups::Column::AssignRequestedAt.eq(now))
                        .exec(db)
                        .await?;
                    Err(err.to_string())
                }
            }
        } else {
            Ok(())
        };
        outcome.insert(group_id, submitted);
    }
    Ok(requests
        .iter()
        .map(|(_, group)| outcome.get(group).cloned().unwrap_or(Ok(())))
        .collect())
}

impl Job for AssignAgent {
    const QUEUE: &'static str = "assign-agent";
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 10,
        backoff_min: Duration::from_millis(20),
        timeout: Duration::from_secs(60),
    };

    #[tracing::instrument(name = "job.assign_agent", skip_all, fields(group_id = self.group_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        // One assigner per group in this process: concurrent runs would only race for the same
        // head of the line (SQLite even serialises the losers' writes). A run that waits here
        // still clears the mark and reads the line after the one before it, so nothing is missed.
        // Other processes may run at once; the conditional claim keeps that correct.
        let lock = group_lock(&format!(
            "{}#{}",
            ctx.jobs.wake_key::<Self>(),
            self.group_id
        ));
        let _serving = lock.lock().await;
        // Clear the request mark first (and read the group in the same statement): anything
        // queued from now on asks again.
        let Some(group) = groups::Entity::update_many()
            .col_expr(
                groups::Column::AssignRequestedAt,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .filter(groups::Column::Id.eq(self.group_id))
            .filter(groups::Column::AccountId.eq(self.account_id))
            .filter(groups::Column::DeletedAt.is_null())
            .exec_with_returning(&ctx.db)
            .await?
            .pop()
        else {
            return Ok("group is gone".into());
        };
        let mut assigned = 0;
        while assigned < ASSIGNMENTS_PER_RUN {
            let step = assign_batch(ctx, &group).await?;
            assigned += step.assigned.len();
            for (done, staged) in step.assigned {
                announce(ctx, &done, staged);
            }
            if !step.more {
                break;
            }
        }
        if assigned >= ASSIGNMENTS_PER_RUN {
            // More may be waiting: let a fresh task carry on.
            ctx.jobs
                .submit(self.clone())
                .await
                .map_err(|err| JobError::Transient(err.to_string()))?;
        }
        Ok(format!("{assigned} assigned in group {}", group.id))
    }
}

/// What one batch did.
struct Step {
    /// The conversations it assigned, and what each tells.
    assigned: Vec<(Assigned, Staged)>,
    /// Whether another batch may find work: the line went on past what this one read, and
    /// agents still had room.
    more: bool,
}

/// Assigns as much of the head of the line as the free agents allow, in one transaction (one
/// write lock on SQLite) with a fixed number of statements.
/// Conversations are taken in serving order (priority, then age); one is skipped only when every
/// free agent is excluded for it, so an older conversation never waits while an agent eligible
/// for it is free (invariant 3).
async fn assign_batch(ctx: &JobContext, group: &groups::Model) -> Result<Step, JobError> {
    let idle = Step {
        assigned: Vec::new(),
        more: false,
    };
    let txn = begin_write(&ctx.db).await?;
    // Lock the group's free agents (PostgreSQL; SQLite holds its write lock already) as they are
    // read: inside this transaction nobody else changes their capacity, so each claim's capacity
    // check can only pass.
    let mut agents = lock_candidates(&txn, group.id).await?;
    if agents.is_empty() {
        txn.rollback().await?;
        return Ok(idle);
    }
    let line = routable_line(&txn, group.id, LOOKAHEAD).await?;
    if line.is_empty() {
        // Ended explicitly: a dropped transaction rolls back only when its connection is next
        // used, and until then its agent locks would stall every close.
        txn.rollback().await?;
        return Ok(idle);
    }
    // Only a conversation that went back in line can have agents barred from it.
    let requeued: Vec<i64> = line
        .iter()
        .filter(|c| c.reassignment_count > 0)
        .map(|c| c.id)
        .collect();
    let excluded = if requeued.is_empty() {
        HashMap::new()
    } else {
        excluded_agents_of(&txn, &requeued).await?
    };
    let previous = match group.routing_strategy {
        entity::enums::RoutingStrategy::Sticky => {
            let visitors: Vec<i64> = line.iter().map(|c| c.visitor_id).collect();
            previous_agents(&txn, &visitors).await?
        }
        _ => HashMap::new(),
    };
    let planned_at = Utc::now();
    let mut picks = Vec::new();
    for conversation in &line {
        if agents.iter().all(|agent| agent.free_slots() <= 0) {
            break;
        }
        let barred = excluded.get(&conversation.id);
        let pool: Vec<_> = agents
            .iter()
            .filter(|agent| agent.free_slots() > 0)
            .filter(|agent| barred.is_none_or(|barred| !barred.contains(&agent.id)))
            .cloned()
            .collect();
        let previous = previous.get(&conversation.visitor_id).copied();
        let Some((agent_id, reason)) = choose(group.routing_strategy, &pool, previous) else {
            continue;
        };
        // What the claim will write, so the next pick of this batch sees it (rotation included:
        // picks are a microsecond apart, as `claim_many` stamps them).
        if let Some(agent) = agents.iter_mut().find(|a| a.id == agent_id) {
            agent.active_chats += 1;
            agent.last_assigned_at =
                Some(planned_at + chrono::Duration::microseconds(picks.len() as i64));
        }
        picks.push(Pick {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            agent_id,
            why: reason.describe().to_owned(),
        });
    }
    if picks.is_empty() {
        txn.rollback().await?;
        return Ok(idle);
    }
    let assigned = match claim_many(&txn, &picks).await? {
        Ok(assigned) => assigned,
        // Cannot happen with the agents locked; if it does, drop the whole batch and retry.
        Err(ClaimError::AgentUnavailable) => {
            txn.rollback().await?;
            return Err(JobError::Transient(
                "an agent changed while locked".to_owned(),
            ));
        }
        Err(ClaimError::NotPending) => Vec::new(),
    };
    let told = assigned.iter().map(assigned_outcomes).collect();
    let staged = ctx.outbox.stage_each(&txn, told).await?;
    txn.commit().await?;
    let assigned: Vec<_> = assigned.into_iter().zip(staged).collect();
    let room_left = agents.iter().any(|agent| agent.free_slots() > 0);
    Ok(Step {
        // Conversations taken by a pick-up or another node meanwhile were skipped: read again.
        more: room_left && (line.len() as u64 == LOOKAHEAD || assigned.len() < picks.len()),
        assigned,
    })
}

/// What an assignment tells: the agent, the visitor, webhooks and e-mail that the conversation
/// has an agent, and the group that its line moved.
pub fn assigned_outcomes(done: &Assigned) -> Vec<Outcome> {
    let conversation = &done.conversation;
    vec![
        Outcome::ConversationAssigned {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            group_id: conversation.group_id,
            visitor_id: conversation.visitor_id,
            agent_id: done.agent.id,
            agent_name: done.agent.name.clone(),
            agent_avatar_url: done.agent.avatar_url.clone(),
            reason: done.why.clone(),
        },
        Outcome::QueueChanged {
            account_id: conversation.account_id,
            group_id: conversation.group_id,
        },
    ]
}

/// Tells what a committed assignment staged (see [`assigned_outcomes`]), and records how long
/// the conversation waited.
pub fn announce(ctx: &JobContext, done: &Assigned, staged: Staged) {
    let conversation = &done.conversation;
    if let (Some(queued), Some(assigned)) = (conversation.queued_at, conversation.assigned_at) {
        let waited = (assigned - queued)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .max(0);
        metrics::histogram!("switchboard_assignment_latency_seconds").record(waited as f64 / 1e6);
    }
    ctx.tell(staged);
}

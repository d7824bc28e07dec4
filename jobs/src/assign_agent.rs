//! Assign agent: serves a group's waiting line, head first, while an eligible agent is free.
//!
//! Submitted after every enqueue and whenever capacity may have appeared (an agent goes online or
//! starts accepting, a chat closes, capacity is raised, an agent joins the group). Any number may
//! run at once on any node: each assignment is one conditional claim (see `conversation::claim`),
//! so a lost race only means re-reading the line. Running it when nothing can be assigned is a
//! cheap no-op, which is what makes it safe to submit liberally.

use std::time::Duration;

use entity::groups;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, RetryBudget,
    conversation::{Assigned, candidates, claim, excluded_agents, previous_agent, waiting_line},
    db::begin_write,
    notify::Outcome,
    routing::choose,
};

/// Assignments made by one run before it hands over to a fresh job, so one busy group cannot hold
/// a worker for long.
const ASSIGNMENTS_PER_RUN: usize = 50;
/// How deep into the line a run looks for a conversation some free agent may take.
const LOOKAHEAD: u64 = 25;

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
        let Some(group) = groups::Entity::find_by_id(self.group_id)
            .filter(groups::Column::AccountId.eq(self.account_id))
            .filter(groups::Column::DeletedAt.is_null())
            .one(&ctx.db)
            .await?
        else {
            return Ok("group is gone".into());
        };
        let mut assigned = 0;
        while assigned < ASSIGNMENTS_PER_RUN {
            match assign_next(ctx, &group).await? {
                Step::Assigned(done) => {
                    assigned += 1;
                    announce(ctx, &done);
                }
                Step::Raced => continue,
                Step::Idle => break,
            }
        }
        if assigned == ASSIGNMENTS_PER_RUN {
            // More may be waiting: let a fresh task carry on.
            ctx.jobs
                .submit(self.clone())
                .await
                .map_err(|err| JobError::Transient(err.to_string()))?;
        }
        Ok(format!("{assigned} assigned in group {}", group.id))
    }
}

enum Step {
    Assigned(Box<Assigned>),
    /// Another worker changed the state under us: read again.
    Raced,
    /// Nothing can be assigned now.
    Idle,
}

/// One assignment: the first conversation in line (priority, then age) that some eligible agent
/// may take. A conversation is skipped only when every free agent is excluded for it, so an older
/// conversation never waits while an agent eligible for it is free (invariant 3).
async fn assign_next(ctx: &JobContext, group: &groups::Model) -> Result<Step, JobError> {
    let agents = candidates(&ctx.db, group.id).await?;
    if agents.is_empty() {
        return Ok(Step::Idle);
    }
    for conversation in waiting_line(&ctx.db, group.id, LOOKAHEAD).await? {
        let excluded = excluded_agents(&ctx.db, conversation.id).await?;
        let pool: Vec<_> = agents
            .iter()
            .filter(|agent| !excluded.contains(&agent.id))
            .cloned()
            .collect();
        if pool.is_empty() {
            continue;
        }
        let previous = match group.routing_strategy {
            entity::enums::RoutingStrategy::Sticky => {
                previous_agent(&ctx.db, conversation.visitor_id).await?
            }
            _ => None,
        };
        let Some((agent_id, reason)) = choose(group.routing_strategy, &pool, previous) else {
            continue;
        };
        let txn = begin_write(&ctx.db).await?;
        return match claim(&txn, conversation.id, agent_id, reason.describe()).await? {
            Ok(done) => {
                txn.commit().await?;
                Ok(Step::Assigned(Box::new(done)))
            }
            // Dropping the transaction rolls the partial claim back.
            Err(_) => Ok(Step::Raced),
        };
    }
    Ok(Step::Idle)
}

/// Tells the agent, the visitor and the group what an assignment changed.
pub fn announce(ctx: &JobContext, done: &Assigned) {
    let conversation = &done.conversation;
    ctx.notifier.notify(Outcome::ConversationAssigned {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        group_id: conversation.group_id,
        visitor_id: conversation.visitor_id,
        agent_id: done.agent.id,
        reason: done.why.clone(),
    });
    ctx.notifier.notify(Outcome::QueueChanged {
        account_id: conversation.account_id,
        group_id: conversation.group_id,
    });
}

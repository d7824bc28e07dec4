//! What agents do with a conversation: assign, pick up, transfer, close, reopen, tag.
//!
//! Assign, pick-up and transfer to an agent claim in-line (`jobs::claim_now`), so the caller
//! learns at once when the agent is full; a transfer to a group and a close are jobs, accepted
//! once their intent is stored (the job may be lost, the request is not: see `jobs::intent`).

use chrono::Utc;
use entity::{
    conversation_tags, conversations,
    enums::{AgentRole, ClosedBy, ConversationStatus},
    tags,
};
use jobs::{
    claim_now::{ClaimNow, Refused, claim_now},
    close_conversation::CloseConversation,
    conversation::{ClaimError, reopen as reopen_row},
    enqueue_conversation::EnqueueConversation,
    intent,
    reassign_conversation::ReassignConversation,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, sea_query::OnConflict,
};
use serde::{Deserialize, Serialize};

use super::{
    access::{agent_of_account, group_of_account, held, visible},
    views::ConversationView,
};
use crate::{auth::CurrentAgent, domain::Name, error::ApiError, state::AppState};

/// A change handed to a job: it happens shortly, and its outcome is pushed to the rooms.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub conversation_id: i64,
    accepted: bool,
}

impl Accepted {
    pub fn new(conversation_id: i64) -> Self {
        Self {
            conversation_id,
            accepted: true,
        }
    }
}

fn refused(err: Refused) -> ApiError {
    ApiError::Conflict(match err {
        Refused::Claim(ClaimError::AgentUnavailable) => {
            "the agent cannot take another conversation (offline, away, not accepting or at capacity)"
                .into()
        }
        Refused::Claim(ClaimError::NotPending) => {
            "the conversation is not waiting for an agent".into()
        }
        Refused::ChangedHands => "the conversation changed hands meanwhile".into(),
    })
}

/// Claims `conversation` for `agent_id` in-line (see `jobs::claim_now`) and shows the result.
async fn claim_for(
    state: &AppState,
    conversation: conversations::Model,
    agent_id: i64,
    why: String,
    release_from: Option<i64>,
) -> Result<ConversationView, ApiError> {
    let ask = ClaimNow {
        conversation,
        agent_id,
        why,
        release_from,
    };
    let claimed = claim_now(&state.job_context(), ask)
        .await?
        .map_err(refused)?;
    ConversationView::new(&state.db, claimed).await
}

/// A supervisor gives a waiting conversation to an agent of its account.
pub async fn assign(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
    agent_id: i64,
) -> Result<ConversationView, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let conversation = visible(&state.db, caller, id).await?;
    let agent = agent_of_account(&state.db, caller, agent_id).await?;
    let why = format!("assigned by {}", caller.agent.name);
    claim_for(state, conversation, agent.id, why, None).await
}

/// The caller takes a waiting conversation.
pub async fn pickup(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
) -> Result<ConversationView, ApiError> {
    let conversation = visible(&state.db, caller, id).await?;
    let why = "picked up from the queue".to_owned();
    claim_for(state, conversation, caller.id(), why, None).await
}

/// Where a transfer goes: exactly one of an agent or a group.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferBody {
    agent_id: Option<i64>,
    group_id: Option<i64>,
    reason: Option<Name>,
}

impl TransferBody {
    pub fn new(agent_id: Option<i64>, group_id: Option<i64>, reason: Option<Name>) -> Self {
        Self {
            agent_id,
            group_id,
            reason,
        }
    }
}

/// What a transfer did: claimed for an agent at once, or handed to the reassign job.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Transferred {
    Claimed(ConversationView),
    Accepted(Accepted),
}

/// Moves an active conversation to another agent (at once) or group (a reassign job).
pub async fn transfer(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
    body: TransferBody,
) -> Result<Transferred, ApiError> {
    let conversation = held(&state.db, caller, id).await?;
    let Some(holder) = conversation
        .assigned_agent_id
        .filter(|_| conversation.status == ConversationStatus::Active)
    else {
        return Err(ApiError::Conflict(
            "only an active conversation can be transferred".into(),
        ));
    };
    match (body.agent_id, body.group_id) {
        (Some(agent_id), None) => {
            if agent_id == holder {
                return Err(ApiError::Unprocessable(
                    "the conversation is already with that agent".into(),
                ));
            }
            let agent = agent_of_account(&state.db, caller, agent_id).await?;
            let why = match &body.reason {
                Some(reason) => {
                    format!("transferred by {}: {}", caller.agent.name, reason.as_str())
                }
                None => format!("transferred by {}", caller.agent.name),
            };
            let view = claim_for(state, conversation, agent.id, why, Some(holder)).await?;
            Ok(Transferred::Claimed(view))
        }
        (None, Some(group_id)) => {
            group_of_account(&state.db, caller, group_id).await?;
            let job = ReassignConversation {
                conversation_id: id,
                from_agent_id: holder,
                reason: jobs::conversation::ReleaseReason::Transferred,
                to_group_id: Some(group_id),
                detail: None,
                intent: None,
            };
            state.intend(caller.account_id(), id, job).await?;
            Ok(Transferred::Accepted(Accepted::new(id)))
        }
        _ => Err(ApiError::Unprocessable(
            "give exactly one of agentId or groupId".into(),
        )),
    }
}

/// Why a conversation is closed (`resolved` when not given).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloseBody {
    reason: Option<Name>,
}

impl CloseBody {
    pub fn new(reason: Option<Name>) -> Self {
        Self { reason }
    }
}

/// Refuses a conversation that is already over.
pub fn require_open(conversation: &conversations::Model) -> Result<(), ApiError> {
    if matches!(
        conversation.status,
        ConversationStatus::Pending | ConversationStatus::Active
    ) {
        Ok(())
    } else {
        Err(ApiError::Conflict(
            "the conversation is already closed".into(),
        ))
    }
}

/// Submits the close job for a conversation the caller holds.
pub async fn close(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
    body: CloseBody,
) -> Result<Accepted, ApiError> {
    let conversation = held(&state.db, caller, id).await?;
    require_open(&conversation)?;
    let reason = body
        .reason
        .map_or_else(|| "resolved".to_owned(), String::from);
    let job = CloseConversation {
        conversation_id: id,
        closed_by: ClosedBy::Agent,
        reason,
        intent: None,
    };
    state.intend(caller.account_id(), id, job).await?;
    Ok(Accepted::new(id))
}

/// A resolved conversation the caller holds waits in its group's line again.
pub async fn reopen(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
) -> Result<ConversationView, ApiError> {
    let conversation = held(&state.db, caller, id).await?;
    let txn = jobs::db::begin_write(&state.db).await?;
    let reopened = reopen_row(&txn, conversation.id)
        .await?
        .ok_or_else(|| ApiError::Conflict("only a resolved conversation can be reopened".into()))?;
    // A close asked for before the reopen must not land after it.
    intent::cancel(
        &txn,
        conversation.id,
        <CloseConversation as jobs::Job>::QUEUE,
    )
    .await?;
    txn.commit().await?;
    if let Err(err) = state.jobs.submit(EnqueueConversation::new(id)).await {
        tracing::warn!(conversation_id = id, %err, "enqueue not submitted; the reconciler will offer it");
    }
    ConversationView::new(&state.db, reopened).await
}

/// Most tags one conversation carries.
const TAGS_MAX: usize = 50;

/// Replaces the tags of a conversation the caller holds with `wanted` (tags of its account).
/// Returns them sorted, without repeats.
pub async fn set_tags(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
    mut wanted: Vec<i64>,
) -> Result<Vec<i64>, ApiError> {
    held(&state.db, caller, id).await?;
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.len() > TAGS_MAX {
        return Err(ApiError::Unprocessable(format!("at most {TAGS_MAX} tags")));
    }
    let found = tags::Entity::find()
        .filter(tags::Column::AccountId.eq(caller.account_id()))
        .filter(tags::Column::DeletedAt.is_null())
        .filter(tags::Column::Id.is_in(wanted.clone()))
        .count(&state.db)
        .await?;
    if found != wanted.len() as u64 {
        return Err(ApiError::NotFound("tag"));
    }
    let txn = jobs::db::begin_write(&state.db).await?;
    conversation_tags::Entity::delete_many()
        .filter(conversation_tags::Column::ConversationId.eq(id))
        .exec(&txn)
        .await?;
    let now = Utc::now();
    for tag_id in &wanted {
        // A concurrent identical request may have inserted it: the same set either way.
        conversation_tags::Entity::insert(conversation_tags::ActiveModel {
            conversation_id: Set(id),
            tag_id: Set(*tag_id),
            account_id: Set(caller.account_id()),
            created_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([
                conversation_tags::Column::ConversationId,
                conversation_tags::Column::TagId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(wanted)
}

//! `/v1/conversations`, `/v1/threads/{id}/events` and `/v1/queue`: the agents' view of chats.
//!
//! Visibility: supervisors and admins see every conversation of their account; an agent sees the
//! ones it holds or held, and the pending ones of its groups (to pick up). Anything else is 404.
//! Assign, pick-up and transfer-to-agent claim in-line through the same conditional claim the
//! assign job uses, so the caller learns at once when the agent is full; everything else is a job.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post, put},
};
use chrono::Utc;
use entity::{
    agents, assignments, conversation_tags, conversations,
    enums::{AgentRole, AuthorType, ClosedBy, ConversationStatus, Priority},
    events, groups, tags,
};
use jobs::{
    assign_agent::{announce, assigned_outcomes},
    close_conversation::CloseConversation,
    conversation::{
        ClaimError, Pick, claim, groups_of_agent, lock_agents, reopen, requeue, waiting_line,
    },
    enqueue_conversation::EnqueueConversation,
    intent,
    notify::Outcome,
    reassign_conversation::ReassignConversation,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::{
    extract::{Json, OptionalJson, Path, Query},
    resource::{Page, page_limit, split_page},
    views::{ConversationView, EventView, Waiting, created, published, waiting_count},
};
use crate::{
    auth::{CurrentAgent, rank},
    domain::{ClientMessageId, MessageContent, Name},
    error::ApiError,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/conversations", get(list))
        .route("/conversations/{id}", get(show))
        .route("/conversations/{id}/assign", post(assign))
        .route("/conversations/{id}/pickup", post(pickup))
        .route("/conversations/{id}/transfer", post(transfer))
        .route("/conversations/{id}/close", post(close))
        .route("/conversations/{id}/reopen", post(reopen_conversation))
        .route("/conversations/{id}/tags", put(set_tags))
        .route("/threads/{id}/events", get(thread_events).post(post_event))
        .route("/queue", get(queue))
}

pub(crate) fn is_supervisor(caller: &CurrentAgent) -> bool {
    rank(caller.agent.role) >= rank(AgentRole::Supervisor)
}

/// Conversation `id` if the caller may see it (404 otherwise, as if it did not exist).
pub(crate) async fn visible(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    id: i64,
) -> Result<conversations::Model, ApiError> {
    let conversation = conversations::Entity::find_by_id(id)
        .filter(conversations::Column::AccountId.eq(caller.account_id()))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("conversation"))?;
    if is_supervisor(caller) || conversation.assigned_agent_id == Some(caller.id()) {
        return Ok(conversation);
    }
    if conversation.status == ConversationStatus::Pending
        && groups_of_agent(db, caller.id())
            .await?
            .contains(&conversation.group_id)
    {
        return Ok(conversation);
    }
    let held = assignments::Entity::find()
        .filter(assignments::Column::ConversationId.eq(id))
        .filter(assignments::Column::AgentId.eq(caller.id()))
        .count(db)
        .await?;
    if held > 0 {
        return Ok(conversation);
    }
    Err(ApiError::NotFound("conversation"))
}

/// Only the agent holding the conversation, or a supervisor, may act on it.
pub(crate) fn require_holder(
    caller: &CurrentAgent,
    conversation: &conversations::Model,
) -> Result<(), ApiError> {
    if is_supervisor(caller) || conversation.assigned_agent_id == Some(caller.id()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    status: Option<ConversationStatus>,
    group_id: Option<i64>,
    agent_id: Option<i64>,
    priority: Option<Priority>,
    visitor_id: Option<i64>,
    limit: Option<u64>,
    after: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<ConversationView>>, ApiError> {
    let limit = page_limit(params.limit)?;
    let mut query = conversations::Entity::find()
        .filter(conversations::Column::AccountId.eq(caller.account_id()))
        .filter(conversations::Column::Id.gt(params.after.unwrap_or(0)));
    if let Some(status) = params.status {
        query = query.filter(conversations::Column::Status.eq(status));
    }
    if let Some(group) = params.group_id {
        query = query.filter(conversations::Column::GroupId.eq(group));
    }
    if let Some(agent) = params.agent_id {
        query = query.filter(conversations::Column::AssignedAgentId.eq(agent));
    }
    if let Some(priority) = params.priority {
        query = query.filter(conversations::Column::Priority.eq(priority));
    }
    if let Some(visitor) = params.visitor_id {
        query = query.filter(conversations::Column::VisitorId.eq(visitor));
    }
    if !is_supervisor(&caller) {
        let my_groups = groups_of_agent(&state.db, caller.id()).await?;
        query = query.filter(
            Condition::any()
                .add(conversations::Column::AssignedAgentId.eq(caller.id()))
                .add(
                    Condition::all()
                        .add(conversations::Column::Status.eq(ConversationStatus::Pending))
                        .add(conversations::Column::GroupId.is_in(my_groups)),
                ),
        );
    }
    let rows = query
        .order_by_asc(conversations::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |c| c.id);
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(ConversationView::new(&state.db, row).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

async fn show(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<ConversationView>, ApiError> {
    let conversation = visible(&state.db, &caller, id).await?;
    Ok(Json(ConversationView::new(&state.db, conversation).await?))
}

fn claim_refused(err: ClaimError) -> ApiError {
    ApiError::Conflict(match err {
        ClaimError::AgentUnavailable => {
            "the agent cannot take another conversation (offline, away, not accepting or at capacity)"
                .into()
        }
        ClaimError::NotPending => "the conversation is not waiting for an agent".into(),
    })
}

/// Claims `conversation` for `agent_id` in-line; on success the outcome is announced.
async fn claim_now(
    state: &AppState,
    conversation: &conversations::Model,
    agent_id: i64,
    why: &str,
    release_from: Option<i64>,
) -> Result<conversations::Model, ApiError> {
    let txn = jobs::db::begin_write(&state.db).await?;
    // Agents first, in id order, as the assigner does: no lock cycle with it.
    lock_agents(&txn, release_from.into_iter().chain([agent_id]).collect()).await?;
    if let Some(holder) = release_from {
        requeue(&txn, conversation.id, holder, "transferred", None, None)
            .await?
            .ok_or_else(|| ApiError::Conflict("the conversation changed hands meanwhile".into()))?;
    }
    // On a refusal the transaction is dropped: nothing of the claim (or the release) remains.
    let pick = Pick {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        agent_id,
        why: why.to_owned(),
    };
    let done = claim(&txn, pick).await?.map_err(claim_refused)?;
    let released = release_from.map(|holder| Outcome::ConversationUnassigned {
        account_id: conversation.account_id,
        conversation_id: conversation.id,
        group_id: conversation.group_id,
        agent_id: holder,
        reason: "transferred".into(),
    });
    let told = released.into_iter().chain(assigned_outcomes(&done));
    let staged = state.outbox.stage(&txn, told).await?;
    txn.commit().await?;
    let ctx = state.job_context();
    announce(&ctx, &done, staged);
    if let Some(holder) = release_from
        && let Err(err) =
            jobs::close_conversation::serve_groups_of(&ctx, conversation.account_id, holder).await
    {
        tracing::warn!(%err, "could not offer the freed capacity; the reconciler will");
    }
    Ok(done.conversation)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AssignBody {
    agent_id: i64,
}

/// A live agent of the caller's account (404 otherwise).
async fn agent_of_account(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    agent_id: i64,
) -> Result<agents::Model, ApiError> {
    agents::Entity::find_by_id(agent_id)
        .filter(agents::Column::AccountId.eq(caller.account_id()))
        .filter(agents::Column::DeletedAt.is_null())
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("agent"))
}

async fn assign(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<AssignBody>,
) -> Result<Json<ConversationView>, ApiError> {
    caller.require(AgentRole::Supervisor)?;
    let conversation = visible(&state.db, &caller, id).await?;
    let agent = agent_of_account(&state.db, &caller, body.agent_id).await?;
    let why = format!("assigned by {}", caller.agent.name);
    let conversation = claim_now(&state, &conversation, agent.id, &why, None).await?;
    Ok(Json(ConversationView::new(&state.db, conversation).await?))
}

async fn pickup(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<ConversationView>, ApiError> {
    pickup_as(&state, &caller, id).await.map(Json)
}

/// The caller takes a waiting conversation (REST and `conversation:pickup`).
pub(crate) async fn pickup_as(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
) -> Result<ConversationView, ApiError> {
    let conversation = visible(&state.db, caller, id).await?;
    let conversation = claim_now(
        state,
        &conversation,
        caller.id(),
        "picked up from the queue",
        None,
    )
    .await?;
    ConversationView::new(&state.db, conversation).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TransferBody {
    agent_id: Option<i64>,
    group_id: Option<i64>,
    reason: Option<Name>,
}

impl TransferBody {
    pub(crate) fn new(agent_id: Option<i64>, group_id: Option<i64>, reason: Option<Name>) -> Self {
        Self {
            agent_id,
            group_id,
            reason,
        }
    }
}

/// A change handed to a job: it happens shortly, and its outcome is pushed to the rooms.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Accepted {
    conversation_id: i64,
    accepted: bool,
}

impl Accepted {
    pub(crate) fn new(conversation_id: i64) -> Self {
        Self {
            conversation_id,
            accepted: true,
        }
    }
}

fn accepted(conversation_id: i64) -> (StatusCode, Json<Accepted>) {
    (StatusCode::ACCEPTED, Json(Accepted::new(conversation_id)))
}

/// What a transfer did: claimed for an agent at once, or handed to the reassign job.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Transferred {
    Claimed(ConversationView),
    Accepted(Accepted),
}

async fn transfer(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<TransferBody>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    Ok(match transfer_as(&state, &caller, id, body).await? {
        Transferred::Claimed(view) => Json(view).into_response(),
        Transferred::Accepted(done) => accepted(done.conversation_id).into_response(),
    })
}

/// Moves an active conversation to another agent or group (REST and `conversation:transfer`).
pub(crate) async fn transfer_as(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
    body: TransferBody,
) -> Result<Transferred, ApiError> {
    let conversation = visible(&state.db, caller, id).await?;
    require_holder(caller, &conversation)?;
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
            let conversation =
                claim_now(state, &conversation, agent.id, &why, Some(holder)).await?;
            Ok(Transferred::Claimed(
                ConversationView::new(&state.db, conversation).await?,
            ))
        }
        (None, Some(group_id)) => {
            groups::Entity::find_by_id(group_id)
                .filter(groups::Column::AccountId.eq(caller.account_id()))
                .filter(groups::Column::DeletedAt.is_null())
                .one(&state.db)
                .await?
                .ok_or(ApiError::NotFound("group"))?;
            // Accepted once the intent is stored: the job may be lost, the intent is not.
            let job = ReassignConversation {
                conversation_id: id,
                from_agent_id: holder,
                reason: "transferred".into(),
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CloseBody {
    reason: Option<Name>,
}

impl CloseBody {
    pub(crate) fn new(reason: Option<Name>) -> Self {
        Self { reason }
    }
}

async fn close(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    OptionalJson(body): OptionalJson<CloseBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let done = close_as(&state, &caller, id, body).await?;
    Ok(accepted(done.conversation_id))
}

/// Submits the close job for a conversation the caller holds (REST and `conversation:close`).
pub(crate) async fn close_as(
    state: &AppState,
    caller: &CurrentAgent,
    id: i64,
    body: CloseBody,
) -> Result<Accepted, ApiError> {
    let conversation = visible(&state.db, caller, id).await?;
    require_holder(caller, &conversation)?;
    if !matches!(
        conversation.status,
        ConversationStatus::Pending | ConversationStatus::Active
    ) {
        return Err(ApiError::Conflict(
            "the conversation is already closed".into(),
        ));
    }
    let reason = body
        .reason
        .map_or_else(|| "resolved".to_owned(), String::from);
    // Accepted once the intent is stored: the job may be lost, the intent is not.
    let job = CloseConversation {
        conversation_id: id,
        closed_by: ClosedBy::Agent,
        reason,
        intent: None,
    };
    state.intend(caller.account_id(), id, job).await?;
    Ok(Accepted::new(id))
}

async fn reopen_conversation(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<ConversationView>, ApiError> {
    let conversation = visible(&state.db, &caller, id).await?;
    require_holder(&caller, &conversation)?;
    let txn = jobs::db::begin_write(&state.db).await?;
    let reopened = reopen(&txn, conversation.id)
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
    Ok(Json(ConversationView::new(&state.db, reopened).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TagsBody {
    tag_ids: Vec<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TagsView {
    conversation_id: i64,
    tag_ids: Vec<i64>,
}

async fn set_tags(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<TagsBody>,
) -> Result<Json<TagsView>, ApiError> {
    let conversation = visible(&state.db, &caller, id).await?;
    require_holder(&caller, &conversation)?;
    let mut wanted = body.tag_ids;
    wanted.sort_unstable();
    wanted.dedup();
    if wanted.len() > 50 {
        return Err(ApiError::Unprocessable("at most 50 tags".into()));
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
            sea_orm::sea_query::OnConflict::columns([
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
    Ok(Json(TagsView {
        conversation_id: id,
        tag_ids: wanted,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventsParams {
    after: Option<i64>,
    limit: Option<u64>,
}

async fn thread_of(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
    thread_id: i64,
) -> Result<(entity::threads::Model, conversations::Model), ApiError> {
    let thread = entity::threads::Entity::find_by_id(thread_id)
        .filter(entity::threads::Column::AccountId.eq(caller.account_id()))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    let conversation = visible(db, caller, thread.conversation_id)
        .await
        .map_err(|_| ApiError::NotFound("thread"))?;
    Ok((thread, conversation))
}

async fn thread_events(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(thread_id): Path<i64>,
    Query(params): Query<EventsParams>,
) -> Result<Json<Page<EventView>>, ApiError> {
    let limit = page_limit(params.limit)?;
    thread_of(&state.db, &caller, thread_id).await?;
    let rows = events::Entity::find()
        .filter(events::Column::ThreadId.eq(thread_id))
        .filter(events::Column::Id.gt(params.after.unwrap_or(0)))
        .order_by_asc(events::Column::Id)
        .limit(limit + 1)
        .all(&state.db)
        .await?;
    let (rows, next_cursor) = split_page(rows, limit, |e| e.id);
    Ok(Json(Page {
        items: rows.into_iter().map(EventView::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NewEvent {
    content: MessageContent,
    client_message_id: Option<ClientMessageId>,
}

impl NewEvent {
    pub(crate) fn new(content: MessageContent, client_message_id: Option<ClientMessageId>) -> Self {
        Self {
            content,
            client_message_id,
        }
    }
}

/// The events of a conversation after event id `after`, oldest first (at most `limit`, default
/// and cap 500): how a client catches up after a reconnect. Visitors see messages only.
pub(crate) async fn events_since(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    after: Option<i64>,
    limit: Option<u64>,
    messages_only: bool,
) -> Result<Vec<EventView>, ApiError> {
    let mut query = events::Entity::find()
        .filter(events::Column::ConversationId.eq(conversation_id))
        .filter(events::Column::Id.gt(after.unwrap_or(0)));
    if messages_only {
        query = query.filter(events::Column::Kind.eq(entity::enums::EventKind::Message));
    }
    Ok(query
        .order_by_asc(events::Column::Id)
        .limit(limit.unwrap_or(EVENTS_PER_READ).clamp(1, EVENTS_PER_READ))
        .all(db)
        .await?
        .into_iter()
        .map(EventView::from)
        .collect())
}

/// Most events one catch-up read returns; page with `after`.
const EVENTS_PER_READ: u64 = 500;

/// Event `event_id` of conversation `conversation_id` (404 when it belongs elsewhere).
pub(crate) async fn event_of(
    db: &impl ConnectionTrait,
    conversation_id: i64,
    event_id: i64,
) -> Result<events::Model, ApiError> {
    events::Entity::find_by_id(event_id)
        .filter(events::Column::ConversationId.eq(conversation_id))
        .one(db)
        .await?
        .ok_or(ApiError::NotFound("event"))
}

async fn post_event(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(thread_id): Path<i64>,
    Json(body): Json<NewEvent>,
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    let (thread, conversation) = thread_of(&state.db, &caller, thread_id).await?;
    if conversation.active_thread_id != Some(thread.id) {
        return Err(ApiError::Conflict(
            "the thread is closed; write to the active thread".into(),
        ));
    }
    created(send_as_agent(&state, &caller, &conversation, body).await?)
}

/// Stores an agent's message in a conversation it holds and pushes it to both sides (REST and
/// `message:send`). Returns the event and whether it is new (not a resent client id).
pub(crate) async fn send_as_agent(
    state: &AppState,
    caller: &CurrentAgent,
    conversation: &conversations::Model,
    body: NewEvent,
) -> Result<(EventView, bool), ApiError> {
    require_holder(caller, conversation)?;
    let stored = state
        .messages
        .post(jobs::messages::NewMessage {
            account_id: conversation.account_id,
            conversation_id: conversation.id,
            author: AuthorType::Agent,
            agent_id: Some(caller.id()),
            content: body.content.into(),
            client_id: body.client_message_id.map(|id| id.as_str().to_owned()),
            holder: conversation.assigned_agent_id,
        })
        .await?;
    published(state, stored)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    group_id: i64,
    name: String,
    waiting_count: u64,
    waiting: Vec<Waiting>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Lines {
    groups: Vec<Line>,
}

/// Longest part of each line shown.
const LINE_SHOWN: u64 = 100;

async fn queue(
    State(state): State<AppState>,
    caller: CurrentAgent,
) -> Result<Json<Lines>, ApiError> {
    Ok(Json(lines_for(&state.db, &caller).await?))
}

/// The waiting lines `caller` may see: its groups' (supervisors: every group of the account).
pub(crate) async fn lines_for(
    db: &impl ConnectionTrait,
    caller: &CurrentAgent,
) -> Result<Lines, ApiError> {
    let mut query = groups::Entity::find()
        .filter(groups::Column::AccountId.eq(caller.account_id()))
        .filter(groups::Column::DeletedAt.is_null());
    if !is_supervisor(caller) {
        query = query.filter(groups::Column::Id.is_in(groups_of_agent(db, caller.id()).await?));
    }
    let mut lines = Vec::new();
    for group in query.order_by_asc(groups::Column::Id).all(db).await? {
        let waiting_count = waiting_count(db, group.id).await?;
        let line = waiting_line(db, group.id, LINE_SHOWN).await?;
        let waiting = Waiting::head(&line, LINE_SHOWN as usize);
        lines.push(Line {
            group_id: group.id,
            name: group.name,
            waiting_count,
            waiting,
        });
    }
    Ok(Lines { groups: lines })
}

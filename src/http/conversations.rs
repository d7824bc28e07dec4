//! `/v1/conversations`, `/v1/threads/{id}/events` and `/v1/queue`: the agents' view of chats.
//! The use cases are in `chat`; this file reads requests and shapes answers.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use entity::{
    conversations,
    enums::{ConversationStatus, Priority},
    events,
};
use jobs::conversation::groups_of_agent;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use super::{
    extract::{Json, OptionalJson, Path, Query},
    reply::{accepted, created},
    resource::{Page, page_limit, split_page},
};
use crate::{
    auth::CurrentAgent,
    chat::{
        self,
        access::{is_supervisor, thread_of, visible},
        conversations::{Accepted, CloseBody, TransferBody, Transferred},
        lines::{Lines, lines_for},
        messages::{NewEvent, send_as_agent},
        views::{ConversationView, EventView},
    },
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
        .route("/conversations/{id}/reopen", post(reopen))
        .route("/conversations/{id}/tags", put(set_tags))
        .route("/threads/{id}/events", get(thread_events).post(post_event))
        .route("/queue", get(queue))
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AssignBody {
    agent_id: i64,
}

async fn assign(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<AssignBody>,
) -> Result<Json<ConversationView>, ApiError> {
    chat::conversations::assign(&state, &caller, id, body.agent_id)
        .await
        .map(Json)
}

async fn pickup(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<ConversationView>, ApiError> {
    chat::conversations::pickup(&state, &caller, id)
        .await
        .map(Json)
}

async fn transfer(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    Json(body): Json<TransferBody>,
) -> Result<Response, ApiError> {
    Ok(
        match chat::conversations::transfer(&state, &caller, id, body).await? {
            Transferred::Claimed(view) => Json(view).into_response(),
            Transferred::Accepted(done) => accepted(done).into_response(),
        },
    )
}

async fn close(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
    OptionalJson(body): OptionalJson<CloseBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    Ok(accepted(
        chat::conversations::close(&state, &caller, id, body).await?,
    ))
}

async fn reopen(
    State(state): State<AppState>,
    caller: CurrentAgent,
    Path(id): Path<i64>,
) -> Result<Json<ConversationView>, ApiError> {
    chat::conversations::reopen(&state, &caller, id)
        .await
        .map(Json)
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
    let tag_ids = chat::conversations::set_tags(&state, &caller, id, body.tag_ids).await?;
    Ok(Json(TagsView {
        conversation_id: id,
        tag_ids,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventsParams {
    after: Option<i64>,
    limit: Option<u64>,
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

async fn queue(
    State(state): State<AppState>,
    caller: CurrentAgent,
) -> Result<Json<Lines>, ApiError> {
    Ok(Json(lines_for(&state.db, &caller).await?))
}

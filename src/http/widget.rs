//! `/v1/widget`: what a website's chat widget calls for its visitor.
//!
//! `POST /widget/session` is public and rate limited per client address; the other endpoints
//! authenticate with the session token it returns (`Authorization: Bearer <sessionToken>`).

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::{get, post, put},
};
use entity::{
    assignments, conversations,
    enums::{ConversationStatus, Priority},
    visitors,
};
use jobs::{
    enqueue_conversation::EnqueueConversation,
    session::{OpenRefused, Opening},
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    extract::{Json, Query},
    rate_limit,
    reply::{accepted, created},
};
use crate::{
    auth::visitor::{CurrentVisitor, new_session_token},
    chat::{
        conversations::Accepted,
        views::EventView,
        visitors::{
            NewMessage, VisitorConversation, end_as_visitor, send_as_visitor, visitor_view,
        },
    },
    client_ip::ClientIp,
    domain::{Email, MessageContent, Name, Phone},
    error::ApiError,
    state::AppState,
};

pub fn router(state: &AppState) -> Router<AppState> {
    let per_minute = state.settings.widget_rate_per_minute;
    Router::new()
        .route(
            "/widget/session",
            post(create_session).layer(rate_limit::per_client(per_minute)),
        )
        .route("/widget/conversation", get(show))
        // Budgeted per visitor session and per client inside, shared with `message:send`.
        .route("/widget/messages", post(send_message))
        .route("/widget/conversation/end", post(end))
        .route(
            "/widget/contact",
            put(leave_contact).layer(rate_limit::per_client(per_minute)),
        )
}

/// Most keys and bytes a visitor's `metadata` object may carry.
const METADATA_MAX_KEYS: usize = 50;
const METADATA_MAX_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewSession {
    /// Picks the account; optional while the server has a single account.
    account_id: Option<i64>,
    /// Department; the account's default group when absent.
    group_id: Option<i64>,
    priority: Option<Priority>,
    initial_message: Option<MessageContent>,
    name: Option<Name>,
    email: Option<Email>,
    phone: Option<Phone>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    session_token: String,
    visitor_id: i64,
    conversation_id: i64,
    thread_id: i64,
    status: ConversationStatus,
    queue_position: u64,
}

/// True when a JSON value holds a NUL character anywhere (PostgreSQL's jsonb refuses it).
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || has_nul(item)),
        _ => false,
    }
}

/// Cuts a header value to `max` characters.
fn header_text(headers: &HeaderMap, name: header::HeaderName, max: usize) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(max).collect())
}

async fn create_session(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Json(body): Json<NewSession>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let metadata = body.metadata.unwrap_or_default();
    if has_nul(&Value::Object(metadata.clone())) {
        return Err(ApiError::Unprocessable(
            "metadata must not contain NUL characters".into(),
        ));
    }
    if metadata.len() > METADATA_MAX_KEYS
        || serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len()) > METADATA_MAX_BYTES
    {
        return Err(ApiError::Unprocessable(format!(
            "metadata must have at most {METADATA_MAX_KEYS} keys and {METADATA_MAX_BYTES} bytes"
        )));
    }
    let (token, token_hash) = new_session_token();
    let opening = Opening {
        account_id: body.account_id,
        group_id: body.group_id,
        priority: body.priority.unwrap_or(Priority::Normal),
        initial_message: body.initial_message.map(Into::into),
        name: body.name.map(Into::into),
        email: body.email.map(Into::into),
        phone: body.phone.map(Into::into),
        user_agent: header_text(&headers, header::USER_AGENT, 512),
        ip: Some(client.to_string()),
        referrer: header_text(&headers, header::REFERER, 2048),
        metadata: Value::Object(metadata),
        session_token_hash: token_hash,
    };
    // Sessions opened at once share one transaction (see `jobs::runtime::batch`).
    let opened = state
        .batches
        .sessions
        .run(opening)
        .await?
        .map_err(|refused| match refused {
            OpenRefused::NoAccount => ApiError::NotFound("account"),
            OpenRefused::NoGroup => ApiError::NotFound("group"),
            OpenRefused::AccountRequired => ApiError::Unprocessable(refused.to_string()),
        })?;
    let conversation = &opened.conversation;
    // Should this submission be lost, the conversation still waits, queued: the reconciler offers
    // its group's line again. The enqueue job asks for the line to be served.
    if let Err(err) = state
        .jobs
        .submit(EnqueueConversation::entered(
            conversation.id,
            opened.position,
        ))
        .await
    {
        tracing::warn!(conversation_id = conversation.id, %err, "enqueue not submitted; the reconciler will offer it");
    }
    Ok((
        StatusCode::CREATED,
        Json(Session {
            session_token: token,
            visitor_id: opened.visitor_id,
            conversation_id: conversation.id,
            thread_id: opened.thread_id,
            status: conversation.status,
            queue_position: opened.position,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ShowParams {
    conversation_id: Option<i64>,
    /// Only events after this id (to catch up after a reconnect).
    after: Option<i64>,
}

async fn show(
    State(state): State<AppState>,
    visitor: CurrentVisitor,
    Query(params): Query<ShowParams>,
) -> Result<Json<VisitorConversation>, ApiError> {
    let view = visitor_view(
        &state.db,
        &visitor.visitor,
        params.conversation_id,
        params.after,
    )
    .await?;
    Ok(Json(view))
}

async fn send_message(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    visitor: CurrentVisitor,
    Json(body): Json<NewMessage>,
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    created(send_as_visitor(&state, &visitor.visitor, client, body, None).await?)
}

/// How a visitor can be reached later: offered when the wait is long (`queue:overdue`), used for
/// the transcript e-mail.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Contact {
    email: Email,
    name: Option<Name>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ContactView {
    visitor_id: i64,
    email: String,
    name: Option<String>,
}

/// `PUT /v1/widget/contact`: the visitor leaves its e-mail address (and name).
async fn leave_contact(
    State(state): State<AppState>,
    visitor: CurrentVisitor,
    Json(body): Json<Contact>,
) -> Result<Json<ContactView>, ApiError> {
    let visitor = visitor.visitor;
    let email = String::from(body.email);
    let mut update = visitors::Entity::update_many()
        .col_expr(visitors::Column::Email, Expr::value(Some(email.clone())))
        .filter(visitors::Column::Id.eq(visitor.id))
        .filter(visitors::Column::AccountId.eq(visitor.account_id))
        // Frozen once the chat is over: the transcript goes to the address it had then.
        .filter(
            visitors::Column::Id.not_in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(conversations::Column::VisitorId)
                    .from(conversations::Entity)
                    .and_where(conversations::Column::VisitorId.eq(visitor.id))
                    .and_where(
                        conversations::Column::Status
                            .is_in([ConversationStatus::Resolved, ConversationStatus::Closed]),
                    )
                    .to_owned(),
            ),
        );
    // A new address counts for the transcript only if no agent has joined the chat yet (see
    // `visitors.email_before_agent`), decided by this statement; the same one keeps its standing.
    if visitor.email.as_deref() != Some(email.as_str()) {
        use sea_orm::sea_query::ExprTrait;
        let joined = sea_orm::sea_query::Query::select()
            .expr(Expr::value(1))
            .from(assignments::Entity)
            .inner_join(
                conversations::Entity,
                Expr::col((conversations::Entity, conversations::Column::Id))
                    .equals((assignments::Entity, assignments::Column::ConversationId)),
            )
            .and_where(conversations::Column::VisitorId.eq(visitor.id))
            .to_owned();
        update = update.col_expr(
            visitors::Column::EmailBeforeAgent,
            Expr::exists(joined).not(),
        );
    }
    if let Some(name) = body.name {
        update = update.col_expr(
            visitors::Column::Name,
            Expr::value(Some(String::from(name))),
        );
    }
    if update.exec(&state.db).await?.rows_affected == 0 {
        return Err(ApiError::Conflict(
            "the conversation is over: its contact address can no longer change".into(),
        ));
    }
    let stored = visitors::Entity::find_by_id(visitor.id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::NotFound("visitor"))?;
    Ok(Json(ContactView {
        visitor_id: stored.id,
        email: stored.email.unwrap_or_default(),
        name: stored.name,
    }))
}

async fn end(
    State(state): State<AppState>,
    visitor: CurrentVisitor,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    Ok(accepted(end_as_visitor(&state, &visitor.visitor).await?))
}

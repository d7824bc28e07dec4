//! The apalis board: its web app at the root of the operator listener, its API at `/api/v1`.
//!
//! Rules:
//! - Every queue of `jobs::runtime::queues` is registered, with the backend
//!   `jobs::runtime::board` picks for the deployment (apalis-sqlite as is, or the reader that
//!   works around apalis-redis 1.0.0).
//! - The board's web app was built for the site root and calls `/api/v1` there: under a prefix it
//!   renders its own 404 page. Paths outside the API are the web app's (it routes in the browser).
//! - Read-only: the board's API can push tasks; here it only answers `GET`. A lifecycle job pushed
//!   by hand would skip the checks of the HTTP layer.
//! - Its errors look like ours (`{"error": {"code", "message"}}`): unknown API paths and tasks are
//!   404s, bad query parameters 400s (a page 0 would panic apalis-sqlite), and a backend failure
//!   is a 500 whose cause is logged, never shown.

use std::sync::Mutex;

use apalis_board::axum::{
    framework::{ApiBuilder, RegisterRoute},
    sse::TracingBroadcaster,
    ui::ServeUI,
};
use axum::{
    Extension, Router,
    body::Body,
    extract::Request,
    http::{Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use jobs::{
    Job, JobStore,
    runtime::board::{BoardBackend, BoardVisitor},
};

use crate::error::{ApiError, not_found};

/// Largest page of tasks the API hands out.
const MAX_PAGE_SIZE: u32 = 100;
/// Highest page number accepted (beyond it nothing is stored anyway).
const MAX_PAGE: u32 = 1_000_000;
/// How much of a board error body is kept (as the message of a 4xx, or the logged cause of a 500).
const ERROR_BODY_LIMIT: usize = 4096;

/// The board's web app and API for every queue on `jobs`.
pub fn router(jobs: &JobStore) -> Router {
    struct Register(Option<ApiBuilder<Router>>);
    impl BoardVisitor for Register {
        fn queue<J: Job, B: BoardBackend<J>>(&mut self, name: &'static str, backend: B) {
            self.0 = self
                .0
                .take()
                .map(|api| RegisterRoute::<B, J>::register(api, name, backend));
        }
    }
    let mut register = Register(Some(ApiBuilder::new(Router::new())));
    jobs::runtime::board::each_queue(jobs, &mut register);
    let api = register
        .0
        .map(ApiBuilder::build)
        .unwrap_or_default()
        // The board's live log (`/events`) needs a broadcaster; nothing is broadcast yet, so the
        // stream only keeps itself alive.
        .layer(Extension(std::sync::Arc::new(Mutex::new(
            TracingBroadcaster::new(),
        ))))
        .fallback(not_found)
        .layer(middleware::from_fn(guard));
    Router::new()
        .nest("/api/v1", api)
        .fallback_service(ServeUI::new())
}

/// Refuses what the board's API should not see, and makes its errors look like ours.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return ApiError::MethodNotAllowed.into_response();
    }
    let request = match checked(request) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error())
        || (is_json && status.is_client_error())
    {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), ERROR_BODY_LIMIT)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    match status {
        StatusCode::NOT_FOUND => ApiError::NotFound("task"),
        status if status.is_server_error() => {
            ApiError::Internal(anyhow::anyhow!("apalis board answered {status}: {body}"))
        }
        _ if body.is_empty() => ApiError::BadRequest(format!("bad request ({status})")),
        _ => ApiError::BadRequest(body),
    }
    .into_response()
}

/// The request with its query cleaned up, or why it is refused.
fn checked(mut request: Request<Body>) -> Result<Request<Body>, ApiError> {
    // `/queues/{queue}/tasks/{id}`: only ULIDs are ever stored (and anything else is a 500 from
    // the board, which parses the id before asking the backend).
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    if let ["queues", _, "tasks", id] = segments.as_slice()
        && ulid::Ulid::from_string(id).is_err()
    {
        return Err(ApiError::NotFound("task"));
    }
    let Some(query) = request.uri().query() else {
        return Ok(request);
    };
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            // The web app asks for "any status" with an empty one, which the board cannot parse.
            "status" if value.is_empty() => continue,
            "status" => {
                value
                    .parse::<apalis_core::task::status::Status>()
                    .map_err(|_| ApiError::BadRequest(format!("unknown status {value:?}")))?;
            }
            "page" => number(&name, &value, MAX_PAGE)?,
            "page_size" => number(&name, &value, MAX_PAGE_SIZE)?,
            _ => {}
        }
        kept.append_pair(&name, &value);
    }
    let kept = kept.finish();
    let path = request.uri().path();
    let uri = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{kept}")
    };
    *request.uri_mut() = uri
        .parse::<Uri>()
        .map_err(|err| ApiError::BadRequest(err.to_string()))?;
    Ok(request)
}

fn number(name: &str, value: &str, max: u32) -> Result<(), ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(()),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be a whole number from 1 to {max}"
        ))),
    }
}

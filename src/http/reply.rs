//! The HTTP answers shared by several endpoints.

use axum::http::StatusCode;

use super::extract::Json;
use crate::{
    chat::{conversations::Accepted, views::EventView},
    error::ApiError,
};

/// The answer to a sent message: 201 with the stored event, 200 with the first one when the
/// client sent the same message id again.
pub fn created(
    (view, created): (EventView, bool),
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// The answer to a change handed to a job: 202.
pub fn accepted(done: Accepted) -> (StatusCode, Json<Accepted>) {
    (StatusCode::ACCEPTED, Json(done))
}

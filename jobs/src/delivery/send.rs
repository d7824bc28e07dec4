//! What sends a `deliveries` row: its channel, and the job the storage carries for it (one per
//! channel, naming the row). The row machinery (`deliveries`) and the fan-out submit these jobs;
//! how each one sends is its channel's `Job` impl (`webhook`, `email`). Keeping the job args here
//! lets the row machinery submit them without depending on the channels that depend on it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{JobContext, JobError};

/// The webhook channel.
pub const WEBHOOK: &str = "webhook";
/// The e-mail channel.
pub const EMAIL: &str = "email";

/// Calls a webhook for one delivery row (its `Job` impl: [`super::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverWebhook {
    /// The `deliveries` row.
    pub delivery_id: i64,
}

/// Sends one e-mail delivery row (its `Job` impl: [`super::email`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendEmail {
    /// The `deliveries` row.
    pub delivery_id: i64,
}

/// Submits the job that sends row `id` on `channel`, after `delay` if given.
pub(crate) async fn submit(
    ctx: &JobContext,
    channel: &str,
    id: i64,
    delay: Option<Duration>,
) -> Result<(), JobError> {
    let result = match (channel, delay) {
        (EMAIL, None) => ctx.jobs.submit(SendEmail { delivery_id: id }).await,
        (EMAIL, Some(delay)) => {
            ctx.jobs
                .submit_after(SendEmail { delivery_id: id }, delay)
                .await
        }
        (_, None) => ctx.jobs.submit(DeliverWebhook { delivery_id: id }).await,
        (_, Some(delay)) => {
            ctx.jobs
                .submit_after(DeliverWebhook { delivery_id: id }, delay)
                .await
        }
    };
    result.map_err(|err| JobError::Transient(err.to_string()))
}

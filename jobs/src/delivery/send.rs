//! What sends a `deliveries` row: its channel, and the job the storage carries for it (one per
//! channel, naming the row). The row machinery (`deliveries`) and the fan-out submit these jobs;
//! how each one sends is its channel's `Job` impl (`webhook`, `email`). Keeping the job args here
//! lets the row machinery submit them without depending on the channels that depend on it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{JobContext, JobError};

/// How a row is sent. Stored in `deliveries.channel` as `webhook` or `email` ([`Channel::as_str`]);
/// the string never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A signed POST to a webhook: `webhook`.
    Webhook,
    /// A mail over SMTP: `email`.
    Email,
}

impl Channel {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }

    /// The channel of a stored row: `email`, else a webhook (as rows were always read).
    pub fn of(stored: &str) -> Self {
        if stored == Channel::Email.as_str() {
            Channel::Email
        } else {
            Channel::Webhook
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Channel> for sea_orm::Value {
    fn from(channel: Channel) -> Self {
        channel.as_str().into()
    }
}

/// Calls a webhook for one delivery row (its `Job` impl is in the `webhook` module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverWebhook {
    /// The `deliveries` row.
    pub delivery_id: i64,
}

/// Sends one e-mail delivery row (its `Job` impl is in the `email` module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendEmail {
    /// The `deliveries` row.
    pub delivery_id: i64,
}

/// Submits the job that sends row `id` on `channel`, after `delay` if given.
pub(crate) async fn submit(
    ctx: &JobContext,
    channel: Channel,
    id: i64,
    delay: Option<Duration>,
) -> Result<(), JobError> {
    let result = match (channel, delay) {
        (Channel::Email, None) => ctx.jobs.submit(SendEmail { delivery_id: id }).await,
        (Channel::Email, Some(delay)) => {
            ctx.jobs
                .submit_after(SendEmail { delivery_id: id }, delay)
                .await
        }
        (Channel::Webhook, None) => ctx.jobs.submit(DeliverWebhook { delivery_id: id }).await,
        (Channel::Webhook, Some(delay)) => {
            ctx.jobs
                .submit_after(DeliverWebhook { delivery_id: id }, delay)
                .await
        }
    };
    result.map_err(|err| JobError::Transient(err.to_string()))
}

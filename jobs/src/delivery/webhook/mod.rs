//! Webhooks: the job that calls the receiver (one delivery row per call, see
//! [`super::deliveries`]); what each outcome becomes on the wire, and how it is signed, is in
//! `wire`.
//!
//! Safety rules of every call: a 5 s timeout (configurable), no redirects followed (a 3xx is a
//! failed attempt), at most [`BODY_READ_LIMIT`] bytes of the response read, and, unless private
//! targets are allowed, every address the name resolves to checked at connect time (see
//! [`super::guard`]).

pub mod wire;

use std::{net::IpAddr, time::Duration};

use chrono::Utc;
use entity::{deliveries, webhooks};
use sea_orm::EntityTrait;

pub use super::send::DeliverWebhook;
use super::{
    deliveries::{Claim, Failed, abandon, claim, delivered, failed},
    guard::is_public,
    send::Channel,
};
use crate::{Job, JobContext, JobError, RetryBudget};
pub use wire::{
    HEADER_EVENT, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, KINDS, data_of, kind_bit, kind_of,
    scope_of, sign,
};

/// Bytes of a receiver's response read at most (the rest is never downloaded).
pub const BODY_READ_LIMIT: usize = 1024;

impl Job for DeliverWebhook {
    const QUEUE: &'static str = "deliver-webhook";
    // The receiver's failures are retried by the row's own budget (scheduled attempts with
    // exponential backoff); apalis retries only what failed around the call (the database),
    // briefly. An attempt may wait up to 2 s for its due time, then call with a 5 s timeout.
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 5,
        backoff_min: Duration::from_millis(200),
        timeout: Duration::from_secs(60),
    };

    #[tracing::instrument(name = "job.deliver_webhook", skip_all, fields(delivery_id = self.delivery_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let row = match claim(ctx, self.delivery_id, Channel::Webhook).await? {
            Claim::Go(row) => *row,
            Claim::Skip(why) => return Ok(why),
        };
        let hook = match row.webhook_id {
            Some(id) => webhooks::Entity::find_by_id(id).one(&ctx.db).await?,
            None => None,
        };
        let Some(hook) = hook.filter(|h| h.account_id == row.account_id && h.deleted_at.is_none())
        else {
            abandon(ctx, &row, "the webhook was deleted").await?;
            return Ok("webhook deleted: dead".into());
        };
        if !hook.active {
            abandon(ctx, &row, "the webhook is inactive").await?;
            return Ok("webhook inactive: dead".into());
        }
        let retries = ctx.channels.webhook_retries();
        let (error, status, permanent) = match call(ctx, &hook, &row).await {
            Ok(status) if status.is_success() => {
                delivered(ctx, &row, Some(status.as_u16())).await?;
                return Ok(format!("delivered ({status}) on attempt {}", row.attempts));
            }
            Ok(status) if status.is_redirection() => (
                format!("HTTP {status}: redirects are not followed"),
                Some(status.as_u16()),
                false,
            ),
            Ok(status) => (format!("HTTP {status}"), Some(status.as_u16()), false),
            Err(CallError::Refused(why)) => (why, None, false),
            Err(CallError::Http(err)) => (describe(&err), None, false),
        };
        match failed(ctx, &row, retries, &error, status, permanent).await? {
            Failed::Retry(wait) => Ok(format!(
                "attempt {} failed ({error}); next in {} ms",
                row.attempts,
                wait.as_millis()
            )),
            Failed::Dead => Ok(format!("attempt {} failed ({error}); dead", row.attempts)),
        }
    }
}

enum CallError {
    /// The target is not allowed (an address literal that is not public).
    Refused(String),
    /// The call failed (connect, timeout, TLS, ...).
    Http(reqwest::Error),
}

/// One POST to the webhook; the response status, having read at most [`BODY_READ_LIMIT`] bytes.
async fn call(
    ctx: &JobContext,
    hook: &webhooks::Model,
    row: &deliveries::Model,
) -> Result<reqwest::StatusCode, CallError> {
    // Address literals never reach the resolver: check them here.
    let url = url::Url::parse(&hook.url).map_err(|_| CallError::Refused("invalid url".into()))?;
    if !ctx.channels.webhook_allow_private() {
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if literal.is_some_and(|ip| !is_public(ip)) {
            return Err(CallError::Refused("the url's address is not public".into()));
        }
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "id": row.delivery_key,
        "kind": row.kind,
        "timestamp": row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": row.payload,
    }))
    .unwrap_or_default();
    let timestamp = Utc::now().timestamp();
    let mut response = ctx
        .channels
        .http()
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_ID, &row.delivery_key)
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_SIGNATURE, sign(&hook.secret, timestamp, &body))
        .header(HEADER_EVENT, &row.kind)
        .body(body)
        .send()
        .await
        .map_err(CallError::Http)?;
    let status = response.status();
    let mut read = 0;
    while read < BODY_READ_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            // The status decides; a broken or slow body after it does not.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(status)
}

/// A short description of a failed call, without the URL (it may carry a token).
fn describe(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(err) = source {
        cause = err.to_string();
        source = err.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

//! Webhooks: what each outcome becomes on the wire, how it is signed, and the job that calls the
//! receiver (one delivery row per call, see [`super::deliveries`]).
//!
//! Safety rules of every call: a 5 s timeout (configurable), no redirects followed (a 3xx is a
//! failed attempt), at most [`BODY_READ_LIMIT`] bytes of the response read, and, unless private
//! targets are allowed, every address the name resolves to checked at connect time (see
//! [`super::guard`]).

use std::{net::IpAddr, time::Duration};

use chrono::Utc;
use entity::{deliveries, webhooks};
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::EntityTrait;
use serde_json::Value;
use sha2::Sha256;

pub use super::send::DeliverWebhook;
use super::{
    deliveries::{Claim, Failed, abandon, claim, delivered, failed},
    guard::is_public,
    send::Channel,
};
use crate::{Job, JobContext, JobError, RetryBudget, notify::Outcome};

/// The event kinds a webhook can subscribe to.
pub const KINDS: [&str; 7] = [
    "conversation.queued",
    "conversation.assigned",
    "conversation.closed",
    "conversation.reassigned",
    "message.created",
    "sla.breached",
    "agent.status",
];

/// Bytes of a receiver's response read at most (the rest is never downloaded).
pub const BODY_READ_LIMIT: usize = 1024;

/// Header with the delivery id (the body's `id`).
pub const HEADER_ID: &str = "x-switchboard-delivery";
/// Header with the Unix time (seconds) of this attempt, part of the signed text.
pub const HEADER_TIMESTAMP: &str = "x-switchboard-timestamp";
/// Header with `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub const HEADER_SIGNATURE: &str = "x-switchboard-signature";
/// Header with the event kind.
pub const HEADER_EVENT: &str = "x-switchboard-event";

/// The webhook kind of an outcome, if webhooks hear about it.
pub fn kind_of(outcome: &Outcome) -> Option<&'static str> {
    Some(match outcome {
        Outcome::ConversationQueued { .. } => "conversation.queued",
        Outcome::ConversationAssigned { .. } => "conversation.assigned",
        Outcome::ConversationClosed { .. } => "conversation.closed",
        Outcome::ConversationUnassigned { .. } => "conversation.reassigned",
        Outcome::MessageCreated { .. } => "message.created",
        Outcome::SlaBreached { .. } => "sla.breached",
        Outcome::AgentStatusChanged { .. } => "agent.status",
        _ => return None,
    })
}

/// The bit of `kind` in a subscription mask.
pub fn kind_bit(kind: &str) -> Option<u8> {
    KINDS.iter().position(|k| *k == kind).map(|i| 1u8 << i)
}

/// The account an outcome belongs to, and what its order is kept within.
pub fn scope_of(outcome: &Outcome) -> Option<(i64, String)> {
    Some(match outcome {
        Outcome::ConversationQueued {
            account_id,
            conversation_id,
            ..
        }
        | Outcome::ConversationAssigned {
            account_id,
            conversation_id,
            ..
        }
        | Outcome::ConversationUnassigned {
            account_id,
            conversation_id,
            ..
        }
        | Outcome::ConversationClosed {
            account_id,
            conversation_id,
            ..
        }
        | Outcome::MessageCreated {
            account_id,
            conversation_id,
            ..
        }
        | Outcome::SlaBreached {
            account_id,
            conversation_id,
            ..
        }
        | Outcome::QueueWaitExceeded {
            account_id,
            conversation_id,
            ..
        } => (*account_id, format!("conversation:{conversation_id}")),
        Outcome::AgentStatusChanged {
            account_id,
            agent_id,
            ..
        } => (*account_id, format!("agent:{agent_id}")),
        Outcome::QueueChanged {
            account_id,
            group_id,
        } => (*account_id, format!("group:{group_id}")),
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The body's `data`: the outcome's fields (camelCase) without its kind and account.
pub fn data_of(outcome: &Outcome) -> Value {
    let mut value = serde_json::to_value(outcome).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.remove("kind");
        fields.remove("accountId");
    }
    value
}

/// `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_of_timestamp_dot_body() {
        // Independently computed: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign("secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn kinds_have_distinct_bits() {
        let mask = KINDS.iter().fold(0u8, |m, k| m | kind_bit(k).unwrap());
        assert_eq!(mask, 0x7f);
        assert_eq!(kind_bit("nope"), None);
    }
}

//! What an outcome becomes on the wire: its kind (the subscription a webhook picks), the account
//! and order key it belongs to, the body's `data`, the headers and the signature.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::notify::Outcome;

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

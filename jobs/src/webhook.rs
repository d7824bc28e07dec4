//! Webhooks: what each outcome becomes on the wire, how it is signed, and the job that calls the
//! receiver (one delivery row per call, see [`crate::deliveries`]).
//!
//! Safety rules of every call: a 5 s timeout (configurable), no redirects followed (a 3xx is a
//! failed attempt), at most [`BODY_READ_LIMIT`] bytes of the response read, and, unless private
//! targets are allowed, every address the name resolves to checked at connect time (a name that
//! resolved to a public address when the webhook was saved cannot be rebound to an internal one).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use entity::{deliveries, webhooks};
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::EntityTrait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::{
    Job, JobContext, JobError, RetryBudget,
    deliveries::{Claim, Failed, WEBHOOK, abandon, claim, delivered, failed},
    notify::Outcome,
};

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

/// True for an address on the public internet: not loopback, private, link-local, unspecified,
/// shared (CGNAT), multicast, broadcast, documentation or reserved. An IPv6 address that carries
/// an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by the IPv4 address; tunnels whose
/// far end cannot be checked (Teredo, local-use NAT64) and site-local addresses are refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let [first, second, third, ..] = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside sites)
        || (first == 0x2001 && second == 0x0db8) // documentation
        || (first == 0x2001 && second == 0) // Teredo: tunnels to an IPv4 host we cannot see
        || (first == 0x0064 && second == 0xff9b && third == 1)) // local-use NAT64: any network
}

/// The IPv4 address an IPv6 one carries and reaches: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`
/// and 6to4 `2002:aabb:ccdd::/48`. Such an address is as public as the IPv4 one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _]
        | [0, 0, 0, 0, 0, 0, _, _] => Some(last),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        [0x2002, high, low, ..] => Some(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))),
        _ => None,
    }
}

/// Checks a webhook URL: http(s), at most 2048 characters, a host, and (unless `allow_private`)
/// only public addresses behind it. Names are resolved now; delivery checks again.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    if raw.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    let url = url::Url::parse(raw).map_err(|err| format!("url is not a valid URL: {err}"))?;
    // What is stored is the normalized URL, which percent-encoding can make longer.
    if url.as_str().len() > 2048 {
        return Err("url must be at most 2048 characters (once percent-encoded)".into());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err("url must use http or https".into());
    }
    let Some(host) = url.host() else {
        return Err("url must name a host".into());
    };
    if allow_private {
        return Ok(url);
    }
    let refused = "url must not point at a loopback, private, link-local or unspecified \
                   address (set SWITCHBOARD_WEBHOOK_ALLOW_PRIVATE to allow it)";
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        url::Host::Domain(name) => {
            let lookup = tokio::net::lookup_host((name, port));
            match tokio::time::timeout(Duration::from_secs(3), lookup).await {
                Ok(Ok(found)) => found.map(|addr| addr.ip()).collect(),
                _ => return Err(format!("url host {name:?} does not resolve")),
            }
        }
    };
    if addrs.is_empty() || !addrs.into_iter().all(is_public) {
        return Err(refused.into());
    }
    Ok(url)
}

/// Resolves names for webhook calls, keeping only public addresses unless private ones are
/// allowed: the check happens on the addresses actually connected to.
#[derive(Debug)]
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client of webhook calls.
pub(crate) fn client(allow_private: bool, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the name itself, past the address check.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .user_agent(concat!("Switchboard-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Calls a webhook for one delivery row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverWebhook {
    /// The `deliveries` row.
    pub delivery_id: i64,
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
        let row = match claim(ctx, self.delivery_id, WEBHOOK).await? {
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
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    fn refused(ips: &[&str]) {
        for ip in ips {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
    }

    fn allowed(ips: &[&str]) {
        for ip in ips {
            assert!(is_public(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[test]
    fn ipv4_mapped_and_translated_addresses_are_judged_by_their_ipv4_address() {
        refused(&[
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:127.0.0.1",
        ]);
        allowed(&["::ffff:8.8.8.8", "::ffff:0:8.8.8.8"]);
    }

    #[test]
    fn ipv4_compatible_addresses_are_judged_by_their_ipv4_address() {
        refused(&[
            "::127.0.0.1",
            "::10.1.2.3",
            "::169.254.169.254",
            "::192.168.0.1",
        ]);
        allowed(&["::8.8.8.8"]);
    }

    #[test]
    fn nat64_addresses_are_judged_by_their_ipv4_address() {
        refused(&[
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
        ]);
        allowed(&["64:ff9b::8.8.8.8"]);
    }

    #[test]
    fn local_use_nat64_is_refused() {
        refused(&["64:ff9b:1::8.8.8.8", "64:ff9b:1:ffff::1"]);
    }

    #[test]
    fn six_to_four_addresses_are_judged_by_their_ipv4_address() {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        refused(&[
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
        ]);
        allowed(&["2002:808:808::1"]);
    }

    #[test]
    fn teredo_is_refused_but_the_rest_of_2001_is_not() {
        refused(&["2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"]);
        // Google's resolver and Wikipedia live in 2001::/16, outside Teredo's 2001::/32.
        allowed(&["2001:4860:4860::8888", "2001:1:2::3", "2620:0:862:ed1a::1"]);
    }

    #[test]
    fn site_local_is_refused() {
        refused(&["fec0::1", "fed0::1", "feff:ffff::1"]);
    }

    #[tokio::test]
    async fn the_length_limit_applies_to_the_percent_encoded_url() {
        // 1,020 characters as typed, 3,020 once `{` and `}` are percent-encoded.
        let raw = format!("https://example.com/{}", "{}".repeat(500));
        assert!(raw.len() <= 2048);
        let err = check_url(&raw, true).await.unwrap_err();
        assert!(err.contains("2048"), "{err}");
        let fits = format!("https://example.com/{}", "{}".repeat(300));
        assert!(check_url(&fits, true).await.is_ok());
    }

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

//! Which address a request comes from: the TCP peer, or, when the peer is one of the trusted
//! proxies (`SWITCHBOARD_TRUSTED_PROXIES`), the address those proxies forwarded in `Forwarded`
//! (RFC 7239, `for=`) or else `X-Forwarded-For`.
//!
//! [`client_ip`] decides; the [`resolve`] middleware runs it once per request (on both listeners)
//! and leaves the answer in the request's extensions as [`ClientIp`], where the rate limits, the
//! widget, the socket handshake and the operator listener's failure counts read it.
//!
//! When a request carries both headers they must name the same client, or the peer is the
//! client: a proxy appends to the header it knows and passes the other one through as the client
//! wrote it.
//!
//! The forwarded chain is read from the right (the hop the nearest proxy added) and the first
//! address that is not itself a trusted proxy is the client: what lies left of it was written by
//! the client or by proxies nobody vouches for. A hop that cannot be read (garbage, `unknown`,
//! an obfuscated identifier) before that address is found means the chain is not usable, and the
//! peer is the client: the strict failure, every such client shares the proxy's budgets.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{Extensions, HeaderMap, HeaderName, header, request::Parts},
    middleware::Next,
    response::Response,
};
use ipnet::IpNet;

use crate::error::ApiError;

/// The networks whose forwarded headers are believed; empty (the default) believes none.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs (`10.0.0.0/8, fd00::/8`) or single addresses
    /// (`192.0.2.1`, a /32 or /128); blanks around entries are ignored, an empty list trusts none.
    /// The error names the setting and the entry it could not read.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = IpNet::from_str(entry)
                .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "SWITCHBOARD_TRUSTED_PROXIES: `{entry}` is neither a CIDR (10.0.0.0/8, \
                         fd00::/8) nor an address"
                    )
                })?;
            nets.push(net.trunc());
        }
        Ok(Self(nets.into()))
    }

    /// True when `ip` lies in one of the networks (an IPv4-mapped IPv6 address as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&entries.join(","))
    }
}

/// The client's address of a request from `peer` carrying `headers` (see the module).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    forwarded_client(headers, trusted).unwrap_or(peer)
}

/// The client named by the forwarded chain, if it can be read. A request may carry both
/// `Forwarded` and `X-Forwarded-For` only if they name the same client: a proxy that appends to
/// one of them passes the other through as the client wrote it, so trusting either one alone
/// would let the client pick its address.
fn forwarded_client(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    let forwarded = joined(headers, &header::FORWARDED).map(|text| {
        // A quote left open would swallow what the proxy appended after it (on the same line or
        // the next one): such a header names nobody.
        let balanced = headers.get_all(header::FORWARDED).iter().all(|line| {
            line.to_str()
                .is_ok_and(|line| split_unquoted(line, ',').is_some())
        });
        let hops = match split_unquoted(&text, ',') {
            Some(elements) if balanced => elements.into_iter().map(forwarded_for).collect(),
            _ => vec![None],
        };
        rightmost_untrusted(hops, trusted)
    });
    let x_forwarded_for = joined(headers, &X_FORWARDED_FOR).map(|text| {
        let hops = text.split(',').map(|hop| node(hop.trim())).collect();
        rightmost_untrusted(hops, trusted)
    });
    match (forwarded, x_forwarded_for) {
        (Some(one), None) | (None, Some(one)) => one,
        (Some(one), Some(other)) => one.filter(|one| Some(*one) == other),
        (None, None) => None,
    }
}

/// Every line of header `name`, in order, joined by commas (a list split over several lines is
/// one list); `Some("")` for a header that cannot be read as text, so it counts as malformed.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let mut text = Vec::new();
    for line in lines {
        match line.to_str() {
            Ok(line) => text.push(line),
            Err(_) => return Some(String::new()),
        }
    }
    Some(text.join(","))
}

/// From the right, the first hop that is not a trusted proxy; the leftmost hop when all are
/// trusted; `None` when a hop read before the answer is unreadable, or there is none.
fn rightmost_untrusted(hops: Vec<Option<IpAddr>>, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut leftmost = None;
    for hop in hops.into_iter().rev() {
        let ip = hop?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// `text` cut at every `separator` outside double quotes (a backslash escapes the next
/// character inside them); `None` when a quote or an escape is left open at the end.
fn split_unquoted(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..at]);
            start = at + c.len_utf8();
        }
    }
    if quoted || escaped {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// The address of one `Forwarded` element's `for=` parameter (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in split_unquoted(element, ';')? {
        let (key, value) = pair.trim().split_once('=')?;
        if key.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None;
            }
            found = Some(value.trim());
        }
    }
    let value = found?;
    let value = match value.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .filter(|inner| !inner.contains(['"', '\\']))?,
        None => value,
    };
    node(value)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`
/// or `[2001:db8::1]:4711`; anything else (`unknown`, `_hidden`, garbage) is `None`.
fn node(text: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(Ipv6Addr::from_str(inside).ok()?)
    } else if let Ok(ip) = IpAddr::from_str(text) {
        ip
    } else {
        let (host, port) = text.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from_str(host).ok()?)
    };
    Some(ip.to_canonical())
}

/// A port as RFC 7239 allows it: digits, or an obfuscated `_name`.
fn is_port(text: &str) -> bool {
    (!text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()))
        || text.strip_prefix('_').is_some_and(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// The client's address of a request, as [`resolve`] decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// What [`resolve`] left in `extensions`; without it (a router served without the
    /// middleware) the TCP peer, which is what trusting no proxy gives.
    pub fn of(extensions: &Extensions) -> Option<IpAddr> {
        extensions
            .get::<ClientIp>()
            .map(|client| client.0)
            .or_else(|| {
                extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0.ip().to_canonical())
            })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::of(&parts.extensions)
            .map(Self)
            .ok_or_else(|| ApiError::BadRequest("cannot tell the client address".into()))
    }
}

/// Middleware: decides the request's client address once ([`client_ip`]) and keeps it in the
/// request's extensions for everything after.
pub async fn resolve(
    State(trusted): State<TrustedProxies>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let client = client_ip(peer.ip(), request.headers(), &trusted);
        request.extensions_mut().insert(ClientIp(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted(text: &str) -> TrustedProxies {
        TrustedProxies::parse(text).unwrap()
    }

    /// The client of a request from `peer` with `headers` (name, value), trusting `proxies`.
    fn client(peer: &str, proxies: &str, headers: &[(&str, &str)]) -> IpAddr {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        client_ip(ip(peer), &map, &trusted(proxies))
    }

    const PROXY: &str = "10.0.0.1";
    const PROXIES: &str = "10.0.0.0/8, fd00::/8";

    #[test]
    fn the_setting_takes_cidrs_and_addresses_and_names_a_bad_entry() {
        let proxies = trusted(" 10.0.0.0/8 ,192.0.2.7,, fd00::/8,2001:db8::1 ");
        assert!(proxies.contains(ip("10.200.3.4")));
        assert!(proxies.contains(ip("::ffff:10.1.1.1")));
        assert!(proxies.contains(ip("192.0.2.7")));
        assert!(!proxies.contains(ip("192.0.2.8")));
        assert!(proxies.contains(ip("fd12::5")));
        assert!(proxies.contains(ip("2001:db8::1")));
        assert!(!proxies.contains(ip("2001:db8::2")));
        assert!(trusted("").is_empty());
        assert!(trusted(" , ").is_empty());
        assert_eq!(trusted("10.1.2.3/8").to_string(), "10.0.0.0/8");
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "nginx",
            "10.0.0.0/8;192.0.2.0/24",
            "fd00::/129",
        ] {
            let err = TrustedProxies::parse(&format!("127.0.0.1,{bad}")).unwrap_err();
            assert!(err.contains("SWITCHBOARD_TRUSTED_PROXIES"), "{err}");
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let spoof = [
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ];
        assert_eq!(client("198.51.100.1", PROXIES, &spoof), ip("198.51.100.1"));
        assert_eq!(client(PROXY, "", &spoof), ip(PROXY));
        assert_eq!(client("::ffff:198.51.100.1", "", &[]), ip("198.51.100.1"));
    }

    #[test]
    fn x_forwarded_for_is_read_from_the_right_past_trusted_hops() {
        let xff = |value| client(PROXY, PROXIES, &[("x-forwarded-for", value)]);
        assert_eq!(xff("203.0.113.9"), ip("203.0.113.9"));
        // The client wrote the leftmost entries itself: they are not believed.
        assert_eq!(xff("1.2.3.4, 203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(xff("1.2.3.4, 203.0.113.9, 10.0.0.2"), ip("203.0.113.9"));
        assert_eq!(xff("203.0.113.9,10.9.9.9 , fd00::3"), ip("203.0.113.9"));
        // Only trusted hops: the farthest one.
        assert_eq!(xff("10.0.0.5, 10.0.0.2"), ip("10.0.0.5"));
        assert_eq!(xff("2001:db8::7"), ip("2001:db8::7"));
        assert_eq!(xff("[2001:db8::7]:443"), ip("2001:db8::7"));
        assert_eq!(xff("203.0.113.9:5555"), ip("203.0.113.9"));
        assert_eq!(xff("::ffff:203.0.113.9"), ip("203.0.113.9"));
        // Garbage left of the answer is the client's business; at or before it, the peer.
        assert_eq!(xff("garbage, 203.0.113.9"), ip("203.0.113.9"));
        for garbage in [
            "",
            " ",
            "203.0.113.9,",
            "unknown",
            "203.0.113.9, nonsense, 10.0.0.2",
            "203.0.113.9:http",
            "203.0.113.9:123456",
            "[2001:db8::7",
            "[203.0.113.9]",
            "2001:db8::7:80:",
        ] {
            assert_eq!(xff(garbage), ip(PROXY), "{garbage:?}");
        }
        // Several header lines are one list, in order.
        assert_eq!(
            client(
                PROXY,
                PROXIES,
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-for", "10.0.0.3")
                ]
            ),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_elements_with_quotes_ports_and_brackets() {
        let fwd = |value| client(PROXY, PROXIES, &[("forwarded", value)]);
        assert_eq!(fwd("for=203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(fwd("For=\"203.0.113.9\""), ip("203.0.113.9"));
        assert_eq!(fwd("for=\"203.0.113.9:4711\""), ip("203.0.113.9"));
        assert_eq!(fwd("for=\"[2001:db8:cafe::17]\""), ip("2001:db8:cafe::17"));
        assert_eq!(
            fwd("for=\"[2001:db8:cafe::17]:4711\";proto=https;by=10.0.0.1"),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("proto=https; for=203.0.113.9 ;host=example.com"),
            ip("203.0.113.9")
        );
        assert_eq!(fwd("for=\"203.0.113.9:_hidden\""), ip("203.0.113.9"));
        // Several hops: the rightmost one that is not a trusted proxy.
        assert_eq!(
            fwd(
                "for=192.0.2.43, for=\"[2001:db8::1]\";proto=http, for=10.0.0.2, for=\"[fd00::9]:80\""
            ),
            ip("2001:db8::1")
        );
        // A quoted separator does not split.
        assert_eq!(
            fwd("for=192.0.2.43;host=\"a,b;c\", for=203.0.113.9"),
            ip("203.0.113.9")
        );
        // A quote the client leaves open cannot swallow what the proxy appends, on the same
        // line or the next, nor the quoted IPv6 element a proxy writes.
        assert_eq!(fwd("for=1.2.3.4;x=\", for=203.0.113.9"), ip(PROXY));
        assert_eq!(fwd("for=1.2.3.4;x=\"\\, for=203.0.113.9"), ip(PROXY));
        assert_eq!(
            fwd("for=1.2.3.4;x=\", for=\"[2001:db8::1]:4711\""),
            ip(PROXY)
        );
        assert_eq!(
            client(
                PROXY,
                PROXIES,
                &[
                    ("forwarded", "for=1.2.3.4;x=\""),
                    ("forwarded", "for=\"[2001:db8::1]:4711\""),
                ],
            ),
            ip(PROXY)
        );
        assert_eq!(
            client(
                PROXY,
                PROXIES,
                &[
                    ("forwarded", "for=1.2.3.4;x=\""),
                    ("forwarded", "for=203.0.113.9"),
                    ("x-forwarded-for", "1.2.3.4"),
                ],
            ),
            ip(PROXY)
        );
        // With X-Forwarded-For too, both must name the same client: the proxy appended to one,
        // the client wrote the other.
        let both = |fwd, xff| {
            client(
                PROXY,
                PROXIES,
                &[("forwarded", fwd), ("x-forwarded-for", xff)],
            )
        };
        assert_eq!(
            both("for=203.0.113.9", "198.51.100.1, 203.0.113.9, 10.0.0.2"),
            ip("203.0.113.9")
        );
        assert_eq!(
            both("for=198.51.100.1", "198.51.100.1, 203.0.113.9"),
            ip(PROXY)
        );
        assert_eq!(
            both("for=198.51.100.1, for=203.0.113.9", "198.51.100.1"),
            ip(PROXY)
        );
        assert_eq!(both("for=unknown", "203.0.113.9"), ip(PROXY));
        assert_eq!(both("for=203.0.113.9", "garbage"), ip(PROXY));
        for garbage in [
            "",
            "for=",
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=203.0.113.9;for=198.51.100.1",
            "for=\"203.0.113.9",
            "for=[2001:db8::1]:80x",
            "for=2001:db8::1]",
            "for=\"[2001:db8::1]\"extra",
            "for=203.0.113.9, for=unknown",
            "for=203.0.113.9, garbage",
            "for=\"20\\3.0.113.9\"",
        ] {
            assert_eq!(fwd(garbage), ip(PROXY), "{garbage:?}");
        }
    }

    #[test]
    fn an_unreadable_header_is_the_peer() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(client_ip(ip(PROXY), &headers, &trusted(PROXIES)), ip(PROXY));
    }
}

//! Where webhook calls may go: addresses on the public internet only, unless private targets are
//! allowed. A URL is checked when a webhook is saved ([`check_url`]), and every address its name
//! resolves to is checked again at connect time by the HTTP client of webhook calls ([`client`]),
//! so a name that resolved to a public address when it was saved cannot be rebound to an internal
//! one.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

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
}

//! The host's endpoints: where events go, which ones, and the secret that
//! signs them. The secret is shown once (at creation and rotation) and
//! never again: it is kept so that it cannot reach a log or a `Debug`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use serde::Serialize;

use super::events::EventType;
use crate::store::error::StoreError;

/// Which events an endpoint wants: every one, or those listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventFilter {
    All,
    Only(Vec<EventType>),
}

impl EventFilter {
    /// From the API's list (`["*"]` or type names); the unknown name is the
    /// error.
    pub fn parse(names: &[String]) -> Result<EventFilter, String> {
        if names.is_empty() {
            return Err("at least one event type, or \"*\"".into());
        }
        if names.iter().any(|name| name.trim() == "*") {
            return Ok(EventFilter::All);
        }
        let mut kinds = Vec::new();
        for name in names.iter().map(|name| name.trim()) {
            let kind = EventType::parse(name)
                .filter(|kind| *kind != EventType::EndpointTest)
                .ok_or_else(|| {
                    let known: Vec<&str> = EventType::ALL
                        .iter()
                        .filter(|kind| **kind != EventType::EndpointTest)
                        .map(|kind| kind.as_str())
                        .collect();
                    format!(
                        "unknown event type {name:?}; the event types are {}, or \"*\" for every one",
                        known.join(", ")
                    )
                })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(EventFilter::Only(kinds))
    }

    /// As stored: `*`, or the names between commas (`,a,b,`), so that SQL
    /// can match one with `,name,`.
    pub fn stored(&self) -> String {
        match self {
            EventFilter::All => "*".into(),
            EventFilter::Only(kinds) => {
                let mut text = String::from(",");
                for kind in kinds {
                    text.push_str(kind.as_str());
                    text.push(',');
                }
                text
            }
        }
    }

    /// Reads the stored form back; an unknown name is an error.
    pub fn from_stored(text: &str) -> Option<EventFilter> {
        if text == "*" {
            return Some(EventFilter::All);
        }
        let kinds = text
            .split(',')
            .filter(|name| !name.is_empty())
            .map(EventType::parse)
            .collect::<Option<Vec<_>>>()?;
        Some(EventFilter::Only(kinds))
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            EventFilter::All => vec!["*".into()],
            EventFilter::Only(kinds) => kinds.iter().map(|kind| kind.as_str().into()).collect(),
        }
    }
}

/// A `whsec_` signing secret (24 random bytes, base64). `Debug` and
/// `Serialize` never show it; [`SigningSecret::expose`] does, for signing
/// and for the one answer that hands it over.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl SigningSecret {
    pub fn generate() -> Result<SigningSecret, StoreError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|error| StoreError::Database(format!("no randomness: {error}")))?;
        Ok(SigningSecret(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )))
    }

    /// A secret read back from the store.
    pub fn from_stored(text: String) -> SigningSecret {
        SigningSecret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SigningSecret(…)")
    }
}

/// An endpoint as the admin sees it (never with its secrets).
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    #[cfg_attr(feature = "openapi", schema(examples("we_3f9a1c2b7d4e5f60")))]
    pub id: String,
    pub url: String,
    /// Event types, or `["*"]`.
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why it was disabled, when it was by the server (`410 Gone`, failing
    /// for days) rather than by the admin.
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed, if they do.
    #[serde(
        rename = "failing_since",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub failing_since_ms: Option<i64>,
    /// Until when the secret before the last rotation still signs too.
    #[serde(
        rename = "previous_secret_until",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub previous_secret_until_ms: Option<i64>,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
    /// Why the server that answers will not deliver to it (its URL needs
    /// `webhooks_allow_private`, which this server does not have): set by
    /// [`Endpoint::flagged`], never stored; absent when it delivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undeliverable: Option<String>,
    #[serde(skip)]
    pub filter: EventFilter,
    #[serde(skip)]
    pub secret: SigningSecret,
    #[serde(skip)]
    pub previous_secret: Option<SigningSecret>,
}

impl Endpoint {
    /// The endpoint with [`Endpoint::undeliverable`] said, as a process
    /// whose `webhooks_allow_private` is `allow_private` sees it: the
    /// setting is each process's own, so an endpoint one process may add
    /// another may refuse to deliver to.
    pub fn flagged(mut self, allow_private: bool) -> Endpoint {
        self.undeliverable = check_url(&self.url, allow_private)
            .err()
            .map(|refused| undeliverable(&refused));
        self
    }

    /// The secrets that sign a delivery at `now_ms`: the current one, and
    /// the one before a rotation during its overlap.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<SigningSecret> {
        let mut secrets = vec![self.secret.clone()];
        if let (Some(previous), Some(until)) =
            (&self.previous_secret, self.previous_secret_until_ms)
        {
            if now_ms < until {
                secrets.push(previous.clone());
            }
        }
        secrets
    }
}

/// A new endpoint, checked.
#[derive(Debug)]
pub struct NewEndpoint {
    pub id: String,
    pub url: String,
    pub filter: EventFilter,
    pub description: String,
    pub enabled: bool,
    pub secret: SigningSecret,
    pub created_at_ms: i64,
}

/// A change to an endpoint (what is `None` stays).
#[derive(Debug, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub filter: Option<EventFilter>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A new endpoint id: `we_` and 64 random bits.
pub fn endpoint_id() -> Result<String, StoreError> {
    Ok(format!("we_{}", &crate::random::random_secret("")?[..16]))
}

/// Why a URL may not be an endpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlRefused {
    #[error("must be an absolute https:// URL")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("points at an address that is not public (loopback, private, link-local, metadata or reserved)")]
    Private,
    #[error("may not carry a user name or password")]
    Credentials,
}

/// Why a server does not deliver to a URL it refuses, naming the setting
/// that would allow it (by its key: this is read on the console too).
pub fn undeliverable(refused: &UrlRefused) -> String {
    let hint = match refused {
        UrlRefused::Scheme | UrlRefused::Private => {
            "; http:// and private addresses are delivered to only by a server whose \
             webhooks_allow_private setting is on (for local development)"
        }
        UrlRefused::NoHost | UrlRefused::Credentials => "",
    };
    format!("this server does not deliver to it: its URL {refused}{hint}")
}

/// Checks an endpoint's URL: `https://` with a host, no credentials, and
/// (unless private addresses are allowed, for development) neither a
/// literal address that [`is_public`] refuses nor a local or metadata name.
/// Names are checked again when they are resolved, at every delivery.
pub fn check_url(url: &str, allow_private: bool) -> Result<(), UrlRefused> {
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let (true, Some(rest)) = (allow_private, url.strip_prefix("http://")) {
        rest
    } else {
        return Err(UrlRefused::Scheme);
    };
    // `split` always yields a first piece (maybe empty): no default hides
    // anything here, and an empty host is refused below.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(UrlRefused::Credentials);
    }
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(UrlRefused::NoHost);
    }
    if allow_private {
        return Ok(());
    }
    let lowered = host.to_ascii_lowercase();
    if lowered == "localhost"
        || lowered.ends_with(".localhost")
        || lowered == "metadata.google.internal"
    {
        return Err(UrlRefused::Private);
    }
    if let Ok(address) = lowered.parse::<IpAddr>() {
        if !is_public(address) {
            return Err(UrlRefused::Private);
        }
    }
    Ok(())
}

/// IPv4 blocks a webhook is never delivered to: every block of IANA's IPv4
/// Special-Purpose Address Registry that is not globally reachable, with
/// multicast, as (first address, prefix length). What is outside them is
/// public, 192.0.1.0 to 192.0.255.255 included (wordpress.com's webhooks
/// come from 192.0.78.0/24).
const IPV4_NOT_PUBLIC: &[(Ipv4Addr, u32)] = &[
    // "This network" (RFC 791): 0.0.0.0 reaches this host on Linux.
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    // Private use (RFC 1918).
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    // Shared address space behind carrier-grade NAT (RFC 6598).
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    // Link-local, where cloud metadata services answer.
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    // IETF protocol assignments (RFC 6890). The registry calls two of its
    // addresses globally reachable, 192.0.0.9 (PCP) and 192.0.0.10 (TURN),
    // but they are anycast addresses that the nearest server answers,
    // which may stand in this server's own network: refused with the rest.
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    // Documentation (TEST-NET-1, -2 and -3, RFC 5737).
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    // Benchmarking (RFC 2544): labs, never the internet.
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    // Reserved (RFC 1112), with the limited broadcast address.
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Global unicast (2000::/3): the only IPv6 space IANA hands out for the
/// internet. Outside it (and the IPv4 translations of
/// `ipv4_behind`) nothing is public: loopback, unspecified, unique
/// local, link-local and the deprecated site-local, multicast, the discard
/// prefix 100::/64, local-use NAT64 64:ff9b:1::/48, segment routing's
/// 5f00::/16.
const IPV6_GLOBAL_UNICAST: (Ipv6Addr, u32) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// IPv6 blocks inside global unicast that are not globally reachable
/// (IANA's IPv6 Special-Purpose Address Registry).
const IPV6_NOT_PUBLIC: &[(Ipv6Addr, u32)] = &[
    // IETF protocol assignments (RFC 2928): Teredo 2001::/32 (which hides
    // an IPv4 address), benchmarking 2001:2::/48, the PCP, TURN and DNS-SD
    // anycast addresses 2001:1::1 to 3 (answered by the nearest server, as
    // in IPv4), deprecated ORCHID; but see `IPV6_PUBLIC_IN_IETF_BLOCK`.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    // Documentation (RFC 3849 and RFC 9637).
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
];

/// The networks inside 2001::/23 that the registry calls globally
/// reachable: AMT, AS112-v6, ORCHIDv2 and DRIP entity tags.
const IPV6_PUBLIC_IN_IETF_BLOCK: &[(Ipv6Addr, u32)] = &[
    (Ipv6Addr::new(0x2001, 0x3, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2001, 0x4, 0x112, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28),
    (Ipv6Addr::new(0x2001, 0x30, 0, 0, 0, 0, 0, 0), 28),
];

/// NAT64's well-known prefix (RFC 6052): 64:ff9b::/96 and an IPv4 address.
const IPV6_NAT64: (Ipv6Addr, u32) = (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);

/// 6to4 (RFC 3056): 2002::/16, then the IPv4 address of the site's relay.
const IPV6_6TO4: (Ipv6Addr, u32) = (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);

/// Whether an address may be delivered to: in neither family loopback,
/// private, link-local (where cloud metadata services live), unspecified,
/// multicast, shared (CGNAT), benchmarking, documentation or any other
/// block IANA's special-purpose registries call not globally reachable.
/// An IPv6 address that stands for an IPv4 one is judged by that one.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => !IPV4_NOT_PUBLIC
            .iter()
            .any(|&(network, length)| in_ipv4_block(v4, network, length)),
        IpAddr::V6(v6) => {
            if let Some(v4) = ipv4_behind(v6) {
                return is_public(IpAddr::V4(v4));
            }
            let in_any = |blocks: &[(Ipv6Addr, u32)]| {
                blocks
                    .iter()
                    .any(|&(network, length)| in_ipv6_block(v6, network, length))
            };
            let (global, length) = IPV6_GLOBAL_UNICAST;
            let special = in_any(IPV6_NOT_PUBLIC) && !in_any(IPV6_PUBLIC_IN_IETF_BLOCK);
            in_ipv6_block(v6, global, length) && !special
        }
    }
}

/// The IPv4 address a packet to this IPv6 address goes to: IPv4-mapped
/// (::ffff:0:0/96), NAT64 (RFC 6052 forbids it for addresses that are not
/// public, but a gateway that translates them anyway would carry the
/// delivery there) and 6to4. The server's limits count a client written
/// this way as that IPv4 address too (`limits::key_of`).
pub fn ipv4_behind(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(address);
    let (nat64, length) = IPV6_NAT64;
    if in_ipv6_block(address, nat64, length) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    let (six_to_four, length) = IPV6_6TO4;
    if in_ipv6_block(address, six_to_four, length) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether `address` is in `network`/`length`.
fn in_ipv4_block(address: Ipv4Addr, network: Ipv4Addr, length: u32) -> bool {
    // A shift by the whole width (a /0 block) is refused: its mask is 0,
    // which every address matches, as it should.
    let mask = u32::MAX.checked_shl(32 - length).unwrap_or(0);
    u32::from(address) & mask == u32::from(network) & mask
}

/// Whether `address` is in `network`/`length`.
fn in_ipv6_block(address: Ipv6Addr, network: Ipv6Addr, length: u32) -> bool {
    // As for IPv4: a /0 block's mask is 0.
    let mask = u128::MAX.checked_shl(128 - length).unwrap_or(0);
    u128::from(address) & mask == u128::from(network) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_and_public() {
        assert_eq!(check_url("https://hooks.example.com/in", false), Ok(()));
        assert_eq!(check_url("https://8.8.8.8:8443/x", false), Ok(()));
        assert_eq!(
            check_url("http://hooks.example.com", false),
            Err(UrlRefused::Scheme)
        );
        assert_eq!(check_url("ftp://x", true), Err(UrlRefused::Scheme));
        assert_eq!(check_url("https:///path", false), Err(UrlRefused::NoHost));
        assert_eq!(
            check_url("https://user:pw@example.com", false),
            Err(UrlRefused::Credentials)
        );
        for private in [
            "https://127.0.0.1/",
            "https://localhost:8080/",
            "https://10.1.2.3/",
            "https://192.168.0.1/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://0.0.0.0/",
            "https://100.64.0.1/",
            "https://metadata.google.internal/",
        ] {
            assert_eq!(
                check_url(private, false),
                Err(UrlRefused::Private),
                "{private}"
            );
        }
        assert_eq!(check_url("http://127.0.0.1:9000/hook", true), Ok(()));
    }

    fn public(address: &str) -> bool {
        is_public(address.parse().unwrap())
    }

    #[test]
    fn only_the_ietf_block_of_192_0_is_refused() {
        for refused in [
            "192.0.0.0",
            "192.0.0.1",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.0.255",
        ] {
            assert!(!public(refused), "{refused}");
        }
        // wordpress.com's webhooks come from 192.0.78.x.
        for allowed in ["192.0.1.1", "192.0.78.10", "191.255.255.255", "192.1.0.1"] {
            assert!(public(allowed), "{allowed}");
        }
        assert!(!public("192.0.2.1"), "TEST-NET-1 is documentation");
        assert!(public("192.0.3.0"));
    }

    #[test]
    fn each_special_ipv4_block_is_refused_and_its_neighbours_are_not() {
        // (the block's first and last address, the addresses either side of it)
        for (first, last, before, after) in [
            ("0.0.0.0", "0.255.255.255", None, Some("1.0.0.0")),
            (
                "10.0.0.0",
                "10.255.255.255",
                Some("9.255.255.255"),
                Some("11.0.0.0"),
            ),
            (
                "100.64.0.0",
                "100.127.255.255",
                Some("100.63.255.255"),
                Some("100.128.0.0"),
            ),
            (
                "127.0.0.0",
                "127.255.255.255",
                Some("126.255.255.255"),
                Some("128.0.0.0"),
            ),
            (
                "169.254.0.0",
                "169.254.255.255",
                Some("169.253.255.255"),
                Some("169.255.0.0"),
            ),
            (
                "172.16.0.0",
                "172.31.255.255",
                Some("172.15.255.255"),
                Some("172.32.0.0"),
            ),
            (
                "192.168.0.0",
                "192.168.255.255",
                Some("192.167.255.255"),
                Some("192.169.0.0"),
            ),
            (
                "198.18.0.0",
                "198.19.255.255",
                Some("198.17.255.255"),
                Some("198.20.0.0"),
            ),
            (
                "198.51.100.0",
                "198.51.100.255",
                Some("198.51.99.255"),
                Some("198.51.101.0"),
            ),
            (
                "203.0.113.0",
                "203.0.113.255",
                Some("203.0.112.255"),
                Some("203.0.114.0"),
            ),
            (
                "224.0.0.0",
                "255.255.255.255",
                Some("223.255.255.255"),
                None,
            ),
        ] {
            assert!(!public(first), "{first}");
            assert!(!public(last), "{last}");
            for neighbour in [before, after].into_iter().flatten() {
                assert!(public(neighbour), "{neighbour}, beside {first}..{last}");
            }
        }
        assert!(public("8.8.8.8"));
        // The old 6to4 relay anycast block is not special any more.
        assert!(public("192.88.99.1"));
    }

    #[test]
    fn ipv6_is_public_only_in_global_unicast_outside_the_special_blocks() {
        for refused in [
            "::",
            "::1",
            "::8.8.8.8",
            "100::1",
            "64:ff9b:1::1",
            "5f00::1",
            "fc00::1",
            "fdff:ffff::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:1::1",
            "2001:1::2",
            "2001:2::1",
            "2001:1ff:ffff::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "3fff::1",
            "3fff:fff:ffff::1",
            "::ffff:10.0.0.1",
            "::ffff:192.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "2002:a00:1::1",
            "2002:7f00:1::1",
            "2002:c000:1::1",
        ] {
            assert!(!public(refused), "{refused}");
        }
        for allowed in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "2001:200::1",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            "2001:30::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "3ffe::1",
            "3fff:1000::1",
            "::ffff:8.8.8.8",
            "::ffff:192.0.78.10",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(public(allowed), "{allowed}");
        }
    }

    #[test]
    fn filters_read_back_and_refuse_unknown_types() {
        let filter = EventFilter::parse(&["balance.low".into(), "payment.succeeded".into()]);
        let filter = filter.unwrap_or(EventFilter::All);
        assert_eq!(filter.stored(), ",balance.low,payment.succeeded,");
        assert_eq!(EventFilter::from_stored(&filter.stored()), Some(filter));
        assert_eq!(EventFilter::parse(&["*".into()]), Ok(EventFilter::All));
        assert!(EventFilter::parse(&["balance.lo".into()]).is_err());
        assert!(EventFilter::parse(&[]).is_err());
        assert_eq!(EventFilter::from_stored(",nope,"), None);
    }

    #[test]
    fn a_secret_never_shows_in_debug() {
        let secret = SigningSecret::from_stored("whsec_c2VjcmV0".into());
        assert_eq!(format!("{secret:?}"), "SigningSecret(…)");
        assert!(SigningSecret::generate()
            .map(|secret| secret.expose().starts_with("whsec_"))
            .unwrap_or(false));
    }
}

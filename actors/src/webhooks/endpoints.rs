//! The host's endpoints: where events go, which ones, and the secret that
//! signs them. The secret is shown once (at creation and rotation) and
//! never again: it is kept so that it cannot reach a log or a `Debug`.

use std::net::IpAddr;

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
        if names.iter().any(|name| name == "*") {
            return Ok(EventFilter::All);
        }
        let mut kinds = Vec::new();
        for name in names {
            let kind = EventType::parse(name)
                .filter(|kind| *kind != EventType::EndpointTest)
                .ok_or_else(|| format!("unknown event type {name:?}"))?;
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
    pub failing_since_ms: Option<i64>,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_until_ms: Option<i64>,
    pub created_at_ms: i64,
    #[serde(skip)]
    pub filter: EventFilter,
    #[serde(skip)]
    pub secret: SigningSecret,
    #[serde(skip)]
    pub previous_secret: Option<SigningSecret>,
}

impl Endpoint {
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
    #[error("points at a loopback, private, link-local or metadata address")]
    Private,
    #[error("may not carry a user name or password")]
    Credentials,
}

/// Checks an endpoint's URL: `https://` with a host, no credentials, and
/// (unless private addresses are allowed, for development) not a literal
/// address that is loopback, private, link-local or a metadata service.
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

/// Whether an address may be delivered to: not loopback, private,
/// link-local (where cloud metadata services live), unspecified,
/// multicast, shared (CGNAT) or documentation space, in either family.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
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

//! Limits on what one caller may try (GCRA, by `governor`), counted per
//! instance by client address:
//! - wrong credentials of every kind (tokens, feed tickets, sign-in codes,
//!   sign-up tokens, unknown checkout sessions, webhook signatures), judged
//!   through `auth::before_judging` and `auth::judged_wrong` on every route:
//!   20 in a minute, then `429` with `Retry-After` until the address has
//!   earned another try. A guess is as slow on each instance, and tokens
//!   are 16 characters or more, so the count need not be shared;
//! - calls to the anonymous routes (quote, sign-in, access checkout,
//!   checkout status): `anonymous_calls_per_minute` (60 unless set) in a
//!   minute, in bursts as large, then `429`.
//!
//! And, whoever asks, the books read at once ([`BooksReads`]): each reads
//! the whole ledger up to its period's end, so a few admins or a script
//! asking for years of them could otherwise keep every reader busy.
//!
//! What must hold across instances (sign-in codes per phone and per
//! address, `BUY` per day) is counted in the store instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use sms_credit_actors::webhooks::endpoints::ipv4_behind;

use crate::config::ForwardedHeader;
use crate::error::ApiError;

/// Wrong tokens one address may present in a minute.
const WRONG_TOKENS_PER_MINUTE: u32 = 20;

/// Addresses each limiter keeps at most. Past it, those whose quota is
/// whole again are forgotten, and if that is not enough, every one is: a
/// caller rotating through this many addresses within a minute gains
/// nothing it did not have already (each address has a quota of its own),
/// and the memory stays bounded.
const MAX_ADDRESSES: usize = 100_000;

/// Checks between two sweeps of the addresses whose quota is whole again.
const SWEEP_EVERY: u64 = 1_024;

/// The key an address is counted under: itself, an IPv6 address that
/// carries an IPv4 one as that IPv4 address ([`ipv4_inside`]), or any
/// other IPv6 client's /64 (one host is routinely given a whole /64, so
/// its addresses are one caller's).
pub fn key_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(address) => match ipv4_inside(address) {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(address) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

/// Teredo's prefix (RFC 4380), 2001::/32, as the top 32 bits; the client's
/// IPv4 address is the last 32 bits, inverted.
const TEREDO_PREFIX: u128 = 0x2001_0000;

/// The IPv4 client an IPv6 address stands for: what the webhook guard
/// knows ([`ipv4_behind`]: IPv4-mapped, NAT64's 64:ff9b::/96, 6to4's
/// 2002::/16 — a 6to4 site's every /64 one client), IPv4-compatible
/// (::a.b.c.d, but not :: or ::1, nor anything else in ::/104) and Teredo.
/// Each of these has one IPv4 client behind it, so counting it by its /64
/// would lump every IPv4 client of a NAT64 gateway or a Teredo relay
/// together, and let one 6to4 site rotate 2^16 /64s.
fn ipv4_inside(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ipv4_behind(address) {
        return Some(v4);
    }
    let bits = u128::from(address);
    // The low 32 bits; the cut is what is wanted.
    let low = bits as u32;
    if bits >> 32 == 0 && bits >> 24 != 0 {
        return Some(Ipv4Addr::from(low));
    }
    if bits >> 96 == TEREDO_PREFIX {
        return Some(Ipv4Addr::from(!low));
    }
    None
}

/// How the per-address limits in the store name an address: its key
/// ([`key_of`]): itself, the IPv4 address an IPv6 one carries, or an IPv6
/// client's /64 (`2001:db8:1:2::/64`).
pub fn counted_as(address: IpAddr) -> String {
    match key_of(address) {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

/// A quota per address (by [`key_of`]), its memory bounded.
struct AddressLimiter {
    quota: Quota,
    /// Replaced whole when it holds too many addresses to sweep.
    limiter: RwLock<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
    max_addresses: usize,
}

impl AddressLimiter {
    fn new(quota: Quota, max_addresses: usize) -> AddressLimiter {
        AddressLimiter {
            quota,
            limiter: RwLock::new(RateLimiter::keyed(quota)),
            checks: AtomicU64::new(0),
            max_addresses,
        }
    }

    /// Counts one from `address`: past the quota, how long to wait.
    fn check(&self, address: IpAddr) -> Option<Duration> {
        self.keep_bounded();
        let clock = DefaultClock::default();
        let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
        match limiter.check_key(&key_of(address)) {
            Ok(()) => None,
            Err(not_until) => Some(
                not_until
                    .wait_time_from(clock.now())
                    .max(Duration::from_secs(1)),
            ),
        }
    }

    /// Every so many checks, and whenever too many addresses are kept,
    /// forgets those whose quota is whole again; if still too many, all.
    fn keep_bounded(&self) {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        let too_many = || {
            self.limiter
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
                >= self.max_addresses
        };
        if !checks.is_multiple_of(SWEEP_EVERY) && !too_many() {
            return;
        }
        {
            let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if too_many() {
            *self.limiter.write().unwrap_or_else(PoisonError::into_inner) =
                RateLimiter::keyed(self.quota);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Wrong credentials, by the address that sent them.
pub struct WrongTokens {
    limiter: AddressLimiter,
    /// Addresses (by [`key_of`]) refused until then, without looking at
    /// what they present.
    blocked: DashMap<IpAddr, Instant>,
}

impl Default for WrongTokens {
    fn default() -> WrongTokens {
        WrongTokens::with_capacity(MAX_ADDRESSES)
    }
}

impl WrongTokens {
    fn with_capacity(max_addresses: usize) -> WrongTokens {
        let per_minute = NonZeroU32::new(WRONG_TOKENS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        WrongTokens {
            limiter: AddressLimiter::new(Quota::per_minute(per_minute), max_addresses),
            blocked: DashMap::new(),
        }
    }

    /// How long `address` must wait before presenting a token again, if it
    /// must.
    pub fn wait_for(&self, address: IpAddr) -> Option<Duration> {
        let key = key_of(address);
        let now = Instant::now();
        let until = *self.blocked.get(&key)?;
        if until > now {
            return Some(until - now);
        }
        self.blocked.remove_if(&key, |_, until| *until <= now);
        None
    }

    /// `address` presented a wrong token: past the quota, it waits.
    pub fn failed(&self, address: IpAddr) -> Option<Duration> {
        let wait = self.limiter.check(address)?;
        let now = Instant::now();
        // The waits that are over are forgotten as new ones come: as few
        // are kept as addresses wait.
        if self.blocked.len() >= self.limiter.max_addresses {
            self.blocked.retain(|_, until| *until > now);
            if self.blocked.len() >= self.limiter.max_addresses {
                self.blocked.clear();
            }
        }
        self.blocked.insert(key_of(address), now + wait);
        Some(wait)
    }
}

/// Calls to the anonymous routes, by address.
pub struct AnonymousCalls {
    limiter: AddressLimiter,
}

impl AnonymousCalls {
    /// `per_minute` calls from one address in a minute (the setting is at
    /// least 1; a 0 would let one call a minute through all the same).
    pub fn new(per_minute: u32) -> AnonymousCalls {
        AnonymousCalls::with_capacity(per_minute, MAX_ADDRESSES)
    }

    fn with_capacity(per_minute: u32, max_addresses: usize) -> AnonymousCalls {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        AnonymousCalls {
            limiter: AddressLimiter::new(Quota::per_minute(per_minute), max_addresses),
        }
    }

    /// Counts a call from `address`: past the quota, how long to wait.
    pub fn call(&self, address: IpAddr) -> Option<Duration> {
        self.limiter.check(address)
    }
}

/// What the addresses calling this instance may try: the two limiters, and
/// the proxies whose forwarding header says which address a request is
/// counted under. It is handed what it needs, so that it knows nothing of
/// the application's state (which holds it).
pub struct Limits {
    wrong_tokens: WrongTokens,
    anonymous_calls: AnonymousCalls,
    proxies: Proxies,
}

/// The proxies in front of the server, and the header they write.
pub struct Proxies {
    /// Their addresses (IPv4-mapped IPv6 as IPv4).
    pub trusted: Vec<IpAddr>,
    pub header: ForwardedHeader,
}

impl Limits {
    pub fn new(anonymous_calls_per_minute: u32, proxies: Proxies) -> Limits {
        let proxies = Proxies {
            trusted: proxies.trusted.iter().map(IpAddr::to_canonical).collect(),
            header: proxies.header,
        };
        Limits {
            wrong_tokens: WrongTokens::default(),
            anonymous_calls: AnonymousCalls::new(anonymous_calls_per_minute),
            proxies,
        }
    }

    /// The address `request` is counted under (see [`client_address`]).
    pub fn client_address(&self, request: &HttpRequest) -> Option<IpAddr> {
        client_address(request, &self.proxies)
    }

    /// How long the request's address must wait before a token it presents
    /// is even looked at, if it must (it guessed too often).
    pub fn guessing_wait(&self, request: &HttpRequest) -> Option<Duration> {
        let address = self.client_address(request)?;
        self.wrong_tokens.wait_for(address)
    }

    /// Lets an anonymous call through, or answers `429` with how long to
    /// wait: too many calls from its address, or too many wrong guesses.
    pub fn anonymous_call(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let Some(address) = self.client_address(request) else {
            return Ok(());
        };
        if let Some(wait) = self.wrong_tokens.wait_for(address) {
            return Err(ApiError::TooManyAttempts(wait));
        }
        match self.anonymous_calls.call(address) {
            Some(wait) => Err(ApiError::TooManyRequests(wait)),
            None => Ok(()),
        }
    }

    /// A wrong guess (a token, a sign-in code, a Checkout Session id) from
    /// the request's address: `429` once the address has guessed too often
    /// in a minute, else `answer`.
    pub fn wrong_guess(&self, request: &HttpRequest, answer: ApiError) -> ApiError {
        let address = self.client_address(request);
        match address.and_then(|address| self.wrong_tokens.failed(address)) {
            Some(wait) => ApiError::TooManyAttempts(wait),
            None => answer,
        }
    }
}

/// The address a request is counted under: the connection's peer, or,
/// when the peer is a trusted proxy, the client its forwarding header
/// names. The header's hops (every line of it, in order) are walked from
/// the right: a trusted proxy is passed, the first hop that is not one is
/// the client, and a hop that does not parse ends the walk at the last
/// trusted one (so what a client writes into the header before the first
/// proxy is never believed, and a garbled hop lumps its requests together
/// rather than letting them choose). IPv4-mapped IPv6 is taken as IPv4.
pub fn client_address(request: &HttpRequest, proxies: &Proxies) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip().to_canonical();
    if !proxies.trusted.contains(&peer) {
        return Some(peer);
    }
    let name = match proxies.header {
        ForwardedHeader::XForwardedFor => "X-Forwarded-For",
        ForwardedHeader::Forwarded => "Forwarded",
    };
    // Every line, in the order received; a line that is not text is a hop
    // that does not parse.
    let lines: Vec<Option<&str>> = request
        .headers()
        .get_all(name)
        .map(|value| value.to_str().ok())
        .collect();
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for line in lines {
        match line {
            None => hops.push(None),
            Some(line) => hops.extend(line.split(',').map(|hop| match proxies.header {
                ForwardedHeader::XForwardedFor => parse_hop(hop),
                ForwardedHeader::Forwarded => forwarded_for(hop),
            })),
        }
    }
    let mut counted = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(address) if proxies.trusted.contains(&address) => counted = address,
            Some(address) => return Some(address),
            None => return Some(counted),
        }
    }
    Some(counted)
}

/// One hop's address: `203.0.113.7`, `2001:db8::1`, or with a port as some
/// load balancers write it (`203.0.113.7:5555`, `[2001:db8::1]:443`);
/// IPv4-mapped IPv6 as IPv4. Anything else does not parse.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Some(bracketed) = hop.strip_prefix('[') {
        let (address, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return address
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|address| IpAddr::V6(address).to_canonical());
    }
    let (address, port) = hop.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// The address of one `Forwarded` element (`for=192.0.2.60;proto=http`,
/// `for="[2001:db8:cafe::17]:4711"`); an element without `for`, or whose
/// `for` is `unknown` or an obfuscated name, does not parse.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|quoted| quoted.strip_suffix('"'))
            .unwrap_or(value);
        parse_hop(value)
    })
}

/// How many books (`GET /v1/admin/reports/credit` and its CSV) one server
/// reads at once. Each reads every ledger row before its period's end (a
/// second or two for a million rows, a core while it runs, on a reader of
/// its own), so two at once leave the other core, and the store's readers,
/// to everything else.
pub const BOOKS_AT_ONCE: usize = 2;

/// How long a books read refused for the limit is told to wait
/// (`Retry-After`): about as long as the books of a large ledger take.
pub const BOOKS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The books being read by this server: at most [`BOOKS_AT_ONCE`], the
/// one beyond refused at once (`503 books_busy`, never queued: a queue
/// would hold the caller's connection and a worker's attention as long).
pub struct BooksReads(tokio::sync::Semaphore);

impl Default for BooksReads {
    fn default() -> BooksReads {
        BooksReads(tokio::sync::Semaphore::new(BOOKS_AT_ONCE))
    }
}

impl BooksReads {
    /// One more books read, held until the permit is dropped (its answer
    /// made); or `503 books_busy` with [`BOOKS_RETRY_AFTER`].
    pub fn start(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.0.try_acquire().map_err(|_| ApiError::BooksBusy {
            at_once: BOOKS_AT_ONCE,
            retry_after: BOOKS_RETRY_AFTER,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key_of(one), key_of(same));
        assert_ne!(key_of(one), key_of(other));
        assert_eq!(counted_as(one), "2001:db8:1:2::/64");
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(key_of(v4), v4);
        assert_eq!(
            counted_as("::ffff:203.0.113.7".parse().unwrap()),
            "203.0.113.7"
        );
    }

    #[test]
    fn an_ipv6_address_that_carries_an_ipv4_one_is_counted_as_it() {
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        for carrier in [
            // NAT64's well-known prefix.
            "64:ff9b::198.51.100.1",
            "64:ff9b::c633:6401",
            // IPv4-compatible.
            "::198.51.100.1",
            // 6to4: every /64 of the site.
            "2002:c633:6401::1",
            "2002:c633:6401:ffff:1:2:3:4",
            // Teredo: the client's address inverted, whatever the server
            // and port.
            "2001:0:4136:e378:8000:63bf:39cc:9bfe",
            "2001:0:5ef5:79fd:0:1234:39cc:9bfe",
        ] {
            let address: IpAddr = carrier.parse().unwrap();
            assert_eq!(key_of(address), v4, "{carrier}");
            assert_eq!(counted_as(address), "198.51.100.1", "{carrier}");
        }
        for (one, other) in [
            ("64:ff9b::198.51.100.1", "64:ff9b::198.51.100.2"),
            ("2002:c633:6401::1", "2002:c633:6402::1"),
            (
                "2001:0:4136:e378:8000:63bf:39cc:9bfe",
                "2001:0:4136:e378:8000:63bf:39cc:9bfd",
            ),
        ] {
            let (one, other): (IpAddr, IpAddr) = (one.parse().unwrap(), other.parse().unwrap());
            assert_ne!(key_of(one), key_of(other), "{one} and {other}");
        }
        // Loopback and the unspecified address are not IPv4-compatible
        // addresses of 0.0.0.0/8: they stay IPv6.
        for plain in ["::1", "::"] {
            let address: IpAddr = plain.parse().unwrap();
            assert!(key_of(address).is_ipv6(), "{plain}");
        }
    }

    #[test]
    fn memory_stays_bounded_under_rotating_addresses() {
        let calls = AnonymousCalls::with_capacity(60, 1_000);
        let wrong = WrongTokens::with_capacity(1_000);
        for index in 0..20_000u32 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + index));
            assert_eq!(calls.call(address), None);
            for _ in 0..21 {
                wrong.failed(address);
            }
            assert!(calls.limiter.len() <= 1_000, "{}", calls.limiter.len());
            assert!(wrong.limiter.len() <= 1_000);
            assert!(wrong.blocked.len() <= 1_000);
        }
        // One address's quota still holds between sweeps.
        let calls = AnonymousCalls::with_capacity(3, 1_000);
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(calls.call(address), None);
        }
        assert!(calls.call(address).is_some());
    }

    #[test]
    fn hops_parse_as_proxies_write_them() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for (hop, expected) in [
            ("203.0.113.7", Some(v4)),
            (" 203.0.113.7 ", Some(v4)),
            ("203.0.113.7:5555", Some(v4)),
            ("::ffff:203.0.113.7", Some(v4)),
            ("[::ffff:203.0.113.7]:80", Some(v4)),
            ("2001:db8::1", Some(v6)),
            ("[2001:db8::1]", Some(v6)),
            ("[2001:db8::1]:443", Some(v6)),
            ("unknown", None),
            ("", None),
            ("203.0.113.7:port", None),
            ("[2001:db8::1]x", None),
            ("203.0.113.7:123456", None),
        ] {
            assert_eq!(parse_hop(hop), expected, "{hop:?}");
        }
        for (element, expected) in [
            ("for=203.0.113.7", Some(v4)),
            ("proto=https;For=\"[2001:db8::1]:4711\"", Some(v6)),
            ("for=unknown", None),
            ("for=_hidden", None),
            ("by=203.0.113.7", None),
        ] {
            assert_eq!(forwarded_for(element), expected, "{element:?}");
        }
    }
}

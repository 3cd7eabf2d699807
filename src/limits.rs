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
//! What must hold across instances (sign-in codes per phone and per
//! address, `BUY` per day) is counted in the store instead.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Wrong tokens one address may present in a minute.
const WRONG_TOKENS_PER_MINUTE: u32 = 20;

/// Wrong admin, API and metrics tokens, by the address that sent them.
pub struct WrongTokens {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses refused until then, without looking at what they present.
    blocked: DashMap<IpAddr, Instant>,
}

impl Default for WrongTokens {
    fn default() -> WrongTokens {
        let per_minute = NonZeroU32::new(WRONG_TOKENS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        WrongTokens {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: DashMap::new(),
        }
    }
}

impl WrongTokens {
    /// How long `address` must wait before presenting a token again, if it
    /// must.
    pub fn wait_for(&self, address: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let until = *self.blocked.get(&address)?;
        if until > now {
            return Some(until - now);
        }
        self.blocked.remove_if(&address, |_, until| *until <= now);
        None
    }

    /// `address` presented a wrong token: past the quota, it waits.
    pub fn failed(&self, address: IpAddr) -> Option<Duration> {
        let clock = DefaultClock::default();
        match self.limiter.check_key(&address) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(clock.now())
                    .max(Duration::from_secs(1));
                self.blocked.insert(address, Instant::now() + wait);
                self.limiter.retain_recent();
                Some(wait)
            }
        }
    }
}

/// Calls to the anonymous routes, by address.
pub struct AnonymousCalls {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl AnonymousCalls {
    /// `per_minute` calls from one address in a minute (the setting is at
    /// least 1; a 0 would let one call a minute through all the same).
    pub fn new(per_minute: u32) -> AnonymousCalls {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        AnonymousCalls {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
        }
    }

    /// Counts a call from `address`: past the quota, how long to wait.
    pub fn call(&self, address: IpAddr) -> Option<Duration> {
        let clock = DefaultClock::default();
        match self.limiter.check_key(&address) {
            Ok(()) => None,
            Err(not_until) => {
                self.limiter.retain_recent();
                Some(
                    not_until
                        .wait_time_from(clock.now())
                        .max(Duration::from_secs(1)),
                )
            }
        }
    }
}

/// What the addresses calling this instance may try: the two limiters, and
/// the proxies whose `X-Forwarded-For` says which address a request is
/// counted under. It is handed what it needs, so that it knows nothing of
/// the application's state (which holds it).
pub struct Limits {
    wrong_tokens: WrongTokens,
    anonymous_calls: AnonymousCalls,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    pub fn new(anonymous_calls_per_minute: u32, trusted_proxies: Vec<IpAddr>) -> Limits {
        Limits {
            wrong_tokens: WrongTokens::default(),
            anonymous_calls: AnonymousCalls::new(anonymous_calls_per_minute),
            trusted_proxies,
        }
    }

    /// The address `request` is counted under (see [`client_address`]).
    pub fn client_address(&self, request: &HttpRequest) -> Option<IpAddr> {
        client_address(request, &self.trusted_proxies)
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

/// The address a request is counted under: the connection's peer, or, when
/// the peer is one of `trusted` proxies, the last address in its
/// `X-Forwarded-For` that is not a trusted proxy itself (what a client
/// writes into the header before the first proxy is not believed).
pub fn client_address(request: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = request
        .headers()
        .get("X-Forwarded-For")
        .and_then(|value| value.to_str().ok())
        // No (readable) header: no hop is found below, and the peer counts.
        .unwrap_or_default();
    let client = forwarded
        .rsplit(',')
        .map(str::trim)
        .filter_map(|hop| hop.parse::<IpAddr>().ok())
        .find(|hop| !trusted.contains(hop));
    Some(client.unwrap_or(peer))
}

//! Limits on what one caller may try (GCRA, by `governor`), counted per
//! instance by client address:
//! - wrong tokens (and wrong sign-in codes, unknown checkout sessions):
//!   20 in a minute, then `429` with `Retry-After` until the address has
//!   earned another try. A guess is as slow on each instance, and tokens
//!   are 16 characters or more, so the count need not be shared;
//! - calls to the anonymous routes (quote, sign-in, access checkout,
//!   checkout status): 60 in a minute, bursts of 60, then `429`.
//!
//! What must hold across instances (sign-in codes per phone and per
//! address, `BUY` per day) is counted in the store instead.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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

/// Calls to anonymous routes one address may make in a minute.
const ANONYMOUS_CALLS_PER_MINUTE: u32 = 60;

/// Calls to the anonymous routes, by address.
pub struct AnonymousCalls {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for AnonymousCalls {
    fn default() -> AnonymousCalls {
        let per_minute = NonZeroU32::new(ANONYMOUS_CALLS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        AnonymousCalls {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
        }
    }
}

impl AnonymousCalls {
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

/// Lets an anonymous call through, or answers `429` with how long to
/// wait: too many calls from its address, or too many wrong guesses.
pub fn anonymous_call(
    state: &crate::state::AppState,
    request: &actix_web::HttpRequest,
) -> Result<(), crate::error::ApiError> {
    let Some(address) = client_address(request, &state.settings.access.trusted_proxies) else {
        return Ok(());
    };
    if let Some(wait) = state.wrong_tokens.wait_for(address) {
        return Err(crate::error::ApiError::TooManyAttempts(wait));
    }
    match state.anonymous_calls.call(address) {
        Some(wait) => Err(crate::error::ApiError::TooManyRequests(wait)),
        None => Ok(()),
    }
}

/// A wrong guess (a token, a sign-in code, a Checkout Session id) from the
/// request's address: `429` once the address has guessed too often in a
/// minute, else `answer`.
pub fn wrong_guess(
    state: &crate::state::AppState,
    request: &actix_web::HttpRequest,
    answer: crate::error::ApiError,
) -> crate::error::ApiError {
    let address = client_address(request, &state.settings.access.trusted_proxies);
    match address.and_then(|address| state.wrong_tokens.failed(address)) {
        Some(wait) => crate::error::ApiError::TooManyAttempts(wait),
        None => answer,
    }
}

/// The address a request is counted under: the connection's peer, or, when
/// the peer is one of `trusted` proxies, the last address in its
/// `X-Forwarded-For` that is not a trusted proxy itself (what a client
/// writes into the header before the first proxy is not believed).
pub fn client_address(request: &actix_web::HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
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

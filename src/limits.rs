//! Limits on what one caller may try: wrong tokens from one address are
//! slowed (GCRA, by `governor`): 20 in a minute, then `429` with
//! `Retry-After` until the address has earned another try. Counted per
//! instance: a guess is as slow on each, and tokens are 16 characters or
//! more, so the count need not be shared.

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

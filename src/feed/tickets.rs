//! Feed tickets: a browser cannot put a header on a websocket, so an
//! authenticated `POST` gets a random ticket, usable once within
//! [`TICKET_LIFETIME`], to put in the feed URL instead of a long-lived token.

use std::time::Duration;

use dashmap::DashMap;
use sms_credit_actors::{AccountId, StoreError};

/// How long a ticket stays valid.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// What a feed caller may watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedScope {
    Account(AccountId),
    /// Every account (the admin feed).
    Admin,
}

/// A ticket's scope, and the hash of the account token it was bought with
/// (`None` for the admin's): redeemed only while that token is live.
pub type Redeemed = (FeedScope, Option<String>);

/// The tickets issued and not yet used or expired.
#[derive(Default)]
pub struct Tickets {
    open: DashMap<String, (Redeemed, i64)>,
}

impl Tickets {
    /// A new single-use ticket for `scope`.
    pub fn issue(
        &self,
        scope: FeedScope,
        token_hash: Option<String>,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        self.open.retain(|_, (_, expires_at)| *expires_at > now_ms);
        let ticket = sms_credit_actors::random::random_secret("sft_")?;
        let expires_at = now_ms + sms_credit_actors::clock::millis(TICKET_LIFETIME);
        self.open
            .insert(ticket.clone(), ((scope, token_hash), expires_at));
        Ok(ticket)
    }

    /// Uses a ticket up: its scope and token if it was open and unexpired.
    pub fn redeem(&self, ticket: &str, now_ms: i64) -> Option<Redeemed> {
        let (_, (redeemed, expires_at)) = self.open.remove(ticket)?;
        (expires_at > now_ms).then_some(redeemed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_ticket_works_once_and_not_after_it_expires() {
        let tickets = Tickets::default();
        let scope = FeedScope::Account(AccountId(7));
        let ticket = tickets.issue(scope, Some("hash".into()), 1_000).unwrap();
        assert!(ticket.starts_with("sft_"));
        assert_eq!(
            tickets.redeem(&ticket, 2_000),
            Some((scope, Some("hash".into())))
        );
        assert_eq!(tickets.redeem(&ticket, 2_000), None, "single use");
        let late = tickets.issue(FeedScope::Admin, None, 1_000).unwrap();
        assert_eq!(tickets.redeem(&late, 1_000 + 30_000), None, "expired");
        assert_eq!(tickets.redeem("sft_guess", 1_000), None);
    }
}

//! Feed tickets: a browser cannot put a header on a websocket, so an
//! authenticated `POST` buys a random ticket, usable once within
//! [`TICKET_LIFETIME`], to put in the feed URL instead of a long-lived
//! token. Tickets live in the store, kept only as their SHA-256 (as tokens
//! are), so that one bought from one instance opens the feed on any other
//! sharing the database; the store deletes a ticket in the statement that
//! redeems it, so it is used once however many instances try at once. A
//! ticket bought with an account token opens a feed only while that token
//! is live.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::access_tokens;
use crate::ledger::AccountId;
use crate::store::{Store, StoreError, UnknownValue};

/// How long a ticket stays valid.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// At most this many expired tickets are deleted each time one is issued
/// (by both adapters): more than are issued, so they never pile up, and
/// few enough that issuing stays quick.
pub const EXPIRED_DELETED_PER_ISSUE: i64 = 16;

/// Every ticket starts with this, so a leaked one is recognisable.
const PREFIX: &str = "sft_";

/// What a feed caller may watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedScope {
    Account(AccountId),
    /// Every account (the admin feed).
    Admin,
}

impl FeedScope {
    /// As the store keeps it: `account` with the account's id, or `admin`.
    pub fn stored(self) -> (&'static str, Option<i64>) {
        match self {
            FeedScope::Account(account_id) => ("account", Some(account_id.0)),
            FeedScope::Admin => ("admin", None),
        }
    }

    /// Read back from the store, from the row of `ticket_hash`: an error
    /// naming the row (by the start of its hash) for what this release does
    /// not know (an account scope without its account, an admin scope with
    /// one, another scope).
    pub fn from_stored(
        ticket_hash: &str,
        scope: &str,
        account_id: Option<i64>,
    ) -> Result<FeedScope, StoreError> {
        match (scope, account_id) {
            ("account", Some(account_id)) => Ok(FeedScope::Account(AccountId(account_id))),
            ("admin", None) => Ok(FeedScope::Admin),
            _ => Err(StoreError::UnknownValue(UnknownValue::new(
                "feed_tickets",
                format!("{}…", ticket_hash.get(..12).unwrap_or(ticket_hash)),
                "scope",
                match account_id {
                    Some(account_id) => format!("{scope} {account_id}"),
                    None => scope.to_string(),
                },
            ))),
        }
    }
}

/// A ticket as its buyer gets it: the only time it exists unhashed. Never
/// shown in `Debug`.
pub struct FeedTicket(String);

impl FeedTicket {
    /// The ticket, to hand to the buyer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for FeedTicket {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("FeedTicket(…)")
    }
}

/// What the store keeps of a new ticket.
#[derive(Clone)]
pub struct NewFeedTicket {
    /// The ticket's SHA-256 ([`hash`]).
    pub ticket_hash: String,
    pub scope: FeedScope,
    /// The hash of the account token it was bought with (`None`: the admin's).
    pub token_hash: Option<String>,
    pub expires_at_ms: i64,
}

/// A ticket the store gave up: what it opens, and the hash of the account
/// token it was bought with (`None` for the admin's).
#[derive(Clone, PartialEq, Eq)]
pub struct RedeemedTicket {
    pub scope: FeedScope,
    pub token_hash: Option<String>,
}

impl std::fmt::Debug for RedeemedTicket {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedeemedTicket")
            .field("scope", &self.scope)
            .field("bought_with_a_token", &self.token_hash.is_some())
            .finish()
    }
}

/// What the store keeps of a ticket.
pub fn hash(ticket: &str) -> String {
    hex::encode(Sha256::digest(ticket.as_bytes()))
}

/// A new single-use ticket for `scope`, bought with the account token of
/// hash `token_hash` (`None`: the admin's), stored before it is answered.
pub async fn issue(
    store: &Store,
    scope: FeedScope,
    token_hash: Option<String>,
    now_ms: i64,
) -> Result<FeedTicket, StoreError> {
    let ticket = crate::random::random_secret(PREFIX)?;
    let new = NewFeedTicket {
        ticket_hash: hash(&ticket),
        scope,
        token_hash,
        expires_at_ms: now_ms.saturating_add(crate::clock::millis(TICKET_LIFETIME)),
    };
    store.feed_tickets().issue(new, now_ms).await?;
    Ok(FeedTicket(ticket))
}

/// Uses a ticket up, on whichever instance it was bought: what it opens,
/// if it was open, unexpired at `now_ms` and, when an account token
/// bought it, that token is still live. A ticket of a revoked token is
/// used up all the same.
pub async fn redeem(
    store: &Store,
    ticket: &str,
    now_ms: i64,
) -> Result<Option<RedeemedTicket>, StoreError> {
    if !ticket.starts_with(PREFIX) {
        return Ok(None);
    }
    let Some(redeemed) = store.feed_tickets().redeem(hash(ticket), now_ms).await? else {
        return Ok(None);
    };
    if let (FeedScope::Account(account_id), Some(token_hash)) =
        (redeemed.scope, &redeemed.token_hash)
    {
        if access_tokens::live(store, account_id, token_hash, now_ms)
            .await?
            .is_none()
        {
            return Ok(None);
        }
    }
    Ok(Some(redeemed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_kept_as_its_sha256_and_never_shown() {
        assert_eq!(
            hash("sft_abc"),
            hex::encode(Sha256::digest(b"sft_abc")),
            "SHA-256, in hex"
        );
        let ticket = FeedTicket("sft_secret".to_string());
        assert_eq!(format!("{ticket:?}"), "FeedTicket(…)");
        let redeemed = RedeemedTicket {
            scope: FeedScope::Account(AccountId(7)),
            token_hash: Some("0123abcd".to_string()),
        };
        assert!(!format!("{redeemed:?}").contains("0123abcd"));
    }

    #[test]
    fn a_scope_reads_back_as_it_was_stored_and_nothing_else_reads() {
        for scope in [FeedScope::Account(AccountId(7)), FeedScope::Admin] {
            let (text, account_id) = scope.stored();
            assert_eq!(FeedScope::from_stored("ab", text, account_id), Ok(scope));
        }
        let hash = "0123456789abcdef";
        for (scope, account_id, named) in [
            (
                "account",
                None,
                "feed_tickets row 0123456789ab…: unknown scope 'account'",
            ),
            ("admin", Some(7), "unknown scope 'admin 7'"),
            ("owner", Some(7), "unknown scope 'owner 7'"),
        ] {
            let error = FeedScope::from_stored(hash, scope, account_id).unwrap_err();
            assert!(
                matches!(error, StoreError::UnknownValue(_)) && error.to_string().contains(named),
                "{error}"
            );
        }
    }
}

//! Account tokens: random secrets an account holder signs in with, shown
//! once at issue and stored only as their SHA-256, revocable by an admin.

use sha2::{Digest, Sha256};

use crate::ledger::AccountId;
use crate::store::{Store, StoreError};

/// Every token starts with this, so a leaked one is recognisable.
const PREFIX: &str = "sct_";

/// What the store keeps of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits from the operating system).
pub fn generate() -> Result<String, StoreError> {
    crate::random::random_secret(PREFIX)
}

/// Issues a token for an account; `None` if there is no such account.
pub async fn issue(
    store: &Store,
    account_id: AccountId,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    let token = generate()?;
    let stored = store
        .tokens()
        .issue(account_id, hash(&token), now_ms)
        .await?;
    Ok(stored.then_some(token))
}

/// Revokes every token of an account and issues a new one, in one
/// transaction: how many were revoked and the new token, or `None` if
/// there is no such account.
pub async fn rotate(
    store: &Store,
    account_id: AccountId,
    now_ms: i64,
) -> Result<Option<(usize, String)>, StoreError> {
    let token = generate()?;
    let revoked = store
        .tokens()
        .rotate(account_id, hash(&token), now_ms)
        .await?;
    if revoked.is_some() {
        store.tokens_changed(account_id);
    }
    Ok(revoked.map(|revoked| (revoked, token)))
}

/// Revokes every live token of an account and tells this process's open
/// feeds (other processes learn it from the store's change note); answers
/// how many were revoked.
pub async fn revoke_all(
    store: &Store,
    account_id: AccountId,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let revoked = store.tokens().revoke_all(account_id, now_ms).await?;
    store.tokens_changed(account_id);
    Ok(revoked)
}

/// Whether the token of this hash is live and the account's.
pub async fn is_live(
    store: &Store,
    account_id: AccountId,
    token_hash: &str,
) -> Result<bool, StoreError> {
    let owner = store.tokens().account_of(token_hash.to_string()).await?;
    Ok(owner == Some(account_id))
}

/// The account a live token belongs to.
pub async fn account_of(store: &Store, token: &str) -> Result<Option<AccountId>, StoreError> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    store.tokens().account_of(hash(token)).await
}

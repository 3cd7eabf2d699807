//! Account tokens: random secrets an account holder signs in with, shown
//! once at issue and stored only as their SHA-256, revocable by an admin.
//! An admin's token lives until revoked; one made by signing in by phone
//! also expires.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ledger::AccountId;
use crate::store::{Store, StoreError};

/// Who made a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// Issued or rotated by the admin API or CLI.
    Admin,
    /// Made by signing in with the phone.
    SignIn,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Admin => "admin",
            TokenSource::SignIn => "sign_in",
        }
    }

    pub fn parse(text: &str) -> Option<TokenSource> {
        match text {
            "admin" => Some(TokenSource::Admin),
            "sign_in" => Some(TokenSource::SignIn),
            _ => None,
        }
    }
}

/// What is known of a token, never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRecord {
    pub id: i64,
    pub source: TokenSource,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
    /// `None`: until revoked.
    #[serde(
        rename = "expires_at",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at_ms: Option<i64>,
    #[serde(
        rename = "revoked_at",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub revoked_at_ms: Option<i64>,
}

/// A live token: whose, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveToken {
    pub account_id: AccountId,
    /// `None`: until revoked.
    pub expires_at_ms: Option<i64>,
}

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

/// The token of this hash if it is live at `now_ms` and the account's.
pub async fn live(
    store: &Store,
    account_id: AccountId,
    token_hash: &str,
    now_ms: i64,
) -> Result<Option<LiveToken>, StoreError> {
    let found = store
        .tokens()
        .account_of(token_hash.to_string(), now_ms)
        .await?;
    Ok(found.filter(|live| live.account_id == account_id))
}

/// The live token a caller presents, with its account.
pub async fn account_of(
    store: &Store,
    token: &str,
    now_ms: i64,
) -> Result<Option<LiveToken>, StoreError> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    store.tokens().account_of(hash(token), now_ms).await
}

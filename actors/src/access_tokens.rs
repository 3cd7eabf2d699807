//! Account tokens: random secrets an account holder signs in with, shown
//! once at issue and stored only as their SHA-256, revocable by an admin.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::ledger::AccountId;
use crate::store::StoreError;

/// Every token starts with this, so a leaked one is recognisable.
const PREFIX: &str = "sct_";

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits from the operating system).
pub fn generate() -> Result<String, StoreError> {
    random_secret(PREFIX)
}

/// `prefix` and 256 random bits from the operating system, in hex.
pub fn random_secret(prefix: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| StoreError::Database(format!("no randomness: {error}")))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// Stores the hash of a new token for an account and returns the token.
pub fn issue(
    connection: &Connection,
    account_id: AccountId,
    now_ms: i64,
) -> Result<String, StoreError> {
    let token = generate()?;
    connection
        .prepare_cached(
            "INSERT INTO account_tokens (account_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![account_id.0, hash(&token), now_ms])?;
    Ok(token)
}

/// Revokes every live token of an account; returns how many.
pub fn revoke_all(
    connection: &Connection,
    account_id: AccountId,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let revoked = connection
        .prepare_cached("UPDATE account_tokens SET revoked_at = ?2 WHERE account_id = ?1 AND revoked_at IS NULL")?
        .execute(params![account_id.0, now_ms])?;
    Ok(revoked)
}

/// The account a live token belongs to.
pub fn find_account(connection: &Connection, token: &str) -> Result<Option<AccountId>, StoreError> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let found = connection
        .prepare_cached(
            "SELECT account_id FROM account_tokens WHERE token_hash = ?1 AND revoked_at IS NULL",
        )?
        .query_row([hash(token)], |row| row.get(0))
        .optional()?;
    Ok(found.map(AccountId))
}

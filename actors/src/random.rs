//! Random secrets from the operating system: tokens, tickets, instance
//! names. At the bottom, so the store and the token code both import it.

use crate::store::error::StoreError;

/// `prefix` and 256 random bits from the operating system, in hex.
pub fn random_secret(prefix: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| StoreError::Database(format!("no randomness: {error}")))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

//! The ledger's vocabulary: account ids, idempotency keys, kinds of
//! transaction, ledger rows and the per-account snapshot.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::money::Money;

/// The id of an account (the `accounts.id` row id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub i64);

impl fmt::Display for AccountId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A caller's name for one mutation, so that a retry takes effect once.
/// Non-empty, at most 255 bytes, printable ASCII without spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

/// Why a string is not an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1 to 255 printable ASCII characters without spaces")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        let valid = !text.is_empty()
            && text.len() <= MAX_IDEMPOTENCY_KEY_LEN
            && text.bytes().all(|byte| byte.is_ascii_graphic());
        if valid {
            Ok(IdempotencyKey(Arc::from(text)))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What a ledger row records; stored as its lower-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionKind {
    /// Money paid in (Stripe checkout, top-up, off-session charge).
    Credit,
    /// Credit spent on messages; never takes the balance below zero.
    Debit,
    /// Money given back: positive when a failed message is refunded to the
    /// account, negative when a payment is refunded to the card.
    Refund,
    /// An administrator's correction; may take the balance below zero.
    Adjustment,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionKind::Credit => "credit",
            TransactionKind::Debit => "debit",
            TransactionKind::Refund => "refund",
            TransactionKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(text: &str) -> Option<TransactionKind> {
        match text {
            "credit" => Some(TransactionKind::Credit),
            "debit" => Some(TransactionKind::Debit),
            "refund" => Some(TransactionKind::Refund),
            "adjustment" => Some(TransactionKind::Adjustment),
            _ => None,
        }
    }
}

impl fmt::Display for TransactionKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One row of the append-only ledger (`transactions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub account_id: AccountId,
    /// Position in the account's ledger: 1, 2, 3, … without gaps.
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: TransactionKind,
    /// Signed: credits positive, debits negative.
    #[serde(rename = "amount_micros")]
    pub amount: Money,
    #[serde(rename = "balance_micros")]
    pub balance_after: Money,
    pub idempotency_key: String,
    pub order_id: Option<i64>,
    pub description: String,
    /// Unix time in milliseconds.
    pub created_at_ms: i64,
}

/// The account actor's persisted state (`account_balances`): what the ledger
/// sums to, and when the last low-balance warning went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    #[serde(rename = "balance_micros")]
    pub balance: Money,
    pub seq: i64,
    pub low_balance_warned_at_ms: Option<i64>,
}

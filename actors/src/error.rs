//! What can go wrong when asking an account actor to change or tell a balance.

use crate::ledger::{AccountId, TransactionKind};
use crate::money::{Money, MoneyError};
use crate::store::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("account {0} does not exist")]
    AccountNotFound(AccountId),
    #[error("insufficient credit: the balance is {balance}, this needs {needed}")]
    InsufficientCredit { balance: Money, needed: Money },
    #[error(
        "idempotency key '{key}' was already used for {} of {existing_amount} micro-dollars; \
         a retry must repeat the same operation",
        .existing_kind.with_article()
    )]
    IdempotencyConflict {
        key: String,
        existing_kind: TransactionKind,
        existing_amount: i64,
    },
    #[error("invalid idempotency key: {0}")]
    InvalidKey(&'static str),
    #[error("invalid amount: {0}")]
    InvalidAmount(&'static str),
    /// A grant's terms that cannot be (a negative adjustment with a
    /// category, say).
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// A grant asked to expire at or before now. Judged by the actor after
    /// the request's key, so that a retry of an adjustment made before its
    /// expiry passed is answered from its row instead.
    #[error("an expiry must be in the future")]
    ExpiryPassed,
    #[error("the balance would leave the range of a 64-bit amount")]
    Overflow,
    #[error("too many operations are waiting on this account; try again shortly")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the account actor stopped before it answered; nothing is known to have been applied")]
    Interrupted,
    /// The actor was passivating when the message arrived and did nothing;
    /// the registry sends it again to a fresh actor. Callers of the
    /// registry never see it.
    #[error("the account actor is passivating")]
    Passivated,
}

impl From<MoneyError> for LedgerError {
    fn from(_: MoneyError) -> LedgerError {
        LedgerError::Overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_names_the_earlier_operation_in_words() {
        let conflict = |existing_kind| LedgerError::IdempotencyConflict {
            key: "k".into(),
            existing_kind,
            existing_amount: -5,
        };
        assert!(conflict(TransactionKind::Adjustment)
            .to_string()
            .contains("used for an adjustment of -5 micro-dollars"));
        assert!(conflict(TransactionKind::Debit)
            .to_string()
            .contains("used for a debit of"));
    }
}

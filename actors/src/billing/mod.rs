//! Selling credit: pricing modes, discount codes, orders, the payment
//! gateway (Stripe, behind a trait), checkout, off-session charges, and the
//! Stripe events that complete, fail or refund orders.

pub mod auto_charge;
pub mod auto_top_up;
pub mod checkout;
pub mod claims;
pub mod discounts;
pub mod disputes;
pub mod event_log;
pub mod events;
pub mod gateway;
pub mod legacy_refunds;
pub mod orders;
pub mod pricing;
pub mod receipts;
pub mod refunds;
pub mod stripe_refunds;

use crate::error::LedgerError;
use crate::money::Money;
use crate::store::error::StoreError;

/// The one amount of a top-up, by Checkout on the web or by `BUY $10`: $10.
pub const TOP_UP: Money = Money::from_micros(10_000_000);

/// Why a billing operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("there is no discount code {0}")]
    UnknownDiscountCode(String),
    #[error("the discount code {0} is no longer active")]
    InactiveDiscountCode(String),
    #[error("the discount code {0} has been used as many times as it may be")]
    DiscountCodeUsedUp(String),
    #[error("this price comes to {0}, below Stripe's minimum charge of $0.50")]
    BelowMinimumCharge(crate::money::Money),
    #[error("the account {0} already has access")]
    AlreadyActive(crate::ledger::AccountId),
    #[error("account {0} does not exist")]
    AccountNotFound(crate::ledger::AccountId),
    #[error("the account has no saved card; top up on the web first")]
    NoSavedCard,
    #[error("the account has been charged {0} by SMS today, the most in a day")]
    DailyLimit(crate::money::Money),
    #[error("the account {0} is not active")]
    NotActive(crate::ledger::AccountId),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("order {0} does not exist")]
    OrderNotFound(i64),
    /// The order cannot be refunded (not paid, or nothing left).
    #[error("{0}")]
    NotRefundable(String),
    /// Stripe refused the refund (recorded as failed; nothing refunded).
    #[error("Stripe refused refund request {0}; nothing was refunded (the server's log says why)")]
    RefundRefused(i64),
    /// Asked about after its Stripe key could have been forgotten, Stripe
    /// had no refund for the request (recorded as failed; nothing
    /// refunded): a refund needs a new idempotency key.
    #[error("Stripe has no refund for refund request {0}, asked about after its key could have expired: nothing was refunded; ask again with a new idempotency key")]
    RefundNotMade(i64),
    /// A refund Stripe reported does not match what is recorded of it
    /// (another order, another amount): nothing was recorded.
    #[error(transparent)]
    RefundMismatch(#[from] stripe_refunds::RefundMismatch),
    #[error("the payment provider failed: {0}")]
    Gateway(String),
    /// The payment provider could not be reached, or asked to be asked
    /// later (its rate limit): nothing is known of what was asked.
    #[error("the payment provider is unavailable: {0}")]
    GatewayUnavailable(String),
    /// Another instance is doing the same thing right now; retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BillingError {
    /// A Stripe id that cannot be part of a ledger key (too long, or with
    /// spaces): refused rather than keyed some other way.
    pub(crate) fn invalid_id(what: &str, id: &str) -> BillingError {
        BillingError::Invalid(format!("the {what} id '{id}' is not a valid Stripe id"))
    }
}

impl crate::store::error::StoreCause for BillingError {
    fn store_cause(&self) -> Option<&StoreError> {
        match self {
            BillingError::Store(error) => Some(error),
            _ => None,
        }
    }
}

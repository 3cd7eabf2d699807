//! The ledger's vocabulary: account ids, idempotency keys, kinds of
//! transaction, ledger rows and the per-account snapshot.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::grants::{Funding, Remaining};
use crate::money::Money;

/// The id of an account (the `accounts.id` row id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// The prefixes of the keys the service makes itself (see the constructors
/// below). A key a caller chooses may not start with one, so that no
/// caller's key can ever stand in for, or block, one of the service's own.
pub const RESERVED_KEY_PREFIXES: &[&str] = &[
    "stripe-order:",
    "stripe-payment:",
    "stripe-refund:",
    "stripe-refund-failed:",
    "stripe-dispute:",
    "stripe-settle:",
    "msg:",
    "msg-void:",
    "msg-refund:",
    "grant-expiry:",
];

/// Why a caller's key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerKeyError {
    #[error(transparent)]
    Invalid(#[from] InvalidIdempotencyKey),
    #[error("idempotency keys starting with '{0}' are reserved for the service's own entries")]
    Reserved(&'static str),
}

impl IdempotencyKey {
    /// Any well-formed key. Callers outside the core use
    /// [`IdempotencyKey::from_caller`]; the service's own keys come from the
    /// named constructors, the one place each of them is spelled.
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

    /// A key chosen by a caller (an admin's adjustment): well-formed and not
    /// in the service's own namespace.
    pub fn from_caller(text: &str) -> Result<IdempotencyKey, CallerKeyError> {
        let key = IdempotencyKey::parse(text)?;
        match RESERVED_KEY_PREFIXES
            .iter()
            .find(|prefix| text.starts_with(**prefix))
        {
            Some(prefix) => Err(CallerKeyError::Reserved(prefix)),
            None => Ok(key),
        }
    }

    /// A key the service builds from parts it trusts to be well-formed
    /// (its own ids); anything else goes through [`IdempotencyKey::parse`].
    fn internal(text: String) -> IdempotencyKey {
        IdempotencyKey(Arc::from(text))
    }

    /// The credit of an order paid by Checkout (access or a top-up): one per order.
    pub fn stripe_order(order_id: i64) -> IdempotencyKey {
        IdempotencyKey::internal(format!("stripe-order:{order_id}"))
    }

    /// The credit of an off-session payment: one per PaymentIntent, whether
    /// learnt from Stripe's answer or from its webhook.
    pub fn stripe_payment(
        payment_intent_id: &str,
    ) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        IdempotencyKey::parse(&format!("stripe-payment:{payment_intent_id}"))
    }

    /// What a refund takes back: one per Stripe refund (or per order's
    /// legacy record, whose replacement settles the order). Rows made
    /// before refunds were counted one by one were keyed by the charge and
    /// its running total (`stripe-refund:{charge}:{cents}`).
    pub fn stripe_refund(refund_id: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        IdempotencyKey::parse(&format!("stripe-refund:{refund_id}"))
    }

    /// What a refund that failed gives back: one per Stripe refund.
    pub fn stripe_refund_failed(refund_id: &str) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        IdempotencyKey::parse(&format!("stripe-refund-failed:{refund_id}"))
    }

    /// What a dispute takes back (`stage` `withdrawn`) or gives back
    /// (`reinstated`): one per dispute and stage.
    pub fn stripe_dispute(
        dispute_id: &str,
        stage: &str,
    ) -> Result<IdempotencyKey, InvalidIdempotencyKey> {
        IdempotencyKey::parse(&format!("stripe-dispute:{dispute_id}:{stage}"))
    }

    /// A check of an order's credit against what its refunds and disputes
    /// claim, made when the account's ledger stood at `seq`: it writes a
    /// row only where the order's rows do not hold back what its claims
    /// hold (another instance's change met this one's, or a check failed
    /// before). Keyed by where the ledger stood, so that a check made later
    /// — after a row, or by a retry — is never answered from an earlier
    /// check's row. (An earlier release keyed its checks
    /// `stripe-settle:{pass}:{key of the change}`.)
    pub fn stripe_settle(order_id: i64, seq: i64) -> IdempotencyKey {
        IdempotencyKey::internal(format!("stripe-settle:order-{order_id}:at-{seq}"))
    }

    /// The debit that reserves an outbound message's cost.
    pub fn message(message_id: i64) -> IdempotencyKey {
        IdempotencyKey::internal(format!("msg:{message_id}"))
    }

    /// The outbound message this key debits, if it is one's
    /// ([`IdempotencyKey::message`]; a caller's key cannot take the prefix).
    pub fn message_id(&self) -> Option<i64> {
        self.as_str().strip_prefix("msg:")?.parse().ok()
    }

    /// The cost of a message that was not sent, given back.
    pub fn message_void(message_id: i64) -> IdempotencyKey {
        IdempotencyKey::internal(format!("msg-void:{message_id}"))
    }

    /// The outbound message whose cost this key gives back, if it is a
    /// void's ([`IdempotencyKey::message_void`]).
    pub fn voided_message_id(&self) -> Option<i64> {
        self.as_str().strip_prefix("msg-void:")?.parse().ok()
    }

    /// The cost of a message that failed inside Twilio, refunded.
    pub fn message_refund(message_id: i64) -> IdempotencyKey {
        IdempotencyKey::internal(format!("msg-refund:{message_id}"))
    }

    /// The outbound message whose cost this key gives back, if it is a
    /// void's or a refund's ([`IdempotencyKey::message_void`],
    /// [`IdempotencyKey::message_refund`]).
    pub fn given_back_message_id(&self) -> Option<i64> {
        let text = self.as_str();
        text.strip_prefix("msg-void:")
            .or_else(|| text.strip_prefix("msg-refund:"))?
            .parse()
            .ok()
    }

    /// What is left of a grant, taken when it expires: the expiry row at
    /// `seq` (a grant given back to after it expired expires again, at a
    /// later position).
    pub fn grant_expiry(grant_id: i64, seq: i64) -> IdempotencyKey {
        IdempotencyKey::internal(format!("grant-expiry:{grant_id}:{seq}"))
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// What was left of a grant when it expired, taken.
    Expiry,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionKind::Credit => "credit",
            TransactionKind::Debit => "debit",
            TransactionKind::Refund => "refund",
            TransactionKind::Adjustment => "adjustment",
            TransactionKind::Expiry => "expiry",
        }
    }

    pub fn parse(text: &str) -> Option<TransactionKind> {
        match text {
            "credit" => Some(TransactionKind::Credit),
            "debit" => Some(TransactionKind::Debit),
            "refund" => Some(TransactionKind::Refund),
            "adjustment" => Some(TransactionKind::Adjustment),
            "expiry" => Some(TransactionKind::Expiry),
            _ => None,
        }
    }
}

impl TransactionKind {
    /// "a credit", "an adjustment": the kind in a sentence.
    pub fn with_article(self) -> String {
        let kind = self.as_str();
        let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {kind}")
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
    /// What the account holder reads of the row.
    pub description: String,
    /// The operator's reason (adjustments; `None` for other rows): for the
    /// operator's eyes only, never in what an account token, the account
    /// page or the holder's feed is shown. Boxed: every write, receipt and
    /// feed message carries a row, and most rows have none, so it costs a
    /// row one pointer.
    pub reason: Option<Box<String>>,
    /// Unix time in milliseconds.
    pub created_at_ms: i64,
    /// The grants the row took from (positive) or gave back to (negative);
    /// the row's amount is the credit it made less their sum.
    pub funded_by: Funding,
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

/// Where an account stands: its snapshot and what is left of each of its
/// grants (`None` when not known: a database whose grants the backfill has
/// not made yet, or a note of another process that did not say them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub snapshot: Snapshot,
    pub grants: Option<Vec<Remaining>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_of_the_services_keys_is_spelled_in_one_place() {
        assert_eq!(IdempotencyKey::stripe_order(7).as_str(), "stripe-order:7");
        assert_eq!(
            IdempotencyKey::stripe_payment("pi_1").map(|key| key.to_string()),
            Ok("stripe-payment:pi_1".to_string())
        );
        assert_eq!(
            IdempotencyKey::stripe_refund("re_1").map(|key| key.to_string()),
            Ok("stripe-refund:re_1".to_string())
        );
        assert_eq!(IdempotencyKey::message(3).as_str(), "msg:3");
        assert_eq!(IdempotencyKey::message_void(3).as_str(), "msg-void:3");
        assert_eq!(IdempotencyKey::message_refund(3).as_str(), "msg-refund:3");
        assert_eq!(
            IdempotencyKey::grant_expiry(12, 40).as_str(),
            "grant-expiry:12:40"
        );
        assert_eq!(
            IdempotencyKey::message_void(3).given_back_message_id(),
            Some(3)
        );
        assert_eq!(
            IdempotencyKey::message_refund(4).given_back_message_id(),
            Some(4)
        );
        assert_eq!(IdempotencyKey::message(4).given_back_message_id(), None);
        assert!(IdempotencyKey::stripe_payment("pi with space").is_err());
        // Every constructor's prefix is reserved.
        assert_eq!(
            IdempotencyKey::stripe_settle(7, 12).as_str(),
            "stripe-settle:order-7:at-12"
        );
        for key in [
            IdempotencyKey::stripe_order(1),
            IdempotencyKey::stripe_settle(1, 1),
            IdempotencyKey::message(1),
            IdempotencyKey::message_void(1),
            IdempotencyKey::message_refund(1),
            IdempotencyKey::grant_expiry(1, 2),
        ] {
            assert!(matches!(
                IdempotencyKey::from_caller(key.as_str()),
                Err(CallerKeyError::Reserved(_))
            ));
        }
    }

    #[test]
    fn a_callers_key_cannot_use_the_services_namespace() {
        assert!(IdempotencyKey::from_caller("fix-42").is_ok());
        assert_eq!(
            IdempotencyKey::from_caller("stripe-order:12"),
            Err(CallerKeyError::Reserved("stripe-order:"))
        );
        assert_eq!(
            IdempotencyKey::from_caller("msg-void:3"),
            Err(CallerKeyError::Reserved("msg-void:"))
        );
        assert!(IdempotencyKey::from_caller("message-1").is_ok());
        assert!(matches!(
            IdempotencyKey::from_caller(""),
            Err(CallerKeyError::Invalid(_))
        ));
    }
}

//! What happened to a customer's money, as the host application is told:
//! the event types, and the payload `{"id", "type", "created_at", "data"}`.
//! `data` always carries `account_id` and, where a balance changed, `seq`
//! and `balance_micros`, so a receiver can order one account's events.

use serde_json::{json, Map, Value};

use crate::accounts::Card;
use crate::billing::disputes::DisputeRecord;
use crate::billing::orders::Order;
use crate::clock::format_rfc3339_ms;
use crate::grants::CreditGrant;
use crate::ledger::{AccountId, LedgerEntry};
use crate::money::Money;
use crate::store::error::StoreError;

/// Every event type; the endpoints' filters name these (or `*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A change took the balance below the low-balance threshold.
    BalanceLow,
    /// The balance can no longer pay one segment to the account's number.
    BalanceDepleted,
    /// A credit took a low balance back to the threshold or above.
    BalanceReplenished,
    PaymentSucceeded,
    PaymentRefunded,
    /// A payment was disputed (a chargeback): its credit is taken back.
    PaymentDisputed,
    /// A disputed payment's dispute is over: won (the credit given back),
    /// lost (it stays taken), or ended without a chargeback.
    PaymentDisputeClosed,
    PaymentFailed,
    AutoTopUpFailed,
    AutoTopUpDisabled,
    AccountCreated,
    /// An endpoint was disabled (failing for days, or `410 Gone`); sent to
    /// the other endpoints.
    EndpointDisabled,
    /// Sent on demand to one endpoint, to try it.
    EndpointTest,
    /// A row made a credit grant (a credit, a positive adjustment, credit
    /// given back with nothing to return it to).
    CreditGranted,
    /// What was left of a grant expired (its `expiry` row).
    CreditExpired,
}

impl EventType {
    pub const ALL: [EventType; 15] = [
        EventType::BalanceLow,
        EventType::BalanceDepleted,
        EventType::BalanceReplenished,
        EventType::PaymentSucceeded,
        EventType::PaymentRefunded,
        EventType::PaymentDisputed,
        EventType::PaymentDisputeClosed,
        EventType::PaymentFailed,
        EventType::AutoTopUpFailed,
        EventType::AutoTopUpDisabled,
        EventType::CreditGranted,
        EventType::CreditExpired,
        EventType::AccountCreated,
        EventType::EndpointDisabled,
        EventType::EndpointTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BalanceLow => "balance.low",
            EventType::BalanceDepleted => "balance.depleted",
            EventType::BalanceReplenished => "balance.replenished",
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::PaymentDisputed => "payment.disputed",
            EventType::PaymentDisputeClosed => "payment.dispute_closed",
            EventType::PaymentFailed => "payment.failed",
            EventType::AutoTopUpFailed => "auto_top_up.failed",
            EventType::AutoTopUpDisabled => "auto_top_up.disabled",
            EventType::AccountCreated => "account.created",
            EventType::EndpointDisabled => "webhook_endpoint.disabled",
            EventType::EndpointTest => "webhook_endpoint.test",
            EventType::CreditGranted => "credit.granted",
            EventType::CreditExpired => "credit.expired",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An event to commit with the change that caused it. `dedupe_key` makes
/// it once per cause: the store keeps the first event of a key.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub kind: EventType,
    pub account_id: Option<AccountId>,
    pub dedupe_key: String,
    pub created_at_ms: i64,
    pub data: Map<String, Value>,
}

impl NewEvent {
    /// An event of `kind` with `data` (to which the account's id is added).
    pub fn new(
        kind: EventType,
        account_id: Option<AccountId>,
        dedupe_key: String,
        data: Map<String, Value>,
        created_at_ms: i64,
    ) -> Result<NewEvent, StoreError> {
        let mut data = data;
        if let Some(account_id) = account_id {
            data.insert("account_id".into(), json!(account_id.0));
        }
        Ok(NewEvent {
            id: event_id()?,
            kind,
            account_id,
            dedupe_key,
            created_at_ms,
            data,
        })
    }

    /// An event about a ledger row: `seq` and `balance_micros` come from
    /// the row, and its key dedupes it (one per type per row).
    pub fn of_entry(
        kind: EventType,
        entry: &LedgerEntry,
        mut data: Map<String, Value>,
    ) -> Result<NewEvent, StoreError> {
        data.insert("seq".into(), json!(entry.seq));
        data.insert("balance_micros".into(), json!(entry.balance_after.micros()));
        NewEvent::new(
            kind,
            Some(entry.account_id),
            format!("{}:{}:{}", kind.as_str(), entry.account_id, entry.seq),
            data,
            entry.created_at_ms,
        )
    }

    /// The JSON body sent to endpoints (signed as it is).
    pub fn payload(&self) -> String {
        json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "created_at": format_rfc3339_ms(self.created_at_ms),
            "data": Value::Object(self.data.clone()),
        })
        .to_string()
    }
}

/// `credit.granted`: the grant the row `entry` made, on its terms; once
/// per row.
pub fn credit_granted(entry: &LedgerEntry, grant: &CreditGrant) -> Result<NewEvent, StoreError> {
    NewEvent::of_entry(
        EventType::CreditGranted,
        entry,
        data([
            ("grant_id", json!(grant.id)),
            ("category", json!(grant.category.as_str())),
            ("source", json!(grant.source.as_str())),
            ("order_id", json!(grant.order_id)),
            ("amount_micros", json!(grant.amount.micros())),
            ("priority", json!(grant.priority.value())),
            (
                "expires_at",
                json!(grant.expires_at_ms.map(format_rfc3339_ms)),
            ),
        ]),
    )
}

/// `credit.expired`: what was left of grant `grant_id`, taken by its
/// expiry row `entry`, and when it expired (the row's date: the grant's
/// expiry, or when credit given back to it after that came back); once
/// per row. The event itself is dated when it is written, which may be
/// later.
pub fn credit_expired(entry: &LedgerEntry, grant_id: i64) -> Result<NewEvent, StoreError> {
    NewEvent::of_entry(
        EventType::CreditExpired,
        entry,
        data([
            ("grant_id", json!(grant_id)),
            ("expired_micros", json!(-entry.amount.micros())),
            ("expired_at", json!(format_rfc3339_ms(entry.created_at_ms))),
        ]),
    )
}

/// An event a caller asks a ledger write to commit (a payment's): the row
/// adds `account_id`, `seq` and `balance_micros` to `data`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    pub kind: EventType,
    pub data: Map<String, Value>,
    /// The key that makes the event once per something other than its row
    /// (a refund's: once per refund, whichever row carries it, or none);
    /// `None`: once per row.
    pub once_per: Option<String>,
}

/// How a payment was made, as `payment.succeeded` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentSource {
    /// Stripe Checkout (access, or a top-up on the web).
    Checkout,
    /// The saved card, off-session (`BUY` by SMS, or the API).
    SavedCard,
    /// The saved card, by auto top-up.
    AutoTopUp,
}

impl PaymentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentSource::Checkout => "checkout",
            PaymentSource::SavedCard => "saved_card",
            PaymentSource::AutoTopUp => "auto_top_up",
        }
    }
}

/// `payment.succeeded`: the order, what was paid and credited, how, and
/// the card when Stripe has said which.
pub fn payment_succeeded(
    order: &Order,
    paid: Money,
    credited: Money,
    source: PaymentSource,
    card: Option<&Card>,
) -> EventDraft {
    EventDraft {
        kind: EventType::PaymentSucceeded,
        data: data([
            ("order_id", json!(order.id)),
            ("order_type", json!(order.order_type.as_str())),
            ("amount_micros", json!(paid.micros())),
            ("credited_micros", json!(credited.micros())),
            ("source", json!(source.as_str())),
            (
                "card",
                card.map_or(
                    Value::Null,
                    |card| json!({"brand": card.brand, "last4": card.last4}),
                ),
            ),
        ]),
        once_per: None,
    }
}

/// `payment.refunded`: what this refund (Stripe's `refund_id`) gave back
/// to the card, the order's refunds in all (those that failed since too:
/// the total never goes down), and the credit taken back for it. Once per
/// refund, whether a ledger row carries it or it is an event of its own.
pub fn payment_refunded(
    order: &Order,
    refund_id: &str,
    refunded: Money,
    total_refunded: Money,
    credit_taken_back: Money,
) -> EventDraft {
    EventDraft {
        kind: EventType::PaymentRefunded,
        once_per: Some(format!("payment.refunded:{refund_id}")),
        data: data([
            ("order_id", json!(order.id)),
            ("order_type", json!(order.order_type.as_str())),
            ("refund_id", json!(refund_id)),
            ("refunded_micros", json!(refunded.micros())),
            ("total_refunded_micros", json!(total_refunded.micros())),
            (
                "credit_taken_back_micros",
                json!(credit_taken_back.micros()),
            ),
        ]),
    }
}

/// What a dispute's events say of it, and of the ledger row its funds
/// moved (if one did).
fn dispute_data(
    order: &Order,
    dispute: &DisputeRecord,
    row: Option<&LedgerEntry>,
    (credit_field, credit): (&str, Money),
) -> Map<String, Value> {
    let mut data = data([
        ("order_id", json!(order.id)),
        ("order_type", json!(order.order_type.as_str())),
        ("dispute_id", json!(dispute.dispute_id)),
        ("amount_micros", json!(dispute.amount.micros())),
        ("reason", json!(dispute.reason)),
        ("status", json!(dispute.status.as_str())),
        (credit_field, json!(credit.max(Money::ZERO).micros())),
    ]);
    if let Some(row) = row {
        data.insert("seq".into(), json!(row.seq));
        data.insert("balance_micros".into(), json!(row.balance_after.micros()));
    }
    data
}

/// `payment.disputed`: a chargeback of an order's payment, with the credit
/// it took back (`row`, the dispute's row, if it took any); once per
/// dispute.
pub fn payment_disputed(
    order: &Order,
    dispute: &DisputeRecord,
    row: Option<&LedgerEntry>,
    now_ms: i64,
) -> Result<NewEvent, StoreError> {
    NewEvent::new(
        EventType::PaymentDisputed,
        Some(order.account_id),
        format!("payment.disputed:{}", dispute.dispute_id),
        dispute_data(
            order,
            dispute,
            row,
            (
                "credit_taken_back_micros",
                row.map_or(Money::ZERO, |row| -row.amount),
            ),
        ),
        now_ms,
    )
}

/// `payment.dispute_closed`: how a dispute ended (its `status`: `won`,
/// `lost`, `prevented`), with the credit given back (`row`, if any); once
/// per dispute.
pub fn payment_dispute_closed(
    order: &Order,
    dispute: &DisputeRecord,
    row: Option<&LedgerEntry>,
    now_ms: i64,
) -> Result<NewEvent, StoreError> {
    NewEvent::new(
        EventType::PaymentDisputeClosed,
        Some(order.account_id),
        format!("payment.dispute_closed:{}", dispute.dispute_id),
        dispute_data(
            order,
            dispute,
            row,
            (
                "credit_given_back_micros",
                row.map_or(Money::ZERO, |row| row.amount),
            ),
        ),
        now_ms,
    )
}

/// `payment.failed`: an order whose payment did not go through.
pub fn payment_failed(order: &Order, reason: &str, now_ms: i64) -> Result<NewEvent, StoreError> {
    NewEvent::new(
        EventType::PaymentFailed,
        Some(order.account_id),
        format!("payment.failed:order:{}", order.id),
        data([
            ("order_id", json!(order.id)),
            ("order_type", json!(order.order_type.as_str())),
            ("amount_micros", json!(order.amount.micros())),
            ("reason", json!(reason)),
        ]),
        now_ms,
    )
}

/// `auto_top_up.failed`: an attempt that did not charge, why, and when the
/// next is allowed (`null` when auto top-up turned itself off).
pub fn auto_top_up_failed(
    account_id: AccountId,
    attempt_id: i64,
    amount: Money,
    reason: &str,
    next_try_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<NewEvent, StoreError> {
    NewEvent::new(
        EventType::AutoTopUpFailed,
        Some(account_id),
        format!("auto_top_up.failed:attempt:{attempt_id}"),
        data([
            ("attempt_id", json!(attempt_id)),
            ("amount_micros", json!(amount.micros())),
            ("reason", json!(reason)),
            (
                "next_try_at",
                next_try_at_ms.map_or(Value::Null, |at| json!(format_rfc3339_ms(at))),
            ),
        ]),
        now_ms,
    )
}

/// Why auto top-up was turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisabledBecause {
    /// Too many failures in a row.
    Failures,
    /// The saved card was detached or expired.
    CardGone,
    /// A charge could not be confirmed with Stripe.
    UnknownCharge,
    /// The customer or the admin turned it off.
    TurnedOff,
}

impl DisabledBecause {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledBecause::Failures => "failures",
            DisabledBecause::CardGone => "card_gone",
            DisabledBecause::UnknownCharge => "unknown_charge",
            DisabledBecause::TurnedOff => "turned_off",
        }
    }
}

/// `auto_top_up.disabled`, once per `dedupe_key`.
pub fn auto_top_up_disabled(
    account_id: AccountId,
    because: DisabledBecause,
    detail: &str,
    dedupe_key: String,
    now_ms: i64,
) -> Result<NewEvent, StoreError> {
    NewEvent::new(
        EventType::AutoTopUpDisabled,
        Some(account_id),
        dedupe_key,
        data([
            ("reason", json!(because.as_str())),
            ("detail", json!(detail)),
        ]),
        now_ms,
    )
}

/// `account.created`: a new account, with its status.
pub fn account_created(
    account_id: AccountId,
    phone: &str,
    status: &str,
    now_ms: i64,
) -> Result<NewEvent, StoreError> {
    NewEvent::new(
        EventType::AccountCreated,
        Some(account_id),
        format!("account.created:{account_id}"),
        data([("phone", json!(phone)), ("status", json!(status))]),
        now_ms,
    )
}

impl EventDraft {
    /// The draft as an event of its own, for a change that made no ledger
    /// row (a payment that credits nothing): once per `dedupe_key`.
    pub fn standalone(
        self,
        account_id: AccountId,
        dedupe_key: String,
        now_ms: i64,
    ) -> Result<NewEvent, StoreError> {
        let dedupe_key = self.once_per.unwrap_or(dedupe_key);
        NewEvent::new(self.kind, Some(account_id), dedupe_key, self.data, now_ms)
    }

    /// The draft as the event of the ledger row `entry` (see
    /// [`NewEvent::of_entry`]), once per its own key if it has one.
    pub fn of_entry(&self, entry: &LedgerEntry) -> Result<NewEvent, StoreError> {
        let mut event = NewEvent::of_entry(self.kind, entry, self.data.clone())?;
        if let Some(once_per) = &self.once_per {
            event.dedupe_key = once_per.clone();
        }
        Ok(event)
    }
}

/// A new event id: `evt_` and 96 random bits.
pub fn event_id() -> Result<String, StoreError> {
    Ok(format!("evt_{}", &crate::random::random_secret("")?[..24]))
}

/// `data` from pairs, for the builders.
pub fn data<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_type_reads_back() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("balance.lowish"), None);
    }

    #[test]
    fn the_payload_names_the_account_and_the_row() {
        let entry = LedgerEntry {
            account_id: AccountId(7),
            seq: 12,
            kind: crate::ledger::TransactionKind::Debit,
            amount: crate::Money::from_micros(-500),
            balance_after: crate::Money::from_micros(1_500_000),
            idempotency_key: "k".into(),
            order_id: None,
            description: String::new(),
            reason: None,
            created_at_ms: 0,
            funded_by: crate::grants::Funding::NONE,
        };
        let event = NewEvent::of_entry(EventType::BalanceLow, &entry, Map::new()).unwrap();
        let payload: Value = serde_json::from_str(&event.payload()).unwrap();
        assert_eq!(payload["type"], "balance.low");
        assert_eq!(payload["created_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(payload["data"]["account_id"], 7);
        assert_eq!(payload["data"]["seq"], 12);
        assert_eq!(payload["data"]["balance_micros"], 1_500_000);
        assert!(payload["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(event.dedupe_key, "balance.low:7:12");
    }
}

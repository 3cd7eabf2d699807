//! The grants of a database made before credit grants: each account's
//! ledger replayed, oldest row first, through the same rules the account
//! actor decides rows with ([`crate::grants`]). Pure; each adapter reads an
//! account's rows, writes what this decides (every row's `funded_by`, the
//! grants, the snapshot's `grants`) in one transaction, and only where the
//! account's grants were never made.
//!
//! How earlier rows are read: a credit with an order is paid credit of that
//! order's source (one without, `migration`); a positive adjustment is
//! promotional credit; a debit drew as a debit draws now; a negative
//! adjustment takes from every grant, then leaves the account owing; a
//! negative refund with an order takes back that order's credit (its own
//! grant first, then other paid credit); a positive one with an order gives
//! back what the order's earlier take-backs took; a positive refund without
//! an order gives back the debit of the message its key names (`msg-void:`,
//! `msg-refund:`). No earlier grant expires.

use std::collections::HashMap;

use crate::billing::orders::OrderType;
use crate::grants::{
    Book, Category, CreditGrant, Funding, GrantError, GrantSource, GrantTerms, Priority, Take,
};
use crate::ledger::{AccountId, IdempotencyKey, TransactionKind};
use crate::money::Money;
use crate::store::error::StoreError;

/// One row of an earlier release's ledger, as the backfill needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricRow {
    pub seq: i64,
    pub kind: TransactionKind,
    pub amount: Money,
    pub idempotency_key: String,
    pub order_id: Option<i64>,
    pub created_at_ms: i64,
}

/// What replaying an account's ledger decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Each row's funding, by seq (rows that touch no grant are left out).
    pub funding: Vec<(i64, Funding)>,
    /// The grants the rows made.
    pub grants: Vec<CreditGrant>,
    /// What is left of each grant after the last row.
    pub book: Book,
}

/// The source of a credit of an order: Checkout's (`stripe-order:` keys)
/// by the order's type; an off-session payment's (`stripe-payment:` keys)
/// an auto top-up's or `BUY`'s.
pub fn source_of(order_type: OrderType, idempotency_key: &str) -> GrantSource {
    let off_session = idempotency_key.starts_with("stripe-payment:");
    match (order_type, off_session) {
        (OrderType::AutoTopUp, _) => GrantSource::AutoTopUp,
        (OrderType::InitialAccess, _) => GrantSource::Access,
        (OrderType::TopUp, true) => GrantSource::Buy,
        (OrderType::TopUp, false) => GrantSource::TopUp,
    }
}

/// Replays an account's rows (in seq order). `order_type` answers the type
/// of an order a credit names (`None`: no such order, `migration`).
pub fn replay(
    rows: &[HistoricRow],
    order_type: impl Fn(i64) -> Option<OrderType>,
) -> Result<Replayed, GrantError> {
    let mut replayed = Replayed::default();
    // Per order, what its refund rows took in net; per message, its debit's.
    let mut taken_for_order: HashMap<i64, Vec<Funding>> = HashMap::new();
    let mut debits: HashMap<&str, Funding> = HashMap::new();
    for row in rows {
        let book = &replayed.book;
        let amount = row.amount;
        let mut made = None;
        let mut facts: Vec<CreditGrant> = Vec::new();
        let funding = match row.kind {
            TransactionKind::Credit | TransactionKind::Adjustment if amount.is_positive() => {
                let (terms, source) = if row.kind == TransactionKind::Credit {
                    let source = row
                        .order_id
                        .and_then(&order_type)
                        .map_or(GrantSource::Migration, |order_type| {
                            source_of(order_type, &row.idempotency_key)
                        });
                    (GrantTerms::PAID, source)
                } else {
                    let terms = GrantTerms {
                        category: Category::Promotional,
                        ..GrantTerms::PAID
                    };
                    (terms, GrantSource::Adjustment)
                };
                let grant = CreditGrant {
                    id: row.seq,
                    category: terms.category,
                    source,
                    order_id: row.order_id,
                    amount,
                    priority: terms.priority,
                    granted_at_ms: row.created_at_ms,
                    expires_at_ms: None,
                };
                let funding = book.make(&grant)?;
                made = Some(grant);
                funding
            }
            TransactionKind::Debit => {
                let funding = book
                    .debit(-amount, row.created_at_ms)
                    // An earlier release's debit never went below zero, so
                    // grants cover it; should one not, it leaves the
                    // account owing rather than failing the upgrade.
                    .or_else(|_| book.take(-amount, row.created_at_ms, Take::Any))?;
                debits.insert(row.idempotency_key.as_str(), funding.clone());
                funding
            }
            TransactionKind::Credit | TransactionKind::Adjustment => {
                book.take(-amount, row.created_at_ms, Take::Any)?
            }
            TransactionKind::Refund if amount.is_negative() => {
                let funding = book.take(
                    -amount,
                    row.created_at_ms,
                    Take::Paid {
                        order_id: row.order_id,
                    },
                )?;
                if let Some(order_id) = row.order_id {
                    taken_for_order
                        .entry(order_id)
                        .or_default()
                        .push(funding.clone());
                }
                funding
            }
            TransactionKind::Refund => {
                let reversing = match row.order_id {
                    Some(order_id) => {
                        Funding::net(taken_for_order.get(&order_id).into_iter().flatten())?
                    }
                    // A refund without an order gives back a message's
                    // debit; one whose key names no debit in this ledger
                    // gave back nothing that was taken from a grant, so it
                    // reverses no funding (its credit goes as credit given
                    // back with nothing to return it to).
                    None => message_debit(&row.idempotency_key)
                        .and_then(|key| debits.get(key.as_str()))
                        .cloned()
                        .unwrap_or_default(),
                };
                facts = replayed
                    .grants
                    .iter()
                    .filter(|grant| {
                        reversing
                            .draws()
                            .iter()
                            .any(|draw| draw.grant_id == grant.id)
                    })
                    .cloned()
                    .collect();
                let (funding, grant) = book.restore(amount, &reversing, |extra| CreditGrant {
                    id: row.seq,
                    category: Category::Paid,
                    source: GrantSource::GiveBack,
                    order_id: row.order_id,
                    amount: extra,
                    priority: Priority::DEFAULT,
                    granted_at_ms: row.created_at_ms,
                    expires_at_ms: None,
                })?;
                if let Some(order_id) = row.order_id {
                    taken_for_order
                        .entry(order_id)
                        .or_default()
                        .push(funding.clone());
                }
                made = grant;
                funding
            }
            TransactionKind::Expiry => {
                return Err(GrantError::Malformed(format!(
                    "row {} is an expiry, which no release before grants wrote",
                    row.seq
                )))
            }
        };
        replayed.book.apply(made.as_ref(), &funding, &facts)?;
        if let Some(grant) = made {
            replayed.grants.push(grant);
        }
        if !funding.is_empty() {
            replayed.funding.push((row.seq, funding));
        }
    }
    Ok(replayed)
}

impl Replayed {
    /// The replay, if it leads where the account's snapshot stands (its
    /// balance at its last row): a ledger that does not is not guessed at.
    pub fn fits(
        self,
        account_id: AccountId,
        rows: &[HistoricRow],
        balance: Money,
        seq: i64,
    ) -> Result<Replayed, StoreError> {
        let ledger_seq = rows.last().map_or(0, |row| row.seq);
        let sum = self
            .book
            .balance()
            .map_err(|error| backfill_error(account_id, &error.to_string()))?;
        if sum != balance || ledger_seq != seq {
            return Err(backfill_error(
                account_id,
                &format!(
                    "its ledger sums to {sum} at #{ledger_seq}, but its balance says {balance} at #{seq}; run sms-credit verify"
                ),
            ));
        }
        Ok(self)
    }
}

/// Why an account's grants could not be made: the migration stops, naming
/// the account.
pub fn backfill_error(account_id: AccountId, why: &str) -> StoreError {
    StoreError::Migration(format!(
        "the credit grants of account {account_id} could not be made from its ledger: {why}"
    ))
}

/// The key of the debit whose cost a give-back's key returns.
fn message_debit(idempotency_key: &str) -> Option<IdempotencyKey> {
    IdempotencyKey::parse(idempotency_key)
        .ok()?
        .given_back_message_id()
        .map(IdempotencyKey::message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        seq: i64,
        kind: TransactionKind,
        amount: i64,
        key: &str,
        order_id: Option<i64>,
    ) -> HistoricRow {
        HistoricRow {
            seq,
            kind,
            amount: Money::from_micros(amount),
            idempotency_key: key.to_string(),
            order_id,
            created_at_ms: seq,
        }
    }

    #[test]
    fn an_earlier_ledger_is_replayed_through_the_rules() {
        use TransactionKind::{Adjustment, Credit, Debit, Refund};
        let rows = [
            row(1, Credit, 5_000, "stripe-order:7", Some(7)),
            row(2, Adjustment, 1_000, "goodwill", None),
            row(3, Debit, -1_500, "msg:1", None),
            row(4, Refund, 1_500, "msg-void:1", None),
            row(5, Debit, -2_000, "msg:2", None),
            row(6, Refund, -4_500, "stripe-refund:ch_1:450", Some(7)),
            row(7, Refund, 500, "stripe-refund-failed:re_1", Some(7)),
            row(8, Credit, 300, "stripe-payment:pi_1", Some(8)),
            row(9, Refund, 100, "manual", None),
        ];
        let replayed = replay(&rows, |order_id| match order_id {
            7 => Some(OrderType::InitialAccess),
            8 => Some(OrderType::TopUp),
            _ => None,
        })
        .unwrap();
        let sources: Vec<(i64, GrantSource)> = replayed
            .grants
            .iter()
            .map(|grant| (grant.id, grant.source))
            .collect();
        assert_eq!(
            sources,
            vec![
                (1, GrantSource::Access),
                (2, GrantSource::Adjustment),
                (8, GrantSource::Buy),
                (9, GrantSource::GiveBack),
            ]
        );
        let encoded: Vec<(i64, String)> = replayed
            .funding
            .iter()
            .map(|(seq, funding)| (*seq, funding.encode().unwrap()))
            .collect();
        assert_eq!(
            encoded,
            vec![
                // The promotional adjustment first, then the access credit.
                (3, "2:r:1000;1:p:500".to_string()),
                // The void gives back exactly what its debit drew.
                (4, "1:p:-500;2:r:-1000".to_string()),
                (5, "2:r:1000;1:p:1000".to_string()),
                // The order's own grant (4 000 left), then grant 0; the
                // promotional credit is never taken back.
                (6, "1:p:4000;0:p:500".to_string()),
                // A refund that failed gives back, grant 0 first.
                (7, "0:p:-500".to_string()),
            ]
        );
        assert_eq!(replayed.book.encode(), "8:300,9:100");
        let sum: i64 = rows.iter().map(|row| row.amount.micros()).sum();
        assert_eq!(replayed.book.balance(), Ok(Money::from_micros(sum)));
    }
}

//! The grants of a database made before credit grants: each account's
//! ledger replayed, oldest row first, through the same rules the account
//! actor decides rows with ([`crate::grants`]). Pure; each adapter reads an
//! account's rows, writes what this decides (the `funded_by` of the rows
//! that have none, the grants they make, the snapshot's `grants`) in one
//! transaction, and only where the account's grants were never made, or,
//! by `sms-credit migrate` with no instance running, where an earlier
//! release's server wrote rows after they were ([`needs_remaking`]).
//!
//! A row this release wrote (it has a funding, or made a grant) is taken
//! as it was recorded: its funding and its grant's terms are never decided
//! again. A row without either is an earlier release's, and is decided
//! here. How earlier rows are read: a credit with an order is paid credit
//! of that order's source (one without, `migration`); a positive adjustment
//! is promotional credit; a debit drew as a debit draws now; a negative
//! adjustment takes from every grant, then leaves the account owing; a
//! negative refund with an order takes back that order's credit (its own
//! grant first, then other paid credit); a positive one with an order gives
//! back what the order's earlier take-backs took; a positive refund without
//! an order gives back the debit of the message its key names (`msg-void:`,
//! `msg-refund:`). No grant an earlier release's row made expires.

use std::collections::HashMap;

use crate::billing::orders::OrderType;
use crate::grants::{
    decode_remaining, Book, Category, CreditGrant, Funding, GrantError, GrantSource, GrantTerms,
    Priority, Take,
};
use crate::ledger::{AccountId, IdempotencyKey, TransactionKind};
use crate::money::Money;
use crate::store::error::StoreError;

/// One row of an account's ledger, as the backfill needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricRow {
    pub seq: i64,
    pub kind: TransactionKind,
    pub amount: Money,
    pub idempotency_key: String,
    pub order_id: Option<i64>,
    pub created_at_ms: i64,
    /// What this release recorded of the row; `None` for a row with no
    /// funding that made no grant, as an earlier release wrote every row.
    pub recorded: Option<Recorded>,
}

/// A row's funding and the grant it made, as this release recorded them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub funding: Funding,
    /// The `credit_grants` row whose id is the row's seq.
    pub made: Option<CreditGrant>,
}

/// What replaying an account's ledger decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The funding decided for each row that had none, by seq (rows that
    /// touch no grant are left out).
    pub funding: Vec<(i64, Funding)>,
    /// The grants the rows decided here made (those recorded are not).
    pub grants: Vec<CreditGrant>,
    /// What is left of each grant after the last row.
    pub book: Book,
}

impl Replayed {
    /// Whether writing this replay would change nothing: no row's funding
    /// and no grant to write, and the balance row's stored grants
    /// (`stored`) are `encoded` (this replay's book, encoded) already.
    pub fn changes_nothing(&self, encoded: &str, stored: Option<&str>) -> bool {
        self.funding.is_empty() && self.grants.is_empty() && stored == Some(encoded)
    }
}

/// The type of an order among `orders` (as read for the account's
/// credits), for [`remake`]'s `order_type`.
pub fn order_type_among(orders: &[(i64, OrderType)]) -> impl Fn(i64) -> Option<OrderType> + '_ {
    |order_id| {
        orders
            .iter()
            .find(|(id, _)| *id == order_id)
            .map(|(_, order_type)| *order_type)
    }
}

/// Why an account's grants could not be made from its ledger: the account
/// is left as it was (its transaction rolled back), and the rest go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// The rules could not decide a row, or apply what was recorded of it.
    #[error("row #{seq}: {error}")]
    Rules { seq: i64, error: GrantError },
    /// A row's recorded funding and grant do not account for its amount.
    #[error(
        "row #{seq} moved the balance by {amount}, but it made {made} of credit and took {taken} from grants"
    )]
    Unaccounted {
        seq: i64,
        amount: Money,
        made: Money,
        taken: Money,
    },
    /// An expiry with no funding: no release wrote one.
    #[error("row #{0} is an expiry without its funding, which no release wrote")]
    BareExpiry(i64),
    /// The ledger does not lead where the balance row stands.
    #[error("its ledger sums to {sum} at #{ledger_seq}, but its balance says {balance} at #{seq}")]
    Elsewhere {
        sum: Money,
        ledger_seq: i64,
        balance: Money,
        seq: i64,
    },
    /// A value read back that this release does not know (a row's type, an
    /// order's type, a stored funding or grant).
    #[error("{0}")]
    Unknown(String),
}

/// What is told (logged, and said by `sms-credit migrate`) of an account
/// whose grants were never made and cannot be made from its ledger.
pub const LEFT_WITHOUT_GRANTS: &str = "it was left without credit grants, which its ledger does \
    not give, and can be neither credited nor debited until its ledger is repaired: \
    sms-credit verify names what is wrong, and the next start or sms-credit migrate then makes \
    them";

/// What is told of an account an earlier release's server wrote to after
/// the upgrade whose grants cannot be made again from its ledger.
pub const NOT_MADE_AGAIN: &str = "its credit grants could not be made again from its ledger, \
    and are left as they were: sms-credit verify names what is wrong";

/// What a pass over accounts did (either adapter's backfill).
#[derive(Debug, Default)]
pub struct Pass {
    /// The accounts whose grants it made.
    pub made: Vec<AccountId>,
    /// The accounts it left as they were, and why.
    pub left: Vec<AccountLeft>,
}

impl Pass {
    /// Leaves an account as it was, `why`: logged, and named by the pass.
    pub fn leave(&mut self, account_id: AccountId, why: Unfit, which: Which) {
        let left = AccountLeft { account_id, why };
        let told = match which {
            Which::Missing => LEFT_WITHOUT_GRANTS,
            Which::Off => NOT_MADE_AGAIN,
        };
        tracing::error!(account_id = account_id.0, why = %left.why, "{told}");
        self.left.push(left);
    }
}

/// Which accounts a pass makes the grants of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Those whose grants were never made.
    Missing,
    /// Those whose grants were made, but whose ledger they no longer
    /// account for.
    Off,
}

/// Why one account's grants were not made (each adapter turns its
/// driver's errors into one).
pub enum Refused {
    /// Its ledger does not give them: it is left, the others go on.
    Unfit(Unfit),
    /// The database failed: the pass stops.
    Store(StoreError),
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Refused {
        match error {
            StoreError::UnknownValue(unknown) => {
                Refused::Unfit(Unfit::Unknown(unknown.to_string()))
            }
            other => Refused::Store(other),
        }
    }
}

/// An account left without the grants its ledger was to give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountLeft {
    pub account_id: AccountId,
    pub why: Unfit,
}

impl std::fmt::Display for AccountLeft {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "account {}: {}", self.account_id, self.why)
    }
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

/// The grants of an account from its rows (in seq order), if they lead
/// where its balance row stands (`balance` at `seq`): a ledger that does
/// not is not guessed at. `order_type` answers the type of an order a
/// credit names (`None`: no such order, `migration`).
pub fn remake(
    rows: &[HistoricRow],
    order_type: impl Fn(i64) -> Option<OrderType>,
    balance: Money,
    seq: i64,
) -> Result<Replayed, Unfit> {
    let replayed = replay(rows, order_type)?;
    let ledger_seq = rows.last().map_or(0, |row| row.seq);
    let sum = replayed.book.balance().map_err(|error| Unfit::Rules {
        seq: ledger_seq,
        error,
    })?;
    if sum != balance || ledger_seq != seq {
        return Err(Unfit::Elsewhere {
            sum,
            ledger_seq,
            balance,
            seq,
        });
    }
    Ok(replayed)
}

/// Whether an account's stored grants are off its balance: they cannot be
/// read, or do not sum to it. That, or a row no grant accounts for (no
/// funding, no grant made, yet an amount: an earlier release's server wrote
/// it after the upgrade), is why `sms-credit migrate` makes an account's
/// grants again.
pub fn grants_off(stored: &str, balance: Money) -> bool {
    let sum = decode_remaining(stored).and_then(|remaining| {
        remaining.iter().try_fold(Money::ZERO, |sum, grant| {
            sum.checked_add(grant.amount).map_err(GrantError::from)
        })
    });
    sum != Ok(balance)
}

/// Replays an account's rows (in seq order): each row recorded as it was,
/// each other decided by the rules. `order_type` as for [`remake`].
pub fn replay(
    rows: &[HistoricRow],
    order_type: impl Fn(i64) -> Option<OrderType>,
) -> Result<Replayed, Unfit> {
    let mut replayed = Replayed::default();
    // Every grant made so far, recorded or decided: the terms of a grant
    // given back to after it was spent to nothing.
    let mut known: Vec<CreditGrant> = Vec::new();
    // Per order, what its refund rows took in net; per message, its debit's.
    let mut taken_for_order: HashMap<i64, Vec<Funding>> = HashMap::new();
    let mut debits: HashMap<&str, Funding> = HashMap::new();
    for row in rows {
        let rules = |error: GrantError| Unfit::Rules {
            seq: row.seq,
            error,
        };
        let (funding, made, decided) = match &row.recorded {
            Some(recorded) => {
                let made = recorded
                    .made
                    .as_ref()
                    .map_or(Money::ZERO, |grant| grant.amount);
                let taken = recorded
                    .funding
                    .total()
                    .map_err(|error| rules(error.into()))?;
                if made.checked_sub(taken).ok() != Some(row.amount) {
                    return Err(Unfit::Unaccounted {
                        seq: row.seq,
                        amount: row.amount,
                        made,
                        taken,
                    });
                }
                (recorded.funding.clone(), recorded.made.clone(), false)
            }
            None => {
                let (funding, made) =
                    decide(row, &replayed.book, &order_type, &debits, &taken_for_order)?;
                (funding, made, true)
            }
        };
        match row.kind {
            TransactionKind::Debit => {
                debits.insert(row.idempotency_key.as_str(), funding.clone());
            }
            TransactionKind::Refund => {
                if let Some(order_id) = row.order_id {
                    taken_for_order
                        .entry(order_id)
                        .or_default()
                        .push(funding.clone());
                }
            }
            _ => {}
        }
        replayed
            .book
            .apply(made.as_ref(), &funding, &known)
            .map_err(rules)?;
        if let Some(grant) = made {
            if decided {
                replayed.grants.push(grant.clone());
            }
            known.push(grant);
        }
        if decided && !funding.is_empty() {
            replayed.funding.push((row.seq, funding));
        }
    }
    Ok(replayed)
}

/// An earlier release's row, decided by the rules on the book before it:
/// its funding, and the grant it makes.
fn decide(
    row: &HistoricRow,
    book: &Book,
    order_type: impl Fn(i64) -> Option<OrderType>,
    debits: &HashMap<&str, Funding>,
    taken_for_order: &HashMap<i64, Vec<Funding>>,
) -> Result<(Funding, Option<CreditGrant>), Unfit> {
    let rules = |error: GrantError| Unfit::Rules {
        seq: row.seq,
        error,
    };
    let amount = row.amount;
    let decided = match row.kind {
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
            (book.make(&grant).map_err(rules)?, Some(grant))
        }
        TransactionKind::Debit => {
            let funding = book
                .debit(-amount, row.created_at_ms)
                // An earlier release's debit never went below zero, so
                // grants cover it; should one not, it leaves the account
                // owing rather than failing the upgrade.
                .or_else(|_| book.take(-amount, row.created_at_ms, Take::Any))
                .map_err(rules)?;
            (funding, None)
        }
        TransactionKind::Credit | TransactionKind::Adjustment => (
            book.take(-amount, row.created_at_ms, Take::Any)
                .map_err(rules)?,
            None,
        ),
        TransactionKind::Refund if amount.is_negative() => (
            book.take(
                -amount,
                row.created_at_ms,
                Take::Paid {
                    order_id: row.order_id,
                },
            )
            .map_err(rules)?,
            None,
        ),
        TransactionKind::Refund => {
            let reversing = match row.order_id {
                Some(order_id) => {
                    Funding::net(taken_for_order.get(&order_id).into_iter().flatten())
                        .map_err(rules)?
                }
                // A refund without an order gives back a message's debit;
                // one whose key names no debit in this ledger gave back
                // nothing that was taken from a grant, so it reverses no
                // funding (its credit goes as credit given back with
                // nothing to return it to).
                None => message_debit(&row.idempotency_key)
                    .and_then(|key| debits.get(key.as_str()))
                    .cloned()
                    .unwrap_or_default(),
            };
            book.restore(amount, &reversing, |extra| CreditGrant {
                id: row.seq,
                category: Category::Paid,
                source: GrantSource::GiveBack,
                order_id: row.order_id,
                amount: extra,
                priority: Priority::DEFAULT,
                granted_at_ms: row.created_at_ms,
                expires_at_ms: None,
            })
            .map_err(rules)?
        }
        TransactionKind::Expiry => return Err(Unfit::BareExpiry(row.seq)),
    };
    Ok(decided)
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
            recorded: None,
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
        let encoded = encoded_funding(&replayed);
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

    /// Each decided row's funding, encoded, by seq.
    fn encoded_funding(replayed: &Replayed) -> Vec<(i64, String)> {
        replayed
            .funding
            .iter()
            .map(|(seq, funding)| (*seq, funding.encode().unwrap()))
            .collect()
    }

    fn recorded(mut row: HistoricRow, funding: &str, made: Option<CreditGrant>) -> HistoricRow {
        row.recorded = Some(Recorded {
            funding: if funding.is_empty() {
                Funding::NONE
            } else {
                Funding::decode(funding).unwrap()
            },
            made,
        });
        row
    }

    fn grant(id: i64, category: Category, amount: i64, expires_at_ms: Option<i64>) -> CreditGrant {
        CreditGrant {
            id,
            category,
            source: GrantSource::Adjustment,
            order_id: None,
            amount: Money::from_micros(amount),
            priority: Priority::DEFAULT,
            granted_at_ms: id,
            expires_at_ms,
        }
    }

    /// Rows an earlier release's server wrote after the upgrade, among rows
    /// this release recorded: the recorded ones are kept as they were
    /// (their funding and their grants' terms, an expiry among them), and
    /// only the others are decided, on the book the recorded rows left.
    #[test]
    fn rows_written_after_the_upgrade_are_decided_on_what_was_recorded() {
        use TransactionKind::{Adjustment, Credit, Debit, Expiry, Refund};
        let promotional = grant(1, Category::Promotional, 1_000, Some(50));
        let paid = CreditGrant {
            source: GrantSource::TopUp,
            ..grant(2, Category::Paid, 5_000, None)
        };
        let rows = [
            recorded(
                row(1, Adjustment, 1_000, "welcome", None),
                "",
                Some(promotional),
            ),
            recorded(row(2, Credit, 5_000, "top-up", None), "", Some(paid)),
            recorded(row(3, Debit, -400, "msg:1", None), "1:r:400", None),
            // The earlier release's debit: promotional credit first.
            row(4, Debit, -700, "msg:2", None),
            // Its void gives back exactly what that debit drew.
            row(5, Refund, 700, "msg-void:2", None),
            // The void of this release's debit gives back what it recorded.
            row(6, Refund, 400, "msg-void:1", None),
            recorded(row(60, Expiry, -1_000, "expiry", None), "1:r:1000", None),
            // After the expiry: paid credit alone.
            row(61, Debit, -300, "msg:3", None),
            row(62, Credit, 200, "stripe-order:9", Some(9)),
        ];
        let replayed = remake(
            &rows,
            |order_id| (order_id == 9).then_some(OrderType::TopUp),
            Money::from_micros(4_900),
            62,
        )
        .unwrap();
        let encoded = encoded_funding(&replayed);
        assert_eq!(
            encoded,
            vec![
                (4, "1:r:600;2:p:100".to_string()),
                (5, "2:p:-100;1:r:-600".to_string()),
                (6, "1:r:-400".to_string()),
                (61, "2:p:300".to_string()),
            ]
        );
        // Only the grant the earlier release's credit made is new.
        let made: Vec<(i64, GrantSource)> = replayed
            .grants
            .iter()
            .map(|grant| (grant.id, grant.source))
            .collect();
        assert_eq!(made, vec![(62, GrantSource::TopUp)]);
        assert_eq!(replayed.book.encode(), "2:4700,62:200");
    }

    #[test]
    fn a_recorded_row_its_funding_does_not_account_for_is_not_guessed_at() {
        use TransactionKind::{Credit, Debit};
        let paid = grant(1, Category::Paid, 5_000, None);
        let rows = [
            recorded(row(1, Credit, 5_000, "top-up", None), "", Some(paid)),
            recorded(row(2, Debit, -700, "msg:1", None), "1:p:500", None),
        ];
        assert_eq!(
            remake(&rows, |_| None, Money::from_micros(4_300), 2),
            Err(Unfit::Unaccounted {
                seq: 2,
                amount: Money::from_micros(-700),
                made: Money::ZERO,
                taken: Money::from_micros(500),
            })
        );
    }

    #[test]
    fn a_ledger_that_does_not_lead_to_its_balance_is_not_guessed_at() {
        let rows = [row(1, TransactionKind::Credit, 4_000_000, "opening", None)];
        let unfit = remake(&rows, |_| None, Money::from_micros(5_000_000), 1).unwrap_err();
        assert_eq!(
            unfit.to_string(),
            "its ledger sums to $4.00 at #1, but its balance says $5.00 at #1"
        );
        assert!(remake(&rows, |_| None, Money::from_micros(4_000_000), 2).is_err());
        assert!(remake(&rows, |_| None, Money::from_micros(4_000_000), 1).is_ok());
    }

    #[test]
    fn grants_are_off_when_they_cannot_be_read_or_do_not_sum_to_the_balance() {
        let balance = Money::from_micros(1_000);
        assert!(!grants_off("0:-500,3:1500", balance));
        assert!(grants_off("3:1500", balance));
        assert!(grants_off("3:x", balance));
        assert!(grants_off("", balance));
        assert!(!grants_off("", Money::ZERO));
    }
}

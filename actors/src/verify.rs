//! Recomputes every account from its ledger and reports where the ledger
//! and the snapshots disagree: what `sms-credit verify` prints. A store
//! feeds the rows ([`Verifier`]); the rules are here.

use serde::Serialize;

use crate::ledger::{AccountId, TransactionKind};

/// One disagreement between the ledger and the snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The account's ledger skips or repeats a position.
    SeqGap {
        account_id: AccountId,
        expected_seq: i64,
        found_seq: i64,
    },
    /// A row's `balance_after` is not the running sum of the rows up to it.
    BalanceAfterMismatch {
        account_id: AccountId,
        seq: i64,
        running_sum_micros: i128,
        recorded_micros: i64,
    },
    /// A debit left the balance below zero.
    DebitBelowZero {
        account_id: AccountId,
        seq: i64,
        balance_micros: i64,
    },
    /// The snapshot does not match what the ledger sums to.
    SnapshotMismatch {
        account_id: AccountId,
        ledger_sum_micros: i128,
        ledger_seq: i64,
        snapshot_balance_micros: i64,
        snapshot_seq: i64,
    },
    /// An account has no snapshot row.
    MissingSnapshot { account_id: AccountId },
    /// A row's type is not one this release knows.
    UnknownType {
        account_id: AccountId,
        seq: i64,
        stored: String,
    },
}

/// What a verification found.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyReport {
    pub accounts_checked: u64,
    pub transactions_checked: u64,
    pub problems: Vec<Problem>,
}

/// An amount summed wider than an `i64`, in dollars when it fits one.
fn wide_amount(micros: i128) -> String {
    match i64::try_from(micros) {
        Ok(micros) => crate::money::Money::from_micros(micros).to_string(),
        Err(_) => format!("{micros} micro-dollars"),
    }
}

/// A problem for people, one line: the account, what is wrong and where.
impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let money = crate::money::Money::from_micros;
        match self {
            Problem::SeqGap {
                account_id,
                expected_seq,
                found_seq,
            } => write!(
                formatter,
                "account {account_id}: the ledger skips from #{} to #{found_seq} (expected #{expected_seq})",
                expected_seq - 1
            ),
            Problem::BalanceAfterMismatch {
                account_id,
                seq,
                running_sum_micros,
                recorded_micros,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} says the balance became {}, but the rows up to it sum to {}",
                money(*recorded_micros),
                wide_amount(*running_sum_micros)
            ),
            Problem::DebitBelowZero {
                account_id,
                seq,
                balance_micros,
            } => write!(
                formatter,
                "account {account_id}: the debit #{seq} took the balance below zero, to {}",
                money(*balance_micros)
            ),
            Problem::SnapshotMismatch {
                account_id,
                ledger_sum_micros,
                ledger_seq,
                snapshot_balance_micros,
                snapshot_seq,
            } => write!(
                formatter,
                "account {account_id}: its balance says {} at #{snapshot_seq}, but its ledger sums to {} at #{ledger_seq}",
                money(*snapshot_balance_micros),
                wide_amount(*ledger_sum_micros)
            ),
            Problem::MissingSnapshot { account_id } => {
                write!(formatter, "account {account_id}: it has no balance row")
            }
            Problem::UnknownType {
                account_id,
                seq,
                stored,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} has a type this release does not know: {stored:?}"
            ),
        }
    }
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The running totals of the account being scanned.
struct AccountScan {
    account_id: AccountId,
    sum: i128,
    last_seq: i64,
    /// The account's snapshot (balance, seq), if it has one.
    snapshot: Option<(i64, i64)>,
}

/// One ledger row as the verifier needs it, with its account's snapshot.
pub struct VerifyRow {
    pub account_id: AccountId,
    pub seq: i64,
    /// The stored type, as text (an unknown one is reported, not fatal).
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    /// The account's snapshot (balance, seq), if it has one.
    pub snapshot: Option<(i64, i64)>,
}

/// Recomputes accounts from rows a store feeds it: every ledger row in
/// (account, seq) order, then every account that has no rows. The store
/// reads; the verifier decides what is a problem.
#[derive(Default)]
pub struct Verifier {
    report: VerifyReport,
    current: Option<AccountScan>,
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// The next ledger row, in (account, seq) order.
    pub fn row(&mut self, row: VerifyRow) {
        self.report.transactions_checked += 1;
        if self.current.as_ref().map(|scan| scan.account_id) != Some(row.account_id) {
            self.finish_account();
            self.current = Some(AccountScan {
                account_id: row.account_id,
                sum: 0,
                last_seq: 0,
                snapshot: row.snapshot,
            });
        }
        let Some(scan) = self.current.as_mut() else {
            return;
        };
        let problems = &mut self.report.problems;
        if row.seq != scan.last_seq + 1 {
            problems.push(Problem::SeqGap {
                account_id: row.account_id,
                expected_seq: scan.last_seq + 1,
                found_seq: row.seq,
            });
        }
        scan.last_seq = row.seq;
        scan.sum += i128::from(row.amount);
        if scan.sum != i128::from(row.balance_after) {
            problems.push(Problem::BalanceAfterMismatch {
                account_id: row.account_id,
                seq: row.seq,
                running_sum_micros: scan.sum,
                recorded_micros: row.balance_after,
            });
        }
        match TransactionKind::parse(&row.kind) {
            Some(TransactionKind::Debit) if row.balance_after < 0 => {
                problems.push(Problem::DebitBelowZero {
                    account_id: row.account_id,
                    seq: row.seq,
                    balance_micros: row.balance_after,
                })
            }
            Some(_) => {}
            None => problems.push(Problem::UnknownType {
                account_id: row.account_id,
                seq: row.seq,
                stored: row.kind,
            }),
        }
    }

    /// An account with no ledger row: its snapshot must be empty.
    pub fn account_without_rows(&mut self, account_id: AccountId, snapshot: Option<(i64, i64)>) {
        self.finish_account();
        self.report.accounts_checked += 1;
        match snapshot {
            Some((0, 0)) => {}
            Some((balance, seq)) => self.report.problems.push(Problem::SnapshotMismatch {
                account_id,
                ledger_sum_micros: 0,
                ledger_seq: 0,
                snapshot_balance_micros: balance,
                snapshot_seq: seq,
            }),
            None => self
                .report
                .problems
                .push(Problem::MissingSnapshot { account_id }),
        }
    }

    /// Compares the account just scanned with its snapshot.
    fn finish_account(&mut self) {
        let Some(scan) = self.current.take() else {
            return;
        };
        self.report.accounts_checked += 1;
        match scan.snapshot {
            None => self.report.problems.push(Problem::MissingSnapshot {
                account_id: scan.account_id,
            }),
            Some((balance, seq)) if i128::from(balance) != scan.sum || seq != scan.last_seq => {
                self.report.problems.push(Problem::SnapshotMismatch {
                    account_id: scan.account_id,
                    ledger_sum_micros: scan.sum,
                    ledger_seq: scan.last_seq,
                    snapshot_balance_micros: balance,
                    snapshot_seq: seq,
                })
            }
            Some(_) => {}
        }
    }

    pub fn finish(mut self) -> VerifyReport {
        self.finish_account();
        self.report
    }
}

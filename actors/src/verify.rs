//! Recomputes every account from its ledger and reports where the ledger
//! and the snapshots disagree: what `sms-credit verify` prints.

use std::collections::HashSet;

use rusqlite::Connection;
use serde::Serialize;

use crate::ledger::AccountId;
use crate::store::StoreError;

/// One disagreement between the ledger and the snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
}

/// What a verification found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub accounts_checked: u64,
    pub transactions_checked: u64,
    pub problems: Vec<Problem>,
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
}

/// Scans every ledger row in (account, seq) order and every snapshot.
pub fn verify(connection: &Connection) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut scanned = HashSet::new();
    let mut snapshot_query =
        connection.prepare("SELECT balance, seq FROM account_balances WHERE account_id = ?1")?;
    let mut finish = |scan: &AccountScan, report: &mut VerifyReport| -> Result<(), StoreError> {
        report.accounts_checked += 1;
        let snapshot: Option<(i64, i64)> = snapshot_query
            .query_row([scan.account_id.0], |row| Ok((row.get(0)?, row.get(1)?)))
            .map(Some)
            .or_else(|error| match error {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                other => Err(other),
            })?;
        match snapshot {
            None => report.problems.push(Problem::MissingSnapshot {
                account_id: scan.account_id,
            }),
            Some((balance, seq)) if i128::from(balance) != scan.sum || seq != scan.last_seq => {
                report.problems.push(Problem::SnapshotMismatch {
                    account_id: scan.account_id,
                    ledger_sum_micros: scan.sum,
                    ledger_seq: scan.last_seq,
                    snapshot_balance_micros: balance,
                    snapshot_seq: seq,
                })
            }
            Some(_) => {}
        }
        Ok(())
    };

    let mut rows = connection.prepare(
        "SELECT account_id, seq, type, amount, balance_after FROM transactions ORDER BY account_id, seq",
    )?;
    let mut cursor = rows.query([])?;
    let mut current: Option<AccountScan> = None;
    while let Some(row) = cursor.next()? {
        let account_id = AccountId(row.get(0)?);
        let seq: i64 = row.get(1)?;
        let kind: String = row.get(2)?;
        let amount: i64 = row.get(3)?;
        let balance_after: i64 = row.get(4)?;
        report.transactions_checked += 1;
        if current.as_ref().map(|scan| scan.account_id) != Some(account_id) {
            if let Some(done) = current.take() {
                finish(&done, &mut report)?;
            }
            scanned.insert(account_id);
            current = Some(AccountScan {
                account_id,
                sum: 0,
                last_seq: 0,
            });
        }
        let Some(scan) = current.as_mut() else {
            continue;
        };
        if seq != scan.last_seq + 1 {
            report.problems.push(Problem::SeqGap {
                account_id,
                expected_seq: scan.last_seq + 1,
                found_seq: seq,
            });
        }
        scan.last_seq = seq;
        scan.sum += i128::from(amount);
        if scan.sum != i128::from(balance_after) {
            report.problems.push(Problem::BalanceAfterMismatch {
                account_id,
                seq,
                running_sum_micros: scan.sum,
                recorded_micros: balance_after,
            });
        }
        if kind == "debit" && balance_after < 0 {
            report.problems.push(Problem::DebitBelowZero {
                account_id,
                seq,
                balance_micros: balance_after,
            });
        }
    }
    if let Some(done) = current.take() {
        finish(&done, &mut report)?;
    }

    // Accounts without any ledger row must have an empty snapshot.
    let mut accounts = connection.prepare(
        "SELECT a.id, b.balance, b.seq FROM accounts a LEFT JOIN account_balances b ON b.account_id = a.id",
    )?;
    let mut cursor = accounts.query([])?;
    while let Some(row) = cursor.next()? {
        let account_id = AccountId(row.get(0)?);
        if scanned.contains(&account_id) {
            continue;
        }
        report.accounts_checked += 1;
        let balance: Option<i64> = row.get(1)?;
        let seq: Option<i64> = row.get(2)?;
        match (balance, seq) {
            (Some(0), Some(0)) => {}
            (Some(balance), Some(seq)) => report.problems.push(Problem::SnapshotMismatch {
                account_id,
                ledger_sum_micros: 0,
                ledger_seq: 0,
                snapshot_balance_micros: balance,
                snapshot_seq: seq,
            }),
            _ => report
                .problems
                .push(Problem::MissingSnapshot { account_id }),
        }
    }
    Ok(report)
}

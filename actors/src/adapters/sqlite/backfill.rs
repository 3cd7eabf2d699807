//! The grants of accounts an earlier release left without them (`grants`
//! NULL), and, for `sms-credit migrate` alone, of accounts an earlier
//! release's server wrote to after they were made: each account's ledger
//! replayed by [`crate::backfill`], written in one transaction of its own,
//! and only if what was read is still so when that transaction holds the
//! write lock (another process sharing the file may have made them first).
//! An account whose ledger does not lead to its balance, or holds a value
//! this release does not know, is left as it was and named; the others go
//! on.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::backfill::{
    grants_off, order_type_among, remake, HistoricRow, Pass, Recorded, Refused, Unfit, Which,
};
use crate::billing::orders::OrderType;
use crate::ledger::{AccountId, TransactionKind};
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

/// Makes the grants of every account that has none.
pub(super) fn backfill(connection: &mut Connection) -> Result<Pass, StoreError> {
    let accounts: Vec<i64> = connection
        .prepare(
            "SELECT account_id FROM account_balances WHERE grants IS NULL ORDER BY account_id",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let pass = each_account(connection, &accounts, Which::Missing)?;
    if !pass.made.is_empty() {
        tracing::info!(
            accounts = pass.made.len(),
            "made the credit grants of accounts from their ledgers"
        );
    }
    Ok(pass)
}

/// The accounts whose grants were made but no longer account for their
/// ledger: a row with an amount but neither a funding nor a grant (an
/// earlier release's server wrote it after the upgrade), or grants that
/// do not sum to the balance (or cannot be read).
pub(super) fn accounts_off(connection: &Connection) -> Result<Vec<AccountId>, StoreError> {
    let mut accounts: Vec<i64> = connection
        .prepare(
            "SELECT DISTINCT t.account_id FROM transactions t
               JOIN account_balances b ON b.account_id = t.account_id AND b.grants IS NOT NULL
              WHERE t.funded_by IS NULL AND t.amount <> 0
                AND NOT EXISTS (SELECT 1 FROM credit_grants g
                                 WHERE g.account_id = t.account_id AND g.id = t.seq)",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut statement = connection.prepare(
        "SELECT account_id, balance, grants FROM account_balances WHERE grants IS NOT NULL",
    )?;
    let mut cursor = statement.query([])?;
    while let Some(row) = cursor.next()? {
        let account_id: i64 = row.get(0)?;
        let balance: i64 = row.get(1)?;
        // A value SQLite holds in another type is off too.
        let stored: Option<String> = row.get(2).ok();
        if stored.is_none_or(|stored| grants_off(&stored, Money::from_micros(balance))) {
            accounts.push(account_id);
        }
    }
    accounts.sort_unstable();
    accounts.dedup();
    Ok(accounts.into_iter().map(AccountId).collect())
}

/// Makes again the grants of `accounts` (found by [`accounts_off`]) from
/// their ledgers, keeping every row's recorded funding and every grant
/// made: only the rows without either are decided.
pub(super) fn remake_off(
    connection: &mut Connection,
    accounts: &[AccountId],
) -> Result<Pass, StoreError> {
    let ids: Vec<i64> = accounts.iter().map(|account| account.0).collect();
    let pass = each_account(connection, &ids, Which::Off)?;
    if !pass.made.is_empty() {
        tracing::warn!(
            accounts = ?pass.made.iter().map(|account| account.0).collect::<Vec<_>>(),
            "made again the credit grants of accounts an earlier release's server wrote to after the upgrade"
        );
    }
    Ok(pass)
}

/// One transaction per account: made, left as it was (and why), or found
/// with nothing to do. A failure to read or write the database stops it.
fn each_account(
    connection: &mut Connection,
    accounts: &[i64],
    which: Which,
) -> Result<Pass, StoreError> {
    let mut pass = Pass::default();
    for account_id in accounts {
        let account_id = AccountId(*account_id);
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match make_account(&transaction, account_id, which) {
            Ok(true) => {
                transaction.commit()?;
                pass.made.push(account_id);
            }
            Ok(false) => transaction.rollback()?,
            Err(Refused::Unfit(why)) => {
                transaction.rollback()?;
                pass.leave(account_id, why, which);
            }
            Err(Refused::Store(error)) => return Err(error),
        }
    }
    Ok(pass)
}

impl From<rusqlite::Error> for Refused {
    fn from(error: rusqlite::Error) -> Refused {
        match error {
            // A stored value of a type its column does not hold (a hand
            // edit) is the account's, not the database's failure.
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => {
                Refused::Unfit(Unfit::Unknown(error.to_string()))
            }
            other => Refused::from(StoreError::from(other)),
        }
    }
}

/// One account's grants, in the caller's transaction; `false` if there
/// is nothing to make (made already, or nothing off).
fn make_account(
    connection: &Connection,
    account_id: AccountId,
    which: Which,
) -> Result<bool, Refused> {
    let standing: Option<(i64, i64, Option<String>)> = connection
        .query_row(
            "SELECT balance, seq, grants FROM account_balances WHERE account_id = ?1",
            [account_id.0],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((balance, seq, stored)) = standing else {
        return Ok(false);
    };
    if (which == Which::Missing) != stored.is_none() {
        return Ok(false);
    }
    let grants = super::ledger::load_grants(connection, account_id, None)?;
    let mut rows = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT seq, type, amount, idempotency_key, order_id, created_at, funded_by
               FROM transactions WHERE account_id = ?1 ORDER BY seq",
        )?;
        let mut cursor = statement.query([account_id.0])?;
        while let Some(row) = cursor.next()? {
            let seq: i64 = row.get(0)?;
            let row_name = || format!("account {account_id} seq {seq}");
            let kind_text: String = row.get(1)?;
            let kind = TransactionKind::parse(&kind_text).ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new(
                    "transactions",
                    row_name(),
                    "type",
                    kind_text,
                ))
            })?;
            let funding = super::ledger::funding_column(row, 6, row_name)?;
            let made = grants.iter().find(|grant| grant.id == seq).cloned();
            let recorded =
                (!funding.is_empty() || made.is_some()).then_some(Recorded { funding, made });
            rows.push(HistoricRow {
                seq,
                kind,
                amount: Money::from_micros(row.get(2)?),
                idempotency_key: row.get(3)?,
                order_id: row.get(4)?,
                created_at_ms: row.get(5)?,
                recorded,
            });
        }
    }
    let mut orders: Vec<(i64, OrderType)> = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT id, order_type FROM orders WHERE id IN
                (SELECT order_id FROM transactions
                  WHERE account_id = ?1 AND type = 'credit' AND order_id IS NOT NULL)",
        )?;
        let mut cursor = statement.query([account_id.0])?;
        while let Some(row) = cursor.next()? {
            let id: i64 = row.get(0)?;
            let text: String = row.get(1)?;
            let order_type = OrderType::parse(&text).ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new("orders", id, "order_type", text))
            })?;
            orders.push((id, order_type));
        }
    }
    let replayed = remake(
        &rows,
        order_type_among(&orders),
        Money::from_micros(balance),
        seq,
    )
    .map_err(Refused::Unfit)?;
    let encoded = replayed.book.encode();
    if replayed.changes_nothing(&encoded, stored.as_deref()) {
        return Ok(false);
    }
    {
        let mut update = connection.prepare(
            "UPDATE transactions SET funded_by = ?3
              WHERE account_id = ?1 AND seq = ?2 AND funded_by IS NULL",
        )?;
        for (seq, funding) in &replayed.funding {
            update.execute(params![account_id.0, seq, funding.encode()])?;
        }
    }
    for grant in &replayed.grants {
        super::ledger::insert_grant(connection, account_id, grant)?;
    }
    let changed = connection.execute(
        "UPDATE account_balances SET grants = ?4
          WHERE account_id = ?1 AND balance = ?2 AND seq = ?3 AND grants IS ?5",
        params![account_id.0, balance, seq, encoded, stored],
    )?;
    // The write lock is held since the read: nothing else moved it.
    if changed != 1 {
        return Err(Refused::Store(StoreError::Database(format!(
            "the balance row of account {account_id} changed while its credit grants were made"
        ))));
    }
    Ok(true)
}

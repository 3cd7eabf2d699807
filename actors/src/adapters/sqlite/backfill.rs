//! The grants of accounts an earlier release left without them (`grants`
//! NULL): each account's ledger replayed by [`crate::backfill`], written in
//! one transaction of its own, and only if its grants are still not made
//! when that transaction holds the write lock (another process sharing
//! the file may have made them first).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::backfill::{backfill_error, replay, HistoricRow};
use crate::billing::orders::OrderType;
use crate::ledger::{AccountId, TransactionKind};
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

/// Makes the grants of every account that has none; answers how many.
pub(super) fn backfill(connection: &mut Connection) -> Result<usize, StoreError> {
    let accounts: Vec<i64> = connection
        .prepare(
            "SELECT account_id FROM account_balances WHERE grants IS NULL ORDER BY account_id",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut made = 0;
    for account_id in accounts {
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if backfill_account(&transaction, AccountId(account_id))? {
            made += 1;
        }
        transaction.commit()?;
    }
    if made > 0 {
        tracing::info!(
            accounts = made,
            "made the credit grants of accounts from their ledgers"
        );
    }
    Ok(made)
}

/// One account's grants, in the caller's transaction; `false` if they
/// were made already.
fn backfill_account(connection: &Connection, account_id: AccountId) -> Result<bool, StoreError> {
    let standing: Option<(i64, i64, Option<String>)> = connection
        .query_row(
            "SELECT balance, seq, grants FROM account_balances WHERE account_id = ?1",
            [account_id.0],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((balance, seq, None)) = standing else {
        return Ok(false);
    };
    let mut rows = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT seq, type, amount, idempotency_key, order_id, created_at
               FROM transactions WHERE account_id = ?1 ORDER BY seq",
        )?;
        let mut cursor = statement.query([account_id.0])?;
        while let Some(row) = cursor.next()? {
            let seq: i64 = row.get(0)?;
            let kind_text: String = row.get(1)?;
            let kind = TransactionKind::parse(&kind_text).ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new(
                    "transactions",
                    format!("account {account_id} seq {seq}"),
                    "type",
                    kind_text,
                ))
            })?;
            rows.push(HistoricRow {
                seq,
                kind,
                amount: Money::from_micros(row.get(2)?),
                idempotency_key: row.get(3)?,
                order_id: row.get(4)?,
                created_at_ms: row.get(5)?,
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
    let replayed = replay(&rows, |order_id| {
        orders
            .iter()
            .find(|(id, _)| *id == order_id)
            .map(|(_, order_type)| *order_type)
    })
    .map_err(|error| backfill_error(account_id, &error.to_string()))?;
    let replayed = replayed.fits(account_id, &rows, Money::from_micros(balance), seq)?;
    {
        let mut update = connection
            .prepare("UPDATE transactions SET funded_by = ?3 WHERE account_id = ?1 AND seq = ?2")?;
        for (seq, funding) in &replayed.funding {
            update.execute(params![account_id.0, seq, funding.encode()])?;
        }
    }
    for grant in &replayed.grants {
        super::ledger::insert_grant(connection, account_id, grant)?;
    }
    connection.execute(
        "UPDATE account_balances SET grants = ?2 WHERE account_id = ?1 AND grants IS NULL",
        params![account_id.0, replayed.book.encode()],
    )?;
    Ok(true)
}

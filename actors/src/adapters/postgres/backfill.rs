//! The grants of accounts an earlier release left without them (`grants`
//! NULL): each account's ledger replayed by [`crate::backfill`], written in
//! one transaction of its own that locks the account's snapshot row first,
//! and only if its grants are still not made then. Run under the
//! migrations' advisory lock, so instances starting together make them
//! once.

use tokio_postgres::Client;

use crate::backfill::{backfill_error, replay, HistoricRow};
use crate::billing::orders::OrderType;
use crate::ledger::{AccountId, TransactionKind};
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

/// Makes the grants of every account that has none; answers how many.
pub(super) async fn backfill(client: &mut Client) -> Result<usize, StoreError> {
    let accounts: Vec<i64> = client
        .query(
            "SELECT account_id FROM account_balances WHERE grants IS NULL ORDER BY account_id",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut made = 0;
    for account_id in accounts {
        let transaction = client.transaction().await?;
        if backfill_account(&transaction, AccountId(account_id)).await? {
            made += 1;
        }
        transaction.commit().await?;
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
async fn backfill_account(
    transaction: &tokio_postgres::Transaction<'_>,
    account_id: AccountId,
) -> Result<bool, StoreError> {
    let Some(standing) = transaction
        .query_opt(
            "SELECT balance, seq, grants FROM account_balances WHERE account_id = $1 FOR UPDATE",
            &[&account_id.0],
        )
        .await?
    else {
        return Ok(false);
    };
    let balance: i64 = standing.try_get(0)?;
    let seq: i64 = standing.try_get(1)?;
    if standing.try_get::<_, Option<String>>(2)?.is_some() {
        return Ok(false);
    }
    let mut rows = Vec::new();
    for row in transaction
        .query(
            "SELECT seq, type, amount, idempotency_key, order_id, created_at
               FROM transactions WHERE account_id = $1 ORDER BY seq",
            &[&account_id.0],
        )
        .await?
    {
        let seq: i64 = row.try_get(0)?;
        let kind_text: String = row.try_get(1)?;
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
            amount: Money::from_micros(row.try_get(2)?),
            idempotency_key: row.try_get(3)?,
            order_id: row.try_get(4)?,
            created_at_ms: row.try_get(5)?,
        });
    }
    let mut orders: Vec<(i64, OrderType)> = Vec::new();
    for row in transaction
        .query(
            "SELECT id, order_type FROM orders WHERE id IN
                (SELECT order_id FROM transactions
                  WHERE account_id = $1 AND type = 'credit' AND order_id IS NOT NULL)",
            &[&account_id.0],
        )
        .await?
    {
        let id: i64 = row.try_get(0)?;
        let text: String = row.try_get(1)?;
        let order_type = OrderType::parse(&text).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new("orders", id, "order_type", text))
        })?;
        orders.push((id, order_type));
    }
    let replayed = replay(&rows, |order_id| {
        orders
            .iter()
            .find(|(id, _)| *id == order_id)
            .map(|(_, order_type)| *order_type)
    })
    .map_err(|error| backfill_error(account_id, &error.to_string()))?
    .fits(account_id, &rows, Money::from_micros(balance), seq)?;
    let (seqs, fundings): (Vec<i64>, Vec<Option<String>>) = replayed
        .funding
        .iter()
        .map(|(seq, funding)| (*seq, funding.encode()))
        .unzip();
    transaction
        .execute(
            "UPDATE transactions t SET funded_by = u.funded_by
               FROM unnest($2::bigint[], $3::text[]) AS u (seq, funded_by)
              WHERE t.account_id = $1 AND t.seq = u.seq",
            &[&account_id.0, &seqs, &fundings],
        )
        .await?;
    for grant in &replayed.grants {
        transaction
            .execute(
                "INSERT INTO credit_grants (account_id, id, category, source, order_id, amount,
                                            priority, granted_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &account_id.0,
                    &grant.id,
                    &grant.category.as_str(),
                    &grant.source.as_str(),
                    &grant.order_id,
                    &grant.amount.micros(),
                    &i64::from(grant.priority.value()),
                    &grant.granted_at_ms,
                    &grant.expires_at_ms,
                ],
            )
            .await?;
    }
    transaction
        .execute(
            "UPDATE account_balances SET grants = $2 WHERE account_id = $1",
            &[&account_id.0, &replayed.book.encode()],
        )
        .await?;
    Ok(true)
}

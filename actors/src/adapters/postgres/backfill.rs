//! The grants of accounts an earlier release left without them (`grants`
//! NULL), and, for `sms-credit migrate` alone, of accounts an earlier
//! release's server wrote to after they were made: each account's ledger
//! replayed by [`crate::backfill`], written in one transaction of its own
//! that locks the account's snapshot row first, and only if what was read
//! is still so then. Run under the migrations' advisory lock, so instances
//! starting together make them once. An account whose ledger does not lead
//! to its balance, or holds a value this release does not know, is left as
//! it was and named; the others go on.

use tokio_postgres::Client;

use crate::backfill::{
    grants_off, order_type_among, remake, HistoricRow, Pass, Recorded, Refused, Which,
};
use crate::billing::orders::OrderType;
use crate::ledger::{AccountId, TransactionKind};
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

/// Makes the grants of every account that has none.
pub(super) async fn backfill(client: &mut Client) -> Result<Pass, StoreError> {
    let accounts: Vec<i64> = client
        .query(
            "SELECT account_id FROM account_balances WHERE grants IS NULL ORDER BY account_id",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let pass = each_account(client, &accounts, Which::Missing).await?;
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
pub(super) async fn accounts_off(client: &Client) -> Result<Vec<AccountId>, StoreError> {
    let mut accounts: Vec<i64> = client
        .query(
            "SELECT DISTINCT t.account_id FROM transactions t
               JOIN account_balances b ON b.account_id = t.account_id AND b.grants IS NOT NULL
              WHERE t.funded_by IS NULL AND t.amount <> 0
                AND NOT EXISTS (SELECT 1 FROM credit_grants g
                                 WHERE g.account_id = t.account_id AND g.id = t.seq)",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for row in client
        .query(
            "SELECT account_id, balance, grants FROM account_balances WHERE grants IS NOT NULL",
            &[],
        )
        .await?
    {
        let stored: String = row.try_get(2)?;
        if grants_off(&stored, Money::from_micros(row.try_get(1)?)) {
            accounts.push(row.try_get(0)?);
        }
    }
    accounts.sort_unstable();
    accounts.dedup();
    Ok(accounts.into_iter().map(AccountId).collect())
}

/// Makes again the grants of `accounts` (found by [`accounts_off`]) from
/// their ledgers, keeping every row's recorded funding and every grant
/// made: only the rows without either are decided.
pub(super) async fn remake_off(
    client: &mut Client,
    accounts: &[AccountId],
) -> Result<Pass, StoreError> {
    let ids: Vec<i64> = accounts.iter().map(|account| account.0).collect();
    let pass = each_account(client, &ids, Which::Off).await?;
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
async fn each_account(
    client: &mut Client,
    accounts: &[i64],
    which: Which,
) -> Result<Pass, StoreError> {
    let mut pass = Pass::default();
    for account_id in accounts {
        let account_id = AccountId(*account_id);
        let transaction = client.transaction().await?;
        match make_account(&transaction, account_id, which).await {
            Ok(true) => {
                transaction.commit().await?;
                pass.made.push(account_id);
            }
            Ok(false) => transaction.rollback().await?,
            Err(Refused::Unfit(why)) => {
                transaction.rollback().await?;
                pass.leave(account_id, why, which);
            }
            Err(Refused::Store(error)) => return Err(error),
        }
    }
    Ok(pass)
}

impl From<tokio_postgres::Error> for Refused {
    fn from(error: tokio_postgres::Error) -> Refused {
        Refused::Store(error.into())
    }
}

/// One account's grants, in the caller's transaction; `false` if there
/// is nothing to make (made already, or nothing off).
async fn make_account(
    transaction: &tokio_postgres::Transaction<'_>,
    account_id: AccountId,
    which: Which,
) -> Result<bool, Refused> {
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
    let stored: Option<String> = standing.try_get(2)?;
    if (which == Which::Missing) != stored.is_none() {
        return Ok(false);
    }
    let grants = super::ledger::load_grants(transaction, account_id, None).await?;
    let mut rows = Vec::new();
    for row in transaction
        .query(
            "SELECT seq, type, amount, idempotency_key, order_id, created_at, funded_by
               FROM transactions WHERE account_id = $1 ORDER BY seq",
            &[&account_id.0],
        )
        .await?
    {
        let seq: i64 = row.try_get(0)?;
        let row_name = || format!("account {account_id} seq {seq}");
        let kind_text: String = row.try_get(1)?;
        let kind = TransactionKind::parse(&kind_text).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "transactions",
                row_name(),
                "type",
                kind_text,
            ))
        })?;
        let funding = super::ledger::funding_from_text(row.try_get(6)?, row_name)?;
        let made = grants.iter().find(|grant| grant.id == seq).cloned();
        let recorded =
            (!funding.is_empty() || made.is_some()).then_some(Recorded { funding, made });
        rows.push(HistoricRow {
            seq,
            kind,
            amount: Money::from_micros(row.try_get(2)?),
            idempotency_key: row.try_get(3)?,
            order_id: row.try_get(4)?,
            created_at_ms: row.try_get(5)?,
            recorded,
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
    let (seqs, fundings): (Vec<i64>, Vec<Option<String>>) = replayed
        .funding
        .iter()
        .map(|(seq, funding)| (*seq, funding.encode()))
        .unzip();
    transaction
        .execute(
            "UPDATE transactions t SET funded_by = u.funded_by
               FROM unnest($2::bigint[], $3::text[]) AS u (seq, funded_by)
              WHERE t.account_id = $1 AND t.seq = u.seq AND t.funded_by IS NULL",
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
    let changed = transaction
        .execute(
            "UPDATE account_balances SET grants = $4
              WHERE account_id = $1 AND balance = $2 AND seq = $3
                AND grants IS NOT DISTINCT FROM $5",
            &[&account_id.0, &balance, &seq, &encoded, &stored],
        )
        .await?;
    // The row is locked since the read: nothing else moved it.
    if changed != 1 {
        return Err(Refused::Store(StoreError::Database(format!(
            "the balance row of account {account_id} changed while its credit grants were made"
        ))));
    }
    Ok(true)
}

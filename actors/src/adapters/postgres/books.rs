//! The books in Postgres: every ledger row made before the period's end,
//! with the grant it made, streamed from one repeatable-read transaction
//! (one moment of the ledger) on a connection of its own (a long read
//! would hold up the reader connections' pipelined queries), on a thread
//! of the adapter's blocking pool (see `reports.rs`), and placed by
//! [`crate::books`] as it arrives; nothing is summed in SQL, since a row's
//! funding is text only the domain reads exactly. In the same transaction,
//! whether the expiry sweep stands past every grant that expired before
//! the period's end (else it is not closed).

use futures_util::TryStreamExt;
use tokio_postgres::{Client, Transaction};

use crate::books::{BookRow, Bookkeeper, BooksError, CreditBooks, Period};
use crate::ledger::AccountId;
use crate::store::ports::GrantExpiry;
use crate::store::StoreError;

/// The books of `period`, asked for at `as_of_ms`. A failed read is the
/// outer error; what the rows say is wrong, the inner one.
pub(super) async fn credit_books(
    client: &mut Client,
    period: Period,
    as_of_ms: i64,
) -> Result<Result<CreditBooks, BooksError>, StoreError> {
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut keeper = Bookkeeper::new(period, as_of_ms);
    if !expiries_swept(&transaction, period.to_ms).await? {
        keeper.expiries_not_swept();
    }
    for account in transaction
        .query(
            "SELECT account_id FROM account_balances WHERE grants IS NULL",
            &[],
        )
        .await?
    {
        keeper.grants_not_made(AccountId(account.try_get(0)?));
    }
    // No order asked for: the books are the same in any, and a sort of the
    // whole ledger would cost more than the read.
    let rows = transaction
        .query_raw(
            "SELECT t.account_id, t.seq, t.type, t.amount, t.order_id, t.created_at, t.funded_by,
                    g.amount, g.category
               FROM transactions t
               LEFT JOIN credit_grants g ON g.account_id = t.account_id AND g.id = t.seq
              WHERE t.created_at < $1",
            [period.to_ms],
        )
        .await?;
    futures_util::pin_mut!(rows);
    while let Some(row) = rows.try_next().await? {
        let made_amount: Option<i64> = row.try_get(7)?;
        let made_category: Option<String> = row.try_get(8)?;
        keeper.row(BookRow {
            account_id: AccountId(row.try_get(0)?),
            seq: row.try_get(1)?,
            kind: row.try_get(2)?,
            amount: row.try_get(3)?,
            order_id: row.try_get(4)?,
            created_at_ms: row.try_get(5)?,
            funded_by: row.try_get(6)?,
            made: made_amount.zip(made_category),
        });
    }
    transaction.commit().await?;
    Ok(keeper.finish())
}

/// Whether the expiry sweep stands past every grant that expires before
/// `to_ms`: none is left after where it stands (the sweep's own order, by
/// the sweep's index), so every expiry row dated before `to_ms` that the
/// sweep writes is written. A grant the sweep left to its account's next
/// change (logged at ERROR) counts as passed.
async fn expiries_swept(transaction: &Transaction<'_>, to_ms: i64) -> Result<bool, StoreError> {
    let swept = super::grant_expiry::swept_until_from(
        transaction
            .query_opt(super::grant_expiry::SWEPT_UNTIL, &[])
            .await?,
    )?;
    // Before the first grant: below every place.
    let after = swept.unwrap_or(GrantExpiry {
        expires_at_ms: i64::MIN,
        account_id: AccountId(i64::MIN),
        grant_id: i64::MIN,
    });
    let ahead: bool = transaction
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM credit_grants
                             WHERE expires_at IS NOT NULL
                               AND (expires_at, account_id, id) > ($1, $2, $3)
                               AND expires_at < $4)",
            &[
                &after.expires_at_ms,
                &after.account_id.0,
                &after.grant_id,
                &to_ms,
            ],
        )
        .await?
        .try_get(0)?;
    Ok(!ahead)
}

//! The books in SQLite: every ledger row made before the period's end,
//! with the grant it made, read in one read transaction (one moment of the
//! ledger) and placed by [`crate::books`] as it streams; nothing is summed
//! in SQL, since a row's funding is text only the domain reads exactly.
//! In the same transaction, whether the expiry sweep stands past every
//! grant that expired before the period's end (else it is not closed).

use rusqlite::{params, Connection};

use crate::books::{BookRow, Bookkeeper, BooksError, CreditBooks, Period};
use crate::ledger::AccountId;
use crate::store::ports::GrantExpiry;
use crate::store::StoreError;

/// The books of `period`, asked for at `as_of_ms`, in the reader's
/// transaction. A failed read is the outer error; what the rows say is
/// wrong, the inner one.
pub(super) fn credit_books(
    connection: &Connection,
    period: Period,
    as_of_ms: i64,
) -> Result<Result<CreditBooks, BooksError>, StoreError> {
    let mut keeper = Bookkeeper::new(period, as_of_ms);
    if !expiries_swept(connection, period.to_ms)? {
        keeper.expiries_not_swept();
    }
    let mut without_grants = connection
        .prepare_cached("SELECT account_id FROM account_balances WHERE grants IS NULL")?;
    let mut accounts = without_grants.query([])?;
    while let Some(account) = accounts.next()? {
        keeper.grants_not_made(AccountId(account.get(0)?));
    }
    // In the ledger's own order (its key): no sort, and no index on
    // created_at to keep up on every write for a report.
    let mut statement = connection.prepare_cached(
        "SELECT t.account_id, t.seq, t.type, t.amount, t.order_id, t.created_at, t.funded_by,
                g.amount, g.category
           FROM transactions t
           LEFT JOIN credit_grants g ON g.account_id = t.account_id AND g.id = t.seq
          WHERE t.created_at < ?1",
    )?;
    let mut rows = statement.query([period.to_ms])?;
    while let Some(row) = rows.next()? {
        let made_amount: Option<i64> = row.get(7)?;
        let made_category: Option<String> = row.get(8)?;
        keeper.row(BookRow {
            account_id: AccountId(row.get(0)?),
            seq: row.get(1)?,
            kind: row.get(2)?,
            amount: row.get(3)?,
            order_id: row.get(4)?,
            created_at_ms: row.get(5)?,
            funded_by: row.get(6)?,
            made: made_amount.zip(made_category),
        });
    }
    Ok(keeper.finish())
}

/// Whether the expiry sweep stands past every grant that expires before
/// `to_ms`: none is left after where it stands (the sweep's own order, by
/// the sweep's index), so every expiry row dated before `to_ms` that the
/// sweep writes is written. A grant the sweep left to its account's next
/// change (logged at ERROR) counts as passed.
fn expiries_swept(connection: &Connection, to_ms: i64) -> Result<bool, StoreError> {
    // Before the first grant: below every place.
    let after = super::grant_expiry::load_swept_until(connection)?.unwrap_or(GrantExpiry {
        expires_at_ms: i64::MIN,
        account_id: AccountId(i64::MIN),
        grant_id: i64::MIN,
    });
    let ahead: bool = connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM credit_grants INDEXED BY credit_grants_expiry
                             WHERE expires_at IS NOT NULL
                               AND (expires_at, account_id, id) > (?1, ?2, ?3)
                               AND expires_at < ?4)",
        )?
        .query_row(
            params![
                after.expires_at_ms,
                after.account_id.0,
                after.grant_id,
                to_ms
            ],
            |row| row.get(0),
        )?;
    Ok(!ahead)
}

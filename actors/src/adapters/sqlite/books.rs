//! The books in SQLite: every ledger row made before the period's end,
//! with the grant it made, read in one read transaction (one moment of the
//! ledger) and placed by [`crate::books`] as it streams; nothing is summed
//! in SQL, since a row's funding is text only the domain reads exactly.

use rusqlite::Connection;

use crate::books::{BookRow, Bookkeeper, BooksError, CreditBooks, Period};
use crate::ledger::AccountId;
use crate::store::StoreError;

/// The books of `period`, in the reader's transaction. A failed read is
/// the outer error; what the rows say is wrong, the inner one.
pub(super) fn credit_books(
    connection: &Connection,
    period: Period,
) -> Result<Result<CreditBooks, BooksError>, StoreError> {
    let mut keeper = Bookkeeper::new(period);
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

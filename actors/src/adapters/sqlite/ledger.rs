//! The ledger and the snapshots in SQLite: the guarded append the writer
//! runs for each ledger write, the look-ups of the account actors and the
//! feed, and the scans of `verify`.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteStore;
use crate::ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, TransactionKind};
use crate::money::Money;
use crate::store::{LedgerStore, LedgerWrite, StoreError, StoreFuture, UnknownValue};
use crate::verify::{Verifier, VerifyReport, VerifyRow};

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let account_id = AccountId(row.get(0)?);
    let seq: i64 = row.get(1)?;
    let kind_text: String = row.get(2)?;
    let kind = TransactionKind::parse(&kind_text).ok_or_else(|| {
        UnknownValue::new(
            "transactions",
            format!("account {account_id} seq {seq}"),
            "type",
            kind_text,
        )
        .into_sql_error(2)
    })?;
    Ok(LedgerEntry {
        account_id,
        seq,
        kind,
        amount: Money::from_micros(row.get(3)?),
        balance_after: Money::from_micros(row.get(4)?),
        idempotency_key: row.get(5)?,
        order_id: row.get(6)?,
        description: row.get(7)?,
        created_at_ms: row.get(8)?,
        reason: row.get::<_, Option<String>>(9)?.map(Box::new),
    })
}

const ENTRY_COLUMNS: &str =
    "account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at, reason";

/// Whether a failed insert clashed with the ledger's unique
/// `(account_id, idempotency_key)` index: the key is already used.
pub(super) fn is_duplicate_key(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(failure, Some(message)) => {
            failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && message.contains("transactions.idempotency_key")
        }
        _ => false,
    }
}

/// Moves the snapshot from `previous` to `next`, the first statement of a
/// ledger write. Returns `false`, changing nothing, if the snapshot on disk
/// is no longer `previous` (someone else wrote to this account): the guard.
pub(super) fn move_snapshot(
    connection: &Connection,
    entry: &LedgerEntry,
    previous: &Snapshot,
    next: &Snapshot,
) -> Result<bool, rusqlite::Error> {
    let moved = connection
        .prepare_cached(
            "UPDATE account_balances
                SET balance = ?2, seq = ?3, low_balance_warned_at = ?4, updated_at = ?5
              WHERE account_id = ?1 AND seq = ?6 AND balance = ?7",
        )?
        .execute(params![
            entry.account_id.0,
            next.balance.micros(),
            next.seq,
            next.low_balance_warned_at_ms,
            entry.created_at_ms,
            previous.seq,
            previous.balance.micros(),
        ])?;
    Ok(moved == 1)
}

/// Inserts a ledger row, after its snapshot moved. An idempotency key
/// already in the account's ledger fails it (the unique index decides; see
/// [`is_duplicate_key`]).
pub(super) fn insert_row(
    connection: &Connection,
    entry: &LedgerEntry,
) -> Result<(), rusqlite::Error> {
    connection
        .prepare_cached(
            "INSERT INTO transactions (account_id, seq, type, amount, balance_after,
                                       idempotency_key, order_id, description, created_at,
                                       reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            entry.account_id.0,
            entry.seq,
            entry.kind.as_str(),
            entry.amount.micros(),
            entry.balance_after.micros(),
            entry.idempotency_key,
            entry.order_id,
            entry.description,
            entry.created_at_ms,
            entry.reason.as_deref(),
        ])?;
    Ok(())
}

/// Puts the snapshot back where a write whose row failed found it.
pub(super) fn put_back_snapshot(
    connection: &Connection,
    entry: &LedgerEntry,
    previous: &Snapshot,
) -> Result<(), rusqlite::Error> {
    connection
        .prepare_cached(
            "UPDATE account_balances SET balance = ?2, seq = ?3, low_balance_warned_at = ?4
              WHERE account_id = ?1",
        )?
        .execute(params![
            entry.account_id.0,
            previous.balance.micros(),
            previous.seq,
            previous.low_balance_warned_at_ms,
        ])?;
    Ok(())
}

pub(super) fn load_snapshot(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<Snapshot>, StoreError> {
    let snapshot = connection
        .prepare_cached("SELECT balance, seq, low_balance_warned_at FROM account_balances WHERE account_id = ?1")?
        .query_row([account_id.0], |row| {
            Ok(Snapshot {
                balance: Money::from_micros(row.get(0)?),
                seq: row.get(1)?,
                low_balance_warned_at_ms: row.get(2)?,
            })
        })
        .optional()?;
    Ok(snapshot)
}

fn find_entry_by_key(
    connection: &Connection,
    account_id: AccountId,
    key: &str,
) -> Result<Option<LedgerEntry>, StoreError> {
    let entry = connection
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = ?1 AND idempotency_key = ?2"
        ))?
        .query_row(params![account_id.0, key], entry_from_row)
        .optional()?;
    Ok(entry)
}

/// Ledger rows of an account with `seq > after_seq`, oldest first, at most `limit`.
fn list_entries(
    connection: &Connection,
    account_id: AccountId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let entries = statement
        .query_map(params![account_id.0, after_seq, limit], entry_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries)
}

/// The newest ledger rows of an account, newest first, at most `limit`.
fn recent_entries(
    connection: &Connection,
    account_id: AccountId,
    limit: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let entries = statement
        .query_map(params![account_id.0, limit], entry_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries)
}

/// The rows of an account from seq `first` to `last`, in order.
pub(super) fn entries_between(
    connection: &Connection,
    account_id: AccountId,
    first: i64,
    last: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    list_entries(connection, account_id, first - 1, last - first + 1)
}

/// Feeds every ledger row (with its account's snapshot), then every
/// account without rows, to a [`Verifier`].
pub(super) fn verify(connection: &Connection) -> Result<VerifyReport, StoreError> {
    let mut verifier = Verifier::new();
    let mut rows = connection.prepare(
        "SELECT t.account_id, t.seq, t.type, t.amount, t.balance_after, b.balance, b.seq
           FROM transactions t LEFT JOIN account_balances b ON b.account_id = t.account_id
          ORDER BY t.account_id, t.seq",
    )?;
    let mut cursor = rows.query([])?;
    while let Some(row) = cursor.next()? {
        let balance: Option<i64> = row.get(5)?;
        let seq: Option<i64> = row.get(6)?;
        verifier.row(VerifyRow {
            account_id: AccountId(row.get(0)?),
            seq: row.get(1)?,
            kind: row.get(2)?,
            amount: row.get(3)?,
            balance_after: row.get(4)?,
            snapshot: balance.zip(seq),
        });
    }
    let mut accounts = connection.prepare(
        "SELECT a.id, b.balance, b.seq FROM accounts a
           LEFT JOIN account_balances b ON b.account_id = a.id
          WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.account_id = a.id)
          ORDER BY a.id",
    )?;
    let mut cursor = accounts.query([])?;
    while let Some(row) = cursor.next()? {
        let balance: Option<i64> = row.get(1)?;
        let seq: Option<i64> = row.get(2)?;
        verifier.account_without_rows(AccountId(row.get(0)?), balance.zip(seq));
    }
    Ok(verifier.finish())
}

impl LedgerStore for SqliteStore {
    fn submit(&self, write: LedgerWrite) -> Result<(), StoreError> {
        self.writer
            .send(super::WriterMessage::Ledger(write))
            .map_err(|_| StoreError::Closed)
    }

    fn snapshot(&self, account_id: AccountId) -> StoreFuture<Option<Snapshot>> {
        self.read(move |connection| load_snapshot(connection, account_id))
    }

    fn entry_by_key(
        &self,
        account_id: AccountId,
        key: IdempotencyKey,
    ) -> StoreFuture<Option<LedgerEntry>> {
        self.read(move |connection| find_entry_by_key(connection, account_id, key.as_str()))
    }

    fn entries_after(
        &self,
        account_id: AccountId,
        after_seq: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LedgerEntry>> {
        self.read(move |connection| list_entries(connection, account_id, after_seq, limit))
    }

    fn latest_entries(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<LedgerEntry>> {
        self.read(move |connection| recent_entries(connection, account_id, limit))
    }

    fn snapshot_and_entries_after(
        &self,
        account_id: AccountId,
        after_seq: i64,
        limit: i64,
    ) -> StoreFuture<(Option<Snapshot>, Vec<LedgerEntry>)> {
        // A reader runs each job inside one read transaction.
        self.read(move |connection| {
            let snapshot = load_snapshot(connection, account_id)?;
            let entries = list_entries(connection, account_id, after_seq, limit)?;
            Ok((snapshot, entries))
        })
    }

    fn ever_reached(&self, account_id: AccountId, amount: Money) -> StoreFuture<bool> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = ?1 AND balance_after >= ?2)",
            )?;
            let reached: bool =
                statement.query_row(params![account_id.0, amount.micros()], |row| row.get(0))?;
            Ok(reached)
        })
    }

    fn taken_back(&self, account_id: AccountId, order_id: i64) -> StoreFuture<Money> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT COALESCE(SUM(amount), 0) FROM transactions
                  WHERE order_id = ?2 AND account_id = ?1 AND type = 'refund'",
            )?;
            let sum: i64 =
                statement.query_row(params![account_id.0, order_id], |row| row.get(0))?;
            Ok(Money::from_micros(sum.checked_neg().ok_or_else(|| {
                StoreError::Database(format!("order {order_id}: refunds out of range"))
            })?))
        })
    }

    fn verify(&self) -> StoreFuture<VerifyReport> {
        self.read(verify)
    }

    fn flush(&self) -> StoreFuture<()> {
        self.flush_writer()
    }

    fn ping(&self) -> StoreFuture<()> {
        self.read(|connection| {
            connection.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?;
            Ok(())
        })
    }
}

//! The ledger and the snapshots in SQLite: the guarded append the writer
//! runs for each ledger write, the look-ups of the account actors and the
//! feed, and the scans of `verify`.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteStore;
use crate::grants::{decode_remaining, Category, CreditGrant, Funding, GrantSource, Priority};
use crate::ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, Standing, TransactionKind};
use crate::money::Money;
use crate::store::ports::{AccountGrants, Activation, TakenBackRows};
use crate::store::{LedgerStore, LedgerWrite, StoreError, StoreFuture, UnknownValue};
use crate::verify::{Verifier, VerifyReport, VerifyRow};

/// A row's stored `funded_by` (column `index`), read back exactly or refused.
pub(super) fn funding_column(
    row: &Row<'_>,
    index: usize,
    row_name: impl FnOnce() -> String,
) -> rusqlite::Result<Funding> {
    match row.get::<_, Option<String>>(index)? {
        None => Ok(Funding::NONE),
        Some(text) => Funding::decode(&text).map_err(|_| {
            UnknownValue::new("transactions", row_name(), "funded_by", text).into_sql_error(index)
        }),
    }
}

/// A snapshot's stored `grants` (column `index`; `None`: not backfilled).
pub(super) fn remaining_column(
    row: &Row<'_>,
    index: usize,
    account_id: AccountId,
) -> rusqlite::Result<Option<Vec<crate::grants::Remaining>>> {
    match row.get::<_, Option<String>>(index)? {
        None => Ok(None),
        Some(text) => decode_remaining(&text).map(Some).map_err(|_| {
            UnknownValue::new("account_balances", account_id, "grants", text).into_sql_error(index)
        }),
    }
}

const GRANT_COLUMNS: &str =
    "id, category, source, order_id, amount, priority, granted_at, expires_at";

/// A `credit_grants` row from the [`GRANT_COLUMNS`].
fn grant_from_row(row: &Row<'_>, account_id: AccountId) -> rusqlite::Result<CreditGrant> {
    let id: i64 = row.get(0)?;
    let name = || format!("account {account_id} grant {id}");
    let category_text: String = row.get(1)?;
    let category = Category::parse(&category_text).ok_or_else(|| {
        UnknownValue::new("credit_grants", name(), "category", category_text).into_sql_error(1)
    })?;
    let source_text: String = row.get(2)?;
    let source = GrantSource::parse(&source_text).ok_or_else(|| {
        UnknownValue::new("credit_grants", name(), "source", source_text).into_sql_error(2)
    })?;
    let priority_value: i64 = row.get(5)?;
    let priority = Priority::new(priority_value).map_err(|_| {
        UnknownValue::new(
            "credit_grants",
            name(),
            "priority",
            priority_value.to_string(),
        )
        .into_sql_error(5)
    })?;
    Ok(CreditGrant {
        id,
        category,
        source,
        order_id: row.get(3)?,
        amount: Money::from_micros(row.get(4)?),
        priority,
        granted_at_ms: row.get(6)?,
        expires_at_ms: row.get(7)?,
    })
}

/// Inserts a grant's lasting facts, with the row that makes it.
pub(super) fn insert_grant(
    connection: &Connection,
    account_id: AccountId,
    grant: &CreditGrant,
) -> Result<(), rusqlite::Error> {
    connection
        .prepare_cached(&format!(
            "INSERT INTO credit_grants (account_id, {GRANT_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))?
        .execute(params![
            account_id.0,
            grant.id,
            grant.category.as_str(),
            grant.source.as_str(),
            grant.order_id,
            grant.amount.micros(),
            i64::from(grant.priority.value()),
            grant.granted_at_ms,
            grant.expires_at_ms,
        ])?;
    Ok(())
}

/// The lasting facts of an account's grants: those of `ids`, or all.
pub(super) fn load_grants(
    connection: &Connection,
    account_id: AccountId,
    ids: Option<&[i64]>,
) -> Result<Vec<CreditGrant>, StoreError> {
    let mut grants = Vec::new();
    match ids {
        Some(ids) => {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM credit_grants WHERE account_id = ?1 AND id = ?2"
            ))?;
            for id in ids {
                if let Some(grant) = statement
                    .query_row(params![account_id.0, id], |row| {
                        grant_from_row(row, account_id)
                    })
                    .optional()?
                {
                    grants.push(grant);
                }
            }
        }
        None => {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM credit_grants WHERE account_id = ?1 ORDER BY id"
            ))?;
            let rows =
                statement.query_map([account_id.0], |row| grant_from_row(row, account_id))?;
            for grant in rows {
                grants.push(grant?);
            }
        }
    }
    Ok(grants)
}

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
        funded_by: funding_column(row, 10, || format!("account {account_id} seq {seq}"))?,
    })
}

const ENTRY_COLUMNS: &str =
    "account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at, reason, funded_by";

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
    grants: &str,
) -> Result<bool, rusqlite::Error> {
    let moved = connection
        .prepare_cached(
            "UPDATE account_balances
                SET balance = ?2, seq = ?3, low_balance_warned_at = ?4, updated_at = ?5,
                    grants = ?8
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
            grants,
        ])?;
    Ok(moved == 1)
}

/// Inserts a ledger row, after its snapshot moved. An idempotency key
/// already in the account's ledger fails it (the unique index decides; see
/// [`is_duplicate_key`]).
pub(super) fn insert_row(
    connection: &Connection,
    entry: &LedgerEntry,
    funded_by: Option<&str>,
) -> Result<(), rusqlite::Error> {
    connection
        .prepare_cached(
            "INSERT INTO transactions (account_id, seq, type, amount, balance_after,
                                       idempotency_key, order_id, description, created_at,
                                       reason, funded_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
            funded_by,
        ])?;
    Ok(())
}

/// Puts the snapshot back where a write whose row failed found it.
pub(super) fn put_back_snapshot(
    connection: &Connection,
    entry: &LedgerEntry,
    previous: &Snapshot,
    previous_grants: &str,
) -> Result<(), rusqlite::Error> {
    connection
        .prepare_cached(
            "UPDATE account_balances
                SET balance = ?2, seq = ?3, low_balance_warned_at = ?4, grants = ?5
              WHERE account_id = ?1",
        )?
        .execute(params![
            entry.account_id.0,
            previous.balance.micros(),
            previous.seq,
            previous.low_balance_warned_at_ms,
            previous_grants,
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

/// Where an account stands: its snapshot and what is left of its grants.
pub(super) fn load_standing(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<Standing>, StoreError> {
    let standing = connection
        .prepare_cached(
            "SELECT balance, seq, low_balance_warned_at, grants FROM account_balances
              WHERE account_id = ?1",
        )?
        .query_row([account_id.0], |row| {
            Ok(Standing {
                snapshot: Snapshot {
                    balance: Money::from_micros(row.get(0)?),
                    seq: row.get(1)?,
                    low_balance_warned_at_ms: row.get(2)?,
                },
                grants: remaining_column(row, 3, account_id)?,
            })
        })
        .optional()?;
    Ok(standing)
}

/// What an actor loads: where the account stands and the facts of the
/// grants with credit left (one read transaction: a grant named by the
/// snapshot was inserted with the row that named it first).
fn load_activation(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<Activation>, StoreError> {
    let Some(standing) = load_standing(connection, account_id)? else {
        return Ok(None);
    };
    let ids: Vec<i64> = standing
        .grants
        .iter()
        .flatten()
        .map(|grant| grant.grant_id)
        .filter(|id| *id != crate::grants::SHORTFALL)
        .collect();
    let facts = if ids.is_empty() {
        Vec::new()
    } else {
        load_grants(connection, account_id, Some(&ids))?
    };
    // When the last row was dated, only where an expiry row may follow it.
    let seq = standing.snapshot.seq;
    let last_row_at_ms = if seq > 0 && facts.iter().any(|fact| fact.expires_at_ms.is_some()) {
        let at: Option<i64> = connection
            .prepare_cached(
                "SELECT created_at FROM transactions WHERE account_id = ?1 AND seq = ?2",
            )?
            .query_row(params![account_id.0, seq], |row| row.get(0))
            .optional()?;
        Some(at.ok_or_else(|| {
            StoreError::Database(format!(
                "account {account_id}: its snapshot is at seq {seq}, but the ledger has no such row"
            ))
        })?)
    } else {
        None
    };
    Ok(Some(Activation {
        standing,
        facts,
        last_row_at_ms,
    }))
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
        "SELECT t.account_id, t.seq, t.type, t.amount, t.balance_after, b.balance, b.seq,
                t.funded_by, g.amount, g.category, b.grants,
                g.expires_at, t.created_at, t.order_id
           FROM transactions t
           LEFT JOIN account_balances b ON b.account_id = t.account_id
           LEFT JOIN credit_grants g ON g.account_id = t.account_id AND g.id = t.seq
          ORDER BY t.account_id, t.seq",
    )?;
    let mut cursor = rows.query([])?;
    while let Some(row) = cursor.next()? {
        let balance: Option<i64> = row.get(5)?;
        let seq: Option<i64> = row.get(6)?;
        let made_amount: Option<i64> = row.get(8)?;
        let made_category: Option<String> = row.get(9)?;
        verifier.row(VerifyRow {
            account_id: AccountId(row.get(0)?),
            seq: row.get(1)?,
            kind: row.get(2)?,
            amount: row.get(3)?,
            balance_after: row.get(4)?,
            funded_by: row.get(7)?,
            made: made_amount.zip(made_category),
            snapshot: balance.zip(seq),
            snapshot_grants: row.get(10)?,
            made_expires_at: row.get(11)?,
            created_at: row.get(12)?,
            order_id: row.get(13)?,
        });
    }
    let mut accounts = connection.prepare(
        "SELECT a.id, b.balance, b.seq, b.grants FROM accounts a
           LEFT JOIN account_balances b ON b.account_id = a.id
          WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.account_id = a.id)
          ORDER BY a.id",
    )?;
    let mut cursor = accounts.query([])?;
    while let Some(row) = cursor.next()? {
        let balance: Option<i64> = row.get(1)?;
        let seq: Option<i64> = row.get(2)?;
        verifier.account_without_rows(AccountId(row.get(0)?), balance.zip(seq), row.get(3)?);
    }
    Ok(verifier.finish())
}

impl LedgerStore for SqliteStore {
    fn submit(&self, write: LedgerWrite) -> Result<(), StoreError> {
        self.writer
            .send(super::WriterMessage::Ledger(Box::new(write)))
            .map_err(|_| StoreError::Closed)
    }

    fn snapshot(&self, account_id: AccountId) -> StoreFuture<Option<Snapshot>> {
        self.read(move |connection| load_snapshot(connection, account_id))
    }

    fn activation(&self, account_id: AccountId) -> StoreFuture<Option<Activation>> {
        self.read(move |connection| load_activation(connection, account_id))
    }

    fn grants_by_id(&self, account_id: AccountId, ids: Vec<i64>) -> StoreFuture<Vec<CreditGrant>> {
        self.read(move |connection| load_grants(connection, account_id, Some(&ids)))
    }

    fn account_grants(&self, account_id: AccountId) -> StoreFuture<Option<AccountGrants>> {
        self.read(move |connection| {
            let Some(standing) = load_standing(connection, account_id)? else {
                return Ok(None);
            };
            Ok(Some(AccountGrants {
                grants: load_grants(connection, account_id, None)?,
                remaining: standing.grants,
            }))
        })
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

    fn taken_back(&self, account_id: AccountId, order_id: i64) -> StoreFuture<TakenBackRows> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT seq, amount, funded_by FROM transactions
                  WHERE order_id = ?2 AND account_id = ?1 AND type = 'refund'
                  ORDER BY seq",
            )?;
            let rows = statement
                .query_map(params![account_id.0, order_id], |row| {
                    let seq: i64 = row.get(0)?;
                    let amount = Money::from_micros(row.get(1)?);
                    let funding =
                        funding_column(row, 2, || format!("account {account_id} seq {seq}"))?;
                    Ok((amount, funding))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            TakenBackRows::of_rows(order_id, rows)
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

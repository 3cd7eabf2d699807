//! The watcher thread: learns of ledger rows other processes sharing the
//! database file committed (the CLI beside a running server). SQLite tells
//! a connection, through `PRAGMA data_version`, that another connection
//! committed; the watcher then reads the change notes those commits left
//! (`ledger_changes`, written by each process's writer with its batch),
//! skips its own process's, reads the rows they name, and hands them to the
//! store: to the balance feed, and to the registry so that live actors
//! reload. A change is seen within [`POLL_EVERY`].

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::{params, Connection};

use super::ledger;
use crate::ledger::{AccountId, Snapshot};
use crate::store::change_notes::{self, ChangeNote};
use crate::store::{Shared, StoreError};

/// How often the watcher asks SQLite whether another connection committed.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(100);

/// `account:first-last:balance:warned:grants` notes, `;`-separated, from
/// each account's first row and the snapshot (and grants) after its last.
pub(super) fn encode_changes(moved: &HashMap<AccountId, (i64, Snapshot, &str)>) -> String {
    let mut text = String::with_capacity(moved.len() * 48);
    for (account_id, (first, after, grants)) in moved {
        if !text.is_empty() {
            text.push(';');
        }
        text.push_str(&change_notes::rows(*account_id, *first, after, grants));
    }
    text
}

/// Leaves a note for the other processes, in the caller's transaction.
pub(super) fn leave_note(
    connection: &rusqlite::Connection,
    origin: &str,
    note: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO ledger_changes (origin, changes, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![origin, note, now_ms])?;
    Ok(())
}

/// The notes of a `changes` column; a malformed one is skipped.
fn decode_changes(text: &str) -> Vec<ChangeNote> {
    text.split(';').filter_map(change_notes::parse).collect()
}

pub(super) fn run(connection: Connection, wal: File, shared: Weak<Shared>) {
    let data_version = |connection: &Connection| -> Result<i64, StoreError> {
        Ok(connection.query_row("PRAGMA data_version", [], |row| row.get(0))?)
    };
    let (Ok(mut seen_version), Ok(mut last_id)) = (
        data_version(&connection),
        connection.query_row(
            "SELECT COALESCE(MAX(id), 0) FROM ledger_changes",
            [],
            |row| row.get::<_, i64>(0),
        ),
    ) else {
        tracing::error!("the change watcher could not start; other processes' writes are seen only when they conflict");
        return;
    };
    // A read that failed is tried again at the next poll, changed or not.
    let mut retry = false;
    loop {
        std::thread::sleep(POLL_EVERY);
        // The store is gone: so is the watcher.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match data_version(&connection) {
            Ok(version) if version != seen_version || retry => seen_version = version,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(%error, "the change watcher could not read the database");
                continue;
            }
        }
        match read_changes(&connection, &wal, &shared, last_id) {
            Ok(read_up_to) => {
                last_id = read_up_to;
                retry = false;
            }
            Err(error) => {
                tracing::warn!(%error, "the change watcher could not read changes");
                retry = true;
            }
        }
    }
}

/// Hands the rows other processes committed since note `after_id` to the
/// store; answers the last note read.
fn read_changes(
    connection: &Connection,
    wal: &File,
    shared: &Arc<Shared>,
    after_id: i64,
) -> Result<i64, StoreError> {
    connection.execute_batch("BEGIN")?;
    let read = (|| {
        let mut statement = connection.prepare_cached(
            "SELECT id, origin, changes FROM ledger_changes WHERE id > ?1 ORDER BY id",
        )?;
        let notes: Vec<(i64, String, String)> = statement
            .query_map(params![after_id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut last_id = after_id;
        let mut rows = Vec::new();
        let mut auto_top_ups = Vec::new();
        let mut tokens = Vec::new();
        for (id, origin, changes) in notes {
            last_id = id;
            if origin == shared.origin {
                continue;
            }
            for note in decode_changes(&changes) {
                match note {
                    ChangeNote::Rows {
                        account_id,
                        first,
                        last,
                        after,
                    } => {
                        let entries = if shared.wants_external_rows() {
                            ledger::entries_between(connection, account_id, first, last)?
                        } else {
                            Vec::new()
                        };
                        rows.push((account_id, last, entries, after));
                    }
                    ChangeNote::AutoTopUp(account_id) => auto_top_ups.push(account_id),
                    ChangeNote::Tokens(account_id) => tokens.push(account_id),
                }
            }
        }
        Ok::<_, StoreError>((last_id, rows, auto_top_ups, tokens))
    })();
    let _ = connection.execute_batch("COMMIT");
    let (last_id, rows, auto_top_ups, tokens) = read?;
    if !rows.is_empty() || !auto_top_ups.is_empty() || !tokens.is_empty() {
        // The other process may not have made its commit durable yet
        // (its syncer fsyncs after the commit): made durable here before
        // it is told to the feed or to an actor. On failure the notes are
        // read again at the next poll.
        wal.sync_data()
            .map_err(|error| StoreError::Database(format!("fsync of the WAL: {error}")))?;
    }
    for account_id in tokens {
        shared.tokens_changed(account_id);
    }
    for (account_id, last, entries, after) in rows {
        shared.external(account_id, last, entries, after);
    }
    for account_id in auto_top_ups {
        shared.external_auto_top_up(account_id);
    }
    Ok(last_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_notes_read_back_what_was_written() {
        let after = |seq: i64, micros: i64| Snapshot {
            balance: crate::money::Money::from_micros(micros),
            seq,
            low_balance_warned_at_ms: (seq == 3).then_some(1_700_000_000_000),
        };
        let standing = |snapshot: Snapshot, grants: &str| crate::ledger::Standing {
            snapshot,
            grants: Some(crate::grants::decode_remaining(grants).unwrap()),
        };
        let mut moved = HashMap::new();
        moved.insert(AccountId(7), (12, after(14, 5_000), "12:5000"));
        moved.insert(AccountId(9), (3, after(3, -20), "0:-20"));
        let mut decoded: Vec<_> = decode_changes(&encode_changes(&moved))
            .into_iter()
            .filter_map(|note| match note {
                ChangeNote::Rows {
                    account_id,
                    first,
                    last,
                    after,
                } => Some((account_id, first, last, after)),
                ChangeNote::AutoTopUp(_) | ChangeNote::Tokens(_) => None,
            })
            .collect();
        decoded.sort_by_key(|note| note.0);
        assert_eq!(
            decoded,
            vec![
                (
                    AccountId(7),
                    12,
                    14,
                    Some(standing(after(14, 5_000), "12:5000"))
                ),
                (AccountId(9), 3, 3, Some(standing(after(3, -20), "0:-20")))
            ]
        );
        assert!(decode_changes("garbage;7:1").is_empty());
    }
}

//! Copying in SQLite: pages read in key order on a reader; the import runs
//! on the writer, as one write of its own (one transaction), taking pages as
//! the source hands them over, and ends the write (committed) only after the
//! export's last word and the checks. A backup's snapshot is read on a connection
//! of its own (`VACUUM INTO`, or every page in one read transaction); the
//! backups taken are recorded here too.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::SqliteStore;
use crate::store::backup::BackupRecord;
use crate::store::copy::{
    check_import, ColumnType, CopyError, CopyMessage, CopyRow, CopyValue, Imported, Page, Table,
    PAGE_ROWS, TABLES,
};
use crate::store::{BackupStore, CopyStore, StoreError, StoreFuture};

fn to_sql(value: &CopyValue) -> Value {
    match value {
        CopyValue::Null => Value::Null,
        CopyValue::Integer(number) => Value::Integer(*number),
        CopyValue::Text(text) => Value::Text(text.clone()),
    }
}

fn read_row(table: &Table, row: &rusqlite::Row<'_>) -> rusqlite::Result<CopyRow> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(index, (_, kind))| {
            Ok(match kind {
                ColumnType::Integer => row
                    .get::<_, Option<i64>>(index)?
                    .map_or(CopyValue::Null, CopyValue::Integer),
                ColumnType::Text => row
                    .get::<_, Option<String>>(index)?
                    .map_or(CopyValue::Null, CopyValue::Text),
            })
        })
        .collect()
}

/// Writes the pages as they come, inside the writer's transaction, and
/// answers only once the export's last word came and the checks pass; an
/// error rolls back everything written (the writer's savepoint).
fn import(
    connection: &Connection,
    mut pages: mpsc::Receiver<CopyMessage>,
) -> Result<Imported, CopyError> {
    for table in TABLES.iter().filter(|table| !table.seeded) {
        let holds_rows: bool = connection
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", table.name),
                [],
                |row| row.get(0),
            )
            .map_err(StoreError::from)?;
        if holds_rows {
            return Err(CopyError::TargetNotEmpty(table.name));
        }
    }
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    loop {
        let page = match pages.blocking_recv() {
            Some(CopyMessage::Page(page)) => page,
            Some(CopyMessage::Finished(finished)) => {
                let target = super::ledger::verify(connection)?;
                check_import(&finished, &counts, &target)?;
                return Ok(Imported {
                    tables: counts,
                    target,
                });
            }
            None => return Err(CopyError::Unfinished),
        };
        let table = page.table;
        let index = match counts.iter().position(|(name, _)| *name == table.name) {
            Some(index) => index,
            None => {
                if table.seeded {
                    // The migrations' default row gives way to the source's.
                    connection
                        .execute(&format!("DELETE FROM {}", table.name), [])
                        .map_err(StoreError::from)?;
                }
                counts.push((table.name, 0));
                counts.len() - 1
            }
        };
        let placeholders = vec!["?"; table.columns.len()].join(", ");
        let mut statement = connection
            .prepare_cached(&format!(
                "INSERT INTO {} ({}) VALUES ({placeholders})",
                table.name,
                table.column_names()
            ))
            .map_err(StoreError::from)?;
        for row in &page.rows {
            statement
                .execute(rusqlite::params_from_iter(row.iter().map(to_sql)))
                .map_err(StoreError::from)?;
        }
        counts[index].1 += page.rows.len() as u64;
    }
}

/// Up to `limit` rows of `table` after the key `after`, in key order.
pub(super) fn select_page(
    connection: &Connection,
    table: &Table,
    after: Option<&CopyRow>,
    limit: i64,
) -> Result<Vec<CopyRow>, StoreError> {
    let filter = match after {
        Some(key) => format!(
            "WHERE ({}) > ({})",
            table.key_names(),
            vec!["?"; key.len()].join(", ")
        ),
        None => String::new(),
    };
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {} FROM {} {filter} ORDER BY {} LIMIT {limit}",
        table.column_names(),
        table.name,
        table.key_names()
    ))?;
    let key: Vec<Value> = after.into_iter().flatten().map(to_sql).collect();
    let rows = statement
        .query_map(rusqlite::params_from_iter(key), |row| read_row(table, row))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Every table's rows, a page at a time, all read inside the one read
/// transaction the caller holds.
fn export_all(
    connection: &Connection,
    pages: &mpsc::Sender<CopyMessage>,
) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let mut counts = Vec::new();
    for table in TABLES {
        let mut after: Option<CopyRow> = None;
        let mut count = 0_u64;
        loop {
            let rows = select_page(connection, table, after.as_ref(), PAGE_ROWS)?;
            let full = rows.len() as i64 == PAGE_ROWS;
            count += rows.len() as u64;
            after = rows.last().map(|row| table.key_of(row));
            if !rows.is_empty()
                && pages
                    .blocking_send(CopyMessage::Page(Page { table, rows }))
                    .is_err()
            {
                // The target stopped taking pages: its error says why.
                return Ok(counts);
            }
            if !full {
                break;
            }
        }
        counts.push((table.name, count));
    }
    Ok(counts)
}

/// Opens an existing file read-only, changing nothing (no journal mode,
/// no migration).
pub(super) fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(|error| StoreError::Open {
        path: path.display().to_string(),
        reason: error.to_string(),
    })
}

/// The first copied table that holds rows in the file at `path`, among
/// those it has (a file of an earlier release lacks some); none when there
/// is no file. Read without changing the file, so that a target that holds
/// data is refused before anything is made or migrated.
pub(crate) fn table_holding_rows(path: &Path) -> Result<Option<&'static str>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let connection = open_read_only(path)?;
    for table in TABLES.iter().filter(|table| !table.seeded) {
        let exists: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [table.name],
            |row| row.get(0),
        )?;
        if !exists {
            continue;
        }
        let holds_rows: bool = connection.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", table.name),
            [],
            |row| row.get(0),
        )?;
        if holds_rows {
            return Ok(Some(table.name));
        }
    }
    Ok(None)
}

/// The tables of the SQLite file at `path` when it is another program's
/// database: it has tables, but no sms-credit migration history (refinery's,
/// or an earlier release's `schema_migrations`). `None` for a file with no
/// tables, or an sms-credit one. Read without changing the file.
pub(crate) fn foreign_tables(path: &Path) -> Result<Option<Vec<String>>, StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' \
         ESCAPE '\\' ORDER BY name",
    )?;
    let tables = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let ours = tables
        .iter()
        .any(|name| name == "refinery_schema_history" || name == "schema_migrations");
    Ok((!tables.is_empty() && !ours).then_some(tables))
}

/// Refuses a file that is not a database this release's migrations made
/// (no migration history, or one naming a migration this release does not
/// have: an empty file, another program's database, a newer release's
/// backup). Reads it only.
pub(crate) fn check_made_by_sms_credit(path: &Path) -> Result<(), String> {
    let connection = open_read_only(path).map_err(|error| error.to_string())?;
    let history: bool = connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
             AND name = 'refinery_schema_history')",
            [],
            |row| row.get(0),
        )
        .map_err(|error| format!("it is not an SQLite database ({error})"))?;
    if !history {
        return Err("it holds no sms-credit migration history".to_string());
    }
    let applied =
        super::migrations::applied_migrations(&connection).map_err(|error| error.to_string())?;
    if applied.is_empty() {
        return Err("its migration history is empty".to_string());
    }
    for (version, name) in applied {
        if !super::migrations::is_ours(version, &name) {
            return Err(format!(
                "its migration {version} ({name}) is not one of this release's (a newer \
                 release's, or another program's)"
            ));
        }
    }
    Ok(())
}

impl CopyStore for SqliteStore {
    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>> {
        self.read(move |connection| select_page(connection, table, after.as_ref(), limit))
    }

    fn import(&self, pages: mpsc::Receiver<CopyMessage>) -> StoreFuture<Imported, CopyError> {
        self.write(move |connection| import(connection, pages))
    }

    fn export_snapshot(
        &self,
        pages: mpsc::Sender<CopyMessage>,
    ) -> StoreFuture<Vec<(&'static str, u64)>, CopyError> {
        // On a connection of its own, so that the store's readers go on
        // answering: one read transaction holds the moment it started at.
        let path = self.path.clone();
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            super::spawn_thread("store-snapshot", move || {
                let exported = (|| -> Result<Vec<(&'static str, u64)>, CopyError> {
                    let connection = super::open_connection(&path)?;
                    connection
                        .execute_batch("BEGIN")
                        .map_err(StoreError::from)?;
                    let exported = export_all(&connection, &pages);
                    let _ = connection.execute_batch("COMMIT");
                    exported
                })();
                let _ = done.send(exported);
            })?;
            answer
                .await
                .map_err(|_| CopyError::Store(StoreError::Closed))?
        })
    }

    fn snapshot_file(&self, target: PathBuf) -> StoreFuture<bool> {
        // `VACUUM INTO` reads the database in one read transaction (one
        // moment of it, writers going on) and writes it, compacted, into a
        // new file. A connection of its own: the readers go on answering.
        let path = self.path.clone();
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            super::spawn_thread("store-snapshot", move || {
                let written = (|| -> Result<bool, StoreError> {
                    let connection = super::open_connection(&path)?;
                    let target = target.to_str().ok_or_else(|| {
                        StoreError::Database(format!(
                            "{} is not a path SQLite can take (not UTF-8)",
                            target.display()
                        ))
                    })?;
                    connection.execute("VACUUM INTO ?1", [target])?;
                    Ok(true)
                })();
                let _ = done.send(written);
            })?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn forget_processes(&self) -> StoreFuture<()> {
        self.write(|connection| {
            connection.execute_batch(
                "DELETE FROM instances; DELETE FROM ledger_changes; DELETE FROM feed_tickets;",
            )?;
            Ok(())
        })
    }
}

impl BackupStore for SqliteStore {
    fn record_backup(&self, backup: BackupRecord) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO backups (taken_at, path, accounts, transactions, bytes, duration_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(rusqlite::params![
                    backup.taken_at_ms,
                    backup.path,
                    backup.accounts,
                    backup.transactions,
                    backup.bytes,
                    backup.duration_ms
                ])?;
            Ok(())
        })
    }

    fn last_backup(&self) -> StoreFuture<Option<BackupRecord>> {
        self.read(|connection| {
            connection
                .prepare_cached(
                    "SELECT taken_at, path, accounts, transactions, bytes, duration_ms
                     FROM backups ORDER BY taken_at DESC, id DESC LIMIT 1",
                )?
                .query_row([], |row| {
                    Ok(BackupRecord {
                        taken_at_ms: row.get(0)?,
                        path: row.get(1)?,
                        accounts: row.get(2)?,
                        transactions: row.get(3)?,
                        bytes: row.get(4)?,
                        duration_ms: row.get(5)?,
                    })
                })
                .optional()
                .map_err(StoreError::from)
        })
    }
}

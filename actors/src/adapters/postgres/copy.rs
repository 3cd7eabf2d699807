//! Copying in Postgres: pages read in key order on a reader; the import
//! runs on a connection of its own, in one transaction: many rows per
//! INSERT, the checks, then each `id` sequence moved past the copied rows.
//! A backup's pages are read in one repeatable-read transaction; the
//! backups taken are recorded here too. A fill holds an advisory lock on
//! its target from before it looks at it until it has undone what it made
//! (`lock_for_filling`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::{boxed, PostgresStore};
use crate::store::backup::BackupRecord;
use crate::store::copy::{
    check_import, ColumnType, CopyError, CopyMessage, CopyRow, CopyValue, Imported, Page, Table,
    PAGE_ROWS, TABLES,
};
use crate::store::{BackupStore, CopyStore, StoreError, StoreFuture};

/// Postgres takes at most 65 535 parameters per statement.
const MAX_PARAMETERS: usize = 60_000;

type Parameter = Box<dyn ToSql + Sync + Send>;

fn cast(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Integer => "bigint",
        ColumnType::Text => "text",
    }
}

/// A value as a parameter of its column's type.
fn parameter(table: &Table, column: usize, value: &CopyValue) -> Result<Parameter, StoreError> {
    let (name, kind) = table.columns[column];
    Ok(match (kind, value) {
        (ColumnType::Integer, CopyValue::Null) => Box::new(None::<i64>),
        (ColumnType::Text, CopyValue::Null) => Box::new(None::<String>),
        (ColumnType::Integer, CopyValue::Integer(number)) => Box::new(Some(*number)),
        (ColumnType::Text, CopyValue::Text(text)) => Box::new(Some(text.clone())),
        (_, other) => {
            return Err(StoreError::Database(format!(
                "{}.{name}: {other:?} is not a {}",
                table.name,
                cast(kind)
            )))
        }
    })
}

fn read_row(table: &Table, row: &Row) -> Result<CopyRow, StoreError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(index, (_, kind))| {
            Ok(match kind {
                ColumnType::Integer => row
                    .try_get::<_, Option<i64>>(index)?
                    .map_or(CopyValue::Null, CopyValue::Integer),
                ColumnType::Text => row
                    .try_get::<_, Option<String>>(index)?
                    .map_or(CopyValue::Null, CopyValue::Text),
            })
        })
        .collect()
}

async fn insert(
    client: &impl GenericClient,
    table: &Table,
    rows: &[CopyRow],
) -> Result<(), StoreError> {
    let width = table.columns.len();
    for chunk in rows.chunks((MAX_PARAMETERS / width).max(1)) {
        let mut values = Vec::with_capacity(chunk.len());
        let mut parameters: Vec<Parameter> = Vec::with_capacity(chunk.len() * width);
        for row in chunk {
            let start = parameters.len();
            let placeholders: Vec<String> = table
                .columns
                .iter()
                .enumerate()
                .map(|(column, (_, kind))| format!("${}::{}", start + column + 1, cast(*kind)))
                .collect();
            values.push(format!("({})", placeholders.join(", ")));
            for (column, value) in row.iter().enumerate() {
                parameters.push(parameter(table, column, value)?);
            }
        }
        let references: Vec<&(dyn ToSql + Sync)> = parameters
            .iter()
            .map(|parameter| parameter.as_ref() as &(dyn ToSql + Sync))
            .collect();
        client
            .execute(
                &format!(
                    "INSERT INTO {} ({}) VALUES {}",
                    table.name,
                    table.column_names(),
                    values.join(", ")
                ),
                &references,
            )
            .await?;
    }
    Ok(())
}

/// Up to `limit` rows of `table` after the key `after`, in key order.
pub(super) async fn select_page(
    client: &impl GenericClient,
    table: &Table,
    after: Option<&CopyRow>,
    limit: i64,
) -> Result<Vec<CopyRow>, StoreError> {
    let mut parameters: Vec<Parameter> = Vec::new();
    let filter = match &after {
        Some(key) => {
            let mut placeholders = Vec::new();
            for (position, value) in key.iter().enumerate() {
                let column = table.key[position];
                parameters.push(parameter(table, column, value)?);
                placeholders.push(format!(
                    "${}::{}",
                    position + 1,
                    cast(table.columns[column].1)
                ));
            }
            format!(
                "WHERE ({}) > ({})",
                table.key_names(),
                placeholders.join(", ")
            )
        }
        None => String::new(),
    };
    // Integer columns read as bigint (`pricing.id` is an integer).
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|(name, kind)| format!("{name}::{}", cast(*kind)))
        .collect();
    let references: Vec<&(dyn ToSql + Sync)> = parameters
        .iter()
        .map(|parameter| parameter.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM {} {filter} ORDER BY {} LIMIT {limit}",
                columns.join(", "),
                table.name,
                table.key_names()
            ),
            &references,
        )
        .await?;
    rows.iter().map(|row| read_row(table, row)).collect()
}

/// What a Postgres database holds before a copy fills it, read without
/// changing it: whether it has a migration history (an sms-credit
/// database), the tables of its schema, and the first copied table that
/// holds rows (among those it has: an earlier release lacks some).
pub(crate) struct Before {
    pub(crate) has_history: bool,
    pub(crate) tables: Vec<String>,
    pub(crate) holding_rows: Option<&'static str>,
}

/// The tables in the connection's schema.
async fn schema_tables(client: &tokio_postgres::Client) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             ORDER BY tablename",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(StoreError::from))
        .collect()
}

/// See [`Before`].
pub(crate) fn look_before_filling(url: &super::PostgresUrl) -> Result<Before, StoreError> {
    let (runtime, stop) = super::start_runtime()?;
    let connector = super::Connector::new(url, runtime.clone())?;
    let before = super::block_on(&runtime, async move {
        let client = connector.connect(None).await?;
        let has_history = super::migrations::has_history(&client).await?;
        let tables = schema_tables(&client).await?;
        let mut holding_rows = None;
        for table in TABLES.iter().filter(|table| !table.seeded) {
            if !tables.iter().any(|name| name == table.name) {
                continue;
            }
            let holds_rows: bool = client
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM {})", table.name),
                    &[],
                )
                .await?
                .try_get(0)?;
            if holds_rows {
                holding_rows = Some(table.name);
                break;
            }
        }
        Ok(Before {
            has_history,
            tables,
            holding_rows,
        })
    });
    drop(stop);
    before
}

/// The advisory lock a fill holds on its target: "sms_fill".
const FILL_LOCK: i64 = 0x736d_735f_6669_6c6c;

/// A fill's hold on its target database (an advisory lock on a connection
/// of its own): another copy or restore into the same database waits for
/// it, from before it looks at the database until it has undone what it
/// made, so that what one fill made and takes away after a failure is never
/// what another committed. What the fill made is read and taken away on
/// this same connection: a hold lost with its connection (the session
/// ended) makes the undo fail and say so, never run unheld. Released when
/// dropped (the connection closes).
pub(crate) struct FillLock {
    client: Arc<tokio_postgres::Client>,
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for FillLock {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("FillLock")
    }
}

/// Takes the fill lock of the database at `url`; `waiting` is told first
/// if another fill holds it, and this one waits for it.
pub(crate) fn lock_for_filling(
    url: &super::PostgresUrl,
    waiting: &dyn Fn(),
) -> Result<FillLock, StoreError> {
    let (runtime, stop) = super::start_runtime()?;
    let connector = super::Connector::new(url, runtime.clone())?;
    let (client, taken) = super::block_on(&runtime, async move {
        let client = connector.connect(None).await?;
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&FILL_LOCK])
            .await?
            .try_get(0)?;
        Ok((client, taken))
    })?;
    let client = if taken {
        client
    } else {
        waiting();
        super::block_on(&runtime, async move {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&FILL_LOCK])
                .await?;
            Ok(client)
        })?
    };
    Ok(FillLock {
        client: Arc::new(client),
        runtime,
        _stop: stop,
    })
}

/// A table a fill's migration made, and the rows it held once migrated
/// (a seeded table's seeds; the migration history).
#[derive(Debug, Clone)]
pub(crate) struct MadeTable {
    name: String,
    rows: i64,
}

/// The rows of `name`, a table of the schema.
async fn rows_of(client: &tokio_postgres::Client, name: &str) -> Result<i64, StoreError> {
    Ok(client
        .query_one(&format!("SELECT COUNT(*) FROM {}", quoted(name)), &[])
        .await?
        .try_get(0)?)
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl FillLock {
    /// What opening and migrating the target made: the schema's tables
    /// that were not among `before`, each with its rows now (read on the
    /// lock's connection, so only while the hold stands).
    pub(crate) fn tables_made(&self, before: Vec<String>) -> Result<Vec<MadeTable>, StoreError> {
        let client = Arc::clone(&self.client);
        super::block_on(&self.runtime, async move {
            let mut made = Vec::new();
            for name in schema_tables(&client).await? {
                if before.contains(&name) {
                    continue;
                }
                let rows = rows_of(&client, &name).await?;
                made.push(MadeTable { name, rows });
            }
            Ok(made)
        })
    }

    /// Drops, in one transaction on the lock's connection, the tables a
    /// failed fill made (`made`, as its migration left them); answers their
    /// names. Refuses, dropping nothing, when the hold is lost (its
    /// connection is gone) or when one of them holds rows its migration did
    /// not write (a server or a command used the target meanwhile: what
    /// they wrote is not the fill's to take away).
    pub(crate) fn drop_tables_made(&self, made: Vec<MadeTable>) -> Result<Vec<String>, StoreError> {
        if made.is_empty() {
            return Ok(Vec::new());
        }
        let client = Arc::clone(&self.client);
        super::block_on(&self.runtime, async move {
            let held: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                     AND pid = pg_backend_pid() AND granted \
                     AND ((classid::bigint << 32) | objid::bigint) = $1)",
                    &[&FILL_LOCK],
                )
                .await
                .map_err(|error| {
                    StoreError::Database(format!(
                        "the fill's hold on the target was lost ({error}): its tables are kept"
                    ))
                })?
                .try_get(0)?;
            if !held {
                return Err(StoreError::Database(
                    "the fill's hold on the target was lost: its tables are kept".to_string(),
                ));
            }
            client.batch_execute("BEGIN").await?;
            let dropped = async {
                let mut names = Vec::new();
                for table in &made {
                    let rows = rows_of(&client, &table.name).await?;
                    if rows != table.rows {
                        return Err(StoreError::Database(format!(
                            "{} holds rows the fill did not write ({} now, {} once migrated): \
                             something used the target while it was filled, so its tables are \
                             kept",
                            table.name, rows, table.rows
                        )));
                    }
                    names.push(table.name.clone());
                }
                let listed: Vec<String> = names.iter().map(|name| quoted(name)).collect();
                client
                    .batch_execute(&format!("DROP TABLE {}", listed.join(", ")))
                    .await?;
                Ok(names)
            }
            .await;
            match dropped {
                Ok(names) => {
                    client.batch_execute("COMMIT").await?;
                    Ok(names)
                }
                Err(error) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        })
    }
}

impl CopyStore for PostgresStore {
    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>> {
        self.read(move |client| async move {
            select_page(client.as_ref(), table, after.as_ref(), limit).await
        })
    }

    fn import(&self, mut pages: mpsc::Receiver<CopyMessage>) -> StoreFuture<Imported, CopyError> {
        let connector = self.readers.connector.clone();
        Box::pin(async move {
            let mut client = connector.connect(None).await?;
            let transaction = client.transaction().await.map_err(StoreError::from)?;
            for table in TABLES.iter().filter(|table| !table.seeded) {
                let holds_rows: bool = transaction
                    .query_one(
                        &format!("SELECT EXISTS (SELECT 1 FROM {})", table.name),
                        &[],
                    )
                    .await
                    .map_err(StoreError::from)?
                    .try_get(0)
                    .map_err(StoreError::from)?;
                if holds_rows {
                    return Err(CopyError::TargetNotEmpty(table.name));
                }
            }
            let mut counts: Vec<(&'static str, u64)> = Vec::new();
            // Without the export's last word the transaction is dropped,
            // and with it every row written.
            let finished = loop {
                let page = match pages.recv().await {
                    Some(CopyMessage::Page(page)) => page,
                    Some(CopyMessage::Finished(finished)) => break finished,
                    None => return Err(CopyError::Unfinished),
                };
                let table = page.table;
                let index = match counts.iter().position(|(name, _)| *name == table.name) {
                    Some(index) => index,
                    None => {
                        if table.seeded {
                            // The migrations' default row gives way to the source's.
                            transaction
                                .execute(&format!("DELETE FROM {}", table.name), &[])
                                .await
                                .map_err(StoreError::from)?;
                        }
                        counts.push((table.name, 0));
                        counts.len() - 1
                    }
                };
                insert(&transaction, table, &page.rows).await?;
                counts[index].1 += page.rows.len() as u64;
            };
            let target = super::ledger::verify_in(&transaction).await?;
            check_import(&finished, &counts, &target)?;
            // Last before the commit: `setval` is never rolled back, so a
            // copy refused by its checks must not have moved a sequence.
            for table in TABLES.iter().filter(|table| table.has_id_sequence) {
                transaction
                    .execute(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence('{0}', 'id'),
                                           GREATEST((SELECT MAX(id) FROM {0}), 1),
                                           EXISTS (SELECT 1 FROM {0}))",
                            table.name
                        ),
                        &[],
                    )
                    .await
                    .map_err(StoreError::from)?;
            }
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(Imported {
                tables: counts,
                target,
            })
        })
    }

    fn export_snapshot(
        &self,
        pages: mpsc::Sender<CopyMessage>,
    ) -> StoreFuture<Vec<(&'static str, u64)>, CopyError> {
        // One repeatable-read transaction on a connection of its own: every
        // page is read from the moment of its first statement, whatever the
        // writers commit meanwhile.
        let connector = self.readers.connector.clone();
        Box::pin(async move {
            let mut client = connector.connect(None).await?;
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(StoreError::from)?;
            let mut counts = Vec::new();
            for table in TABLES {
                let mut after: Option<CopyRow> = None;
                let mut count = 0_u64;
                loop {
                    let rows = select_page(&transaction, table, after.as_ref(), PAGE_ROWS).await?;
                    let full = rows.len() as i64 == PAGE_ROWS;
                    count += rows.len() as u64;
                    after = rows.last().map(|row| table.key_of(row));
                    if !rows.is_empty()
                        && pages
                            .send(CopyMessage::Page(Page { table, rows }))
                            .await
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
            transaction.commit().await.map_err(StoreError::from)?;
            Ok(counts)
        })
    }

    fn snapshot_file(&self, _path: std::path::PathBuf) -> StoreFuture<bool> {
        // Postgres has no file to copy: a backup reads its rows instead.
        Box::pin(async { Ok(false) })
    }

    fn forget_processes(&self) -> StoreFuture<()> {
        self.write(|transaction| {
            boxed(async move {
                transaction
                    .batch_execute("DELETE FROM instances; DELETE FROM feed_tickets;")
                    .await?;
                Ok(())
            })
        })
    }
}

impl BackupStore for PostgresStore {
    fn record_backup(&self, backup: BackupRecord) -> StoreFuture<()> {
        self.write(move |transaction| {
            let backup = backup.clone();
            boxed(async move {
                transaction
                    .execute(
                        "INSERT INTO backups (taken_at, path, accounts, transactions, bytes, duration_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &backup.taken_at_ms,
                            &backup.path,
                            &backup.accounts,
                            &backup.transactions,
                            &backup.bytes,
                            &backup.duration_ms,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn last_backup(&self) -> StoreFuture<Option<BackupRecord>> {
        self.read(|client| async move {
            let row = client
                .query_opt(
                    "SELECT taken_at, path, accounts, transactions, bytes, duration_ms
                       FROM backups ORDER BY taken_at DESC, id DESC LIMIT 1",
                    &[],
                )
                .await?;
            row.map(|row| {
                Ok(BackupRecord {
                    taken_at_ms: row.try_get(0)?,
                    path: row.try_get(1)?,
                    accounts: row.try_get(2)?,
                    transactions: row.try_get(3)?,
                    bytes: row.try_get(4)?,
                    duration_ms: row.try_get(5)?,
                })
            })
            .transpose()
        })
    }
}

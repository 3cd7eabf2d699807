//! Copying in SQLite: pages read in key order on a reader; the import runs
//! on the writer, as one write of its own (one transaction), taking pages as
//! the source hands them over.

use rusqlite::types::Value;
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::SqliteStore;
use crate::store::copy::{ColumnType, CopyError, CopyRow, CopyValue, Page, Table, TABLES};
use crate::store::{CopyStore, StoreError, StoreFuture};

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

fn import(
    connection: &Connection,
    mut pages: mpsc::Receiver<Page>,
) -> Result<Vec<(&'static str, u64)>, CopyError> {
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
    while let Some(page) = pages.blocking_recv() {
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
    Ok(counts)
}

impl CopyStore for SqliteStore {
    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>> {
        self.read(move |connection| {
            let filter = match &after {
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
            let key: Vec<Value> = after.iter().flatten().map(to_sql).collect();
            let rows = statement
                .query_map(rusqlite::params_from_iter(key), |row| read_row(table, row))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn import(
        &self,
        pages: mpsc::Receiver<Page>,
    ) -> StoreFuture<Vec<(&'static str, u64)>, CopyError> {
        self.write(move |connection| import(connection, pages))
    }
}

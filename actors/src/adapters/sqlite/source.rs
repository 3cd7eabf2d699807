//! A copy's source in SQLite, read without changing it: one connection
//! opened read-only (no journal mode set, no migration), on a thread of its
//! own, whose reads are one moment (one read transaction, from the first
//! read to `end_moment`); the instances' heartbeats are read as they are
//! now, on a connection opened for each look.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::copy::{CopyError, CopyRow, Table};
use crate::store::{InstanceBeat, SourceStore, StoreError, StoreFuture};
use crate::verify::VerifyReport;

type SourceJob = Box<dyn FnOnce(&Connection) + Send>;

/// The source's reader: its thread ends when this is dropped.
pub(crate) struct SqliteSource {
    jobs: mpsc::Sender<SourceJob>,
    path: std::path::PathBuf,
}

/// Opens the sms-credit database at `path` to be read only: refused when
/// there is none (no file, or no migration history), or when its history
/// is not this release's (see `adapters::check_history`).
pub(crate) fn open_source(path: &Path) -> Result<SqliteSource, CopyError> {
    let missing = |reason: &str| StoreError::Missing {
        database: path.display().to_string(),
        reason: reason.to_string(),
    };
    if !path.is_file() {
        return Err(missing("the file does not exist").into());
    }
    let connection = super::copy::open_read_only(path)?;
    // A stopped source has no writer to wait for; a checkpoint left
    // half-done by a crash is waited for a while.
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(StoreError::from)?;
    if !super::migrations::has_history(&connection)? {
        let legacy: bool = connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
                 AND name = 'schema_migrations')",
                [],
                |row| row.get(0),
            )
            .map_err(StoreError::from)?;
        if legacy {
            // The first releases kept their history in a table of their own.
            return Err(CopyError::SourceNotCurrent(
                "it is an early release's database (its history is in schema_migrations): \
                 copy reads it as it stands and never changes it, so stop its servers, run \
                 `sms-credit migrate` on it, then copy"
                    .to_string(),
            ));
        }
        return Err(missing("the file holds no sms-credit tables").into());
    }
    let applied = super::migrations::applied_migrations(&connection)?;
    crate::adapters::check_history(&applied, super::migrations::names())?;
    let (jobs, queue) = mpsc::channel::<SourceJob>();
    super::spawn_thread("store-source", move || {
        while let Ok(job) = queue.recv() {
            job(&connection);
        }
    })?;
    Ok(SqliteSource {
        jobs,
        path: path.to_path_buf(),
    })
}

impl SqliteSource {
    /// Runs `work` on the source's thread, with its connection.
    fn run<T, F>(&self, work: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let queued = self
            .jobs
            .send(Box::new(move |connection| {
                let _ = done.send(work(connection));
            }))
            .map_err(|_| StoreError::Closed);
        Box::pin(async move {
            queued?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Runs `read` in the copy's moment: the read transaction the first
    /// read begins, which stays open until `end_moment`.
    fn read<T, F>(&self, read: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |connection| {
            if connection.is_autocommit() {
                connection.execute_batch("BEGIN")?;
            }
            read(connection)
        })
    }
}

impl SourceStore for SqliteSource {
    fn beats(&self) -> StoreFuture<Vec<InstanceBeat>> {
        let path = self.path.clone();
        self.run(move |_| {
            let now = super::copy::open_read_only(&path)?;
            now.busy_timeout(Duration::from_secs(5))?;
            now.execute_batch("BEGIN")?;
            let beats = super::accounts::instance_beats(&now);
            now.execute_batch("COMMIT")?;
            beats
        })
    }

    fn verify(&self) -> StoreFuture<VerifyReport> {
        self.read(super::ledger::verify)
    }

    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>> {
        self.read(move |connection| {
            super::copy::select_page(connection, table, after.as_ref(), limit)
        })
    }

    fn end_moment(&self) -> StoreFuture<()> {
        self.run(|connection| {
            if !connection.is_autocommit() {
                connection.execute_batch("COMMIT")?;
            }
            Ok(())
        })
    }
}

//! A copy's source in SQLite, read without changing it: one connection
//! opened read-only (no journal mode set, no migration), on a thread of its
//! own, each read in a transaction of its own.

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
    Ok(SqliteSource { jobs })
}

impl SqliteSource {
    /// Runs `read` on the source's thread, in a read transaction of its own.
    fn read<T, F>(&self, read: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let queued = self
            .jobs
            .send(Box::new(move |connection| {
                let answered = (|| {
                    connection.execute_batch("BEGIN")?;
                    let answered = read(connection);
                    connection.execute_batch("COMMIT")?;
                    answered
                })();
                let _ = done.send(answered);
            }))
            .map_err(|_| StoreError::Closed);
        Box::pin(async move {
            queued?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl SourceStore for SqliteSource {
    fn beats(&self) -> StoreFuture<Vec<InstanceBeat>> {
        self.read(super::accounts::instance_beats)
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
}

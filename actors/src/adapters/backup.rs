//! `sms-credit backup`: one moment of a database that servers go on
//! writing to, into a new SQLite file (whichever the source: one format for
//! both stores), verified, then sealed as one self-contained file.
//! Putting it in place under its final name is the caller's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{open, sqlite, StoreSettings};
use crate::store::copy::{self, CopyError};
use crate::store::{Store, StoreError};
use crate::verify::VerifyReport;

/// Writes one moment of `source` into a new SQLite file at `path` (which
/// must not exist): SQLite's own snapshot of its file, or every row read in
/// one repeatable-read transaction of Postgres. The file then holds what a
/// copy holds (nothing of the processes that were running), is verified,
/// and is left as one file, synced, with no write-ahead log beside it.
pub async fn snapshot_into(source: &Store, path: &Path) -> Result<VerifyReport, CopyError> {
    let written = source
        .copying()
        .snapshot_file(path.to_path_buf())
        .await
        .map_err(|error| step("reading the snapshot", error))?;
    let target =
        open(&StoreSettings::sqlite(path)).map_err(|error| step("opening the file", error))?;
    if written {
        target
            .copying()
            .forget_processes()
            .await
            .map_err(|error| step("leaving out the running processes", error))?;
    } else {
        copy::copy_snapshot(source, &target).await?;
    }
    let report = target.ledger().verify().await?;
    target.flush().await?;
    drop(target);
    if !report.is_clean() {
        return Err(CopyError::NotClean {
            side: "backup",
            problems: report.problems.len(),
        });
    }
    seal(path.to_path_buf())
        .await
        .map_err(|error| step("sealing the file", error))?;
    Ok(report)
}

/// A store's error, saying at which step of the backup it came.
fn step(doing: &str, error: StoreError) -> CopyError {
    CopyError::Store(StoreError::Database(format!("{doing}: {error}")))
}

/// Leaves the SQLite file at `path` as one file (its write-ahead log
/// checkpointed into it and the file back in rollback-journal mode, so that
/// copying the file alone copies everything), synced to the disk. Waits for
/// the store's own connections, closing as its threads end, to let go.
async fn seal(path: PathBuf) -> Result<(), StoreError> {
    let (done, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("backup-seal".to_string())
        .spawn(move || {
            let _ = done.send(sqlite::seal_file(&path, Duration::from_secs(30)));
        })
        .map_err(|error| StoreError::Database(format!("could not start a thread: {error}")))?;
    answer.await.map_err(|_| StoreError::Closed)?
}

//! Filling a database with another's rows (`sms-credit copy` and
//! `restore`): the source opened to be read only, the target looked at
//! before anything touches it, and what filling it made taken away again
//! if the fill fails.

use std::path::{Path, PathBuf};

use super::{postgres, sqlite, DatabaseLocation, IfMissing, StoreSettings};
use crate::store::copy::{self, CopyError, CopyReport, Source, StillStopped};
use crate::store::StoreError;
use crate::verify::VerifyReport;

/// Opens a copy's source to be read only: never migrated, never written,
/// SQLite's journal mode left as it is. Refuses a place with no sms-credit
/// database, and one whose migration history is not this release's.
pub fn open_source(location: &DatabaseLocation) -> Result<Source, CopyError> {
    Ok(match location {
        DatabaseLocation::Sqlite(path) => Source::new(Box::new(sqlite::open_source(path)?)),
        DatabaseLocation::Postgres(url) => Source::new(Box::new(postgres::open_source(url)?)),
    })
}

/// Refuses a source whose migrations are not exactly this release's
/// (`ours`, as refinery names them): an earlier release's lacks tables or
/// columns this release copies, and is migrated first (by its own
/// command, its servers stopped); a newer release's has what this one does
/// not know.
pub(crate) fn check_history<'a>(
    applied: &[(i64, String)],
    ours: impl Iterator<Item = &'a str>,
) -> Result<(), CopyError> {
    let ours: Vec<&str> = ours.collect();
    let applied: Vec<String> = applied
        .iter()
        .map(|(version, name)| format!("V{version}__{name}"))
        .collect();
    let unknown: Vec<&str> = applied
        .iter()
        .map(String::as_str)
        .filter(|name| !ours.contains(name))
        .collect();
    if !unknown.is_empty() {
        return Err(CopyError::SourceNotCurrent(format!(
            "its migration history has {}, which this release does not have (a newer \
             release's, or another program's): copy it with the release that migrated it",
            unknown.join(", ")
        )));
    }
    let missing: Vec<&str> = ours
        .iter()
        .copied()
        .filter(|name| !applied.iter().any(|applied| applied == name))
        .collect();
    if !missing.is_empty() {
        return Err(CopyError::SourceNotCurrent(format!(
            "it is an earlier release's database (it has not had {}): copy reads it as it \
             stands and never changes it, so stop its servers, run `sms-credit migrate` on it, \
             then copy",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// A database that a command fills with another's rows (`copy`'s target,
/// `restore`'s), looked at before anything touches it: a target that holds
/// data is refused then, before it is made or migrated, and what filling
/// it made is taken away again if the fill fails, so that a refused or
/// failed fill leaves the target as it was.
#[derive(Debug)]
pub struct FillTarget {
    location: DatabaseLocation,
    /// What opening it would make, to take away after a failure.
    made: Made,
}

#[derive(Debug)]
enum Made {
    /// An SQLite file (and its log) where there was none.
    SqliteFile(PathBuf),
    /// The tables of a Postgres database with no migration history: it
    /// had these tables before (another program's, or none).
    PostgresTables(Vec<String>),
    /// An sms-credit database that exists already: it stays (empty, and
    /// migrated to this release if it was of an earlier one).
    Nothing,
}

/// Why a fill failed, and, when what it made could not be taken away
/// again, why not (the target is then not as it was).
#[derive(Debug)]
pub struct FillError {
    pub cause: CopyError,
    pub not_undone: Option<StoreError>,
}

impl std::fmt::Display for FillError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.not_undone {
            None => self.cause.fmt(formatter),
            Some(undo) => write!(
                formatter,
                "{}; and what it made in the target could not be removed: {undo}",
                self.cause
            ),
        }
    }
}

impl std::error::Error for FillError {}

impl FillTarget {
    /// Looks at `location`, changing nothing; refuses it if a table that
    /// copies fill holds rows. `waiting` is told when it waits for
    /// another copy or restore into the same database to end.
    pub fn look(location: &DatabaseLocation, _waiting: &dyn Fn()) -> Result<FillTarget, CopyError> {
        let made = match location {
            DatabaseLocation::Sqlite(path) => {
                if let Some(table) = sqlite::table_holding_rows(path)? {
                    return Err(CopyError::TargetNotEmpty(table));
                }
                if path.exists() {
                    Made::Nothing
                } else {
                    Made::SqliteFile(path.clone())
                }
            }
            DatabaseLocation::Postgres(url) => {
                let before = postgres::look_before_filling(url)?;
                if let Some(table) = before.holding_rows {
                    return Err(CopyError::TargetNotEmpty(table));
                }
                if before.has_history {
                    Made::Nothing
                } else {
                    Made::PostgresTables(before.tables)
                }
            }
        };
        Ok(FillTarget {
            location: location.clone(),
            made,
        })
    }

    /// Fills the target with every row of `source` (verified already:
    /// `source_report`), opened with `settings` (its place is this
    /// target's), in one transaction that commits only when the whole
    /// source is in and verified (see [`copy::copy_rows`]). A fill that
    /// fails takes away what it made, and says so if it could not.
    pub async fn fill(
        self,
        source: &Source,
        source_report: VerifyReport,
        settings: StoreSettings,
        still_stopped: Option<StillStopped>,
    ) -> Result<CopyReport, FillError> {
        let settings = StoreSettings {
            location: self.location.clone(),
            if_missing: IfMissing::Create,
            ..settings
        };
        let filled = async {
            let target = super::open(&settings)?;
            let copied = copy::copy_rows(source, source_report, &target, still_stopped).await;
            let flushed = target.flush().await;
            // Closed before what it made is taken away.
            drop(target);
            let report = copied?;
            flushed?;
            Ok::<_, CopyError>(report)
        }
        .await;
        match filled {
            Ok(report) => Ok(report),
            Err(cause) => Err(FillError {
                cause,
                not_undone: self.undo().err(),
            }),
        }
    }

    /// After a fill that failed, with the target's store closed: removes
    /// the SQLite file it made, or drops the tables it made in a Postgres
    /// database that had none of sms-credit's. Answers what it removed.
    fn undo(&self) -> Result<Vec<String>, StoreError> {
        match &self.made {
            Made::SqliteFile(path) => {
                let mut removed = Vec::new();
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut file = path.as_os_str().to_owned();
                    file.push(suffix);
                    if std::fs::remove_file(&file).is_ok() {
                        removed.push(Path::new(&file).display().to_string());
                    }
                }
                Ok(removed)
            }
            Made::PostgresTables(before) => match &self.location {
                DatabaseLocation::Postgres(url) => postgres::drop_tables_made(url, before.clone()),
                DatabaseLocation::Sqlite(_) => Ok(Vec::new()),
            },
            Made::Nothing => Ok(Vec::new()),
        }
    }
}

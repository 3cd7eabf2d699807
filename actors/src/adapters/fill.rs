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
/// data, or that is another program's SQLite database, is refused then,
/// before it is made or migrated, and what filling it made is taken away
/// again if the fill fails, so that a refused or failed fill leaves the
/// target as it was. What a fill takes away is only ever its own: a new
/// SQLite file is filled under a name of its own and put in place whole,
/// only where nothing is by then; a Postgres target is held (an advisory
/// lock) from before it is looked at until what was made is taken away,
/// so that a second fill into it waits.
#[derive(Debug)]
pub struct FillTarget {
    location: DatabaseLocation,
    /// What filling it makes, to take away after a failure.
    made: Made,
    /// Postgres: the fill lock, held until this is dropped; what the fill
    /// made is read and taken away on its connection.
    lock: Option<postgres::FillLock>,
}

#[derive(Debug)]
enum Made {
    /// A new SQLite file, filled as `filling` (beside where it goes, so
    /// that it can be put in place by a link) and put in place whole at the
    /// end, only if no file has that name by then; a failure removes
    /// `filling` alone, never what has the target's name.
    SqliteFile { filling: PathBuf },
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

/// How long putting a new SQLite file in place waits for the fill's own
/// connections to close (their threads end when its store is dropped).
const SEAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

impl FillTarget {
    /// Looks at `location`, changing nothing; refuses it if a table that
    /// copies fill holds rows, or if it is another program's SQLite
    /// database. A Postgres target is held first: `waiting` is told when
    /// another copy or restore into it holds it, and this one waits for it
    /// to end.
    pub fn look(location: &DatabaseLocation, waiting: &dyn Fn()) -> Result<FillTarget, CopyError> {
        let (made, lock) = match location {
            DatabaseLocation::Sqlite(path) if path.exists() => {
                if let Some(tables) = sqlite::foreign_tables(path)? {
                    return Err(CopyError::TargetNotOurs(format!(
                        "it has tables ({}) but no sms-credit migration history: another \
                         program's database",
                        tables.join(", ")
                    )));
                }
                if let Some(table) = sqlite::table_holding_rows(path)? {
                    return Err(CopyError::TargetNotEmpty(table));
                }
                (Made::Nothing, None)
            }
            DatabaseLocation::Sqlite(path) => {
                // Said of the target, not of the file it is filled as.
                if let Some(reason) = sqlite::unusable_location(path) {
                    return Err(CopyError::Store(StoreError::Open {
                        path: path.display().to_string(),
                        reason,
                    }));
                }
                let filling = filling_name(path)?;
                (Made::SqliteFile { filling }, None)
            }
            DatabaseLocation::Postgres(url) => {
                let lock = postgres::lock_for_filling(url, waiting)?;
                let before = postgres::look_before_filling(url)?;
                if let Some(table) = before.holding_rows {
                    return Err(CopyError::TargetNotEmpty(table));
                }
                let made = if before.has_history {
                    Made::Nothing
                } else {
                    Made::PostgresTables(before.tables)
                };
                (made, Some(lock))
            }
        };
        Ok(FillTarget {
            location: location.clone(),
            made,
            lock,
        })
    }

    /// The file a new SQLite target is filled as before it is put in
    /// place, for a command to remove if it is stopped part-way.
    pub fn filling_file(&self) -> Option<&Path> {
        match &self.made {
            Made::SqliteFile { filling } => Some(filling),
            Made::PostgresTables(_) | Made::Nothing => None,
        }
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
        let filled_at = match &self.made {
            Made::SqliteFile { filling } => DatabaseLocation::Sqlite(filling.clone()),
            Made::PostgresTables(_) | Made::Nothing => self.location.clone(),
        };
        let settings = StoreSettings {
            location: filled_at,
            if_missing: IfMissing::Create,
            ..settings
        };
        // The tables a Postgres database without history got from being
        // opened and migrated, as the migration left them.
        let mut made_tables = None;
        let filled = async {
            let target = super::open(&settings)?;
            if let (Made::PostgresTables(before), Some(lock)) = (&self.made, &self.lock) {
                made_tables = Some(lock.tables_made(before.clone())?);
            }
            let copied = copy::copy_rows(source, source_report, &target, still_stopped).await;
            let flushed = target.flush().await;
            // Closed before it is put in place, or what it made is taken
            // away.
            drop(target);
            let report = copied?;
            flushed?;
            self.put_in_place()?;
            Ok::<_, CopyError>(report)
        }
        .await;
        match filled {
            Ok(report) => Ok(report),
            Err(cause) => Err(FillError {
                cause,
                not_undone: self.undo(made_tables).err(),
            }),
        }
    }

    /// After the fill committed: a new SQLite file goes under the target's
    /// name, whole (its log folded into it), by a link that fails if
    /// another fill put a file there meanwhile.
    fn put_in_place(&self) -> Result<(), CopyError> {
        let (Made::SqliteFile { filling }, DatabaseLocation::Sqlite(target)) =
            (&self.made, &self.location)
        else {
            return Ok(());
        };
        sqlite::seal_file(filling, SEAL_PATIENCE)?;
        match std::fs::hard_link(filling, target) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CopyError::TargetMadeMeanwhile(target.display().to_string()))
            }
            Err(error) => {
                return Err(CopyError::Store(StoreError::Database(format!(
                    "could not put {} in place as {}: {error}",
                    filling.display(),
                    target.display()
                ))))
            }
        }
        // The target has the file now; the filling name goes, and the
        // directory is synced so that the new name survives a crash.
        remove_sqlite_files(filling);
        let directory = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        // The copy is whole and in place by now: a directory that cannot
        // be synced is told, never taken for a failed copy.
        if let Err(error) =
            std::fs::File::open(directory).and_then(|directory| directory.sync_all())
        {
            tracing::warn!(
                %error,
                directory = %directory.display(),
                "the copy is in place, but its directory could not be synced: a crash of the \
                 machine soon after could lose the new name"
            );
        }
        Ok(())
    }

    /// After a fill that failed, with the target's store closed: removes
    /// the SQLite file it filled (never what has the target's name), or
    /// drops the tables its migration made in a Postgres database that had
    /// none of sms-credit's (`made`; read now if the migration itself
    /// failed), on the fill lock's connection, and only while each holds
    /// the rows the migration left in it: what another program, a server
    /// or a command made or wrote meanwhile is never taken away. Answers
    /// what it removed.
    fn undo(&self, made: Option<Vec<postgres::MadeTable>>) -> Result<Vec<String>, StoreError> {
        match (&self.made, &self.lock) {
            (Made::SqliteFile { filling }, _) => Ok(remove_sqlite_files(filling)),
            (Made::PostgresTables(before), Some(lock)) => {
                let made = match made {
                    Some(made) => made,
                    None => lock.tables_made(before.clone())?,
                };
                lock.drop_tables_made(made)
            }
            (Made::PostgresTables(_), None) | (Made::Nothing, _) => Ok(Vec::new()),
        }
    }
}

/// Where a new SQLite file at `path` is filled: beside it, hidden, with a
/// random part (`.sms-credit.db.filling-3f9a…`).
fn filling_name(path: &Path) -> Result<PathBuf, StoreError> {
    let name = path.file_name().ok_or_else(|| StoreError::Open {
        path: path.display().to_string(),
        reason: "names no file".to_string(),
    })?;
    let random = crate::random::random_secret("")?;
    let mut filling = std::ffi::OsString::from(".");
    filling.push(name);
    filling.push(format!(".filling-{}", &random[..16]));
    Ok(path.with_file_name(filling))
}

/// Removes an SQLite file and what SQLite keeps beside it; answers what
/// was there.
fn remove_sqlite_files(path: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if std::fs::remove_file(&file).is_ok() {
            removed.push(Path::new(&file).display().to_string());
        }
    }
    removed
}

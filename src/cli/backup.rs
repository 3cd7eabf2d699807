//! `sms-credit backup`: one moment of the database, taken while servers
//! run, into an SQLite file that is verified before it gets its name.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use sms_credit_actors::adapters::backup::snapshot_into;
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::store::backup::BackupRecord;

use super::output::{counted, print_json, with_store};
use crate::config::Settings;

/// What a backup file in a directory is called: `sms-credit-` and the UTC
/// time of its snapshot, so that names sort as times do.
const PREFIX: &str = "sms-credit-";
const SUFFIX: &str = ".db";

/// Test-only: names a file the backup creates just before it would put its
/// file in place, where it then waits a minute, so that a test can kill it
/// there.
const HOLD_FOR_TESTING: &str = "SMS_CREDIT_BACKUP_HOLD_FOR_TESTING";

#[derive(Args, Debug)]
pub struct BackupCommand {
    /// Where to write the backup: a file (replaced), or a directory
    /// (ending in /), where a file named by the time is written.
    #[arg(long, value_name = "PATH|DIR/")]
    to: String,
    /// With a directory: remove all but the newest N backups in it.
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

/// Where the backup goes, and the directory whose old backups `--keep`
/// removes.
struct Destination {
    file: PathBuf,
    directory: Option<PathBuf>,
}

impl BackupCommand {
    fn destination(&self, taken_at_ms: i64) -> Result<Destination, String> {
        let given = PathBuf::from(&self.to);
        let is_directory = self.to.ends_with('/') || given.is_dir();
        if !is_directory {
            if self.keep.is_some() {
                return Err("--keep needs --to to be a directory (end it with /)".to_string());
            }
            return Ok(Destination {
                file: given,
                directory: None,
            });
        }
        if self.keep == Some(0) {
            return Err("--keep must be at least 1".to_string());
        }
        std::fs::create_dir_all(&given)
            .map_err(|error| format!("--to: cannot create {}: {error}", given.display()))?;
        let stamp = format_rfc3339_ms(taken_at_ms).replace(':', "-");
        Ok(Destination {
            file: given.join(format!("{PREFIX}{stamp}{SUFFIX}")),
            directory: Some(given),
        })
    }

    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let taken_at_ms = SystemClock.now_ms();
        let started = Instant::now();
        let destination = self.destination(taken_at_ms)?;
        if let Some(database) = settings.database.location.sqlite_path() {
            let same = std::fs::canonicalize(database)
                .ok()
                .is_some_and(|database| {
                    std::fs::canonicalize(&destination.file).ok() == Some(database)
                });
            if same {
                return Err("--to names the database itself".to_string());
            }
        }
        let file_name = destination
            .file
            .file_name()
            .ok_or_else(|| format!("--to: {} names no file", destination.file.display()))?
            .to_string_lossy()
            .into_owned();
        let folder = match destination.file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Written under a name of its own, and renamed only once verified
        // and synced: a backup cut short never has the final name.
        let partial = folder.join(format!(".{file_name}.partial"));
        // One backup at a time to one name (two cron runs overlapping):
        // the other's partial file is never touched. The lock goes with
        // the process, however it ends; its file stays, empty. (A name
        // made from the time, for a directory, is one backup's alone.)
        let _lock = match destination.directory {
            Some(_) => None,
            None => Some(
                lock_name(&folder, &file_name, &destination.file)
                    .map_err(|error| format!("no backup was made: {error}"))?,
            ),
        };
        remove_sqlite_files(&partial);
        let progress = Progress::start(&partial, settings);
        let record = take(
            settings,
            &partial,
            &destination.file,
            taken_at_ms,
            started,
            progress,
        );
        let (record, not_recorded) = match record {
            Ok(taken) => taken,
            Err(error) => {
                remove_sqlite_files(&partial);
                return Err(format!("no backup was made: {error}"));
            }
        };
        let removed = match (&destination.directory, self.keep) {
            (Some(directory), Some(keep)) => keep_newest(directory, keep)?,
            _ => Vec::new(),
        };
        self.print(&record, &removed)?;
        match not_recorded {
            None => Ok(()),
            Some(error) => Err(format!(
                "the backup {} is whole and in place, but recording it in the database failed \
                 (the console and /metrics do not know of it): {error}",
                record.path
            )),
        }
    }
}

impl BackupCommand {
    fn print(&self, record: &BackupRecord, removed: &[PathBuf]) -> Result<(), String> {
        if self.json {
            // The record as the API shows it (the console's last backup),
            // with the verdict and what --keep removed.
            let mut told = serde_json::to_value(record).map_err(|error| error.to_string())?;
            if let Some(fields) = told.as_object_mut() {
                fields.insert("verify".to_string(), json!("clean"));
                fields.insert(
                    "removed".to_string(),
                    json!(removed
                        .iter()
                        .map(|path| path.display().to_string())
                        .collect::<Vec<_>>()),
                );
            }
            return print_json(&told);
        }
        say!("backup written to {}", record.path);
        say!(
            "  holds {} and {}, as they were at {} (verify is clean)",
            counted(record.accounts.max(0) as u64, "account", "accounts"),
            counted(
                record.transactions.max(0) as u64,
                "ledger row",
                "ledger rows"
            ),
            format_rfc3339_ms(record.taken_at_ms)
        );
        say!(
            "  {} in {:.1} s",
            human_size(record.bytes),
            Duration::from_millis(u64::try_from(record.duration_ms).unwrap_or(0)).as_secs_f64()
        );
        for path in removed {
            say!("  removed the older backup {}", path.display());
        }
        Ok(())
    }
}

/// Takes the backup into `partial`, puts it in place at `final_path` and
/// records it in the database backed up.
fn take(
    settings: &Settings,
    partial: &Path,
    final_path: &Path,
    taken_at_ms: i64,
    started: Instant,
    progress: Progress,
) -> Result<(BackupRecord, Option<String>), String> {
    with_store(settings, |source| {
        let partial = partial.to_path_buf();
        let final_path = final_path.to_path_buf();
        async move {
            let report = snapshot_into(&source, &partial)
                .await
                .map_err(|error| error.to_string());
            progress.stop();
            let report = report?;
            hold_for_testing();
            put_in_place(&partial, &final_path)?;
            let bytes = std::fs::metadata(&final_path)
                .map_err(|error| format!("{}: {error}", final_path.display()))?
                .len();
            let shown = std::path::absolute(&final_path).unwrap_or(final_path);
            let record = BackupRecord {
                taken_at_ms,
                path: shown.display().to_string(),
                accounts: i64::try_from(report.accounts_checked).unwrap_or(i64::MAX),
                transactions: i64::try_from(report.transactions_checked).unwrap_or(i64::MAX),
                bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            };
            // In place and whole: a failure to record it is said as such
            // (the backup stands; the console does not know of it).
            let recorded = source
                .backups()
                .record_backup(record.clone())
                .await
                .err()
                .map(|error| error.to_string());
            Ok((record, recorded))
        }
    })
}

/// Renames the verified, synced file to its final name (replacing what had
/// it), then syncs the directory so that the rename itself is durable.
fn put_in_place(partial: &Path, final_path: &Path) -> Result<(), String> {
    std::fs::rename(partial, final_path).map_err(|error| {
        format!(
            "cannot rename {} to {}: {error}",
            partial.display(),
            final_path.display()
        )
    })?;
    let folder = match final_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(folder)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| format!("cannot sync {}: {error}", folder.display()))
}

/// Removes an SQLite file and what SQLite keeps beside it.
fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Removes all but the newest `keep` backups in `directory` (by the time in
/// their names); answers those removed.
fn keep_newest(directory: &Path, keep: usize) -> Result<Vec<PathBuf>, String> {
    let mut backups: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(|error| format!("cannot list {}: {error}", directory.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX))
        })
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    let removed: Vec<PathBuf> = backups.drain(..excess).collect();
    for path in &removed {
        std::fs::remove_file(path)
            .map_err(|error| format!("cannot remove {}: {error}", path.display()))?;
    }
    Ok(removed)
}

fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut whole = bytes;
    let mut tenths = 0;
    let mut unit = 0;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        tenths = (whole % 1024) * 10 / 1024;
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{whole} bytes")
    } else {
        format!("{whole}.{tenths} {}", UNITS[unit])
    }
}

/// Waits where a test asked the backup to, just before it is put in place.
fn hold_for_testing() {
    if let Some(marker) = std::env::var_os(HOLD_FOR_TESTING) {
        if std::fs::write(&marker, b"held").is_ok() {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// A progress bar on standard error while the file grows, when standard
/// error is a terminal (nothing otherwise): how much is written, against
/// the source file's size for SQLite.
struct Progress {
    running: Arc<AtomicBool>,
}

impl Progress {
    fn start(partial: &Path, settings: &Settings) -> Progress {
        let running = Arc::new(AtomicBool::new(std::io::stderr().is_terminal()));
        if !running.load(Ordering::SeqCst) {
            return Progress { running };
        }
        let expected = settings
            .database
            .location
            .sqlite_path()
            .and_then(|path| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len());
        let partial = partial.to_path_buf();
        let still = Arc::clone(&running);
        let _ = std::thread::Builder::new()
            .name("backup-progress".to_string())
            .spawn(move || {
                while still.load(Ordering::SeqCst) {
                    // The file and its write-ahead log, where a copy out of
                    // Postgres grows until it commits.
                    let written: u64 = ["", "-wal"]
                        .iter()
                        .map(|suffix| {
                            let mut name = partial.as_os_str().to_owned();
                            name.push(suffix);
                            std::fs::metadata(PathBuf::from(name))
                                .map_or(0, |metadata| metadata.len())
                        })
                        .sum();
                    let written = i64::try_from(written).unwrap_or(i64::MAX);
                    let line = match expected.and_then(|total| i64::try_from(total).ok()) {
                        Some(total) if total > 0 => {
                            let filled = (written.min(total) * 30 / total) as usize;
                            format!(
                                "[{}{}] {} of about {}",
                                "#".repeat(filled),
                                ".".repeat(30 - filled),
                                human_size(written),
                                human_size(total)
                            )
                        }
                        _ => format!("{} written", human_size(written)),
                    };
                    eprint!("\r\x1b[2Kbacking up {line}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprint!("\r\x1b[2K");
            });
        Progress { running }
    }

    fn stop(&self) {
        self.running.store(false, Ordering::SeqCst);
    }
}

/// Locks the name a backup is written to, for as long as the answer is
/// kept: refused while another backup to it runs.
fn lock_name(folder: &Path, file_name: &str, shown: &Path) -> Result<std::fs::File, String> {
    let lock_path = folder.join(format!(".{file_name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| format!("{}: {error}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another backup to {} is running: nothing done",
            shown.display()
        )),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(format!("{}: {error}", lock_path.display()))
        }
    }
}

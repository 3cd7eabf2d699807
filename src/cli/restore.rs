//! `sms-credit restore`: a backup file's rows into an empty database
//! (SQLite or Postgres, whichever store the backup was taken of), verified.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};
use sms_credit_actors::adapters::{self, DatabaseLocation, FillTarget};
use sms_credit_actors::store::copy::{self, Source};

use super::copy::say_waiting;
use super::interrupt::{remove_on_stop, RemovedOnStop};
use super::output::{counted, print_json};
use crate::config::Settings;

/// Test-only: names a file the restore creates once its import has taken
/// the backup's first page, where it then waits a minute, so that a test
/// can look at (and stop) a restore in progress.
const HOLD_FOR_TESTING: &str = "SMS_CREDIT_RESTORE_HOLD_FOR_TESTING";

#[derive(Args, Debug)]
pub struct RestoreCommand {
    /// The backup file (made by `sms-credit backup`); read, never changed.
    #[arg(long, value_name = "PATH")]
    from: String,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

/// A directory of this command's own, readable by its user alone (the
/// backup holds every account), removed with everything in it when
/// dropped, or when a signal stops the command: the copy of the backup
/// that is migrated and read is made here, so that the backup itself is
/// never opened but to be copied.
struct Scratch {
    directory: PathBuf,
    /// Removes the directory if a signal stops the command (dropped just
    /// after `drop` has removed it).
    _removed_if_stopped: RemovedOnStop,
}

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let name = sms_credit_actors::random::random_secret("sms-credit-restore-")
            .map_err(|error| error.to_string())?;
        let directory = std::env::temp_dir().join(&name[..35]);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&directory)
            .map_err(|error| {
                format!(
                    "could not make a working directory for the backup's copy ({}): {error}",
                    directory.display()
                )
            })?;
        let removed_if_stopped = remove_on_stop(&directory);
        Ok(Scratch {
            directory,
            _removed_if_stopped: removed_if_stopped,
        })
    }

    /// A copy of `backup` (and of a write-ahead log beside it, if any),
    /// readable and writable by this user alone, whatever the backup's own
    /// permissions.
    fn copy_of(&self, backup: &Path) -> Result<PathBuf, String> {
        let copied = self.directory.join("backup.db");
        for suffix in ["", "-wal"] {
            let mut from = backup.as_os_str().to_owned();
            from.push(suffix);
            let mut to = copied.as_os_str().to_owned();
            to.push(suffix);
            if !suffix.is_empty() && !Path::new(&from).exists() {
                continue;
            }
            let failed = |error: std::io::Error| {
                format!(
                    "could not copy {} to {}: {error}",
                    Path::new(&from).display(),
                    Path::new(&to).display()
                )
            };
            let mut reading = std::fs::File::open(&from).map_err(failed)?;
            let mut writing = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)
                .map_err(failed)?;
            std::io::copy(&mut reading, &mut writing).map_err(failed)?;
            writing.flush().map_err(failed)?;
        }
        Ok(copied)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Holds the import after its first page while a test asks (see
/// [`HOLD_FOR_TESTING`]). Only in a build with debug assertions (the
/// tests'): a release binary never reads the variable.
fn hold_for_testing(source: &Source) {
    if !cfg!(debug_assertions) {
        return;
    }
    if let Some(marker) = std::env::var_os(HOLD_FOR_TESTING) {
        let hold = source.hold_after_first_page_for_testing();
        actix_rt::spawn(async move {
            hold.reached().await;
            if std::fs::write(&marker, b"held").is_ok() {
                actix_rt::time::sleep(std::time::Duration::from_secs(60)).await;
            }
            hold.release();
        });
    }
}

impl RestoreCommand {
    /// Restores into the database the settings name (`--database`), which
    /// must hold no data. Every refusal (no backup there, a file that is
    /// not an sms-credit backup, a target that holds data) is decided
    /// before the target is touched; a restore that fails writes nothing,
    /// and what filling the target made is removed again. The backup file
    /// is only read: a copy of it, in a directory of this command's own, is
    /// migrated (a backup of an earlier release) and read.
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let backup = PathBuf::from(&self.from);
        if !backup.is_file() {
            return Err(format!("--from: {} is not a backup file", backup.display()));
        }
        let target = settings.database.location.clone();
        if target.sqlite_path().is_some_and(|path| {
            std::fs::canonicalize(path).ok() == std::fs::canonicalize(&backup).ok()
        }) {
            return Err("--from and --database are the same file".to_string());
        }
        let scratch = Scratch::new()?;
        let copied = scratch.copy_of(&backup)?;
        let not_a_backup = |why: String| {
            format!(
                "--from: {} is not an sms-credit backup: {why}",
                backup.display()
            )
        };
        adapters::check_backup_file(&copied).map_err(not_a_backup)?;
        // The backup's heartbeats are those of the database it was taken
        // of: nothing but this command writes to its copy.
        adapters::migrate(
            &DatabaseLocation::Sqlite(copied.clone()),
            adapters::MigrateOptions::backup_copy(),
        )
        .map_err(|error| not_a_backup(error.to_string()))?;
        let report = actix_rt::System::new().block_on(async {
            let source = adapters::open_source(&DatabaseLocation::Sqlite(copied))
                .map_err(|error| not_a_backup(error.to_string()))?;
            let source_report = copy::verify_source(&source)
                .await
                .map_err(|error| format!("--from: {}: {error}", backup.display()))?;
            let filling = FillTarget::look(&target, &say_waiting(&target))
                .map_err(|error| format!("{target}: {error}"))?;
            let _removed_if_stopped = filling.filling_file().map(remove_on_stop);
            hold_for_testing(&source);
            filling
                .fill(
                    &source,
                    source_report,
                    settings.database.store_settings(),
                    None,
                )
                .await
                .map_err(|error| format!("nothing was restored: {error}"))
        })?;
        drop(scratch);
        if self.json {
            let tables: serde_json::Map<String, Value> = report
                .tables
                .iter()
                .map(|(table, rows)| (table.to_string(), json!(rows)))
                .collect();
            return print_json(&json!({
                "from": backup.display().to_string(), "to": target.to_string(),
                "tables": tables,
                "accounts": report.target.accounts_checked,
                "transactions": report.target.transactions_checked,
                "verify": "clean"}));
        }
        say!(
            "restored {} into {target}: {} and {}; verify is clean",
            backup.display(),
            counted(report.target.accounts_checked, "account", "accounts"),
            counted(
                report.target.transactions_checked,
                "ledger row",
                "ledger rows"
            )
        );
        Ok(())
    }
}

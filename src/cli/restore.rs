//! `sms-credit restore`: a backup file's rows into an empty database
//! (SQLite or Postgres, whichever store the backup was taken of), verified.

use clap::Args;
use serde_json::{json, Value};
use sms_credit_actors::adapters::{self, DatabaseLocation, StoreSettings};
use sms_credit_actors::store::copy;

use super::output::{counted, print_json};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct RestoreCommand {
    /// The backup file (made by `sms-credit backup`).
    #[arg(long, value_name = "PATH")]
    from: String,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl RestoreCommand {
    /// Restores into the database the settings name (`--database`), which
    /// must hold no data: one that does is refused and left as it was.
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let backup = std::path::PathBuf::from(&self.from);
        if !backup.is_file() {
            return Err(format!("--from: {} is not a backup file", backup.display()));
        }
        let source = DatabaseLocation::Sqlite(backup.clone());
        let target = settings.database.location.clone();
        if target.sqlite_path().is_some_and(|path| {
            std::fs::canonicalize(path).ok() == std::fs::canonicalize(&backup).ok()
        }) {
            return Err("--from and --database are the same file".to_string());
        }
        let json_output = self.json;
        let restored = actix_rt::System::new().block_on(async move {
            let open = |settings: StoreSettings| {
                let location = settings.location.clone();
                adapters::open(&settings).map_err(|error| format!("{location}: {error}"))
            };
            let backup_store = open(StoreSettings::new(source))?;
            let target_store = open(settings.database.store_settings())?;
            let report = copy::copy_rows(&backup_store, &target_store)
                .await
                .map_err(|error| format!("nothing was restored: {error}"))?;
            target_store
                .flush()
                .await
                .map_err(|error| error.to_string())?;
            if json_output {
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
            println!(
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
        });
        // Opening the backup put it in write-ahead-log mode: it is left one
        // file again, as it came.
        let sealed = sms_credit_actors::adapters::sqlite::seal_file(
            std::path::Path::new(&self.from),
            std::time::Duration::from_secs(30),
        );
        restored?;
        sealed.map_err(|error| format!("restored, but the backup file was left open: {error}"))
    }
}

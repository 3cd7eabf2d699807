//! `sms-credit copy`: every row of one database into an empty other,
//! verified on both sides.

use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};
use sms_credit_actors::adapters::{self, DatabaseLocation, FillTarget, StoreSettings};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::store::copy::{self, CopyError, StillStopped};

use super::output::{counted, print_json};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct CopyCommand {
    /// The database to copy: a file path, sqlite://path or postgres://…
    /// Only read, never migrated: one of an earlier release is refused
    /// (stop its servers and run `sms-credit migrate` on it first).
    #[arg(long)]
    from: String,
    /// The empty database to copy into (created and migrated if needed; a
    /// new SQLite file appears only once it is whole).
    #[arg(long)]
    to: String,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
    /// Never read: `copy` takes --from and --to. Declared here, hidden, so
    /// that the global --database (and SMS_CREDIT_DATABASE, which clap
    /// hands down to it) is not offered in this command's help.
    #[arg(long, hide = true, value_name = "PATH|URL")]
    #[allow(dead_code)]
    database: Option<String>,
}

fn parse(name: &str, text: &str) -> Result<DatabaseLocation, String> {
    DatabaseLocation::parse(text).map_err(|error| format!("--{name}: {error}"))
}

/// Told when a fill waits for another copy or restore into the same
/// database to end.
pub(super) fn say_waiting(target: &DatabaseLocation) -> impl Fn() + '_ {
    move || {
        eprintln!("waiting for another copy or restore into {target} to end…");
    }
}

impl CopyCommand {
    /// Every refusal (the same database, a source that does not exist,
    /// that instances use, of another release or not clean, a target that
    /// holds data) is decided before the target is touched, and the source
    /// is only read; a copy that fails writes nothing, and what filling the
    /// target made (an SQLite file, a Postgres database's tables) is
    /// removed again.
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let (source, target) = (parse("from", &self.from)?, parse("to", &self.to)?);
        if source == target {
            return Err("--from and --to are the same database".to_string());
        }
        // For an instance that does not say its own timeout (an earlier
        // release's); every other is judged by its own.
        let timeout_ms = sms_credit_actors::clock::millis(settings.database.instance_timeout);
        let json = self.json;
        let report = actix_rt::System::new().block_on(async {
            let from = |error: CopyError| format!("--from: {source}: {error}");
            let source_store = adapters::open_source(&source).map_err(from)?;
            copy::check_source_stopped(&source_store, SystemClock.now_ms(), timeout_ms)
                .await
                .map_err(|error| error.to_string())?;
            let source_report = copy::verify_source(&source_store).await.map_err(from)?;
            let filling = FillTarget::look(&target, &say_waiting(&target))
                .map_err(|error| format!("--to: {target}: {error}"))?;
            let _removed_if_stopped = filling.filling_file().map(super::interrupt::remove_on_stop);
            filling
                .fill(
                    &source_store,
                    source_report,
                    StoreSettings::new(target.clone()),
                    Some(StillStopped {
                        clock: Arc::new(SystemClock),
                        fallback_timeout_ms: timeout_ms,
                    }),
                )
                .await
                .map_err(|error| format!("nothing was copied: {error}"))
        })?;
        if json {
            let tables: serde_json::Map<String, Value> = report
                .tables
                .iter()
                .map(|(table, rows)| (table.to_string(), json!(rows)))
                .collect();
            return print_json(&json!({
                "from": source.to_string(), "to": target.to_string(), "tables": tables,
                "accounts": report.target.accounts_checked,
                "transactions": report.target.transactions_checked}));
        }
        for (table, rows) in &report.tables {
            say!("{table:<24} {:>14}", counted(*rows, "row", "rows"));
        }
        say!(
            "copied {source} to {target}; verify is clean on both: {}, {}",
            counted(report.target.accounts_checked, "account", "accounts"),
            counted(
                report.target.transactions_checked,
                "transaction",
                "transactions"
            )
        );
        Ok(())
    }
}

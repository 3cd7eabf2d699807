//! `sms-credit copy`: every row of one database into an empty other,
//! verified on both sides.

use clap::Args;
use serde_json::{json, Value};
use sms_credit_actors::adapters::{self, DatabaseLocation, FillTarget, IfMissing, StoreSettings};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::store::{copy, Store};

use super::output::{counted, print_json};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct CopyCommand {
    /// The database to copy: a file path, sqlite://path or postgres://…
    #[arg(long)]
    from: String,
    /// The empty database to copy into (created and migrated if needed).
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

fn open(location: &DatabaseLocation, if_missing: IfMissing) -> Result<Store, String> {
    let settings = StoreSettings {
        if_missing,
        ..StoreSettings::new(location.clone())
    };
    adapters::open(&settings).map_err(|error| format!("{location}: {error}"))
}

/// Why a fill failed, and what became of what it made: taken away (the
/// target is as it was), or not, saying what is left.
pub(super) fn failed_fill(filling: &FillTarget, error: String) -> String {
    match filling.undo() {
        Ok(_) => error,
        Err(undo) => {
            format!("{error}; and what it made in the target could not be removed: {undo}")
        }
    }
}

impl CopyCommand {
    /// Every refusal (the same database, a source that does not exist or
    /// that instances use, a target that holds data) is decided before
    /// the target is touched; a copy that fails writes nothing, and what
    /// opening the target made (an SQLite file, a Postgres database's
    /// tables) is removed again.
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let (source, target) = (parse("from", &self.from)?, parse("to", &self.to)?);
        if source == target {
            return Err("--from and --to are the same database".to_string());
        }
        // For an instance that does not say its own timeout (an earlier
        // release's); every other is judged by its own.
        let timeout_ms = sms_credit_actors::clock::millis(settings.database.instance_timeout);
        let json = self.json;
        let mut filling = None;
        let outcome = actix_rt::System::new().block_on(async {
            let source_store =
                open(&source, IfMissing::Refuse).map_err(|error| format!("--from: {error}"))?;
            copy::check_source_stopped(&source_store, SystemClock.now_ms(), timeout_ms)
                .await
                .map_err(|error| error.to_string())?;
            filling = Some(
                FillTarget::look(&target).map_err(|error| format!("--to: {target}: {error}"))?,
            );
            let target_store = open(&target, IfMissing::Create)?;
            let copied = copy::copy(
                &source_store,
                &target_store,
                SystemClock.now_ms(),
                timeout_ms,
            )
            .await;
            // Closed before what it made is taken away.
            drop(target_store);
            copied.map_err(|error| format!("nothing was copied: {error}"))
        });
        let report = match (outcome, &filling) {
            (Ok(report), _) => report,
            (Err(error), Some(filling)) => return Err(failed_fill(filling, error)),
            (Err(error), None) => return Err(error),
        };
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

//! `sms-credit verify`: recomputes every account from its ledger.

use std::process::ExitCode;

use clap::Args;

use super::output::{counted, print_json, with_store};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct VerifyCommand {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl VerifyCommand {
    /// Exit 0 when clean, 1 when any account has a problem, 2 when the
    /// database cannot be read.
    pub fn run(self, settings: &Settings) -> ExitCode {
        let report = with_store(settings, |store| async move {
            store
                .ledger()
                .verify()
                .await
                .map_err(|error| error.to_string())
        });
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
        if self.json {
            if let Err(error) = print_json(&report) {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        } else {
            for problem in &report.problems {
                say!("problem: {problem}");
            }
            say!(
                "checked {} and {}: {}",
                counted(report.accounts_checked, "account", "accounts"),
                counted(report.transactions_checked, "transaction", "transactions"),
                if report.is_clean() {
                    "clean".to_string()
                } else {
                    counted(report.problems.len() as u64, "problem", "problems")
                }
            );
        }
        if report.is_clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

//! `sms-credit verify`: recomputes every account from its ledger.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::output::{print_json, with_store};
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
                println!("PROBLEM {}", json!(problem));
            }
            println!(
                "checked {} accounts and {} transactions: {}",
                report.accounts_checked,
                report.transactions_checked,
                if report.is_clean() {
                    "clean".to_string()
                } else {
                    format!("{} problems", report.problems.len())
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

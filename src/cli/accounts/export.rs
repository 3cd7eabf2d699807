//! `sms-credit accounts export`: an account's whole ledger as CSV.

use std::io::Write;

use clap::Args;
use sms_credit_actors::{export, AccountId};

use crate::cli::output::with_store;
use crate::config::Settings;

/// Ledger rows read per page.
const PAGE: i64 = 1000;

#[derive(Args, Debug)]
pub struct ExportCommand {
    /// The account.
    id: i64,
}

impl ExportCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let (id, account_id) = (self.id, AccountId(self.id));
        with_store(settings, |store| async move {
            store
                .accounts()
                .get(account_id)
                .await
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("account {id} does not exist"))?;
            let mut out = std::io::stdout().lock();
            // A reader that went away (`| head`) or an output that fails
            // ends the export; how the command ends says which.
            let mut write = |text: &str| match out.write_all(text.as_bytes()) {
                Ok(()) => true,
                Err(error) => {
                    crate::cli::output::note_write_error(&error);
                    false
                }
            };
            if !write(export::CSV_HEADER) {
                return Ok(());
            }
            let mut after_seq = 0;
            loop {
                let page = store
                    .ledger()
                    .entries_after(account_id, after_seq, PAGE)
                    .await
                    .map_err(|error| error.to_string())?;
                for entry in &page {
                    if !write(&export::csv_row(entry)) {
                        return Ok(());
                    }
                    after_seq = entry.seq;
                }
                if (page.len() as i64) < PAGE {
                    return Ok(());
                }
            }
        })
    }
}

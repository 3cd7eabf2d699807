//! `sms-credit accounts list`: accounts by id, or found by phone or email.

use clap::Args;

use crate::cli::output::{print_json, with_store};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct ListCommand {
    /// Only accounts whose phone or email contains this (or whose id it is).
    #[arg(long)]
    search: Option<String>,
    /// Accounts after this id (paging).
    #[arg(long, default_value_t = 0)]
    after_id: i64,
    /// At most this many accounts (1 to 1000, as the API allows).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
    limit: i64,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl ListCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let (search, after_id, limit) = (self.search, self.after_id, self.limit);
        let accounts = with_store(settings, |store| async move {
            store
                .accounts()
                .list(search, after_id, limit)
                .await
                .map_err(|error| error.to_string())
        })?;
        if self.json {
            return print_json(&accounts);
        }
        println!(
            "{:<8} {:<16} {:<8} {:>12}  email",
            "id", "phone", "status", "balance"
        );
        for account in &accounts {
            println!(
                "{:<8} {:<16} {:<8} {:>12}  {}",
                account.id,
                account.phone,
                account.status.as_str(),
                account.balance.to_string(),
                account.email.as_ref().map_or("", |email| email.as_str())
            );
        }
        Ok(())
    }
}

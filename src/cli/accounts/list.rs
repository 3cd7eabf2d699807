//! `sms-credit accounts list`: accounts by id, or found by phone or email.

use clap::Args;

use crate::cli::output::{print_json, print_table, with_store, Align};
use crate::config::Settings;
use crate::routes::admin::accounts;

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
        let page = with_store(settings, |store| async move {
            accounts::page(&store, search, after_id, limit)
                .await
                .map_err(|error| error.to_string())
        })?;
        if self.json {
            return print_json(&page);
        }
        let rows: Vec<Vec<String>> = page
            .accounts
            .iter()
            .map(|row| {
                let account = &row.account;
                vec![
                    account.id.to_string(),
                    account.phone.clone(),
                    account.status.as_str().to_string(),
                    account.balance.clone(),
                    if row.auto_top_up { "on" } else { "off" }.to_string(),
                    account.email.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(
            &[
                ("id", Align::Right),
                ("phone", Align::Left),
                ("status", Align::Left),
                ("balance", Align::Right),
                ("auto top-up", Align::Left),
                ("email", Align::Left),
            ],
            &rows,
        );
        if let Some(next) = page.next_after_id {
            say!("(more: --after-id {next})");
        }
        Ok(())
    }
}

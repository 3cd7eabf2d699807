//! `sms-credit accounts create`: an active account with a zero balance.

use crate::routes::admin::accounts::CreatedAccount;
use clap::Args;
use sms_credit_actors::accounts::{AccountStatus, Email, NewAccount, PhoneNumber};
use sms_credit_actors::clock::{Clock, SystemClock};

use crate::cli::output::{print_json, with_store_creating};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct CreateCommand {
    /// Phone number in E.164 form, e.g. +14155551234.
    #[arg(long)]
    phone: String,
    /// The holder's email address (optional).
    #[arg(long)]
    email: Option<String>,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl CreateCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let new_account = NewAccount {
            phone: PhoneNumber::parse(&self.phone).map_err(|error| error.to_string())?,
            email: self
                .email
                .as_deref()
                .map(Email::parse)
                .transpose()
                .map_err(|error| error.to_string())?,
            status: AccountStatus::Active,
        };
        let as_json = self.json;
        let gap = settings.messages.rates.pricing_gap(&new_account.phone);
        with_store_creating(settings, |store| async move {
            let account = store
                .accounts()
                .create(new_account, SystemClock.now_ms())
                .await
                .map_err(|error| error.to_string())?;
            if as_json {
                let warnings: Vec<String> = gap.into_iter().collect();
                return print_json(&CreatedAccount::new(&account, warnings));
            }
            say!(
                "account {} created: {} ({})",
                account.id,
                account.phone,
                account.status.as_str()
            );
            if let Some(gap) = gap {
                say!("warning: {gap}");
            }
            Ok(())
        })
    }
}

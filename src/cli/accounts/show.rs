//! `sms-credit accounts show`: an account, its balance and its newest rows.

use clap::Args;
use serde_json::json;
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::{AccountId, Money};

use crate::cli::output::{print_json, with_store};
use crate::config::Settings;
use crate::routes::admin::accounts::AccountView;
use crate::routes::admin::TransactionView;

#[derive(Args, Debug)]
pub struct ShowCommand {
    /// The account.
    id: i64,
    /// How many of the newest ledger rows to show.
    #[arg(long, default_value_t = 20)]
    transactions: i64,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl ShowCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let (id, account_id) = (self.id, AccountId(self.id));
        let rows = self.transactions.clamp(0, 10_000);
        let (account, entries) = with_store(settings, |store| async move {
            let account = store
                .accounts()
                .get(account_id)
                .await
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("account {id} does not exist"))?;
            let entries = store
                .ledger()
                .latest_entries(account_id, rows)
                .await
                .map_err(|error| error.to_string())?;
            Ok((account, entries))
        })?;
        if self.json {
            // Each as the API shows it: the account, its rows (newest first).
            let transactions: Vec<TransactionView> =
                entries.iter().map(TransactionView::from).collect();
            return print_json(
                &json!({"account": AccountView::from(&account), "transactions": transactions}),
            );
        }
        say!(
            "account {} {} ({}) balance {} seq {}",
            account.id,
            account.phone,
            account.status.as_str(),
            account.balance,
            account.seq
        );
        for entry in entries.iter().rev() {
            say!(
                "  #{:<6} {} {:<10} {:>14} -> {:>14}  {}  [{}]",
                entry.seq,
                format_rfc3339_ms(entry.created_at_ms),
                entry.kind.as_str(),
                signed(entry.amount),
                entry.balance_after.to_string(),
                match &entry.reason {
                    Some(reason) => format!("{} (reason: {reason})", entry.description),
                    None => entry.description.clone(),
                },
                entry.idempotency_key
            );
        }
        Ok(())
    }
}

/// An amount with its sign, as a change of balance reads: `+$1.234`, `-$0.0565`.
pub fn signed(amount: Money) -> String {
    if amount.is_positive() {
        format!("+{amount}")
    } else {
        amount.to_string()
    }
}

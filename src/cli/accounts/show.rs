//! `sms-credit accounts show`: an account, its balance and its newest rows.

use clap::Args;
use serde_json::json;
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::grants::{self, GrantLine};
use sms_credit_actors::{AccountId, Money};

use crate::cli::output::{print_json, with_store};
use crate::config::Settings;
use crate::routes::admin::accounts::AccountView;
use crate::routes::admin::credit_grants::CreditGrantView;
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
        let (account, entries, grants) = with_store(settings, |store| async move {
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
            let grants = store
                .ledger()
                .account_grants(account_id)
                .await
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("account {id} does not exist"))?;
            Ok((account, entries, grants))
        })?;
        let remaining = grants.remaining.as_deref().ok_or_else(|| {
            format!("the credit grants of account {id} are not made yet: run sms-credit migrate")
        })?;
        let lines = grants::lines(&grants.grants, remaining, SystemClock.now_ms());
        if self.json {
            // Each as the API shows it: the account, its grants and its
            // rows (newest first).
            let transactions: Vec<TransactionView> =
                entries.iter().map(TransactionView::from).collect();
            let credit_grants: Vec<CreditGrantView> =
                lines.iter().map(CreditGrantView::from).collect();
            return print_json(&json!({
                "account": AccountView::from(&account),
                "credit_grants": credit_grants,
                "transactions": transactions,
            }));
        }
        say!(
            "account {} {} ({}) balance {} seq {}",
            account.id,
            account.phone,
            account.status.as_str(),
            account.balance,
            account.seq
        );
        print_grants(&lines);
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

/// The account's grants, newest first: what each was, what is left, when
/// it expires.
fn print_grants(lines: &[GrantLine]) {
    if lines.is_empty() {
        println!("  no credit grants");
        return;
    }
    println!(
        "  {}:",
        match lines.len() {
            1 => "1 credit grant".to_string(),
            count => format!("{count} credit grants"),
        }
    );
    let table: Vec<[String; 7]> = lines
        .iter()
        .map(|line| {
            let grant = &line.grant;
            [
                format!("grant {}", grant.id),
                grant.category.to_string(),
                grant.source.to_string(),
                format!("{} left of {}", line.remaining, grant.amount),
                format!("priority {}", grant.priority.value()),
                grant.expires_at_ms.map_or("no expiry".to_string(), |at| {
                    format!("expires {}", format_rfc3339_ms(at))
                }),
                format!("{:?}", line.status).to_lowercase(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..7)
        .map(|column| table.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("    {}", cells.join("  ").trim_end());
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

//! `sms-credit accounts adjust`: a signed adjustment through the account's
//! actor, once per idempotency key.

use crate::routes::admin::adjustments::{checked, AdjustmentResponse, AskedTerms};
use clap::Args;
use sms_credit_actors::{AccountId, Money, Receipt};

use crate::cli::output::{print_json, with_core};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct AdjustCommand {
    /// The account.
    id: i64,
    /// Dollars to add (negative to take away), e.g. 5 or -1.50.
    #[arg(long, allow_hyphen_values = true)]
    amount: String,
    /// Why, for the operator (1 to 500 characters): kept with the ledger
    /// row, never shown to the account holder.
    #[arg(long)]
    reason: String,
    /// What the account holder reads of the row, 1 to 500 characters
    /// (default: "Balance adjustment").
    #[arg(long)]
    description: Option<String>,
    /// Names this adjustment so that running the command again does not apply it twice.
    #[arg(long)]
    idempotency_key: String,
    /// The credit a positive adjustment gives: promotional (the default:
    /// given away) or paid (money received outside Stripe).
    #[arg(long)]
    category: Option<String>,
    /// 0 to 100: credit of a lower priority is spent first (default 50).
    #[arg(long)]
    priority: Option<i64>,
    /// When what is left of it expires (RFC 3339, e.g. 2026-12-31T23:59:59Z).
    #[arg(long)]
    expires_at: Option<String>,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl AdjustCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let amount = Money::parse_dollars(&self.amount).map_err(|error| error.to_string())?;
        // The API's rules, from the one place that holds them.
        let adjustment = checked(
            amount,
            settings.access.max_adjustment,
            &self.reason,
            self.description.as_deref(),
            &self.idempotency_key,
            AskedTerms {
                category: self.category.as_deref(),
                priority: self.priority,
                expires_at: self.expires_at.as_deref(),
            },
        )
        .map_err(|error| error.to_string())?;
        let (id, as_json) = (self.id, self.json);
        with_core(settings, |core| async move {
            let receipt = core
                .registry
                .send(AccountId(id), adjustment)
                .await
                .map_err(|error| error.to_string())?;
            if as_json {
                return print_json(&AdjustmentResponse::new(&receipt));
            }
            print_receipt(id, &receipt);
            Ok(())
        })
    }
}

fn print_receipt(id: i64, receipt: &Receipt) {
    say!(
        "account {id}: {} (ledger #{}), balance {}{}",
        super::show::signed(receipt.entry.amount),
        receipt.entry.seq,
        receipt.entry.balance_after,
        if receipt.replayed {
            " (already applied: nothing changed)"
        } else {
            ""
        }
    );
}

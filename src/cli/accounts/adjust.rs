//! `sms-credit accounts adjust`: a signed adjustment through the account's
//! actor, once per idempotency key.

use crate::routes::admin::adjustments::AdjustmentResponse;
use clap::Args;
use sms_credit_actors::{AccountId, Adjust, IdempotencyKey, Money, Receipt};

use crate::cli::output::{print_json, with_core};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct AdjustCommand {
    /// The account.
    id: i64,
    /// Dollars to add (negative to take away), e.g. 5 or -1.50.
    #[arg(long, allow_hyphen_values = true)]
    amount: String,
    /// Why, for the operator: kept with the ledger row, never shown to the
    /// account holder.
    #[arg(long)]
    reason: String,
    /// What the account holder reads of the row (default: "Balance adjustment").
    #[arg(long)]
    description: Option<String>,
    /// Names this adjustment so that running the command again does not apply it twice.
    #[arg(long)]
    idempotency_key: String,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl AdjustCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let amount = Money::parse_dollars(&self.amount).map_err(|error| error.to_string())?;
        let limit = settings.access.max_adjustment;
        if amount.micros().unsigned_abs() > limit.micros().unsigned_abs() {
            return Err(format!(
                "an adjustment may be at most {limit} either way (this server's limit)"
            ));
        }
        let adjustment = Adjust {
            amount,
            idempotency_key: IdempotencyKey::from_caller(&self.idempotency_key)
                .map_err(|error| error.to_string())?,
            reason: self.reason,
            description: self.description,
        };
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
    println!(
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

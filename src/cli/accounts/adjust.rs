//! `sms-credit accounts adjust`: a signed adjustment through the account's
//! actor, once per idempotency key.

use crate::routes::admin::adjustments::AdjustmentResponse;
use clap::Args;
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::grants::adjustment_terms;
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
        let limit = settings.access.max_adjustment;
        if amount.micros().unsigned_abs() > limit.micros().unsigned_abs() {
            return Err(format!(
                "an adjustment may be at most {limit} either way (this server's limit)"
            ));
        }
        let (category, priority, expires_at_ms) = adjustment_terms(
            amount,
            self.category.as_deref(),
            self.priority,
            self.expires_at.as_deref(),
            SystemClock.now_ms(),
        )
        .map_err(|refused| refused.to_string())?;
        let adjustment = Adjust {
            amount,
            idempotency_key: IdempotencyKey::from_caller(&self.idempotency_key)
                .map_err(|error| error.to_string())?,
            reason: self.reason,
            description: self.description,
            category,
            priority,
            expires_at_ms,
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

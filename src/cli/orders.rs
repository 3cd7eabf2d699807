//! `sms-credit orders`: an order's refunds, and refunding a paid order
//! through Stripe (as `POST /v1/admin/orders/{id}/refund`).

use clap::Subcommand;
use sms_credit_actors::billing::refunds::{default_key, RefundRequest};
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::Money;

use super::output::{print_json, with_core, with_store};
use crate::config::Settings;
use crate::routes::admin::orders::Refunds;

#[derive(Subcommand, Debug)]
pub enum OrdersCommand {
    /// Ask Stripe to refund (part of) a paid order; the credit comes off
    /// when Stripe's refund event arrives.
    Refund {
        /// The order.
        id: i64,
        /// Dollars, whole cents (everything not refunded yet without it).
        #[arg(long)]
        amount: Option<String>,
        /// Why (kept with the refund).
        #[arg(long)]
        reason: String,
        /// The same key again is the same refund; without one, the amount
        /// and the reason make it.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// The order's refund requests (exit 1 when there is no such order).
    Refunds {
        /// The order.
        id: i64,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
}

fn print_refund(refund: &RefundRequest) {
    say!(
        "order {} refund {}: {} ({}) {}  {}{}",
        refund.order_id,
        refund.n,
        refund.amount,
        refund.reason,
        refund.status.as_str(),
        format_rfc3339_ms(refund.created_at_ms),
        refund
            .stripe_refund_id
            .as_deref()
            .map_or(String::new(), |id| format!("  {id}")),
    );
}

impl OrdersCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        match self {
            OrdersCommand::Refund {
                id,
                amount,
                reason,
                idempotency_key,
                json,
            } => {
                let amount = amount
                    .map(|text| {
                        Money::parse_dollars(&text).map_err(|error| format!("--amount: {error}"))
                    })
                    .transpose()?;
                let key = idempotency_key.unwrap_or_else(|| default_key(amount, &reason));
                with_core(settings, |core| async move {
                    let billing = core
                        .billing
                        .clone()
                        .ok_or("Stripe is not configured: refunds are made through Stripe")?;
                    let refunded = billing
                        .refund_order(id, amount, &reason, &key, SystemClock.now_ms())
                        .await
                        .map_err(|error| error.to_string())?;
                    if json {
                        return print_json(&refunded);
                    }
                    print_refund(&refunded.refund);
                    if refunded.replayed {
                        say!("(asked before with this key: not refunded again)");
                    }
                    say!("the credit comes off when Stripe's refund event arrives");
                    Ok(())
                })
            }
            OrdersCommand::Refunds { id, json } => with_store(settings, |store| async move {
                store
                    .billing()
                    .order(id)
                    .await
                    .map_err(|error| error.to_string())?
                    .ok_or_else(|| format!("order {id} does not exist"))?;
                let refunds = store
                    .billing()
                    .refunds_of(id)
                    .await
                    .map_err(|error| error.to_string())?;
                if json {
                    return print_json(&Refunds::new(id, refunds));
                }
                if refunds.is_empty() {
                    say!("order {id} has no refund requests");
                }
                refunds.iter().for_each(print_refund);
                Ok(())
            }),
        }
    }
}

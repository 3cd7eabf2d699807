//! Orders refunded before refunds were recorded one by one hold a legacy
//! record of what they held back, until Stripe's list of the payment's
//! refunds replaces it. The next refund event about an order does it; this
//! sweep does it for the orders no event comes for, a few at a time, each
//! claimed under a lease, until none is left.

use super::checkout::Billing;
use super::events::EventOutcome;
use super::BillingError;

/// How often (of the clock) the sweep takes its next orders.
pub const LEGACY_SWEEP_EVERY_MS: i64 = 30_000;

/// The most orders one round asks Stripe about: Stripe's rate limit is
/// far above it (25 a round is 50 lists a minute, most of one page).
const LEGACY_SWEEP_BATCH: i64 = 25;

/// How long an order a round took is left to it: one the round did not
/// get to (Stripe did not answer, the instance stopped) is taken up by a
/// round after that.
pub const LEGACY_CLAIM_LEASE_MS: i64 = 300_000;

/// What a round of the sweep came to.
#[derive(Debug, PartialEq, Eq)]
pub enum LegacySweep {
    /// No order holds a legacy record any more: the sweep is over for
    /// good (none is ever made again).
    Done,
    /// This many orders' records were replaced; others may be left (for
    /// the next round, or claimed by another instance's).
    Replaced(usize),
}

impl Billing {
    /// One round of the sweep: takes the next orders that hold a legacy
    /// record (not claimed by another round), and settles each as a refund
    /// event about it would: Stripe's list of the payment's refunds
    /// replaces the record, each refund recorded by its id, and the credit
    /// follows (a refund the legacy record left out is taken back, one that
    /// failed since comes back). Stripe not answering (its rate limit, an
    /// outage) ends the round with an error, nothing recorded of that
    /// order; the orders left wait for their claim to run out.
    pub async fn replace_legacy_records(&self, now_ms: i64) -> Result<LegacySweep, BillingError> {
        let claimed = self
            .store
            .billing()
            .claim_legacy_orders(
                now_ms,
                now_ms.saturating_add(LEGACY_CLAIM_LEASE_MS),
                LEGACY_SWEEP_BATCH,
            )
            .await?;
        if claimed.is_empty() {
            let left = self.store.billing().legacy_orders_left().await?;
            return Ok(if left == 0 {
                LegacySweep::Done
            } else {
                LegacySweep::Replaced(0)
            });
        }
        let mut replaced = 0;
        for legacy in claimed {
            let order_id = legacy.order_id;
            let Some(payment_intent_id) = legacy.payment_intent_id.as_deref() else {
                tracing::warn!(
                    order_id,
                    "an order refunded before refunds were kept by id has no PaymentIntent: \
                     Stripe cannot be asked for its refunds, its legacy record stays"
                );
                continue;
            };
            match self
                .apply_refunds(Some(payment_intent_id), &[], true, now_ms)
                .await?
            {
                EventOutcome::Applied(detail) => {
                    replaced += 1;
                    tracing::info!(order_id, %detail, "an order's legacy refund record replaced by Stripe's list of its refunds");
                }
                outcome => {
                    tracing::warn!(order_id, ?outcome, "an order's legacy refund record could not be replaced; the sweep tries again later");
                }
            }
        }
        Ok(LegacySweep::Replaced(replaced))
    }
}

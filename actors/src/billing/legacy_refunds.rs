//! Orders refunded before refunds were recorded one by one hold a legacy
//! record of what they held back, until Stripe's list of the payment's
//! refunds replaces it. The next refund event about an order does it; this
//! sweep does it for the orders no event comes for, a few at a time, each
//! claimed under a lease, until none is left. An order stays the sweep's
//! until its credit is settled with the refunds the replacement recorded
//! (a round that replaced the record and then failed leaves it to a later
//! round), or until the sweep leaves it for good: one it can never replace
//! (no PaymentIntent, or one Stripe does not know, Stripe's refunds not
//! matching those recorded, its credit not in the ledger) keeps its
//! record, with why, logged once.

use super::checkout::Billing;
use super::events::EventOutcome;
use super::stripe_refunds::LegacyOrder;
use super::BillingError;

/// How often (of the clock) the sweep takes its next orders.
pub const LEGACY_SWEEP_EVERY_MS: i64 = 30_000;

/// The most orders one round asks Stripe about: Stripe's rate limit is
/// far above it (25 a round is 50 lists a minute, most of one page).
const LEGACY_SWEEP_BATCH: i64 = 25;

/// How long an order a round took is left to it: one that failed (its
/// own back-off: Stripe did not answer about it, or anything else failed)
/// or that the round did not get to because the instance stopped, is
/// taken up by a round after that.
pub const LEGACY_CLAIM_LEASE_MS: i64 = 300_000;

/// What a round of the sweep came to.
#[derive(Debug, PartialEq, Eq)]
pub enum LegacySweep {
    /// No order is the sweep's any more (each legacy record replaced and
    /// its order settled, or left for good): the sweep is over for good
    /// (no legacy record is ever made again).
    Done,
    /// This many orders' records were replaced and their credit settled;
    /// others may be left (for the next round, or claimed by another
    /// instance's).
    Replaced(usize),
}

/// What one order's turn in a round came to: settled, or why the sweep
/// can never replace its record.
type Turn = Result<String, String>;

impl Billing {
    /// One round of the sweep: takes the next orders that are the sweep's
    /// (not claimed by another round), and settles each as a refund event
    /// about it would: Stripe's list of the payment's refunds replaces the
    /// record, each refund recorded by its id, and the credit follows (a
    /// refund the legacy record left out is taken back, one that failed
    /// since comes back). Stripe not answering (its rate limit, an outage)
    /// or refusing the API key (401, 403: every order would meet it) ends
    /// the round with an error, nothing recorded of that order, which
    /// waits for its claim to run out; the orders the round did not reach
    /// are given up to the next round (those still claimed under this
    /// round's lease: one whose lease ran out may be another round's by
    /// now). An order whose PaymentIntent Stripe does not know (its
    /// `resource_missing`) is left for good. Any other failure of an order
    /// is logged, and the order waits for its claim to run out while the
    /// round goes on with the next.
    pub async fn replace_legacy_records(&self, now_ms: i64) -> Result<LegacySweep, BillingError> {
        let lease_until_ms = now_ms.saturating_add(LEGACY_CLAIM_LEASE_MS);
        let claimed = self
            .store
            .billing()
            .claim_legacy_orders(now_ms, lease_until_ms, LEGACY_SWEEP_BATCH)
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
        for (turn, legacy) in claimed.iter().enumerate() {
            let order_id = legacy.order_id;
            match self.sweep_order(legacy, now_ms).await {
                Ok(Ok(detail)) => {
                    replaced += 1;
                    tracing::info!(order_id, %detail, "an order's legacy refund record replaced by Stripe's list of its refunds, its credit settled");
                }
                Ok(Err(because)) => self.leave_order(order_id, because).await,
                Err(
                    error @ (BillingError::GatewayUnavailable(_)
                    | BillingError::GatewayKeyRefused(_)),
                ) => {
                    // This order waits its claim out; those not reached
                    // are the next round's (one order Stripe never
                    // answers about does not hold them up).
                    let not_reached = claimed[turn + 1..]
                        .iter()
                        .map(|legacy| legacy.order_id)
                        .collect::<Vec<_>>();
                    if !not_reached.is_empty() {
                        if let Err(release) = self
                            .store
                            .billing()
                            .release_legacy_claims(not_reached, lease_until_ms)
                            .await
                        {
                            tracing::warn!(%release, "could not give up the sweep's claims of the orders its round did not reach; they wait for their claims to run out");
                        }
                    }
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(
                        order_id,
                        %error,
                        retry_after_ms = LEGACY_CLAIM_LEASE_MS,
                        "the sweep could not settle an order's legacy refund record; \
                         it takes it up again once its claim runs out"
                    );
                }
            }
        }
        Ok(LegacySweep::Replaced(replaced))
    }

    /// One order's turn: Stripe's list of its payment's refunds replaces
    /// its legacy record (if it still holds one), and its credit is
    /// settled with them (marked so by [`Billing::apply_refunds`]). A
    /// PaymentIntent Stripe does not know can never be asked about: why is
    /// said in this service's words (Stripe's go to the log, once).
    async fn sweep_order(&self, legacy: &LegacyOrder, now_ms: i64) -> Result<Turn, BillingError> {
        let Some(payment_intent_id) = legacy.payment_intent_id.as_deref() else {
            return Ok(Err(
                "the order has no PaymentIntent: Stripe cannot be asked for its refunds".into(),
            ));
        };
        let applied = match self
            .apply_refunds(Some(payment_intent_id), &[], true, now_ms)
            .await
        {
            Err(BillingError::GatewayMissing(said)) => {
                tracing::warn!(
                    order_id = legacy.order_id,
                    payment_intent_id,
                    %said,
                    "Stripe knows no PaymentIntent of an order the sweep asked about"
                );
                return Ok(Err(format!(
                    "Stripe knows no PaymentIntent {payment_intent_id} (resource_missing): \
                     its refunds can never be listed"
                )));
            }
            other => other?,
        };
        Ok(match applied {
            EventOutcome::Applied(detail) => Ok(detail),
            // Only an event's id makes a duplicate: never answered
            // here, and if it were, the order is taken up again.
            EventOutcome::Duplicate => {
                return Err(BillingError::Invalid(
                    "the order's refunds were answered as a duplicate event".into(),
                ))
            }
            EventOutcome::Waiting { detail, .. }
            | EventOutcome::Ignored(detail)
            | EventOutcome::Failed(detail) => Err(detail),
        })
    }

    /// Leaves an order the sweep can never settle, `because`: logged once
    /// (the sweep takes it no more); its record holds back what it held,
    /// and a refund event about the order may still replace it.
    async fn leave_order(&self, order_id: i64, because: String) {
        match self
            .store
            .billing()
            .leave_legacy_record(order_id, because.clone())
            .await
        {
            Ok(_) => tracing::warn!(
                order_id,
                %because,
                "the sweep leaves an order's legacy refund record as it is, for good: \
                 it holds back what it held; an operator may look into it"
            ),
            Err(error) => tracing::warn!(
                order_id,
                %because,
                %error,
                "the sweep could not leave an order's legacy refund record it can never \
                 replace; it takes it up again once its claim runs out"
            ),
        }
    }
}

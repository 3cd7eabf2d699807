//! Orders refunded before refunds were recorded one by one hold a legacy
//! record of what they held back, until Stripe's list of the payment's
//! refunds replaces it. The next refund event about an order does it; this
//! sweep does it for the orders no event comes for, a few at a time, each
//! claimed under a lease, until none is left. An order stays the sweep's
//! until its credit is settled with the refunds the replacement recorded
//! (a round that replaced the record and then failed leaves it to a later
//! round, which settles it from what was recorded), or until the sweep
//! leaves it for good: one it can never replace (no PaymentIntent, Stripe's
//! refunds not matching those recorded, its credit not in the ledger, or a
//! PaymentIntent Stripe does not know — once the API key is proved to see
//! this service's payments) keeps its record, with why, logged once.

use super::checkout::Billing;
use super::events::EventOutcome;
use super::gateway::GatewayError;
use super::stripe_refunds::{LegacyOrder, RefundStanding};
use super::BillingError;

/// How often (of the clock) the sweep takes its next orders.
pub const LEGACY_SWEEP_EVERY_MS: i64 = 30_000;

/// How often (of the clock) the sweep looks again once no order is its
/// own: a refund recorded of a settled order whose own settling failed
/// makes the order the sweep's again, and it is settled within this.
pub const LEGACY_WATCH_EVERY_MS: i64 = LEGACY_CLAIM_LEASE_MS;

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
    /// its order settled, or left for good): no legacy record is ever made
    /// again, but a settled order is made the sweep's again by a refund
    /// recorded of it whose settling failed, so the sweep looks again
    /// every [`LEGACY_WATCH_EVERY_MS`].
    Done,
    /// This many orders' records were replaced and their credit settled;
    /// others may be left (for the next round, or claimed by another
    /// instance's).
    Replaced(usize),
}

/// What one order's turn in a round came to.
enum Turn {
    /// Settled.
    Settled(String),
    /// The sweep can never replace its record, because.
    Leave(String),
    /// Stripe knows no PaymentIntent of the order (`resource_missing`):
    /// left only once the key is proved to see this service's payments.
    Missing(String),
}

impl Billing {
    /// One round of the sweep: takes the next orders that are the sweep's
    /// (not claimed by another round), and settles each as a refund event
    /// about it would: Stripe's list of the payment's refunds replaces the
    /// record, each refund recorded by its id, and the credit follows (a
    /// refund the legacy record left out is taken back, one that failed
    /// since comes back); an order whose record was replaced already (a
    /// round, or an event, failed after recording) is settled from what
    /// was recorded, Stripe not asked again. Stripe not answering (its rate
    /// limit, an outage) or refusing the API key (401, 403: every order
    /// would meet it) ends the round with an error, nothing recorded of
    /// that order, which waits for its claim to run out; the orders the
    /// round did not reach are given up to the next round (those still
    /// claimed under this round's lease: one whose lease ran out may be
    /// another round's by now). An order whose PaymentIntent Stripe does
    /// not know (its `resource_missing`) is left for good only once the
    /// key is proved to see this service's payments — Stripe listed the
    /// refunds of another order in the round, or else of the newest other
    /// payment, asked at the end of the round —: Stripe says
    /// `resource_missing` of every payment a key cannot see (a test-mode
    /// key in production, another account's key). The newest payment
    /// unknown too ends the round as the key's refusal does; no payment to
    /// ask about leaves the orders to wait out their claims. Any other
    /// failure of an order is logged, and the order waits for its claim to
    /// run out while the round goes on with the next.
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
        let mut key_proved = false;
        let mut missing = Vec::new();
        for (at, legacy) in claimed.iter().enumerate() {
            let order_id = legacy.order_id;
            let swept = self.sweep_order(legacy, now_ms).await;
            if let Ok((_, listed)) = &swept {
                key_proved |= listed;
            }
            match swept.map(|(turn, _)| turn) {
                Ok(Turn::Settled(detail)) => {
                    replaced += 1;
                    tracing::info!(order_id, %detail, "an order's legacy refund record replaced by Stripe's list of its refunds, its credit settled");
                }
                Ok(Turn::Leave(because)) => self.leave_order(order_id, because).await,
                Ok(Turn::Missing(because)) => missing.push((order_id, because)),
                Err(
                    error @ (BillingError::GatewayUnavailable(_)
                    | BillingError::GatewayKeyRefused(_)),
                ) => {
                    // This order waits its claim out; those not reached
                    // are the next round's (one order Stripe never
                    // answers about does not hold them up).
                    let not_reached = claimed[at + 1..]
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
                    self.leave_missing(missing, key_proved).await;
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
        if !missing.is_empty() && !key_proved {
            let excluding = missing.iter().map(|(order_id, _)| *order_id).collect();
            match self.prove_key(excluding).await {
                Ok(proved) => key_proved = proved,
                Err(error) => {
                    self.leave_missing(missing, false).await;
                    return Err(error);
                }
            }
        }
        self.leave_missing(missing, key_proved).await;
        Ok(LegacySweep::Replaced(replaced))
    }

    /// Whether the API key sees this service's payments: Stripe lists the
    /// refunds of the newest payment other than `excluding` (those it said
    /// it does not know). Not known either: the key cannot see them, an
    /// error that ends the round as the key's refusal does. No such
    /// payment, or Stripe refusing for another reason: not proved (the
    /// orders wait out their claims).
    async fn prove_key(&self, excluding: Vec<i64>) -> Result<bool, BillingError> {
        let Some(newest) = self
            .store
            .billing()
            .newest_payment_intent(excluding)
            .await?
        else {
            tracing::warn!(
                retry_after_ms = LEGACY_CLAIM_LEASE_MS,
                "Stripe knows no PaymentIntent of orders the sweep asked about, and no other \
                 payment can show that the API key sees this service's payments: the orders \
                 are asked about again once their claims run out"
            );
            return Ok(false);
        };
        match self.gateway.refunds_of(newest.clone()).await {
            Ok(_) => Ok(true),
            Err(GatewayError::Missing(said)) => {
                tracing::warn!(payment_intent_id = %newest, %said, "Stripe knows not even the newest payment's PaymentIntent");
                Err(BillingError::GatewayKeyRefused(format!(
                    "Stripe knows neither the PaymentIntents of the orders the sweep asked about \
                     nor {newest}, the newest payment's: the API key cannot see this service's \
                     payments (a test-mode key in live mode, or another account's key)"
                )))
            }
            Err(GatewayError::Unavailable(said)) => Err(BillingError::GatewayUnavailable(format!(
                "Stripe could not list the refunds of {newest}: {said}"
            ))),
            Err(GatewayError::KeyRefused(said)) => Err(BillingError::GatewayKeyRefused(format!(
                "Stripe could not list the refunds of {newest}: {said}"
            ))),
            Err(GatewayError::Refused(said)) => {
                tracing::warn!(payment_intent_id = %newest, %said, "Stripe refused to list the newest payment's refunds: the API key is not proved to see this service's payments");
                Ok(false)
            }
        }
    }

    /// Leaves for good the orders Stripe knows no PaymentIntent of, once
    /// the key is proved; else they wait out their claims.
    async fn leave_missing(&self, missing: Vec<(i64, String)>, key_proved: bool) {
        for (order_id, because) in missing {
            if key_proved {
                self.leave_order(order_id, because).await;
            } else {
                tracing::warn!(
                    order_id,
                    retry_after_ms = LEGACY_CLAIM_LEASE_MS,
                    "Stripe knows no PaymentIntent of an order, and the API key is not proved \
                     to see this service's payments: the sweep asks about it again once its \
                     claim runs out"
                );
            }
        }
    }

    /// One order's turn: Stripe's list of its payment's refunds replaces
    /// its legacy record (if it still holds one; one replaced already is
    /// settled from what was recorded), and its credit is settled with
    /// them (marked so by [`Billing::apply_refunds`]). A PaymentIntent
    /// Stripe does not know can never be asked about: why is said in this
    /// service's words (Stripe's go to the log, once). Answered with
    /// whether Stripe listed the payment's refunds (which proves the API
    /// key sees this service's payments).
    async fn sweep_order(
        &self,
        legacy: &LegacyOrder,
        now_ms: i64,
    ) -> Result<(Turn, bool), BillingError> {
        let Some(payment_intent_id) = legacy.payment_intent_id.as_deref() else {
            return Ok((
                Turn::Leave(
                    "the order has no PaymentIntent: Stripe cannot be asked for its refunds".into(),
                ),
                false,
            ));
        };
        let holds_legacy = self
            .store
            .billing()
            .stripe_refunds(legacy.order_id)
            .await?
            .iter()
            .any(|refund| refund.standing == RefundStanding::Legacy);
        let applied = match self
            .apply_refunds(Some(payment_intent_id), &[], holds_legacy, now_ms)
            .await
        {
            Err(BillingError::GatewayMissing(said)) => {
                tracing::warn!(
                    order_id = legacy.order_id,
                    payment_intent_id,
                    %said,
                    "Stripe knows no PaymentIntent of an order the sweep asked about"
                );
                return Ok((
                    Turn::Missing(format!(
                        "Stripe knows no PaymentIntent {payment_intent_id} (resource_missing): \
                         its refunds can never be listed"
                    )),
                    false,
                ));
            }
            other => other?,
        };
        Ok(match applied {
            // Stripe was asked (the order held its legacy record) and
            // listed the refunds, which were recorded, or refused as not
            // matching those recorded.
            EventOutcome::Applied(detail) => (Turn::Settled(detail), holds_legacy),
            EventOutcome::Failed(detail) => (Turn::Leave(detail), holds_legacy),
            // Only an event's id makes a duplicate: never answered
            // here, and if it were, the order is taken up again.
            EventOutcome::Duplicate => {
                return Err(BillingError::Invalid(
                    "the order's refunds were answered as a duplicate event".into(),
                ))
            }
            // Answered before Stripe is asked.
            EventOutcome::Waiting { detail, .. } | EventOutcome::Ignored(detail) => {
                (Turn::Leave(detail), false)
            }
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

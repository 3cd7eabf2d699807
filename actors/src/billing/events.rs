//! Stripe events, in the core's own words, and what each does: complete,
//! fail or expire an order, save a card, credit a payment, take back a
//! refund. Every event takes effect once (its id is stored), every effect
//! is idempotent on its own key, and an event that arrives before the state
//! it refers to waits, stored, until that state exists.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::checkout::Billing;
use super::disputes::DisputeReport;
pub use super::event_log::{EventRecord, EventStatus};
use super::gateway::{PaymentPurpose, RefundReport};
use super::orders::{Order, OrderStatus, OrderType};
use super::BillingError;
use crate::account_actor::Credit;
use crate::grants::GrantSource;
use crate::ledger::IdempotencyKey;
use crate::money::Money;
use crate::store::{EventDecision, OrderCompletion, ReceivedEvent, Reception};
use crate::webhooks::events::{payment_failed, payment_succeeded, PaymentSource};

/// The Stripe events the product acts on, parsed by the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StripeEvent {
    /// `checkout.session.completed` or `checkout.session.async_payment_succeeded`.
    CheckoutCompleted {
        session_id: String,
        order_id: Option<i64>,
        /// `payment_status` is `paid` (or `no_payment_required`).
        paid: bool,
        amount_total_cents: Option<i64>,
        customer_id: Option<String>,
        payment_intent_id: Option<String>,
    },
    /// `checkout.session.async_payment_failed`.
    CheckoutFailed {
        session_id: String,
        order_id: Option<i64>,
    },
    /// `checkout.session.expired`.
    CheckoutExpired {
        session_id: String,
        order_id: Option<i64>,
    },
    /// `payment_intent.succeeded`.
    PaymentSucceeded {
        payment_intent_id: String,
        amount_received_cents: i64,
        customer_id: Option<String>,
        payment_method_id: Option<String>,
        order_id: Option<i64>,
        purpose: Option<PaymentPurpose>,
    },
    /// `payment_intent.payment_failed`.
    PaymentFailed {
        payment_intent_id: String,
        order_id: Option<i64>,
        purpose: Option<PaymentPurpose>,
    },
    /// `payment_method.detached`: the card can no longer be charged.
    PaymentMethodDetached { payment_method_id: String },
    /// `charge.refunded`: `amount_refunded_cents` is the charge's running
    /// total of its refunds, which decides nothing (Stripe does not say
    /// whether a refund that fails stays in it).
    ChargeRefunded {
        charge_id: String,
        payment_intent_id: Option<String>,
        amount_refunded_cents: i64,
        /// The charge's refunds, as far as the event lists them.
        #[serde(default)]
        refunds: Vec<RefundReport>,
        /// `refunds` is the charge's whole list (the event embeds it and
        /// has no more). Not so for a list left out (Stripe's current API
        /// versions) or cut short, nor for an event kept before this was
        /// recorded: Stripe is then asked for the payment's refunds.
        #[serde(default)]
        refunds_complete: bool,
    },
    /// `refund.created`, `refund.updated`, `refund.failed`,
    /// `charge.refund.updated`: the refund is recorded as it stands (its
    /// credit taken back, or given back if it failed), and the refund
    /// request it is, if one was left `requested`, is settled (or ended
    /// failed, if Stripe says the refund failed).
    RefundUpdated { refund: RefundReport },
    /// `charge.dispute.*`: a dispute (or an inquiry) of a payment.
    Dispute { dispute: DisputeReport },
    /// Any other type: answered and ignored.
    Other,
}

/// What handling an event came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    Applied(String),
    /// This event id was decided before.
    Duplicate,
    /// The state it refers to does not exist yet (`on` names it); kept and
    /// applied when it appears.
    Waiting {
        detail: String,
        on: String,
    },
    Ignored(String),
    /// The event could not be read; recorded, so an admin sees it.
    Failed(String),
}

/// In the API's schema: what the webhook answers about an event.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EventOutcome {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .property(
                "outcome",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([
                        "applied",
                        "duplicate",
                        "waiting",
                        "ignored",
                        "failed",
                    ])),
            )
            .required("outcome")
            .property(
                "detail",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What happened, in words (all but duplicate)")),
            )
            .property(
                "waiting_on",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "What a waiting event waits for, e.g. payment_intent:pi_…",
                    )),
            )
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EventOutcome {}

impl Serialize for EventOutcome {
    /// `{"outcome": "applied", "detail": "…"}`, with `waiting_on` for a
    /// waiting event.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (outcome, detail, waiting_on) = match self {
            EventOutcome::Applied(detail) => ("applied", Some(detail), None),
            EventOutcome::Duplicate => ("duplicate", None, None),
            EventOutcome::Waiting { detail, on } => ("waiting", Some(detail), Some(on)),
            EventOutcome::Ignored(detail) => ("ignored", Some(detail), None),
            EventOutcome::Failed(detail) => ("failed", Some(detail), None),
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("outcome", outcome)?;
        if let Some(detail) = detail {
            map.serialize_entry("detail", detail)?;
        }
        if let Some(waiting_on) = waiting_on {
            map.serialize_entry("waiting_on", waiting_on)?;
        }
        map.end()
    }
}

pub(super) fn cents(amount_cents: i64) -> Result<Money, BillingError> {
    Money::from_cents(amount_cents).map_err(|_| BillingError::Invalid("amount out of range".into()))
}

/// How long a waiting event is kept trying: Stripe retries an event for up
/// to 3 days, so state that has not appeared by then will not.
pub const WAITING_HORIZON_MS: i64 = 3 * 24 * 3600 * 1000;

/// How long an instance may take to apply an event before another instance
/// that receives it may apply it instead.
const CLAIM_LEASE_MS: i64 = 30_000;
/// How long, and how often, an instance that receives an event another
/// instance is applying waits for it to be decided before answering busy.
const CLAIM_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
const CLAIM_WAITS: u32 = 50;

/// How often (at most) handling an event also looks for expired ones.
const EXPIRY_CHECK_EVERY_MS: i64 = 60_000;

/// The key waiting events wait on until a payment is completed: this,
/// then the PaymentIntent's id.
const PAYMENT_INTENT_PREFIX: &str = "payment_intent:";

/// The most waiting events one sweep looks at (the next sweep takes the
/// rest).
const WAKE_SWEEP_BATCH: i64 = 100;

/// How often (of the clock) the sweep looks for waiting events whose
/// state exists now.
pub const WAKE_SWEEP_EVERY_MS: i64 = 30_000;

/// The key waiting events wait on until a payment is completed.
pub(super) fn payment_intent_key(payment_intent_id: &str) -> String {
    format!("{PAYMENT_INTENT_PREFIX}{payment_intent_id}")
}

impl StripeEvent {
    /// The PaymentIntent whose completed order an event that may wait
    /// needs (a refund, a refund that failed, a dispute).
    fn waits_for_payment(&self) -> Option<&str> {
        match self {
            StripeEvent::ChargeRefunded {
                payment_intent_id, ..
            } => payment_intent_id.as_deref(),
            StripeEvent::RefundUpdated { refund } => refund.payment_intent_id.as_deref(),
            StripeEvent::Dispute { dispute } => dispute.payment_intent_id.as_deref(),
            _ => None,
        }
    }

    /// What applying this event may have made exist, as the keys waiting
    /// events wait on: completing a payment lets its refunds apply.
    fn unblocks(&self) -> Vec<String> {
        match self {
            StripeEvent::CheckoutCompleted {
                payment_intent_id: Some(payment_intent_id),
                ..
            }
            | StripeEvent::PaymentSucceeded {
                payment_intent_id, ..
            } => vec![payment_intent_key(payment_intent_id)],
            _ => Vec::new(),
        }
    }
}

impl Billing {
    /// Handles one verified event (or one signed by Stripe that could not be
    /// read: `Err` with why): takes effect once per event id. When it
    /// applies, the events waiting for what it made exist are applied too,
    /// and only those.
    pub async fn handle_event(
        &self,
        event_id: &str,
        event_type: &str,
        event: Result<StripeEvent, String>,
        now_ms: i64,
    ) -> Result<EventOutcome, BillingError> {
        let payload = match &event {
            Ok(event) => Some(
                serde_json::to_string(event)
                    .map_err(|error| BillingError::Invalid(error.to_string()))?,
            ),
            Err(_) => None,
        };
        if !self
            .claim(event_id, event_type, payload, now_ms, CLAIM_WAITS)
            .await?
        {
            return Ok(EventOutcome::Duplicate);
        }
        self.expire_waiting_now_and_then(now_ms).await?;
        let event = match event {
            Ok(event) => event,
            Err(reason) => {
                let outcome = EventOutcome::Failed(format!("could not read the event: {reason}"));
                self.decide(event_id, &outcome, now_ms).await?;
                return Ok(outcome);
            }
        };
        let outcome = self.apply(&event, now_ms).await?;
        if matches!(outcome, EventOutcome::Waiting { .. }) {
            self.store.waiting_mark_point().await;
        }
        self.decide(event_id, &outcome, now_ms).await?;
        // What follows is committed: whatever fails in it, the answer
        // stands (it is logged, and the sweep finds what is left).
        match &outcome {
            EventOutcome::Applied(_) => self.wake_waiting(event.unblocks(), now_ms).await,
            EventOutcome::Waiting { on, .. } => {
                self.look_again_at_waiting(&event, on.clone(), now_ms).await
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// An event just recorded waiting looks once more at what it waits
    /// for: an order completed on another instance between this one's
    /// look and its mark woke nothing, as the event was not waiting yet.
    /// (Either that completion's wake-up sees the mark, or this look sees
    /// the completion.)
    async fn look_again_at_waiting(&self, event: &StripeEvent, on: String, now_ms: i64) {
        let Some(payment_intent_id) = event.waits_for_payment() else {
            return;
        };
        let order = self
            .store
            .billing()
            .order_by_payment_intent(payment_intent_id.to_string())
            .await;
        match order {
            Ok(Some(order)) if order.status != OrderStatus::Pending => {
                self.wake_waiting(vec![on], now_ms).await;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, waiting_on = %on, "could not look again at what a waiting Stripe event waits for; the sweep will");
            }
        }
    }

    /// Claims an event for this instance: `true` when it is this instance's
    /// to apply, `false` when it was decided before. Another instance's live
    /// claim is waited out (`waits` times a short pause), then answered as
    /// busy (Stripe retries).
    async fn claim(
        &self,
        event_id: &str,
        event_type: &str,
        payload: Option<String>,
        now_ms: i64,
        waits: u32,
    ) -> Result<bool, BillingError> {
        for attempt in 0..=waits {
            let reception = self
                .store
                .events()
                .receive(ReceivedEvent {
                    event_id: event_id.to_string(),
                    event_type: event_type.to_string(),
                    payload: payload.clone(),
                    instance_id: self.store.instance_id().to_string(),
                    lease_until_ms: now_ms + CLAIM_LEASE_MS,
                    now_ms,
                })
                .await?;
            match reception {
                Reception::Claimed => return Ok(true),
                Reception::Decided(_) => return Ok(false),
                Reception::Busy if attempt < waits => {
                    tokio::time::sleep(CLAIM_PAUSE).await;
                }
                Reception::Busy => {}
            }
        }
        Err(BillingError::Busy(format!(
            "another instance is applying event {event_id}"
        )))
    }

    async fn decide(
        &self,
        event_id: &str,
        outcome: &EventOutcome,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        let (status, waiting_on, detail) = match outcome {
            EventOutcome::Applied(detail) => (EventStatus::Applied, None, detail.clone()),
            EventOutcome::Ignored(detail) => (EventStatus::Ignored, None, detail.clone()),
            EventOutcome::Failed(detail) => (EventStatus::Failed, None, detail.clone()),
            EventOutcome::Waiting { detail, on } => {
                (EventStatus::Waiting, Some(on.clone()), detail.clone())
            }
            EventOutcome::Duplicate => return Ok(()),
        };
        self.store
            .events()
            .decide(EventDecision {
                event_id: event_id.to_string(),
                status,
                waiting_on,
                detail,
                now_ms,
            })
            .await?;
        Ok(())
    }

    /// Applies the waiting events that wait for any of `keys`, and, in turn,
    /// those that what they did unblocks. Events waiting for anything else
    /// are not read at all, so a backlog of events that will never apply (a
    /// refund of a payment another product made) costs nothing here. It
    /// never fails: an event it could not apply (another instance holds it,
    /// a read or a commit failed) is logged and left waiting, for the sweep
    /// ([`Billing::wake_unblocked`]) to find.
    async fn wake_waiting(&self, mut keys: Vec<String>, now_ms: i64) {
        while !keys.is_empty() {
            let waiting = match self.store.events().waiting_on(keys.clone()).await {
                Ok(waiting) => waiting,
                Err(error) => {
                    tracing::warn!(%error, ?keys, "could not read the Stripe events waiting for what was just done; the sweep will");
                    return;
                }
            };
            keys = Vec::new();
            for record in waiting {
                keys.extend(self.wake_logged(&record, now_ms).await);
            }
        }
    }

    /// Wakes one waiting event, logging what went wrong; answers what its
    /// applying unblocked.
    async fn wake_logged(&self, record: &EventRecord, now_ms: i64) -> Vec<String> {
        match self.wake(record, now_ms).await {
            Ok(Some((_, unblocked))) => unblocked,
            Ok(None) => Vec::new(),
            Err(error) => {
                tracing::warn!(%error, event_id = %record.event_id, "could not apply a waiting Stripe event; the sweep will try again");
                Vec::new()
            }
        }
    }

    /// Applies one waiting event, if this instance can claim it: `None`
    /// when another instance holds it (it is that one's, or the sweep's
    /// once the claim lapses) or it was decided meanwhile; else whether it
    /// is decided now (not waiting still) and what its applying unblocked.
    async fn wake(
        &self,
        record: &EventRecord,
        now_ms: i64,
    ) -> Result<Option<(bool, Vec<String>)>, BillingError> {
        // Another instance may be waking it too: one applies it.
        match self
            .claim(&record.event_id, &record.event_type, None, now_ms, 0)
            .await
        {
            Ok(true) => {}
            Ok(false) | Err(BillingError::Busy(_)) => return Ok(None),
            Err(error) => return Err(error),
        }
        let parsed = record
            .payload
            .as_deref()
            .ok_or_else(|| "no payload was kept".to_string())
            .and_then(|payload| {
                serde_json::from_str::<StripeEvent>(payload).map_err(|error| error.to_string())
            });
        let event = match parsed {
            Ok(event) => event,
            Err(reason) => {
                let outcome = EventOutcome::Failed(format!(
                    "the waiting event could not be read back: {reason}"
                ));
                self.decide(&record.event_id, &outcome, now_ms).await?;
                return Ok(Some((true, Vec::new())));
            }
        };
        let outcome = self.apply(&event, now_ms).await?;
        // Still waiting: recorded so again, which lets go of the claim.
        self.decide(&record.event_id, &outcome, now_ms).await?;
        Ok(Some(match outcome {
            EventOutcome::Applied(_) => (true, event.unblocks()),
            EventOutcome::Waiting { .. } => (false, Vec::new()),
            _ => (true, Vec::new()),
        }))
    }

    /// The sweep: applies the waiting events whose state exists now (their
    /// order is no longer pending) that nothing woke — the completion's
    /// wake-up failed or met another instance's claim, or the completion
    /// came on another instance while the event was being marked waiting.
    /// Run now and then by a job, so a refund never waits for its expiry
    /// once its order is completed. Answers how many it decided. Run by
    /// the Stripe supervisor, between events, so that this instance never
    /// applies one event twice at once.
    pub async fn wake_unblocked(&self, now_ms: i64) -> Result<usize, BillingError> {
        // From where the last batch ended: the events in front may be ones
        // that still wait, and are looked at again once the sweep has been
        // round the rest.
        let after = self
            .sweep_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let waiting = self
            .store
            .events()
            .waiting_unblocked(PAYMENT_INTENT_PREFIX.to_string(), after, WAKE_SWEEP_BATCH)
            .await?;
        let next = match waiting.last() {
            Some(last) if waiting.len() as i64 >= WAKE_SWEEP_BATCH => {
                Some((last.received_at_ms, last.event_id.clone()))
            }
            _ => None,
        };
        *self
            .sweep_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        let mut applied = 0;
        for record in &waiting {
            match self.wake(record, now_ms).await {
                Ok(Some((decided, unblocked))) => {
                    applied += usize::from(decided);
                    self.wake_waiting(unblocked, now_ms).await;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, event_id = %record.event_id, "could not apply a waiting Stripe event; the next sweep will try again");
                }
            }
        }
        if applied > 0 {
            tracing::info!(
                applied,
                "the sweep decided Stripe events that waited for what exists now"
            );
        }
        Ok(applied)
    }

    /// Expires waiting events at most once a minute (of the clock), as
    /// events arrive; a background job does it too when none arrive.
    async fn expire_waiting_now_and_then(&self, now_ms: i64) -> Result<(), BillingError> {
        let last = self.last_expiry_check_ms.load(Ordering::Relaxed);
        if now_ms - last < EXPIRY_CHECK_EVERY_MS
            || self
                .last_expiry_check_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        self.expire_waiting(now_ms).await.map(drop)
    }

    /// Gives up on events that have waited longer than Stripe retries;
    /// they stay visible to admins as `expired`. Answers how many.
    pub async fn expire_waiting(&self, now_ms: i64) -> Result<usize, BillingError> {
        let expired = self
            .store
            .events()
            .expire_waiting(now_ms - WAITING_HORIZON_MS, now_ms)
            .await?;
        if expired > 0 {
            tracing::warn!(
                expired,
                "Stripe events waited over 3 days for state that never appeared; gave up on them"
            );
        }
        Ok(expired)
    }

    async fn find_order(
        &self,
        order_id: Option<i64>,
        session_id: Option<&str>,
    ) -> Result<Option<Order>, BillingError> {
        let billing = self.store.billing();
        Ok(match (order_id, session_id) {
            (Some(id), _) => billing.order(id).await?,
            (None, Some(session)) => billing.order_by_session(session.to_string()).await?,
            (None, None) => None,
        })
    }

    async fn apply(&self, event: &StripeEvent, now_ms: i64) -> Result<EventOutcome, BillingError> {
        match event {
            StripeEvent::CheckoutCompleted { paid: false, .. } => Ok(EventOutcome::Applied(
                "checkout completed; the payment has not arrived yet".into(),
            )),
            StripeEvent::CheckoutCompleted {
                session_id,
                order_id,
                amount_total_cents,
                customer_id,
                payment_intent_id,
                ..
            } => {
                let Some(order) = self.find_order(*order_id, Some(session_id)).await? else {
                    return Ok(EventOutcome::Ignored(format!(
                        "no order for session {session_id}"
                    )));
                };
                let paid = match amount_total_cents {
                    Some(total) => cents(*total)?,
                    None => order.amount,
                };
                self.complete_checkout_order(
                    &order,
                    paid,
                    customer_id.clone(),
                    payment_intent_id.clone(),
                    now_ms,
                )
                .await
            }
            StripeEvent::CheckoutFailed {
                session_id,
                order_id,
            }
            | StripeEvent::CheckoutExpired {
                session_id,
                order_id,
            } => {
                let Some(order) = self.find_order(*order_id, Some(session_id)).await? else {
                    return Ok(EventOutcome::Ignored(format!(
                        "no order for session {session_id}"
                    )));
                };
                let status = if matches!(event, StripeEvent::CheckoutExpired { .. }) {
                    OrderStatus::Expired
                } else {
                    OrderStatus::Failed
                };
                let order_id = order.id;
                let event = (status == OrderStatus::Failed)
                    .then(|| payment_failed(&order, "the Checkout payment failed", now_ms))
                    .transpose()?;
                self.store
                    .billing()
                    .end_order(order_id, status, event)
                    .await?;
                self.store.webhooks_ready().notify_one();
                Ok(EventOutcome::Applied(format!(
                    "order {order_id} {}",
                    status.as_str()
                )))
            }
            StripeEvent::PaymentSucceeded {
                payment_intent_id,
                amount_received_cents,
                customer_id,
                payment_method_id,
                order_id,
                purpose,
            } => {
                if let (Some(customer_id), Some(payment_method_id)) =
                    (customer_id.clone(), payment_method_id.clone())
                {
                    self.store
                        .billing()
                        .save_card(customer_id, payment_method_id, None)
                        .await?;
                }
                if *purpose != Some(PaymentPurpose::OffSessionTopUp) {
                    return Ok(EventOutcome::Applied("payment method saved".into()));
                }
                let Some(order) = self.find_order(*order_id, None).await? else {
                    return Ok(EventOutcome::Ignored(format!(
                        "no order for PaymentIntent {payment_intent_id}"
                    )));
                };
                let receipt = self
                    .credit_payment(
                        &order,
                        payment_intent_id,
                        cents(*amount_received_cents)?,
                        now_ms,
                    )
                    .await?;
                self.auto_top_up_paid(order.id, payment_intent_id, now_ms)
                    .await?;
                Ok(EventOutcome::Applied(format!(
                    "credited order {} (ledger seq {})",
                    order.id, receipt.entry.seq
                )))
            }
            StripeEvent::PaymentFailed {
                order_id,
                purpose,
                payment_intent_id,
            } => {
                if *purpose != Some(PaymentPurpose::OffSessionTopUp) {
                    return Ok(EventOutcome::Ignored(
                        "a Checkout payment; the session events decide".into(),
                    ));
                }
                let Some(order) = self.find_order(*order_id, None).await? else {
                    return Ok(EventOutcome::Ignored(format!(
                        "no order for PaymentIntent {payment_intent_id}"
                    )));
                };
                let id = order.id;
                let event = payment_failed(&order, "the card was declined", now_ms)?;
                self.store
                    .billing()
                    .end_order(id, OrderStatus::Failed, Some(event))
                    .await?;
                self.store.webhooks_ready().notify_one();
                self.auto_top_up_failed_later(id, payment_intent_id, now_ms)
                    .await?;
                Ok(EventOutcome::Applied(format!("order {id} failed")))
            }
            StripeEvent::ChargeRefunded {
                payment_intent_id,
                amount_refunded_cents,
                refunds,
                refunds_complete,
                ..
            } => {
                // A list whose refunds come to less than the charge's
                // running total (which counts every refund made, and may
                // count those that failed) is not all of them, whatever it
                // says.
                let listed = refunds
                    .iter()
                    .filter_map(|refund| refund.amount_cents)
                    .fold(0_i64, i64::saturating_add);
                let all_listed = *refunds_complete && listed >= *amount_refunded_cents;
                self.apply_refunds(payment_intent_id.as_deref(), refunds, !all_listed, now_ms)
                    .await
            }
            StripeEvent::RefundUpdated { refund } => {
                if refund.payment_intent_id.is_none() {
                    let settled = self
                        .settle_reported_refunds(std::slice::from_ref(refund), now_ms)
                        .await?;
                    return Ok(if settled == 0 {
                        EventOutcome::Ignored(format!(
                            "refund {} of a charge without a PaymentIntent",
                            refund.refund_id
                        ))
                    } else {
                        EventOutcome::Applied(format!(
                            "refund request {:?} of order {:?} settled: refund {} {}",
                            refund.number, refund.order_id, refund.refund_id, refund.status
                        ))
                    });
                }
                // Its own refund is all a refund event is about.
                self.apply_refunds(
                    refund.payment_intent_id.as_deref(),
                    std::slice::from_ref(refund),
                    false,
                    now_ms,
                )
                .await
            }
            StripeEvent::Dispute { dispute } => self.apply_dispute(dispute, now_ms).await,
            StripeEvent::PaymentMethodDetached { payment_method_id } => {
                match self.forget_card(payment_method_id, now_ms).await? {
                    Some(account_id) => Ok(EventOutcome::Applied(format!(
                        "the saved card of account {account_id} is forgotten"
                    ))),
                    None => Ok(EventOutcome::Ignored(
                        "no account has this payment method".into(),
                    )),
                }
            }
            StripeEvent::Other => Ok(EventOutcome::Ignored(
                "not an event this service acts on".into(),
            )),
        }
    }

    /// What completing an order credits: a top-up's payment, or the credit
    /// that comes with access.
    fn credit_for(&self, order: &Order, paid: Money) -> Money {
        match order.order_type {
            OrderType::TopUp | OrderType::AutoTopUp => paid,
            OrderType::InitialAccess => self.settings.included_credit,
        }
    }

    async fn complete_checkout_order(
        &self,
        order: &Order,
        paid: Money,
        customer_id: Option<String>,
        payment_intent_id: Option<String>,
        now_ms: i64,
    ) -> Result<EventOutcome, BillingError> {
        let (order_id, account_id, order_type) = (order.id, order.account_id, order.order_type);
        let customer_id_for_card = customer_id.clone();
        let payment_intent_for_card = payment_intent_id.clone();
        self.store
            .billing()
            .complete_order(OrderCompletion {
                order_id,
                paid,
                payment_intent_id,
                customer: customer_id.map(|customer_id| (account_id, customer_id)),
                activate: (order_type == OrderType::InitialAccess).then_some(account_id),
                now_ms,
            })
            .await?;
        if let (Some(customer_id), Some(payment_intent_id)) =
            (&customer_id_for_card, &payment_intent_for_card)
        {
            // The card is usable at once, whatever order Stripe's events
            // come in: ask Stripe which one paid.
            self.learn_card(customer_id, payment_intent_id).await;
        }
        let credit = self.credit_for(order, paid);
        let card = self
            .store
            .accounts()
            .get(account_id)
            .await?
            .and_then(|account| account.card);
        let event = payment_succeeded(order, paid, credit, PaymentSource::Checkout, card.as_ref());
        if credit.is_positive() {
            let description = match order_type {
                OrderType::TopUp | OrderType::AutoTopUp => "top-up by Checkout",
                OrderType::InitialAccess => "credit included with access",
            };
            self.registry
                .send(
                    account_id,
                    Credit {
                        amount: credit,
                        idempotency_key: IdempotencyKey::stripe_order(order_id),
                        description: description.to_string(),
                        order_id: Some(order_id),
                        source: match order_type {
                            OrderType::InitialAccess => GrantSource::Access,
                            OrderType::TopUp => GrantSource::TopUp,
                            OrderType::AutoTopUp => GrantSource::AutoTopUp,
                        },
                        event: Some(event),
                    },
                )
                .await?;
        } else {
            // Nothing credited, so no row to carry it: an event of its own,
            // once per order (the Stripe event is retried until this is done).
            let event = event.standalone(
                account_id,
                format!("payment.succeeded:order:{order_id}"),
                now_ms,
            )?;
            if self.store.webhooks().record_event(event).await? {
                self.store.webhooks_ready().notify_one();
            }
        }
        Ok(EventOutcome::Applied(format!("order {order_id} completed")))
    }

    /// What an order credited when it was sold, which no refund takes back
    /// more than, as its own credit row says: a top-up's payment (credited
    /// by the order from Checkout, by the PaymentIntent off-session); the
    /// credit that came with access (whatever the setting says today).
    /// `None` while the credit is not in the ledger yet (the completion
    /// failed before writing it: Stripe's retry of the completion writes
    /// it, and wakes this refund), so nothing never credited is taken back.
    /// An access order with no row and nothing included today credited
    /// nothing. (An access sold with nothing included and refunded after
    /// the operator included some waits, and expires after 3 days: nothing
    /// taken back, as nothing was credited.)
    pub(super) async fn credited_by(&self, order: &Order) -> Result<Option<Money>, BillingError> {
        match order.order_type {
            OrderType::TopUp | OrderType::AutoTopUp => {
                let ledger = self.store.ledger();
                let by_order = ledger
                    .entry_by_key(order.account_id, IdempotencyKey::stripe_order(order.id))
                    .await?;
                let row = match (by_order, &order.stripe_payment_intent_id) {
                    (Some(row), _) => Some(row),
                    (None, Some(payment_intent_id)) => {
                        let key =
                            IdempotencyKey::stripe_payment(payment_intent_id).map_err(|_| {
                                BillingError::invalid_id("payment intent", payment_intent_id)
                            })?;
                        ledger.entry_by_key(order.account_id, key).await?
                    }
                    (None, None) => None,
                };
                Ok(row.map(|row| row.amount))
            }
            OrderType::InitialAccess => {
                let row = self
                    .store
                    .ledger()
                    .entry_by_key(order.account_id, IdempotencyKey::stripe_order(order.id))
                    .await?;
                Ok(match row {
                    Some(row) => Some(row.amount),
                    None if self.settings.included_credit.is_positive() => None,
                    None => Some(Money::ZERO),
                })
            }
        }
    }
}

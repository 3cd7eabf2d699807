//! Stripe events, in the core's own words, and what each does: complete,
//! fail or expire an order, save a card, credit a payment, take back a
//! refund. Every event takes effect once (its id is stored), every effect
//! is idempotent on its own key, and an event that arrives before the state
//! it refers to waits, stored, until that state exists.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::checkout::Billing;
use super::discounts;
use super::gateway::PaymentPurpose;
use super::orders::{self, Order, OrderStatus, OrderType};
use super::BillingError;
use crate::account_actor::{Credit, Refund};
use crate::ledger::IdempotencyKey;
use crate::money::Money;
use crate::store::queries;

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
    /// `charge.refunded`: `amount_refunded_cents` is the charge's cumulative total.
    ChargeRefunded {
        charge_id: String,
        payment_intent_id: Option<String>,
        amount_refunded_cents: i64,
    },
    /// Any other type: answered and ignored.
    Other,
}

/// What handling an event came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum EventOutcome {
    Applied(String),
    /// This event id was handled before.
    Duplicate,
    /// The state it refers to does not exist yet; kept and retried.
    Waiting(String),
    Ignored(String),
}

/// A Stripe id that cannot be part of a ledger key (too long, or with
/// spaces): refused rather than keyed some other way.
pub(crate) fn invalid_id(what: &str, id: &str) -> BillingError {
    BillingError::Invalid(format!("the {what} id '{id}' is not a valid Stripe id"))
}

fn cents(amount_cents: i64) -> Result<Money, BillingError> {
    Money::from_cents(amount_cents).map_err(|_| BillingError::Invalid("amount out of range".into()))
}

impl Billing {
    /// Handles one verified event: takes effect once per event id.
    pub async fn handle_event(
        &self,
        event_id: &str,
        event_type: &str,
        event: StripeEvent,
        now_ms: i64,
    ) -> Result<EventOutcome, BillingError> {
        let (id, kind) = (event_id.to_string(), event_type.to_string());
        let already_processed = self
            .store
            .write(move |connection| {
                connection
                    .prepare_cached(
                        "INSERT INTO stripe_events (event_id, event_type, received_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (event_id) DO NOTHING",
                    )?
                    .execute(params![id, kind, now_ms])?;
                let processed: Option<Option<i64>> = connection
                    .prepare_cached("SELECT processed_at FROM stripe_events WHERE event_id = ?1")?
                    .query_row([&id], |row| row.get(0))
                    .optional()?;
                Ok::<_, BillingError>(matches!(processed, Some(Some(_))))
            })
            .await?;
        if already_processed {
            return Ok(EventOutcome::Duplicate);
        }
        let outcome = self.apply(&event, now_ms).await?;
        self.record(event_id, &event, &outcome, now_ms).await?;
        if matches!(outcome, EventOutcome::Applied(_)) {
            self.retry_waiting(now_ms).await?;
        }
        Ok(outcome)
    }

    async fn record(
        &self,
        event_id: &str,
        event: &StripeEvent,
        outcome: &EventOutcome,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        let id = event_id.to_string();
        let payload = serde_json::to_string(event)
            .map_err(|error| BillingError::Invalid(error.to_string()))?;
        let (processed_at, detail) = match outcome {
            EventOutcome::Applied(detail) | EventOutcome::Ignored(detail) => {
                (Some(now_ms), detail.clone())
            }
            EventOutcome::Waiting(detail) => (None, detail.clone()),
            EventOutcome::Duplicate => return Ok(()),
        };
        self.store
            .write(move |connection| {
                connection
                    .prepare_cached("UPDATE stripe_events SET processed_at = ?2, outcome = ?3, payload = ?4 WHERE event_id = ?1")?
                    .execute(params![id, processed_at, detail, payload])?;
                Ok::<_, BillingError>(())
            })
            .await
    }

    /// Applies the waiting events again, oldest first, while any applies.
    async fn retry_waiting(&self, now_ms: i64) -> Result<(), BillingError> {
        loop {
            let waiting: Vec<(String, String)> = self
                .store
                .read(|connection| {
                    let mut statement = connection.prepare_cached(
                        "SELECT event_id, payload FROM stripe_events
                          WHERE processed_at IS NULL AND payload IS NOT NULL ORDER BY received_at, event_id",
                    )?;
                    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await?;
            let mut progressed = false;
            for (event_id, payload) in waiting {
                let Ok(event) = serde_json::from_str::<StripeEvent>(&payload) else {
                    continue;
                };
                let outcome = self.apply(&event, now_ms).await?;
                if !matches!(outcome, EventOutcome::Waiting(_)) {
                    progressed = true;
                    self.record(&event_id, &event, &outcome, now_ms).await?;
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    async fn find_order(
        &self,
        order_id: Option<i64>,
        session_id: Option<&str>,
    ) -> Result<Option<Order>, BillingError> {
        let session_id = session_id.map(str::to_string);
        Ok(self
            .store
            .read(move |connection| match (order_id, session_id) {
                (Some(id), _) => orders::get(connection, id),
                (None, Some(session)) => orders::find_by_session(connection, &session),
                (None, None) => Ok(None),
            })
            .await?)
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
                self.store
                    .write(move |connection| {
                        orders::end_pending(connection, order_id, status)?;
                        discounts::release_for_order(connection, order_id)?;
                        Ok::<_, BillingError>(())
                    })
                    .await?;
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
                        .write(move |connection| {
                            if let Some(account_id) =
                                queries::find_account_by_customer(connection, &customer_id)?
                            {
                                queries::set_payment_method(
                                    connection,
                                    account_id,
                                    &payment_method_id,
                                )?;
                            }
                            Ok::<_, BillingError>(())
                        })
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
                        order.account_id,
                        order.id,
                        payment_intent_id,
                        cents(*amount_received_cents)?,
                        now_ms,
                    )
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
                self.store
                    .write(move |connection| {
                        orders::end_pending(connection, id, OrderStatus::Failed)
                    })
                    .await?;
                Ok(EventOutcome::Applied(format!("order {id} failed")))
            }
            StripeEvent::ChargeRefunded {
                charge_id,
                payment_intent_id,
                amount_refunded_cents,
            } => {
                self.apply_refund(
                    charge_id,
                    payment_intent_id.as_deref(),
                    *amount_refunded_cents,
                )
                .await
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
            OrderType::TopUp => paid,
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
        self.store
            .write(move |connection| {
                orders::complete(
                    connection,
                    order_id,
                    paid,
                    payment_intent_id.as_deref(),
                    now_ms,
                )?;
                if let Some(customer_id) = &customer_id {
                    queries::set_stripe_customer(connection, account_id, customer_id)?;
                }
                if order_type == OrderType::InitialAccess {
                    queries::activate(connection, account_id)?;
                }
                Ok::<_, BillingError>(())
            })
            .await?;
        let credit = self.credit_for(order, paid);
        if credit.is_positive() {
            let description = match order_type {
                OrderType::TopUp => "top-up by Checkout",
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
                    },
                )
                .await?;
        }
        Ok(EventOutcome::Applied(format!("order {order_id} completed")))
    }

    async fn apply_refund(
        &self,
        charge_id: &str,
        payment_intent_id: Option<&str>,
        amount_refunded_cents: i64,
    ) -> Result<EventOutcome, BillingError> {
        let Some(payment_intent_id) = payment_intent_id.map(str::to_string) else {
            return Ok(EventOutcome::Ignored(
                "a refund of a charge without a PaymentIntent".into(),
            ));
        };
        let lookup = payment_intent_id.clone();
        let order = self
            .store
            .read(move |connection| orders::find_by_payment_intent(connection, &lookup))
            .await?;
        let order = match order {
            Some(order) if order.status != OrderStatus::Pending => order,
            _ => {
                return Ok(EventOutcome::Waiting(format!(
                    "no completed order for PaymentIntent {payment_intent_id} yet"
                )))
            }
        };
        let cumulative = cents(amount_refunded_cents)?;
        if cumulative <= order.amount_refunded {
            return Ok(EventOutcome::Applied("no newly refunded amount".into()));
        }
        // Take back at most what this order credited, less what earlier
        // refunds already took back.
        let credited = self.credit_for(&order, order.amount);
        let taken_before = order.amount_refunded.min(credited);
        let take_back = cumulative
            .min(credited)
            .checked_sub(taken_before)
            .unwrap_or(Money::ZERO);
        if take_back.is_positive() {
            self.registry
                .send(
                    order.account_id,
                    Refund {
                        amount: -take_back,
                        idempotency_key: IdempotencyKey::stripe_refund(
                            charge_id,
                            amount_refunded_cents,
                        )
                        .map_err(|_| invalid_id("charge", charge_id))?,
                        description: format!("refund of order {}", order.id),
                        order_id: Some(order.id),
                    },
                )
                .await?;
        }
        let order_id = order.id;
        self.store
            .write(move |connection| orders::record_refunded(connection, order_id, cumulative))
            .await?;
        Ok(EventOutcome::Applied(format!(
            "order {order_id}: {} refunded in all",
            cumulative.precise()
        )))
    }
}

//! The Stripe supervisor: routes payments and refunds to their account's
//! actor, keyed by Stripe's own ids so that a retried or reordered event
//! takes effect once.

use actix::prelude::*;

use super::SUPERVISOR_MAILBOX_CAPACITY;
use crate::account_actor::{Credit, Receipt, Refund};
use crate::billing::checkout::Billing;
use crate::billing::events::{EventOutcome, StripeEvent};
use crate::billing::BillingError;
use crate::error::LedgerError;
use crate::ledger::{AccountId, IdempotencyKey};
use crate::money::Money;
use crate::registry::Registry;

/// Credit an account with a payment Stripe says succeeded.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct CreditPayment {
    pub account_id: AccountId,
    /// What Stripe says was paid.
    pub amount: Money,
    /// Stripe's id of the payment (PaymentIntent or Checkout Session).
    pub payment_id: String,
    pub order_id: Option<i64>,
    pub description: String,
}

/// Take back from an account money Stripe refunded to the card.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct RefundPayment {
    pub account_id: AccountId,
    /// How much was refunded (positive); the ledger row is its negative.
    pub amount: Money,
    /// Stripe's id of the refund.
    pub refund_id: String,
    pub order_id: Option<i64>,
    pub description: String,
}

/// A verified Stripe event to act on. Events are handled one at a time,
/// in the order they arrive, so their effects on orders are ordered.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<EventOutcome, BillingError>")]
pub struct HandleStripeEvent {
    pub event_id: String,
    pub event_type: String,
    pub event: StripeEvent,
    pub received_at_ms: i64,
}

pub struct StripeSupervisor {
    /// Where the account actors are found.
    registry: Registry,
    /// The billing flows; `None` when Stripe is not configured.
    billing: Option<Billing>,
}

impl StripeSupervisor {
    pub fn new(registry: Registry, billing: Option<Billing>) -> StripeSupervisor {
        StripeSupervisor { registry, billing }
    }
}

impl Actor for StripeSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SUPERVISOR_MAILBOX_CAPACITY);
    }
}

fn stripe_key(prefix: &str, id: &str) -> Result<IdempotencyKey, LedgerError> {
    IdempotencyKey::parse(&format!("{prefix}:{id}"))
        .map_err(|_| LedgerError::InvalidKey("a Stripe id is 1 to 240 printable ASCII characters"))
}

impl Handler<CreditPayment> for StripeSupervisor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, payment: CreditPayment, _ctx: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            let credit = Credit {
                amount: payment.amount,
                idempotency_key: stripe_key("stripe-payment", &payment.payment_id)?,
                description: payment.description,
                order_id: payment.order_id,
            };
            registry.send(payment.account_id, credit).await
        })
    }
}

impl Handler<RefundPayment> for StripeSupervisor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, refund: RefundPayment, _ctx: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            if !refund.amount.is_positive() {
                return Err(LedgerError::InvalidAmount(
                    "a refunded amount must be positive",
                ));
            }
            let ledger_refund = Refund {
                amount: -refund.amount,
                idempotency_key: stripe_key("stripe-refund", &refund.refund_id)?,
                description: refund.description,
                order_id: refund.order_id,
            };
            registry.send(refund.account_id, ledger_refund).await
        })
    }
}

impl Handler<HandleStripeEvent> for StripeSupervisor {
    /// Atomic: the supervisor takes the next event only when this one is done.
    type Result = AtomicResponse<Self, Result<EventOutcome, BillingError>>;

    fn handle(&mut self, message: HandleStripeEvent, _ctx: &mut Context<Self>) -> Self::Result {
        let billing = self.billing.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let Some(billing) = billing else {
                    return Err(BillingError::Invalid("Stripe is not configured".into()));
                };
                billing
                    .handle_event(
                        &message.event_id,
                        &message.event_type,
                        message.event,
                        message.received_at_ms,
                    )
                    .await
            }
            .into_actor(self),
        ))
    }
}

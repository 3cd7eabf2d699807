//! The Stripe supervisor: routes payments and refunds to their account's
//! actor, keyed by Stripe's own ids so that a retried or reordered event
//! takes effect once.

use actix::prelude::*;

use super::SUPERVISOR_MAILBOX_CAPACITY;
use crate::billing::checkout::Billing;
use crate::billing::events::{EventOutcome, StripeEvent};
use crate::billing::BillingError;

/// A verified Stripe event to act on. Events are handled one at a time,
/// in the order they arrive, so their effects on orders are ordered.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<EventOutcome, BillingError>")]
pub struct HandleStripeEvent {
    pub event_id: String,
    pub event_type: String,
    /// The event, or why a signed event could not be read (it is recorded
    /// as failed, for an admin to see).
    pub event: Result<StripeEvent, String>,
    pub received_at_ms: i64,
}

/// The sweep of waiting events ([`Billing::wake_unblocked`]), between
/// events like one: answers how many it decided (0 without Stripe).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<usize, BillingError>")]
pub struct SweepWaitingEvents {
    pub now_ms: i64,
}

pub struct StripeSupervisor {
    /// The billing flows, which route each effect to its account's actor;
    /// `None` when Stripe is not configured.
    billing: Option<Billing>,
}

impl StripeSupervisor {
    pub fn new(billing: Option<Billing>) -> StripeSupervisor {
        StripeSupervisor { billing }
    }
}

impl Actor for StripeSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SUPERVISOR_MAILBOX_CAPACITY);
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

impl Handler<SweepWaitingEvents> for StripeSupervisor {
    /// Atomic, as an event is: no event is handled while it runs.
    type Result = AtomicResponse<Self, Result<usize, BillingError>>;

    fn handle(&mut self, message: SweepWaitingEvents, _ctx: &mut Context<Self>) -> Self::Result {
        let billing = self.billing.clone();
        AtomicResponse::new(Box::pin(
            async move {
                match billing {
                    Some(billing) => billing.wake_unblocked(message.now_ms).await,
                    None => Ok(0),
                }
            }
            .into_actor(self),
        ))
    }
}

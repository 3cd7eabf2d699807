//! The Stripe supervisor: routes payments and refunds to their account's
//! actor, keyed by Stripe's own ids so that a retried or reordered event
//! takes effect once.

use actix::prelude::*;

use super::SUPERVISOR_MAILBOX_CAPACITY;
use crate::account_actor::{Credit, Receipt, Refund};
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

pub struct StripeSupervisor {
    /// Where the account actors are found.
    registry: Registry,
}

impl StripeSupervisor {
    pub fn new(registry: Registry) -> StripeSupervisor {
        StripeSupervisor { registry }
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

//! The SMS supervisor: routes the charge for a message to its account's
//! actor, keyed by the Twilio MessageSid so a repeated delivery is charged once.

use actix::prelude::*;

use super::SUPERVISOR_MAILBOX_CAPACITY;
use crate::account_actor::{Debit, Receipt};
use crate::error::LedgerError;
use crate::ledger::{AccountId, IdempotencyKey};
use crate::money::Money;
use crate::registry::Registry;

/// Charge an account for one SMS.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct ChargeMessage {
    pub account_id: AccountId,
    /// The whole cost: segments × the destination's rate.
    pub cost: Money,
    /// Twilio's id of the message; the charge takes effect once per id.
    pub message_sid: String,
    pub description: String,
}

pub struct SmsSupervisor {
    /// Where the account actors are found.
    registry: Registry,
}

impl SmsSupervisor {
    pub fn new(registry: Registry) -> SmsSupervisor {
        SmsSupervisor { registry }
    }
}

impl Actor for SmsSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SUPERVISOR_MAILBOX_CAPACITY);
    }
}

impl Handler<ChargeMessage> for SmsSupervisor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, message: ChargeMessage, _ctx: &mut Context<Self>) -> Self::Result {
        let registry = self.registry.clone();
        Box::pin(async move {
            let key =
                IdempotencyKey::parse(&format!("sms:{}", message.message_sid)).map_err(|_| {
                    LedgerError::InvalidKey("a MessageSid is 1 to 250 printable ASCII characters")
                })?;
            let debit = Debit {
                amount: message.cost,
                idempotency_key: key,
                description: message.description,
            };
            registry.send(message.account_id, debit).await
        })
    }
}

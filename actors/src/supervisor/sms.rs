//! The SMS supervisor: owns what happens to an inbound SMS once the HTTP
//! layer has verified it: MessageSid deduplication (a retry gets the same
//! reply), phone → account routing, and command dispatch. Only account
//! actors change balances; the reply is sent only after it is committed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use super::SUPERVISOR_MAILBOX_CAPACITY;
use crate::account_actor::GetBalance;
use crate::accounts::PhoneNumber;
use crate::billing::auto_top_up::{ConsentVia, SettingRequest};
use crate::billing::checkout::{Billing, ChargeResult};
use crate::billing::orders::DailyCap;
use crate::billing::BillingError;
use crate::billing::TOP_UP;
use crate::commands::buy::{self, BuyOutcome};
use crate::commands::{auto, balance, help, unknown_reply, AutoCommand, BuyAmount, Command};
use crate::error::LedgerError;
use crate::ledger::AccountId;
use crate::messaging::records::MessageKind;
use crate::messaging::Messaging;
use crate::rating::RateTable;
use crate::registry::Registry;
use crate::store::{InboundClaim, InboundRecord, Store, StoreError};

/// The start of every `BUY`'s charge key (then the MessageSid): how the
/// day's `BUY`s of an account are told from its other charges.
const BUY_KEY_PREFIX: &str = "sms-buy-";

/// How long an instance may take to answer a `BUY` before another instance
/// that receives the same MessageSid may answer it instead.
const INBOUND_CLAIM_LEASE_MS: i64 = 60_000;

/// How often, and how long apart, a delivery of a `BUY` another instance is
/// answering looks for that answer before saying busy (503).
const INBOUND_CLAIM_WAITS: u32 = 80;
const INBOUND_CLAIM_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// A verified inbound SMS. The answer is the reply text (`None`: no reply).
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Option<String>, SmsError>")]
pub struct InboundSms {
    pub message_sid: String,
    pub from: String,
    pub body: String,
    pub received_at_ms: i64,
}

/// Why an inbound SMS could not be answered now (Twilio will retry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the supervisor stopped before it answered")]
    Interrupted,
    /// Another instance is answering this MessageSid right now; Twilio's
    /// retry gets its reply.
    #[error("another instance is answering this message")]
    Busy,
}

/// What the SMS flows use.
#[derive(Clone)]
pub struct SmsContext {
    pub store: Store,
    pub registry: Registry,
    pub rates: Arc<RateTable>,
    /// `None` when Stripe is not configured (no `BUY` by SMS).
    pub billing: Option<Billing>,
    /// `None` when Twilio is not configured (reply costs are not recorded).
    pub messaging: Option<Messaging>,
    /// Where replies send people to sign up and top up.
    pub web_link: String,
    /// Numbers known to have an account, by the `From` text Twilio sends:
    /// an account's phone never changes, so the common path needs neither a
    /// read nor libphonenumber before its one write.
    pub known_numbers: Arc<DashMap<String, KnownNumber>>,
}

/// An account found by its phone number.
#[derive(Clone, Debug)]
pub struct KnownNumber {
    pub account_id: AccountId,
    pub phone: PhoneNumber,
}

/// A delivery waiting for the reply to a MessageSid handled right now.
type ReplyWaiter = oneshot::Sender<Result<Option<String>, SmsError>>;

pub struct SmsSupervisor {
    /// The inbound flows, and the registry where account actors are found.
    context: SmsContext,
    /// MessageSids being handled now, with the deliveries waiting for the
    /// same answer, so that a retry racing the first delivery is answered
    /// once and alike.
    in_progress: HashMap<String, Vec<ReplyWaiter>>,
    /// Answers started, to spread them over the actor threads.
    started: u64,
}

impl SmsSupervisor {
    pub fn new(context: SmsContext) -> SmsSupervisor {
        SmsSupervisor {
            context,
            in_progress: HashMap::new(),
            started: 0,
        }
    }
}

impl Actor for SmsSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SUPERVISOR_MAILBOX_CAPACITY);
    }
}

impl Handler<InboundSms> for SmsSupervisor {
    type Result = ResponseActFuture<Self, Result<Option<String>, SmsError>>;

    fn handle(&mut self, message: InboundSms, _ctx: &mut Context<Self>) -> Self::Result {
        let sid = message.message_sid.clone();
        if let Some(waiters) = self.in_progress.get_mut(&sid) {
            let (waiter, answer) = oneshot::channel();
            waiters.push(waiter);
            return Box::pin(fut::wrap_future(async move {
                answer.await.unwrap_or(Err(SmsError::Interrupted))
            }));
        }
        let context = self.context.clone();
        self.in_progress.insert(sid.clone(), Vec::new());
        // The supervisor decides (dedupe, routing, dispatch); the work of an
        // answer (parsing, rating, waiting for the store) runs on the actor
        // threads, so one supervisor thread is not the limit: a known
        // number's on its account actor's thread (asking the actor is then
        // no extra thread hop), others in turn.
        self.started = self.started.wrapping_add(1);
        let arbiter = match context.known_numbers.get(&message.from) {
            Some(known) => context.registry.arbiter_of(known.account_id),
            None => context.registry.arbiter(self.started),
        };
        let answer: Pin<Box<dyn Future<Output = Result<Option<String>, SmsError>>>> = match arbiter
        {
            Some(arbiter) => {
                let (sender, receiver) = oneshot::channel();
                let spawned = arbiter.spawn(async move {
                    let _ = sender.send(context.answer(message).await);
                });
                Box::pin(async move {
                    if !spawned {
                        return Err(SmsError::Interrupted);
                    }
                    receiver.await.unwrap_or(Err(SmsError::Interrupted))
                })
            }
            None => Box::pin(context.answer(message)),
        };
        Box::pin(answer.into_actor(self).map(move |answer, actor, _ctx| {
            for waiter in actor.in_progress.remove(&sid).unwrap_or_default() {
                let _ = waiter.send(answer.clone());
            }
            answer
        }))
    }
}

impl SmsContext {
    /// Answers an inbound SMS, once per MessageSid. The common path (a
    /// known number, any command but `BUY $10`) is one actor call and one
    /// write: the write records the MessageSid with its reply and the
    /// reply's cost together, or finds the reply a first delivery got.
    async fn answer(self, message: InboundSms) -> Result<Option<String>, SmsError> {
        let now_ms = message.received_at_ms;
        let command = Command::parse(&message.body);
        let known = self
            .known_numbers
            .get(&message.from)
            .map(|known| known.clone());
        // A charge, or a number not known yet: look before doing anything.
        let look_first = known.is_none()
            || matches!(
                command,
                Command::Buy(BuyAmount::Ten)
                    | Command::Auto(Some(AutoCommand::On | AutoCommand::Off))
            );
        let (account, phone) = if look_first {
            let phone = match &known {
                Some(known) => Some(known.phone.clone()),
                None => PhoneNumber::parse(&message.from).ok(),
            };
            let (earlier, found) = self
                .store
                .messages()
                .inbound_reply_and_account(message.message_sid.clone(), phone.clone())
                .await?;
            if let Some(reply) = earlier {
                return Ok(reply);
            }
            let account = found.map(|account| {
                let known = KnownNumber {
                    account_id: account.id,
                    phone: account.phone,
                };
                self.known_numbers
                    .insert(message.from.clone(), known.clone());
                known
            });
            (account, phone)
        } else {
            let phone = known.as_ref().map(|known| known.phone.clone());
            (known, phone)
        };
        // A charge goes to Stripe, outside the store: claim the MessageSid
        // first, so that a retry reaching another instance meanwhile waits
        // for this reply instead of charging (or answering) on its own.
        // The first one's reply is waited for (a moment at a time, well
        // inside Twilio's 15 s), so that both deliveries answer alike.
        if account.is_some() && matches!(command, Command::Buy(BuyAmount::Ten)) {
            let mut waits = 0;
            loop {
                let claim = self
                    .store
                    .messages()
                    .claim_inbound(
                        message.message_sid.clone(),
                        message.from.clone(),
                        message.body.clone(),
                        self.store.instance_id().to_string(),
                        now_ms,
                        now_ms + INBOUND_CLAIM_LEASE_MS,
                    )
                    .await?;
                match claim {
                    InboundClaim::Mine => break,
                    InboundClaim::Answered(reply) => return Ok(reply),
                    InboundClaim::Busy if waits < INBOUND_CLAIM_WAITS => {
                        waits += 1;
                        tokio::time::sleep(INBOUND_CLAIM_PAUSE).await;
                    }
                    InboundClaim::Busy => return Err(SmsError::Busy),
                }
            }
        }
        let reply = match &account {
            None => format!(
                "This number has no SMS credit account. Sign up at {}",
                self.web_link
            ),
            Some(known) => self.run(command, known, &message).await?,
        };
        let account_id = account.as_ref().map(|known| known.account_id);
        // A reply is a service message: not charged, but costed.
        let service = match (&self.messaging, &phone) {
            (Some(messaging), Some(phone)) => messaging
                .prepare_service(account_id, phone, &reply, MessageKind::Reply, None, now_ms)
                .map_err(|error| tracing::debug!(%error, "reply cost not recorded"))
                .ok(),
            _ => None,
        };
        let recorded = self
            .store
            .messages()
            .record_inbound(InboundRecord {
                message_sid: message.message_sid.clone(),
                instance_id: self.store.instance_id().to_string(),
                from: message.from.clone(),
                account_id,
                body: message.body.clone(),
                reply: Some(reply.clone()),
                reply_cost: service,
                now_ms,
            })
            .await?;
        match recorded {
            InboundClaim::Mine => Ok(Some(reply)),
            // A delivery handled meanwhile (after a restart, or by another
            // instance) answered first.
            InboundClaim::Answered(earlier) => Ok(earlier),
            InboundClaim::Busy => Err(SmsError::Busy),
        }
    }

    async fn run(
        &self,
        command: Command,
        account: &KnownNumber,
        message: &InboundSms,
    ) -> Result<String, SmsError> {
        Ok(match command {
            Command::Help => help::reply(),
            Command::Unknown => unknown_reply(),
            Command::Auto(None) => auto::unknown_reply(),
            Command::Auto(Some(what)) => self.auto(what, account, message).await?,
            Command::Balance => {
                let snapshot = self.registry.send(account.account_id, GetBalance).await?;
                let own_rate = account
                    .phone
                    .country()
                    .and_then(|country| self.rates.rate_for(country));
                balance::reply(snapshot.balance, own_rate)
            }
            Command::Buy(BuyAmount::Other(_) | BuyAmount::Missing) => {
                buy::other_amount_reply(&self.web_link)
            }
            Command::Buy(BuyAmount::Ten) => {
                let outcome = match &self.billing {
                    None => BuyOutcome::Unavailable,
                    Some(billing) => {
                        // Keyed by the MessageSid: a retried delivery never charges twice.
                        let key = format!("{BUY_KEY_PREFIX}{}", message.message_sid);
                        let day_start = message.received_at_ms.div_euclid(crate::clock::DAY_MS)
                            * crate::clock::DAY_MS;
                        let cap = DailyCap {
                            key_prefix: BUY_KEY_PREFIX.to_string(),
                            limit: billing.settings.buy_daily_limit,
                            since_ms: day_start,
                        };
                        match billing
                            .charge_saved_card(
                                account.account_id,
                                TOP_UP,
                                &key,
                                Some(cap),
                                message.received_at_ms,
                            )
                            .await
                        {
                            Ok(ChargeResult::Credited { receipt, card, .. }) => {
                                BuyOutcome::Credited {
                                    balance: receipt.entry.balance_after,
                                    card,
                                }
                            }
                            Ok(ChargeResult::Pending { .. }) => BuyOutcome::Pending,
                            Ok(ChargeResult::AuthenticationRequired) => {
                                BuyOutcome::AuthenticationRequired
                            }
                            Ok(ChargeResult::Declined { message }) => {
                                BuyOutcome::Declined { message }
                            }
                            // A BUY asked again a day later that Stripe never charged.
                            Ok(ChargeResult::NotCharged) => BuyOutcome::Unavailable,
                            Err(BillingError::NoSavedCard) => BuyOutcome::NoSavedCard,
                            Err(BillingError::DailyLimit(limit)) => {
                                BuyOutcome::DailyLimit { limit }
                            }
                            Err(BillingError::Store(error)) => return Err(error.into()),
                            Err(BillingError::Ledger(error)) => return Err(error.into()),
                            Err(error) => {
                                tracing::warn!(%error, "BUY by SMS failed");
                                BuyOutcome::Unavailable
                            }
                        }
                    }
                };
                buy::reply(&outcome, &self.web_link)
            }
        })
    }

    /// `AUTO`, `AUTO ON`, `AUTO OFF`.
    async fn auto(
        &self,
        what: AutoCommand,
        account: &KnownNumber,
        message: &InboundSms,
    ) -> Result<String, SmsError> {
        let Some(billing) = &self.billing else {
            return Ok(auto::unavailable_reply());
        };
        let now_ms = message.received_at_ms;
        let account_id = account.account_id;
        let changed = match what {
            AutoCommand::Status => Ok(()),
            AutoCommand::On | AutoCommand::Off => billing
                .set_auto_top_up(
                    account_id,
                    SettingRequest {
                        enabled: Some(what == AutoCommand::On),
                        ..SettingRequest::default()
                    },
                    ConsentVia::Sms,
                    now_ms,
                )
                .await
                .map(drop),
        };
        match changed {
            Ok(()) => {}
            Err(BillingError::NoSavedCard) => return Ok(auto::no_card_reply(&self.web_link)),
            Err(BillingError::Store(error)) => return Err(error.into()),
            Err(BillingError::Ledger(error)) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, "AUTO by SMS failed");
                return Ok(auto::unavailable_reply());
            }
        }
        let view = match billing.auto_top_up_view(account_id, now_ms).await {
            Ok(view) => view,
            Err(BillingError::Store(error)) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, "AUTO by SMS failed");
                return Ok(auto::unavailable_reply());
            }
        };
        Ok(match what {
            AutoCommand::Status => auto::status_reply(&view),
            AutoCommand::On => auto::on_reply(&view),
            AutoCommand::Off => auto::off_reply(),
        })
    }
}

//! The SMS supervisor: owns what happens to an inbound SMS once the HTTP
//! layer has verified it: MessageSid deduplication (a retry gets the same
//! reply, except that a `BUY` whose charge Stripe has not answered is
//! asked again), phone → account routing, and command dispatch. Only
//! account actors change balances; the reply is sent only after it is
//! committed. A `BUY` is answered within Twilio's wait whatever Stripe
//! does (see `SmsContext::buy`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::SUPERVISOR_MAILBOX_CAPACITY;
use crate::account_actor::GetBalance;
use crate::accounts::PhoneNumber;
use crate::billing::auto_top_up::{ConsentVia, SettingRequest};
use crate::billing::checkout::{Billing, ChargeAnswer, ChargeResult};
use crate::billing::orders::DailyCap;
use crate::billing::BillingError;
use crate::billing::TOP_UP;
use crate::commands::buy::{self, BuyOutcome};
use crate::commands::{auto, balance, help, unknown_reply, AutoCommand, BuyAmount, Command};
use crate::error::LedgerError;
use crate::ledger::AccountId;
use crate::messaging::records::{MessageKind, NewMessage};
use crate::messaging::Messaging;
use crate::opt_outs::{self, OptChange};
use crate::rating::RateTable;
use crate::registry::Registry;
use crate::store::{InboundClaim, InboundRecord, Store, StoreError};

/// The start of every `BUY`'s charge key (then the MessageSid): how the
/// day's `BUY`s of an account are told from its other charges.
const BUY_KEY_PREFIX: &str = "sms-buy-";

/// How long an instance's claim on a `BUY` lasts unless renewed: another
/// instance that receives the same MessageSid may answer it only after.
const INBOUND_CLAIM_LEASE_MS: i64 = 60_000;

/// How often the claim is renewed while its charge goes on (a charge may
/// outlast a lease: a card looked up, then Stripe's 30 s, each).
const INBOUND_CLAIM_RENEW_EVERY: Duration = Duration::from_secs(15);

/// How long apart a delivery of a `BUY` another instance is answering looks
/// for that answer.
const INBOUND_CLAIM_PAUSE: Duration = Duration::from_millis(100);

/// How long a `BUY` takes at most to answer, from its delivery: the wait
/// for another delivery of the same MessageSid, then the charge. Twilio
/// gives up on a webhook after 15 s; the rest is for the reads and the
/// write around these. A charge Stripe has not answered by then goes on,
/// and the reply says the payment is not confirmed yet.
const BUY_ANSWER_WITHIN: Duration = Duration::from_secs(10);

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
    /// The `BUY`s whose charge goes on here after their delivery was
    /// answered "not confirmed yet", by MessageSid: a retry reaching this
    /// instance waits for the charge instead of sending it again. Each
    /// receiver sees its sender dropped when the charge is settled.
    pub buys_charging: Arc<DashMap<String, watch::Receiver<()>>>,
}

/// An account found by its phone number.
#[derive(Clone, Debug)]
pub struct KnownNumber {
    pub account_id: AccountId,
    pub phone: PhoneNumber,
}

/// What an inbound SMS is answered with, before it is recorded.
struct Answer {
    /// The reply (`None`: none).
    reply: Option<String>,
    /// What it changes of the number's subscription.
    opt_change: Option<OptChange>,
    /// The reply is withheld if the number has opted out.
    withhold_if_opted_out: bool,
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
        let started = Instant::now();
        let now_ms = message.received_at_ms;
        let command = Command::parse(&message.body);
        let opt_change = OptChange::of(&message.body);
        let known = self
            .known_numbers
            .get(&message.from)
            .map(|known| known.clone());
        // A charge, a change of the subscription or a number not known
        // yet: look before doing anything.
        let look_first = known.is_none()
            || opt_change.is_some()
            || matches!(
                command,
                Command::Buy(BuyAmount::Ten)
                    | Command::Auto(Some(AutoCommand::On | AutoCommand::Off))
            );
        // Whether the number opted out, as far as a look tells.
        let mut opted_out = false;
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
            opted_out = found
                .as_ref()
                .is_some_and(|account| account.opt_out.is_some());
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
        let account_id = account.as_ref().map(|known| known.account_id);
        // STOP (and the other opt-out words), START and UNSTOP change the
        // number's subscription, whoever it is, and are confirmed.
        if let Some(change) = opt_change {
            let reply = match change {
                OptChange::Out(_) => opt_outs::opted_out_reply(),
                OptChange::In => opt_outs::opted_in_reply(),
            };
            let service = self.reply_cost(account_id, phone.as_ref(), &reply, now_ms);
            let answer = Answer {
                reply: Some(reply),
                opt_change: Some(change),
                withhold_if_opted_out: false,
            };
            return self
                .record(&message, account_id, phone, answer, service)
                .await;
        }
        // From a number that opted out, no command runs (a BUY would
        // charge, an AUTO change the setting, each with a reply), and only
        // HELP is answered.
        if opted_out && command != Command::Help {
            let answer = Answer {
                reply: None,
                opt_change: None,
                withhold_if_opted_out: true,
            };
            return self.record(&message, account_id, phone, answer, None).await;
        }
        // A charge goes to Stripe, outside the store: see `buy`.
        if let (Some(known), Command::Buy(BuyAmount::Ten)) = (&account, &command) {
            return self.buy(known, &message, started + BUY_ANSWER_WITHIN).await;
        }
        let help = command == Command::Help;
        let reply = match &account {
            None => format!(
                "This number has no SMS credit account. Sign up at {}",
                self.web_link
            ),
            Some(known) => self.run(command, known, &message).await?,
        };
        let service = self.reply_cost(account_id, phone.as_ref(), &reply, now_ms);
        // What was run has no effect (those that have looked first): its
        // reply is withheld if the number opted out meanwhile.
        let answer = Answer {
            reply: Some(reply),
            opt_change: None,
            withhold_if_opted_out: !help,
        };
        self.record(&message, account_id, phone, answer, service)
            .await
    }

    /// A reply is a service message: not charged, but costed.
    fn reply_cost(
        &self,
        account_id: Option<AccountId>,
        phone: Option<&PhoneNumber>,
        reply: &str,
        now_ms: i64,
    ) -> Option<NewMessage> {
        match (&self.messaging, phone) {
            (Some(messaging), Some(phone)) => messaging
                .prepare_service(account_id, phone, reply, MessageKind::Reply, None, now_ms)
                .map_err(|error| tracing::debug!(%error, "reply cost not recorded"))
                .ok(),
            _ => None,
        }
    }

    /// Records the answer as the MessageSid's (see
    /// `MessageStore::record_inbound`) and answers what it is now.
    async fn record(
        &self,
        message: &InboundSms,
        account_id: Option<AccountId>,
        phone: Option<PhoneNumber>,
        answer: Answer,
        service: Option<NewMessage>,
    ) -> Result<Option<String>, SmsError> {
        let now_ms = message.received_at_ms;
        let recorded = self
            .store
            .messages()
            .record_inbound(InboundRecord {
                message_sid: message.message_sid.clone(),
                instance_id: self.store.instance_id().to_string(),
                from: message.from.clone(),
                account_id,
                body: message.body.clone(),
                reply: answer.reply.clone(),
                reply_cost: service,
                now_ms,
                phone,
                opt_change: answer.opt_change,
                withhold_if_opted_out: answer.withhold_if_opted_out,
            })
            .await?;
        match recorded {
            InboundClaim::Mine => Ok(answer.reply),
            InboundClaim::Withheld => Ok(None),
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
            // `BUY $10` of an account is answered by `buy`.
            Command::Buy(_) => buy::other_amount_reply(&self.web_link),
        })
    }

    /// `BUY $10`: answered by `deadline` whatever Stripe does, charged at
    /// most once whatever Twilio does.
    ///
    /// The MessageSid is claimed first (the charge goes to Stripe, outside
    /// the store), so that a retry reaching another instance meanwhile waits
    /// for this reply instead of charging (or answering) on its own. The
    /// charge runs on a task of its own, which renews the claim while it
    /// goes on: a charge Stripe has not answered by `deadline` goes on after
    /// the reply ("not confirmed yet"), and settles the MessageSid when it
    /// ends. Only an outcome Stripe gave is stored as the answer; one it did
    /// not give lets the claim go, so a retry asks Stripe again with the
    /// same key (which charges once, and answers as the first time).
    async fn buy(
        &self,
        account: &KnownNumber,
        message: &InboundSms,
        deadline: Instant,
    ) -> Result<Option<String>, SmsError> {
        let sid = &message.message_sid;
        // An earlier delivery's charge still going on here: waited for.
        let running = self.buys_charging.get(sid).map(|running| running.clone());
        if let Some(mut running) = running {
            if tokio::time::timeout_at(deadline, running.changed())
                .await
                .is_err()
            {
                return self.unconfirmed(account, message, false).await;
            }
        }
        // Another instance's: its reply is waited for (a moment at a time,
        // within the bound), so that both deliveries answer alike.
        loop {
            let claim = self
                .store
                .messages()
                .claim_inbound(
                    sid.clone(),
                    message.from.clone(),
                    message.body.clone(),
                    self.store.instance_id().to_string(),
                    message.received_at_ms,
                    message.received_at_ms + INBOUND_CLAIM_LEASE_MS,
                )
                .await?;
            match claim {
                InboundClaim::Mine => break,
                InboundClaim::Answered(reply) => return Ok(reply),
                // Only an answer recorded says so; a claim never does.
                InboundClaim::Withheld => return Ok(None),
                InboundClaim::Busy if Instant::now() + INBOUND_CLAIM_PAUSE < deadline => {
                    tokio::time::sleep(INBOUND_CLAIM_PAUSE).await;
                }
                // Still charging there: not known yet.
                InboundClaim::Busy => return self.unconfirmed(account, message, false).await,
            }
        }
        let charged = match &self.billing {
            None => Ok(BuyOutcome::Unavailable),
            Some(billing) => {
                let (outcome_to, mut outcome) = oneshot::channel();
                let (settled, running) = watch::channel(());
                self.buys_charging.insert(sid.clone(), running.clone());
                let (context, billing) = (self.clone(), billing.clone());
                let (buyer, sms) = (account.clone(), message.clone());
                actix::spawn(async move {
                    let charged = context.charge_under_claim(&billing, &buyer, &sms).await;
                    // Not taken: the reply went before the charge ended.
                    if let Err(charged) = outcome_to.send(charged) {
                        context.settle_late(&buyer, &sms, charged).await;
                    }
                    context
                        .buys_charging
                        .remove_if(&sms.message_sid, |_, entry| entry.same_channel(&running));
                    drop(settled);
                });
                match tokio::time::timeout_at(deadline, &mut outcome).await {
                    Ok(charged) => charged.unwrap_or(Err(SmsError::Interrupted)),
                    Err(_) => {
                        // Closed first, so that an outcome is either taken
                        // here or settled by the charge's task, never lost.
                        outcome.close();
                        match outcome.try_recv() {
                            Ok(charged) => charged,
                            Err(_) => return self.unconfirmed(account, message, false).await,
                        }
                    }
                }
            }
        };
        match charged? {
            BuyOutcome::Unconfirmed => self.unconfirmed(account, message, true).await,
            outcome => {
                let reply = buy::reply(&outcome, &self.web_link);
                let service = self.reply_cost(
                    Some(account.account_id),
                    Some(&account.phone),
                    &reply,
                    message.received_at_ms,
                );
                let answer = Answer {
                    reply: Some(reply),
                    opt_change: None,
                    withhold_if_opted_out: true,
                };
                self.record(
                    message,
                    Some(account.account_id),
                    Some(account.phone.clone()),
                    answer,
                    service,
                )
                .await
            }
        }
    }

    /// The reply to a `BUY` whose charge has no known outcome yet, never
    /// stored as the MessageSid's answer; `release`: the charge has ended,
    /// and the claim is let go (a retry asks Stripe again).
    async fn unconfirmed(
        &self,
        account: &KnownNumber,
        message: &InboundSms,
        release: bool,
    ) -> Result<Option<String>, SmsError> {
        let reply = buy::reply(&BuyOutcome::Unconfirmed, &self.web_link);
        let service = self.reply_cost(
            Some(account.account_id),
            Some(&account.phone),
            &reply,
            message.received_at_ms,
        );
        let messages = self.store.messages();
        if release {
            messages
                .release_inbound(
                    message.message_sid.clone(),
                    self.store.instance_id().to_string(),
                    service,
                )
                .await?;
        } else if let Some(service) = service {
            messages.record_service(service).await?;
        }
        Ok(Some(reply))
    }

    /// Charges a `BUY`, renewing the claim on its MessageSid until the
    /// charge ends, so that no other instance sends the same key meanwhile.
    async fn charge_under_claim(
        &self,
        billing: &Billing,
        account: &KnownNumber,
        message: &InboundSms,
    ) -> Result<BuyOutcome, SmsError> {
        let charge = self.charge(billing, account, message);
        tokio::pin!(charge);
        let mut renewals = tokio::time::interval_at(
            Instant::now() + INBOUND_CLAIM_RENEW_EVERY,
            INBOUND_CLAIM_RENEW_EVERY,
        );
        let mut renewing = true;
        loop {
            tokio::select! {
                charged = &mut charge => return charged,
                _ = renewals.tick(), if renewing => {
                    let now_ms = self.registry.clock().now_ms();
                    let renewed = self
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
                        .await;
                    match renewed {
                        Ok(InboundClaim::Mine) => {}
                        // Taken over (the lease lapsed all the same): the
                        // other instance's charge sends the same key, which
                        // Stripe answers once.
                        Ok(other) => {
                            tracing::warn!(message_sid = %message.message_sid, ?other, "a BUY still charging lost its claim");
                            renewing = false;
                        }
                        Err(error) => {
                            tracing::warn!(%error, message_sid = %message.message_sid, "the claim of a BUY still charging was not renewed");
                        }
                    }
                }
            }
        }
    }

    /// Settles a `BUY` whose charge ended after its delivery was answered:
    /// an outcome Stripe gave becomes the MessageSid's answer (a retry gets
    /// it); none lets the claim go (a retry asks again).
    async fn settle_late(
        &self,
        account: &KnownNumber,
        message: &InboundSms,
        charged: Result<BuyOutcome, SmsError>,
    ) {
        let messages = self.store.messages();
        let sid = message.message_sid.clone();
        let instance_id = self.store.instance_id().to_string();
        let settled = match charged {
            Ok(BuyOutcome::Unconfirmed) | Err(_) => messages
                .release_inbound(sid, instance_id, None)
                .await
                .map(drop),
            Ok(outcome) => messages
                .record_inbound(InboundRecord {
                    message_sid: sid,
                    instance_id,
                    from: message.from.clone(),
                    account_id: Some(account.account_id),
                    body: message.body.clone(),
                    reply: Some(buy::reply(&outcome, &self.web_link)),
                    // Its reply was "not confirmed yet".
                    reply_cost: None,
                    now_ms: message.received_at_ms,
                    phone: Some(account.phone.clone()),
                    opt_change: None,
                    withhold_if_opted_out: true,
                })
                .await
                .map(drop),
        };
        if let Err(error) = settled {
            tracing::warn!(%error, message_sid = %message.message_sid, "a BUY that ended after its reply was not settled; its claim lapses");
        }
    }

    /// Charges the saved card for a `BUY $10`, keyed by the MessageSid: a
    /// retried delivery never charges twice.
    async fn charge(
        &self,
        billing: &Billing,
        account: &KnownNumber,
        message: &InboundSms,
    ) -> Result<BuyOutcome, SmsError> {
        let key = format!("{BUY_KEY_PREFIX}{}", message.message_sid);
        let day_start =
            message.received_at_ms.div_euclid(crate::clock::DAY_MS) * crate::clock::DAY_MS;
        let cap = DailyCap {
            key_prefix: BUY_KEY_PREFIX.to_string(),
            limit: billing.settings.buy_daily_limit,
            since_ms: day_start,
        };
        let charged = billing
            .try_charge_saved_card(
                account.account_id,
                TOP_UP,
                &key,
                Some(cap),
                message.received_at_ms,
            )
            .await;
        Ok(match charged {
            Ok(ChargeAnswer::Answered(result)) => match result {
                ChargeResult::Credited { receipt, card, .. } => BuyOutcome::Credited {
                    balance: receipt.entry.balance_after,
                    card,
                },
                ChargeResult::Pending { .. } => BuyOutcome::Pending,
                ChargeResult::AuthenticationRequired => BuyOutcome::AuthenticationRequired,
                ChargeResult::Declined { message } => BuyOutcome::Declined { message },
                // A BUY asked again a day later that Stripe never charged.
                ChargeResult::NotCharged => BuyOutcome::Unavailable,
            },
            Ok(ChargeAnswer::Unknown(error)) => {
                tracing::warn!(%error, "Stripe did not answer a BUY by SMS; asked again on a retry");
                BuyOutcome::Unconfirmed
            }
            Err(BillingError::NoSavedCard) => BuyOutcome::NoSavedCard,
            Err(BillingError::DailyLimit(limit)) => BuyOutcome::DailyLimit { limit },
            Err(BillingError::Store(error)) => return Err(error.into()),
            Err(BillingError::Ledger(error)) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, "BUY by SMS failed");
                BuyOutcome::Unavailable
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

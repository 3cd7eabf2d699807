//! Sending SMS: charged messages for the host application (quoted, then
//! reserved on the account, then sent, then the reservation resolved exactly
//! once), service messages (replies and low-balance warnings: costed, not
//! charged), Twilio's status callbacks, and reconciliation with what Twilio
//! actually charged. Twilio itself is behind the `SmsSender` trait.

pub mod notices;
pub mod reconcile;
pub mod records;
pub mod reservations;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use self::records::{MessageKind, MessageRecord, MessageState, NewMessage, VoidStart};
use crate::account_actor::{Debit, Refund};
use crate::accounts::PhoneNumber;
use crate::error::LedgerError;
use crate::ledger::{AccountId, IdempotencyKey};
use crate::money::Money;
use crate::opt_outs::OptOutVia;
use crate::rating::{quote, quote_to, Quote, QuoteRequest, RateTable, RatingError};
use crate::registry::Registry;
use crate::store::{Store, StoreError};

pub type SenderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SenderError>> + Send + 'a>>;

/// Why Twilio did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    /// Twilio could not be reached, or answered that it failed (5xx, 429):
    /// the request did nothing.
    #[error("Twilio is unavailable: {0}")]
    Unavailable(String),
    #[error("Twilio refused the message: {0}")]
    Refused(String),
    /// The number texted STOP (or another opt-out word) to the service's
    /// number, and Twilio refuses to send to it (error 21610) until it
    /// texts START: final, never worth trying again.
    #[error("the number has opted out of texts from this service: {0}")]
    OptedOut(String),
    /// The request may have reached Twilio but no answer came (a timeout,
    /// a connection lost mid-request): whether it was taken is not known.
    #[error("Twilio did not answer: {0}")]
    Unanswered(String),
}

/// A message Twilio accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub sid: String,
    pub status: String,
}

/// A message as Twilio lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedMessage {
    pub sid: String,
    pub body: String,
    pub status: String,
    /// When Twilio created it (Unix milliseconds, to Twilio's second).
    pub created_at_ms: i64,
}

/// The SMS provider: sending, looking up what a message cost, and what
/// became of a send whose answer was lost.
pub trait SmsSender: Send + Sync + 'static {
    fn send(&self, to: &str, body: &str) -> SenderFuture<'_, Accepted>;
    /// Twilio's price of a sent message, as a positive amount; `None` while
    /// Twilio does not know it yet.
    fn fetch_price(&self, sid: &str) -> SenderFuture<'_, Option<Money>>;
    /// Every message Twilio holds that this service sent through the API
    /// from its own number to `to`, created at or after `since_ms`, newest
    /// first: the whole list (every page read back to `since_ms`), or an
    /// error, never part of it.
    fn sent_to(&self, to: &str, since_ms: i64) -> SenderFuture<'_, Vec<ListedMessage>>;
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagingError {
    #[error(transparent)]
    Rating(#[from] RatingError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("account {0} does not exist")]
    AccountNotFound(AccountId),
    #[error("no account has the number {0}")]
    UnknownNumber(String),
    #[error("the account's number is {account_phone}, not {to}")]
    NumberMismatch { account_phone: String, to: String },
    #[error("give account_id or to")]
    NoDestination,
    #[error("invalid idempotency key: {0}")]
    InvalidKey(String),
    #[error("a message with this idempotency key is still being sent")]
    InProgress,
    #[error("the message was not sent and its cost was given back: {0}")]
    NotSent(String),
    /// Twilio was unavailable (a 5xx, a 429, no connection) and took
    /// nothing: a service message may be sent again.
    #[error("Twilio is unavailable, and nothing was sent: {0}")]
    Unavailable(String),
    /// The account's number opted out of texts (it texted STOP): nothing
    /// is sent to it, nothing charged, until it texts START.
    #[error("the account's number opted out of texts (it texted STOP); nothing is sent to it until it texts START")]
    RecipientOptedOut,
    /// Twilio would not send a service message to the number (it opted
    /// out, or cannot be texted): nothing went out, nothing to try again.
    #[error("Twilio refused the message: {detail}")]
    Refused { opted_out: bool, detail: String },
    /// The key was used before for a message that was not sent (its cost
    /// given back): the key is spent, and sending again needs a new one.
    /// Told apart from `NotSent` so that a caller retrying with the same
    /// key is not left retrying it.
    #[error(
        "the message with this idempotency key was not sent and its cost was given back; \
         the key is spent: send again with a new idempotency key"
    )]
    KeySpent,
    /// Twilio may have taken the message (its answer was lost, or taken
    /// and not recorded): not "not sent". The reservation is left for the
    /// sweep, which asks Twilio; the same key then answers the outcome.
    #[error("whether the message was sent is not known yet: {0}")]
    OutcomeUnknown(String),
}

/// What messaging needs to know beyond the request.
#[derive(Clone, Debug)]
pub struct MessagingSettings {
    /// How long after sending Twilio's price is first fetched.
    pub price_check_delay: Duration,
    /// Where warnings send people to top up.
    pub web_link: String,
}

/// Everything the messaging flows use.
#[derive(Clone)]
pub struct Messaging {
    pub store: Store,
    pub registry: Registry,
    pub rates: Arc<RateTable>,
    pub sender: Arc<dyn SmsSender>,
    pub settings: Arc<MessagingSettings>,
}

/// A message for the host application.
#[derive(Clone, Debug)]
pub struct OutboundRequest {
    pub account_id: Option<AccountId>,
    pub to: Option<String>,
    pub body: String,
    pub idempotency_key: String,
}

/// The answer to a sent message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SentMessage {
    pub message: MessageRecord,
    pub balance_after_micros: Option<i64>,
    /// True when this idempotency key was sent before.
    pub replayed: bool,
}

impl Messaging {
    /// Quotes, reserves the cost on the account (refused with
    /// `InsufficientCredit`, and nothing sent, if it cannot be covered),
    /// sends through Twilio, then resolves the reservation exactly once:
    /// kept as the debit if Twilio accepted, given back if not.
    pub async fn send_outbound(
        &self,
        request: OutboundRequest,
        now_ms: i64,
    ) -> Result<SentMessage, MessagingError> {
        IdempotencyKey::parse(&request.idempotency_key)
            .map_err(|error| MessagingError::InvalidKey(error.to_string()))?;
        let account = self.resolve_account(&request).await?;
        let to = account.phone.as_str().to_string();
        let quoted = quote(
            QuoteRequest {
                to: &to,
                body: &request.body,
                smart_encoding: false,
            },
            &self.rates,
        )?;
        let carrier_cost = self.carrier_cost(&quoted)?;

        // Record the reservation, or find the earlier attempt with this key.
        let account_id = account.id;
        let mut message = new_message(
            Some(account_id),
            MessageKind::Outbound,
            &quoted,
            carrier_cost,
            quoted.total(),
            MessageState::Reserved,
            now_ms,
        );
        message.idempotency_key = Some(request.idempotency_key.clone());
        message.instance_id = Some(self.store.instance_id().to_string());
        message.body_sha256 = Some(reservations::body_sha256(&request.body));
        let (record, fresh) = self.store.messages().reserve_outbound(message).await?;
        if !fresh {
            return match record.state {
                MessageState::Sent => Ok(SentMessage {
                    message: record,
                    balance_after_micros: None,
                    replayed: true,
                }),
                MessageState::Voided => Err(MessagingError::KeySpent),
                MessageState::Reserved => Err(MessagingError::InProgress),
            };
        }
        // After the key's earlier outcome, which stands: a number that
        // opted out is sent nothing new, and the attempt is forgotten (the
        // same key may be sent once the number texts START).
        if account.opt_out.is_some() {
            self.store.messages().forget_reservation(record.id).await?;
            return Err(MessagingError::RecipientOptedOut);
        }

        let debit = Debit {
            amount: quoted.total(),
            idempotency_key: IdempotencyKey::message(record.id),
            description: format!(
                "SMS to {} ({} {} segment{})",
                quoted.country,
                quoted.segments,
                quoted.encoding,
                if quoted.segments == 1 { "" } else { "s" }
            ),
            one_segment: Some(Money::from_micros(quoted.price_per_segment_micros)),
        };
        let receipt = match self.registry.send(account_id, debit).await {
            Ok(receipt) => receipt,
            Err(error) => {
                let definitely_not_applied = !matches!(
                    error,
                    LedgerError::Interrupted
                        | LedgerError::Store(StoreError::Closed | StoreError::CommitUnknown(_))
                );
                if definitely_not_applied {
                    // Nothing was reserved: forget the attempt, so the same
                    // key can be tried again (after a top-up, say). An
                    // ambiguous failure stays reserved for recovery.
                    self.store.messages().forget_reservation(record.id).await?;
                }
                return Err(error.into());
            }
        };

        let accepted = match self.sender.send(&to, &request.body).await {
            Ok(accepted) => accepted,
            Err(SenderError::Unanswered(reason)) => {
                // Twilio may have taken it: never told "not sent", never
                // given back here. The sweep asks Twilio and resolves it.
                tracing::warn!(
                    message_id = record.id,
                    %reason,
                    "Twilio did not answer a send; left reserved for the sweep to ask Twilio"
                );
                return Err(MessagingError::OutcomeUnknown(format!(
                    "Twilio did not answer: {reason}"
                )));
            }
            Err(error) => {
                let opted_out = matches!(error, SenderError::OptedOut(_));
                if opted_out {
                    // Final: recorded, so that nothing more is tried.
                    self.store
                        .opt_outs()
                        .record_opt_out(account.phone.clone(), OptOutVia::Carrier, None, now_ms)
                        .await?;
                }
                return match self.void(&record, true).await? {
                    VoidStart::Started if opted_out => Err(MessagingError::RecipientOptedOut),
                    VoidStart::Started => Err(MessagingError::NotSent(error.to_string())),
                    // The sweep resolved it first (it found the message
                    // at Twilio, or gave the cost back): as it stands.
                    VoidStart::Resolved(message) => answer_resolved(*message),
                };
            }
        };
        let check_at = now_ms.saturating_add(crate::clock::millis(self.settings.price_check_delay));
        let marked = self
            .store
            .messages()
            .mark_sent(
                record.id,
                accepted.sid.clone(),
                accepted.status.clone(),
                check_at,
            )
            .await;
        let (message, early_status) = match marked {
            Ok(marked) => marked,
            Err(error) => {
                // Twilio took it; recording that failed. It stays reserved
                // (the debit stands) until the sweep finds it at Twilio.
                tracing::warn!(
                    message_id = record.id,
                    %error,
                    "a message Twilio took could not be marked sent; left for the sweep"
                );
                return Err(MessagingError::OutcomeUnknown(format!(
                    "Twilio took the message, and recording it failed: {error}"
                )));
            }
        };
        if matches!(&message, Some(found) if found.state != MessageState::Sent) {
            // Another instance took this one for gone and gave the cost
            // back (or began to) while Twilio took the message: the
            // customer was not charged for it. Rare (a send or a heartbeat
            // stalled for longer than the sweep waits); worth an operator's
            // look, never a second debit behind the caller's back.
            tracing::error!(
                message_id = record.id,
                "a message was sent after another instance gave its cost back"
            );
        }
        // A warning this message's debit set off was waiting for it.
        self.store.notices_ready().notify_one();
        if let Some(status) = early_status {
            // Twilio called back before its answer was recorded.
            self.handle_status(&accepted.sid, &status, now_ms).await?;
        }
        Ok(SentMessage {
            message: message.unwrap_or(record),
            balance_after_micros: Some(receipt.entry.balance_after.micros()),
            replayed: false,
        })
    }

    async fn resolve_account(
        &self,
        request: &OutboundRequest,
    ) -> Result<crate::accounts::Account, MessagingError> {
        match (request.account_id, request.to.as_deref()) {
            (Some(account_id), to) => {
                let account = self
                    .store
                    .accounts()
                    .get(account_id)
                    .await?
                    .ok_or(MessagingError::AccountNotFound(account_id))?;
                if let Some(to) = to {
                    let wanted = PhoneNumber::parse(to).map_err(RatingError::from)?;
                    if wanted != account.phone {
                        return Err(MessagingError::NumberMismatch {
                            account_phone: account.phone.to_string(),
                            to: wanted.to_string(),
                        });
                    }
                }
                Ok(account)
            }
            (None, Some(to)) => {
                let phone = PhoneNumber::parse(to).map_err(RatingError::from)?;
                self.store
                    .accounts()
                    .by_phone(phone.clone())
                    .await?
                    .ok_or_else(|| MessagingError::UnknownNumber(phone.to_string()))
            }
            (None, None) => Err(MessagingError::NoDestination),
        }
    }

    /// What the carrier charges per segment to where a quote sends: the
    /// rate the quote was made with, so it is always there.
    fn carrier_cost(&self, quoted: &Quote) -> Result<Money, MessagingError> {
        self.rates
            .rate_for(quoted.country)
            .map(|rate| rate.carrier_cost)
            .ok_or(MessagingError::Rating(
                RatingError::UnsupportedDestination {
                    country: quoted.country,
                },
            ))
    }

    /// Gives a reserved message's cost back, once: first marks it as being
    /// voided (so that a late answer from Twilio can no longer mark it
    /// sent), then refunds the debit if there was one (`debited`; a refund
    /// keyed to a debit that never happened would create money), then
    /// marks it voided. Stopped half-way, the sweep finishes it.
    async fn void(
        &self,
        record: &MessageRecord,
        debited: bool,
    ) -> Result<VoidStart, MessagingError> {
        if let VoidStart::Resolved(message) = self.store.messages().begin_void(record.id).await? {
            return Ok(VoidStart::Resolved(message));
        }
        if let (Some(account_id), true) = (record.account_id, debited) {
            let refund = Refund {
                amount: record.charged,
                idempotency_key: IdempotencyKey::message_void(record.id),
                description: "SMS not sent: cost given back".to_string(),
                event: None,
                order_id: None,
            };
            self.registry.send(account_id, refund).await?;
        }
        self.store.messages().mark_voided(record.id).await?;
        // A warning this message's debit set off was waiting for it.
        self.store.notices_ready().notify_one();
        Ok(VoidStart::Started)
    }

    /// Sends a service message (not charged) and records its cost.
    pub async fn send_service(
        &self,
        account_id: Option<AccountId>,
        to: &str,
        body: &str,
        kind: MessageKind,
        now_ms: i64,
    ) -> Result<MessageRecord, MessagingError> {
        let accepted = self
            .sender
            .send(to, body)
            .await
            .map_err(|error| match error {
                SenderError::Refused(detail) => MessagingError::Refused {
                    opted_out: false,
                    detail,
                },
                SenderError::OptedOut(detail) => MessagingError::Refused {
                    opted_out: true,
                    detail,
                },
                SenderError::Unavailable(detail) => MessagingError::Unavailable(detail),
                other => MessagingError::NotSent(other.to_string()),
            })?;
        self.record_service(account_id, to, body, kind, Some(accepted.sid), now_ms)
            .await
    }

    /// Quotes a service message ahead, so that its record can go into the
    /// same write as whatever caused it.
    pub fn prepare_service(
        &self,
        account_id: Option<AccountId>,
        to: &PhoneNumber,
        body: &str,
        kind: MessageKind,
        sid: Option<String>,
        now_ms: i64,
    ) -> Result<NewMessage, MessagingError> {
        let quoted = quote_to(to, body, false, &self.rates)?;
        let carrier_cost = self.carrier_cost(&quoted)?;
        let message = new_message(
            account_id,
            kind,
            &quoted,
            carrier_cost,
            Money::ZERO,
            MessageState::Sent,
            now_ms,
        );
        Ok(match sid {
            Some(sid) => self.sent_as(message, sid, now_ms),
            None => message,
        })
    }

    /// A service message quoted ahead, once Twilio took it as `sid`: its
    /// price is looked up later.
    pub fn sent_as(&self, mut message: NewMessage, sid: String, now_ms: i64) -> NewMessage {
        message.next_price_check_at =
            Some(now_ms.saturating_add(crate::clock::millis(self.settings.price_check_delay)));
        message.twilio_sid = Some(sid);
        message
    }

    /// Records the cost of a service message (a TwiML reply is sent by
    /// Twilio itself, so it has no id here).
    pub async fn record_service(
        &self,
        account_id: Option<AccountId>,
        to: &str,
        body: &str,
        kind: MessageKind,
        sid: Option<String>,
        now_ms: i64,
    ) -> Result<MessageRecord, MessagingError> {
        let to = PhoneNumber::parse(to).map_err(RatingError::from)?;
        let prepared = self.prepare_service(account_id, &to, body, kind, sid, now_ms)?;
        Ok(self.store.messages().record_service(prepared).await?)
    }

    /// A status callback: records the status; a message that `failed`
    /// before leaving Twilio is refunded once.
    /// A status for a sid not recorded yet is kept and applied when the
    /// send's answer is recorded.
    pub async fn handle_status(
        &self,
        sid: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<Option<MessageRecord>, MessagingError> {
        let record = self
            .store
            .messages()
            .record_status(sid.to_string(), status.to_string(), now_ms)
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        if status == "failed" && record.charged.is_positive() && !record.refunded {
            if let Some(account_id) = record.account_id {
                let refund = Refund {
                    amount: record.charged,
                    idempotency_key: IdempotencyKey::message_refund(record.id),
                    description: "SMS failed before leaving Twilio: refunded".to_string(),
                    order_id: None,
                    event: None,
                };
                self.registry.send(account_id, refund).await?;
                self.store.messages().mark_refunded(record.id).await?;
            }
        }
        Ok(Some(record))
    }
}

/// Twilio's error code for a number that opted out (texted STOP to the
/// service's number): "Attempt to send to unsubscribed recipient".
pub const OPTED_OUT_ERROR: &str = "21610";

/// What a signed Twilio status callback says of a message.
#[derive(Clone, Copy, Debug)]
pub struct StatusCallback<'a> {
    pub sid: &'a str,
    pub status: &'a str,
    /// Twilio's error code, when it gave one (`21610`: opted out).
    pub error_code: Option<&'a str>,
    /// The number the message went to, when the callback says.
    pub to: Option<&'a str>,
    /// The number it was sent from, when the callback says.
    pub from: Option<&'a str>,
}

impl Messaging {
    /// A signed status callback: as [`Messaging::handle_status`]; a
    /// message that `failed` (or was `undelivered`) with 21610 records
    /// that its number opted out, as a 21610 answer to a send does, so that
    /// nothing more goes to it. A callback carries no time and may be sent
    /// again (replayed, or late): about a message sent before the number
    /// opted back in (START), it records nothing. For a message not
    /// recorded (its callback came before the send's answer was recorded)
    /// the number is the callback's `To`, believed only when its `From` is
    /// the service's number (`service_number`): another number of the
    /// Twilio account is not this service's.
    pub async fn handle_status_callback(
        &self,
        callback: StatusCallback<'_>,
        service_number: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<MessageRecord>, MessagingError> {
        let StatusCallback {
            sid,
            status,
            error_code,
            to,
            from,
        } = callback;
        let record = self.handle_status(sid, status, now_ms).await?;
        let refused = matches!(status, "failed" | "undelivered");
        if !refused || error_code != Some(OPTED_OUT_ERROR) {
            return Ok(record);
        }
        let (to, sent_at_ms) = match &record {
            Some(record) => (record.to.as_str(), Some(record.created_at_ms)),
            None => match to {
                Some(to) if from.is_some() && from == service_number => (to, None),
                _ => {
                    tracing::warn!(
                        sid,
                        "Twilio said an unknown message's number opted out (21610), but not from the service's number: nothing recorded"
                    );
                    return Ok(record);
                }
            },
        };
        let phone = PhoneNumber::parse(to).map_err(RatingError::from)?;
        let recorded = self
            .store
            .opt_outs()
            .record_carrier_opt_out(phone, sent_at_ms, now_ms)
            .await?;
        if !recorded {
            tracing::info!(
                sid,
                "a 21610 callback about a message sent before its number opted back in: nothing recorded"
            );
        }
        Ok(record)
    }
}

fn new_message(
    account_id: Option<AccountId>,
    kind: MessageKind,
    quoted: &Quote,
    carrier_cost: Money,
    charged: Money,
    state: MessageState,
    now_ms: i64,
) -> NewMessage {
    NewMessage {
        account_id,
        kind,
        idempotency_key: None,
        to: quoted.to.clone(),
        country: quoted.country.as_str().to_string(),
        encoding: quoted.encoding.as_str().to_string(),
        segments: i64::from(quoted.segments),
        price_per_segment: Money::from_micros(quoted.price_per_segment_micros),
        carrier_cost_per_segment: carrier_cost,
        charged,
        state,
        twilio_sid: None,
        next_price_check_at: None,
        created_at_ms: now_ms,
        instance_id: None,
        body_sha256: None,
    }
}

/// The answer to a send whose message another flow resolved first.
fn answer_resolved(message: MessageRecord) -> Result<SentMessage, MessagingError> {
    match message.state {
        MessageState::Sent => Ok(SentMessage {
            message,
            balance_after_micros: None,
            replayed: true,
        }),
        MessageState::Voided => Err(MessagingError::NotSent(
            "the message was not sent, and its cost was given back".into(),
        )),
        MessageState::Reserved => Err(MessagingError::InProgress),
    }
}

//! Notices: SMS the service owes a customer because of something that
//! happened to their account (a debit left the balance low, …). A notice is
//! queued in the same transaction as the ledger write that made it due, so
//! it is never lost, and sent by a worker after the request that caused it
//! has been answered, so Twilio's latency is nobody's wait. A worker claims
//! one notice at a time, under a lease from then, so a notice is never
//! held while its worker sends others. It is sent at most once: when
//! Twilio may have taken it but did not say (a timeout), or its worker
//! stopped mid-send (the lease ran out), it is left `unknown`, never sent
//! again; when Twilio said no, or could not be reached, or anything failed
//! before the send (a read, the price), it is put back and tried again
//! later.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::records::MessageKind;
use super::records::NewMessage;
use super::{Messaging, MessagingError, SenderError};
use crate::accounts::{card_words, Account};
use crate::ledger::AccountId;
use crate::money::Money;
use crate::opt_outs::{OptOut, OptOutVia};
use crate::store::error::StoreError;

/// What a notice says, with what it needs to say it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoticeKind {
    /// A debit left the balance below the low-balance threshold.
    LowBalanceWarning {
        #[serde(rename = "balance_micros")]
        balance: Money,
        /// An auto top-up is on its way (the warning says so instead of
        /// asking the holder to buy).
        #[serde(default)]
        top_up: bool,
    },
    /// News of the account's auto top-up.
    AutoTopUp { event: AutoTopUpNotice },
}

/// What a holder is told about their auto top-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AutoTopUpNotice {
    /// The card was declined.
    Declined {
        #[serde(rename = "amount_micros")]
        amount: Money,
        message: String,
    },
    /// The bank wants the holder to confirm; finish on the web.
    AuthenticationRequired {
        #[serde(rename = "amount_micros")]
        amount: Money,
    },
    /// Stripe refused for another reason.
    Failed {
        #[serde(rename = "amount_micros")]
        amount: Money,
    },
    /// After this many failures in a row, auto top-up turned itself off.
    TurnedOff { failures: i64 },
    /// The saved card was removed or expired: auto top-up is paused.
    CardForgotten,
}

impl NoticeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NoticeKind::LowBalanceWarning { .. } => "low_balance_warning",
            NoticeKind::AutoTopUp { .. } => "auto_top_up",
        }
    }

    /// The kind of service message it is sent as.
    fn message_kind(&self) -> MessageKind {
        match self {
            NoticeKind::LowBalanceWarning { .. } | NoticeKind::AutoTopUp { .. } => {
                MessageKind::Warning
            }
        }
    }
}

/// A notice whose payload cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the notice {dedupe_key} cannot be written: {reason}")]
pub struct NoticeError {
    pub dedupe_key: String,
    pub reason: String,
}

impl From<NoticeError> for StoreError {
    fn from(error: NoticeError) -> StoreError {
        StoreError::Database(error.to_string())
    }
}

/// A notice to queue with a ledger write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNotice {
    pub account_id: AccountId,
    pub kind: NoticeKind,
    /// Names the notice, so that it is queued once however often the write
    /// that causes it is retried.
    pub dedupe_key: String,
    pub created_at_ms: i64,
    /// `kind` as stored, made when the notice is: a notice that cannot be
    /// written fails the one write that carries it, before any batch.
    payload: String,
    /// The outbound message whose debit made this notice due: it is not
    /// sent before that message is resolved (sent or voided).
    pub after_message: Option<i64>,
}

impl NewNotice {
    pub fn new(
        account_id: AccountId,
        kind: NoticeKind,
        dedupe_key: String,
        created_at_ms: i64,
    ) -> Result<NewNotice, NoticeError> {
        let payload = serde_json::to_string(&kind).map_err(|error| NoticeError {
            dedupe_key: dedupe_key.clone(),
            reason: error.to_string(),
        })?;
        Ok(NewNotice {
            account_id,
            kind,
            dedupe_key,
            created_at_ms,
            payload,
            after_message: None,
        })
    }

    /// This notice, waiting for `message_id` to be resolved.
    pub fn after_message(mut self, message_id: Option<i64>) -> NewNotice {
        self.after_message = message_id;
        self
    }

    /// What the `payload` column holds.
    pub fn payload(&self) -> &str {
        &self.payload
    }
}

/// Where a notice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NoticeState {
    Pending,
    Sending,
    Sent,
    Failed,
    Unknown,
    /// Not sent, and never to be: a low-balance warning set off by a
    /// message that was then not sent (its cost given back), so the
    /// balance it described did not last.
    Withdrawn,
    /// Not sent, and never to be: the number opted out of texts (it texted
    /// STOP, or Twilio refused it for that: 21610).
    OptedOut,
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Pending => "pending",
            NoticeState::Sending => "sending",
            NoticeState::Sent => "sent",
            NoticeState::Failed => "failed",
            NoticeState::Unknown => "unknown",
            NoticeState::Withdrawn => "withdrawn",
            NoticeState::OptedOut => "opted_out",
        }
    }

    pub fn parse(text: &str) -> Option<NoticeState> {
        match text {
            "pending" => Some(NoticeState::Pending),
            "sending" => Some(NoticeState::Sending),
            "sent" => Some(NoticeState::Sent),
            "failed" => Some(NoticeState::Failed),
            "unknown" => Some(NoticeState::Unknown),
            "withdrawn" => Some(NoticeState::Withdrawn),
            "opted_out" => Some(NoticeState::OptedOut),
            _ => None,
        }
    }
}

/// A queued notice, as claimed by a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notice {
    pub id: i64,
    pub account_id: AccountId,
    pub kind: NoticeKind,
    pub state: NoticeState,
    /// Tries so far, this one included when claimed.
    pub attempts: i64,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
    #[serde(
        rename = "sent_at",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub sent_at_ms: Option<i64>,
    /// Why the last try did not send it.
    pub last_error: Option<String>,
}

/// How long a worker may take to send a claimed notice (claimed just
/// before: reading its account, pricing it, Twilio's answer) before the
/// notice counts as `unknown` (its worker stopped mid-send).
pub const NOTICE_LEASE_MS: i64 = 60_000;
/// Tries before a notice that keeps failing is given up.
const MAX_NOTICE_ATTEMPTS: i64 = 5;
/// Notices sent per round (each claimed when its turn comes).
const NOTICES_PER_ROUND: usize = 100;

/// The wait before the next try of a notice Twilio could not take.
fn retry_delay(attempts: i64) -> Duration {
    Duration::from_secs(30 * (1 << attempts.clamp(0, 6)))
}

/// Why a notice to a number that opted out was not sent, for the console.
fn opted_out_words(opt_out: &OptOut) -> String {
    match (&opt_out.via, &opt_out.keyword) {
        (OptOutVia::Keyword, Some(word)) => format!("the number opted out of texts ({word})"),
        _ => "the number opted out of texts".to_string(),
    }
}

impl Messaging {
    /// The text a notice is sent as, for its account (whose card it names)
    /// and, when an auto top-up is on its way, what it will charge.
    fn notice_text(&self, kind: &NoticeKind, account: &Account, top_up: Option<Money>) -> String {
        let link = &self.settings.web_link;
        let card = card_words(account.card.as_ref());
        match kind {
            NoticeKind::LowBalanceWarning { balance, top_up: true } => match top_up {
                Some(amount) => format!(
                    "Your SMS credit is low: {balance} left. Topping up {amount} from your {card}."
                ),
                None => format!(
                    "Your SMS credit is low: {balance} left. An auto top-up from your {card} is on its way."
                ),
            },
            NoticeKind::LowBalanceWarning { balance, top_up: false } => format!(
                "Your SMS credit is low: {balance} left. Text BUY $10 or top up at {link}"
            ),
            NoticeKind::AutoTopUp { event } => match event {
                AutoTopUpNotice::Declined { amount, message } => format!(
                    "Your auto top-up of {amount} from your {card} was declined: {message} Update your card at {link}"
                ),
                AutoTopUpNotice::AuthenticationRequired { amount } => format!(
                    "Your bank needs you to confirm the auto top-up of {amount}. Finish it on the web: {link}"
                ),
                AutoTopUpNotice::Failed { amount } => format!(
                    "Your auto top-up of {amount} could not be charged. Top up at {link}"
                ),
                AutoTopUpNotice::TurnedOff { failures } => format!(
                    "Auto top-up is now off after {failures} failed tries in a row. Turn it on again on the web or by texting AUTO ON."
                ),
                AutoTopUpNotice::CardForgotten => format!(
                    "Your saved card is no longer usable, so auto top-up is paused. Top up on the web to save a new card: {link}"
                ),
            },
        }
    }

    /// Sends the notices that are due, one after another, each claimed
    /// when its turn comes; answers how many went out. Run after every
    /// commit that queued some, and now and then.
    pub async fn deliver_notices(&self) -> Result<usize, MessagingError> {
        let clock = std::sync::Arc::clone(self.registry.clock());
        let notices = self.store.messages();
        let abandoned = notices.abandon_stale_notices(clock.now_ms()).await?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "notices whose worker stopped mid-send are marked unknown, not sent again"
            );
        }
        let mut sent = 0;
        for _ in 0..NOTICES_PER_ROUND {
            let now_ms = clock.now_ms();
            let claimed = notices
                .claim_notices(now_ms, now_ms.saturating_add(NOTICE_LEASE_MS), 1)
                .await?;
            if claimed.is_empty() {
                break;
            }
            for notice in claimed {
                match self.send_notice(&notice, now_ms).await {
                    Ok(()) => sent += 1,
                    Err(error) => {
                        tracing::warn!(notice = notice.id, %error, "could not send a notice");
                    }
                }
            }
        }
        Ok(sent)
    }

    /// What a claimed notice is sent as: the number, the text, and its
    /// cost as a service message (priced before it is sent).
    async fn prepare_notice(
        &self,
        notice: &Notice,
        now_ms: i64,
    ) -> Result<(Account, String, NewMessage), MessagingError> {
        let account = self
            .store
            .accounts()
            .get(notice.account_id)
            .await?
            .ok_or(MessagingError::AccountNotFound(notice.account_id))?;
        let top_up = match &notice.kind {
            NoticeKind::LowBalanceWarning { top_up: true, .. } => self
                .store
                .auto_top_up()
                .auto_settings(account.id)
                .await?
                .filter(|settings| settings.enabled)
                .map(|settings| settings.amount),
            _ => None,
        };
        let text = self.notice_text(&notice.kind, &account, top_up);
        let cost = self.prepare_service(
            Some(account.id),
            &account.phone,
            &text,
            notice.kind.message_kind(),
            None,
            now_ms,
        )?;
        Ok((account, text, cost))
    }

    async fn send_notice(&self, notice: &Notice, now_ms: i64) -> Result<(), MessagingError> {
        let notices = self.store.messages();
        let (account, text, cost) = match self.prepare_notice(notice, now_ms).await {
            Ok(prepared) => prepared,
            Err(error) => {
                // Nothing went out: put it back, to be tried again.
                self.not_sent(notice, &error.to_string(), now_ms).await?;
                return Err(error);
            }
        };
        // Nothing goes to a number that opted out: the notice ends there.
        if let Some(opt_out) = &account.opt_out {
            notices
                .notice_ended(notice.id, NoticeState::OptedOut, opted_out_words(opt_out))
                .await?;
            return Ok(());
        }
        match self.sender.send(account.phone.as_str(), &text).await {
            // Final: the number opted out where Twilio enforces it.
            Err(SenderError::OptedOut(detail)) => {
                self.store
                    .opt_outs()
                    .record_opt_out(account.phone.clone(), OptOutVia::Carrier, None, now_ms)
                    .await?;
                notices
                    .notice_ended(
                        notice.id,
                        NoticeState::OptedOut,
                        format!("Twilio refused the number: it opted out ({detail})"),
                    )
                    .await?;
                Ok(())
            }
            Ok(accepted) => {
                let cost = self.sent_as(cost, accepted.sid.clone(), now_ms);
                notices
                    .notice_sent(notice.id, accepted.sid, cost, now_ms)
                    .await?;
                Ok(())
            }
            // It may have gone out: never send it again.
            Err(error @ SenderError::Unanswered(_)) => {
                notices
                    .notice_ended(notice.id, NoticeState::Unknown, error.to_string())
                    .await?;
                Err(MessagingError::NotSent(error.to_string()))
            }
            // Twilio did not take it.
            Err(error) => {
                self.not_sent(notice, &error.to_string(), now_ms).await?;
                Err(MessagingError::NotSent(error.to_string()))
            }
        }
    }

    /// A claimed notice that surely did not go out: tried again later, or
    /// given up after a few tries.
    async fn not_sent(
        &self,
        notice: &Notice,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), MessagingError> {
        let notices = self.store.messages();
        if notice.attempts >= MAX_NOTICE_ATTEMPTS {
            notices
                .notice_ended(notice.id, NoticeState::Failed, reason.to_string())
                .await?;
        } else {
            let next = now_ms.saturating_add(crate::clock::millis(retry_delay(notice.attempts)));
            notices
                .notice_retry(notice.id, next, reason.to_string())
                .await?;
        }
        Ok(())
    }
}

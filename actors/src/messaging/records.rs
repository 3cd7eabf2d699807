//! Messages as stored: what each was for, where its reservation stands,
//! what it cost the account, and what Twilio charged.

use serde::Serialize;

use crate::ledger::AccountId;
use crate::money::Money;
use crate::store::error::{StoreCause, StoreError};

/// What a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// For the host application; charged to the account.
    Outbound,
    /// A reply to an SMS command: a service message, costed, not charged.
    Reply,
    /// A low-balance warning: a service message.
    Warning,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Outbound => "outbound",
            MessageKind::Reply => "reply",
            MessageKind::Warning => "warning",
        }
    }

    pub fn parse(text: &str) -> Option<MessageKind> {
        match text {
            "outbound" => Some(MessageKind::Outbound),
            "reply" => Some(MessageKind::Reply),
            "warning" => Some(MessageKind::Warning),
            _ => None,
        }
    }
}

/// Where a message's reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Debited, not yet handed to Twilio.
    Reserved,
    /// Accepted by Twilio.
    Sent,
    /// Not sent; the debit was given back.
    Voided,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Reserved => "reserved",
            MessageState::Sent => "sent",
            MessageState::Voided => "voided",
        }
    }

    pub fn parse(text: &str) -> Option<MessageState> {
        match text {
            "reserved" => Some(MessageState::Reserved),
            "sent" => Some(MessageState::Sent),
            "voided" => Some(MessageState::Voided),
            _ => None,
        }
    }
}

/// A message sent (or being sent), with its costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageRecord {
    pub id: i64,
    pub account_id: Option<AccountId>,
    pub kind: MessageKind,
    pub idempotency_key: Option<String>,
    pub to: String,
    pub country: String,
    pub encoding: String,
    pub segments: i64,
    #[serde(rename = "price_per_segment_micros")]
    pub price_per_segment: Money,
    #[serde(rename = "charged_micros")]
    pub charged: Money,
    pub state: MessageState,
    pub twilio_sid: Option<String>,
    pub twilio_status: Option<String>,
    /// Its cost was given back: a message Twilio reported `failed`, or a
    /// send that was not made (`voided`), so that neither reads as a charge.
    pub refunded: bool,
    #[serde(rename = "actual_cost_micros")]
    pub actual_cost: Option<Money>,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
}

/// A message to record.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub account_id: Option<AccountId>,
    pub kind: MessageKind,
    /// The host application's key (outbound messages).
    pub idempotency_key: Option<String>,
    pub to: String,
    pub country: String,
    pub encoding: String,
    pub segments: i64,
    pub price_per_segment: Money,
    pub carrier_cost_per_segment: Money,
    pub charged: Money,
    pub state: MessageState,
    pub twilio_sid: Option<String>,
    pub next_price_check_at: Option<i64>,
    pub created_at_ms: i64,
    /// The instance that reserved it (outbound messages), for crash recovery.
    pub instance_id: Option<String>,
    /// SHA-256 (hex) of the body (outbound messages), by which the sweep of
    /// open reservations tells the message among those Twilio lists.
    pub body_sha256: Option<String>,
}

/// What a sent message cost: the reconciliation report's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentCost {
    pub message_id: i64,
    pub twilio_sid: Option<String>,
    pub kind: MessageKind,
    pub country: String,
    pub segments: i64,
    pub charged: Money,
    pub carrier_cost_per_segment: Money,
    /// What Twilio charged, once known.
    pub actual_cost: Option<Money>,
}

/// Which open reservations a sweep takes (see
/// `MessageStore::claim_open_reservations`).
#[derive(Clone, Debug)]
pub struct ReservationSweep {
    /// The sweeping instance: its lease holds while it is alive.
    pub instance_id: String,
    pub now_ms: i64,
    /// An instance is alive while its last heartbeat is younger than its
    /// own timeout (`instances.timeout_ms`, which its heartbeat writes);
    /// this long for one that does not say (the sweeper's own timeout).
    /// A reservation of a gone instance is taken once it is older than
    /// this, too.
    pub fallback_timeout_ms: i64,
    /// A live instance's reservation made before this is taken (its own
    /// send is long over); one made since is left to it.
    pub stale_before_ms: i64,
    /// Each reservation taken is not taken again before this.
    pub lease_until_ms: i64,
    pub limit: i64,
}

/// A reservation a sweep took, to ask Twilio about it.
#[derive(Clone, Debug)]
pub struct OpenReservation {
    pub message: MessageRecord,
    /// SHA-256 (hex) of its body; `None` for one reserved by an earlier
    /// release, which did not keep it.
    pub body_sha256: Option<String>,
    /// Giving its cost back had begun: it is finished, never marked sent.
    pub voiding: bool,
    /// The instance that reserved it has stopped (no heartbeat for longer
    /// than its own timeout, or it left): no send of it is still in
    /// flight.
    pub owner_gone: bool,
}

/// What beginning a void found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoidStart {
    /// The message was reserved and is now being voided: from here on it
    /// can only be voided (a late `mark_sent` changes nothing).
    Started,
    /// It was resolved already (sent, or voided), as it now stands.
    Resolved(Box<MessageRecord>),
}

/// Why a message could not be marked sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkSentError {
    /// Another message holds this Twilio sid already: one Twilio message is
    /// never the send of two.
    #[error("Twilio's message {0} is recorded as another message's send")]
    SidTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StoreCause for MarkSentError {
    fn store_cause(&self) -> Option<&StoreError> {
        match self {
            MarkSentError::Store(error) => Some(error),
            MarkSentError::SidTaken(_) => None,
        }
    }
}

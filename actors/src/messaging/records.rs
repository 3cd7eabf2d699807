//! Messages as stored: what each was for, where its reservation stands,
//! what it cost the account, and what Twilio charged.

use serde::Serialize;

use crate::ledger::AccountId;
use crate::money::Money;

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
    pub refunded: bool,
    #[serde(rename = "actual_cost_micros")]
    pub actual_cost: Option<Money>,
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

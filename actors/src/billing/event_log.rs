//! What became of each Stripe event, as stored: the types the store keeps
//! and answers with (below the event handling that decides them).

use serde::{Deserialize, Serialize};

/// What became of an event, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Seen, not decided yet (being handled, or the handling was cut off:
    /// Stripe's retry decides it).
    Received,
    /// It took effect.
    Applied,
    /// Nothing to do (not an event this service acts on, not one of its orders).
    Ignored,
    /// It refers to state that does not exist yet (a refund before its
    /// payment); applied when that state appears.
    Waiting,
    /// It waited longer than Stripe retries (3 days) and was given up.
    Expired,
    /// It could not be read.
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Received => "received",
            EventStatus::Applied => "applied",
            EventStatus::Ignored => "ignored",
            EventStatus::Waiting => "waiting",
            EventStatus::Expired => "expired",
            EventStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<EventStatus> {
        match text {
            "received" => Some(EventStatus::Received),
            "applied" => Some(EventStatus::Applied),
            "ignored" => Some(EventStatus::Ignored),
            "waiting" => Some(EventStatus::Waiting),
            "expired" => Some(EventStatus::Expired),
            "failed" => Some(EventStatus::Failed),
            _ => None,
        }
    }

    /// Whether the event is decided for good: a delivery of it again does nothing.
    pub fn is_final(self) -> bool {
        !matches!(self, EventStatus::Received | EventStatus::Waiting)
    }
}

/// A stored event, for admins and for waking waiting ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRecord {
    pub event_id: String,
    pub event_type: String,
    pub status: EventStatus,
    /// What a waiting event waits for (`payment_intent:pi_…`).
    pub waiting_on: Option<String>,
    /// What happened, in words.
    pub detail: Option<String>,
    /// The event in the core's words, as JSON.
    #[serde(skip)]
    pub payload: Option<String>,
    #[serde(
        rename = "received_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub received_at_ms: i64,
    #[serde(
        rename = "decided_at",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub decided_at_ms: Option<i64>,
}

//! What the operator's console charts: payments, refunds, messages and
//! segments by hour (the page sums them into the reader's own days), and
//! the margin per destination country: what customers were charged against
//! what the carrier charged (its actual price once known, else the rate
//! table's estimate).

use serde::Serialize;

use crate::billing::disputes::DisputeStatus;

/// One hour's figures (hours with none are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HourFigures {
    /// The hour's start (UTC).
    #[serde(rename = "hour", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub hour_ms: i64,
    /// Paid for access and credit (orders completed).
    pub payments_micros: i64,
    /// Credit taken back for payments refunded.
    pub refunds_micros: i64,
    /// Messages sent (charged and service messages).
    pub messages: i64,
    pub segments: i64,
}

/// One destination country's messages since a moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CountryMargin {
    pub country: String,
    pub messages: i64,
    pub segments: i64,
    /// What customers were charged.
    pub charged_micros: i64,
    /// What the carrier charged: its actual price where reconciliation has
    /// it, the rate table's carrier cost where not yet.
    pub carrier_cost_micros: i64,
    /// Messages whose carrier price is the actual one.
    pub priced_messages: i64,
}

/// Merges per-source rows into hours, in order.
pub fn merge_hours(rows: impl IntoIterator<Item = HourFigures>) -> Vec<HourFigures> {
    let mut hours: std::collections::BTreeMap<i64, HourFigures> = std::collections::BTreeMap::new();
    for row in rows {
        let hour = hours.entry(row.hour_ms).or_insert_with(|| HourFigures {
            hour_ms: row.hour_ms,
            ..HourFigures::default()
        });
        hour.payments_micros += row.payments_micros;
        hour.refunds_micros += row.refunds_micros;
        hour.messages += row.messages;
        hour.segments += row.segments;
    }
    hours.into_values().collect()
}

/// What needs the operator's attention, each list the latest (or worst)
/// first and at most `limit` long.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attention {
    /// Accounts below the low-balance threshold, the lowest first.
    pub low_balances: Vec<LowBalance>,
    /// Auto top-ups that turned themselves off (or were paused), and why.
    pub auto_top_ups_off: Vec<AutoTopUpOff>,
    /// Notices that were not sent: `failed`, or `unknown` (a worker
    /// stopped mid-send).
    pub notices_unsent: Vec<UnsentNotice>,
    /// Messages reserved (debited, not yet handed to Twilio) for long.
    pub reservations_open: Vec<OpenReservation>,
    /// Disputes (and inquiries) of payments not closed yet, the one whose
    /// evidence is due first first.
    pub disputes_open: Vec<OpenDispute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LowBalance {
    pub account_id: i64,
    pub phone: String,
    pub balance_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTopUpOff {
    pub account_id: i64,
    pub reason: String,
    #[serde(rename = "since", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub since_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnsentNotice {
    pub notice_id: i64,
    pub account_id: i64,
    pub state: String,
    pub error: Option<String>,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpenReservation {
    pub message_id: i64,
    pub account_id: Option<i64>,
    pub charged_micros: i64,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
}

/// A dispute of a payment that is not closed: an inquiry (no credit
/// taken back yet) or a chargeback (the disputed credit taken back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpenDispute {
    pub dispute_id: String,
    pub account_id: i64,
    pub order_id: i64,
    pub amount_micros: i64,
    /// Stripe's status: `warning_needs_response` and `warning_under_review`
    /// (an inquiry), `needs_response` and `under_review` (a chargeback).
    pub status: DisputeStatus,
    pub reason: String,
    /// When Stripe wants the evidence by, if it said.
    #[serde(
        rename = "respond_by",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub respond_by_ms: Option<i64>,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
}

/// What the accounts list shows beside each account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountActivity {
    pub account_id: i64,
    /// Whether auto top-up is on.
    pub auto_top_up: bool,
    /// When its balance last changed (its latest ledger row, or its making).
    #[serde(
        rename = "last_activity_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_activity_ms: i64,
}

//! What the operator's console charts: payments, refunds, messages and
//! segments by hour (the page sums them into the reader's own days), and
//! the margin per destination country: what customers were charged against
//! what the carrier charged (its actual price once known, else the rate
//! table's estimate).

use serde::Serialize;

/// One hour's figures (hours with none are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HourFigures {
    /// The hour's start, Unix milliseconds (UTC).
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

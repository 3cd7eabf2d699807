//! Reconciliation with Twilio's bill: fetching each sent message's actual
//! price some time after sending (Twilio's `price` is null until known and
//! not reliably in status callbacks), and the report that compares what was
//! charged with what Twilio charged, per country and overall.

use std::collections::BTreeMap;

use serde::Serialize;

use super::records::{MessageKind, SentCost};
use super::Messaging;
use crate::money::Money;
use crate::store::{Store, StoreError};

/// How many times a price is looked up before giving up, and the wait
/// between looks (doubling).
pub const MAX_PRICE_CHECKS: i64 = 6;

/// One line of the report: a country, or everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconciliationLine {
    pub messages: i64,
    pub segments: i64,
    pub charged_micros: i64,
    /// What the rate table expected the carrier to charge.
    pub expected_carrier_cost_micros: i64,
    /// What Twilio charged, for the messages whose price is known.
    pub actual_carrier_cost_micros: i64,
    pub messages_with_actual_cost: i64,
    /// (charged − actual) / charged, in hundredths of a percent, over the
    /// messages whose price is known; `None` when nothing was charged.
    pub margin_basis_points: Option<i64>,
}

/// A message whose actual cost per segment is not the table's carrier cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostMismatch {
    pub message_id: i64,
    pub twilio_sid: Option<String>,
    pub country: String,
    pub segments: i64,
    pub expected_per_segment_micros: i64,
    pub actual_per_segment_micros: i64,
}

/// The report: charged messages per country and overall; service messages
/// (command replies and warnings, not charged) apart, as the cost of
/// running the service, so they do not blur the margin on what was sold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReconciliationReport {
    pub overall: ReconciliationLine,
    pub by_country: BTreeMap<String, ReconciliationLine>,
    pub service: ReconciliationLine,
    pub mismatches: Vec<CostMismatch>,
    /// Auto top-up attempts by status (`succeeded`, `declined`, …): how
    /// many and how much, so that the charges the service started itself
    /// are visible beside what it sold.
    pub auto_top_ups: BTreeMap<String, AutoTopUpLine>,
}

/// Auto top-up attempts of one status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTopUpLine {
    pub attempts: i64,
    pub amount_micros: i64,
}

fn add(
    line: &mut ReconciliationLine,
    segments: i64,
    charged: i64,
    expected: i64,
    actual: Option<i64>,
) {
    line.messages += 1;
    line.segments += segments;
    line.charged_micros += charged;
    line.expected_carrier_cost_micros += expected;
    if let Some(actual) = actual {
        line.actual_carrier_cost_micros += actual;
        line.messages_with_actual_cost += 1;
    }
}

/// Builds the report from what every sent message cost.
pub fn report(costs: &[SentCost]) -> ReconciliationReport {
    let mut report = ReconciliationReport::default();
    // Charged amounts of the messages whose actual price is known, for margins.
    let mut charged_with_actual: BTreeMap<String, i64> = BTreeMap::new();
    for cost in costs {
        let segments = cost.segments;
        let charged = cost.charged.micros();
        let carrier_per_segment = cost.carrier_cost_per_segment.micros();
        let actual = cost.actual_cost.map(Money::micros);
        let charged_to_account = cost.kind == MessageKind::Outbound;
        let expected = carrier_per_segment * segments;
        if charged_to_account {
            add(&mut report.overall, segments, charged, expected, actual);
            add(
                report.by_country.entry(cost.country.clone()).or_default(),
                segments,
                charged,
                expected,
                actual,
            );
        } else {
            add(&mut report.service, segments, charged, expected, actual);
        }
        if let Some(actual) = actual {
            if charged_to_account {
                *charged_with_actual.entry(cost.country.clone()).or_default() += charged;
                *charged_with_actual.entry(String::new()).or_default() += charged;
            }
            if actual != expected {
                report.mismatches.push(CostMismatch {
                    message_id: cost.message_id,
                    twilio_sid: cost.twilio_sid.clone(),
                    country: cost.country.clone(),
                    segments,
                    expected_per_segment_micros: carrier_per_segment,
                    actual_per_segment_micros: actual / segments.max(1),
                });
            }
        }
    }
    let margin =
        |charged: i64, actual: i64| (charged > 0).then(|| (charged - actual) * 10_000 / charged);
    report.overall.margin_basis_points = margin(
        charged_with_actual.get("").copied().unwrap_or(0),
        report.overall.actual_carrier_cost_micros,
    );
    for (country, line) in report.by_country.iter_mut() {
        line.margin_basis_points = margin(
            charged_with_actual.get(country).copied().unwrap_or(0),
            line.actual_carrier_cost_micros,
        );
    }
    report
}

/// The report, read from a store.
pub async fn report_from(store: &Store) -> Result<ReconciliationReport, StoreError> {
    let mut report = report(&store.messages().sent_costs().await?);
    for (status, attempts, amount) in store.auto_top_up().auto_top_up_totals().await? {
        report.auto_top_ups.insert(
            status.as_str().to_string(),
            AutoTopUpLine {
                attempts,
                amount_micros: amount.micros(),
            },
        );
    }
    Ok(report)
}

/// How long a worker may take to look up one batch of prices before
/// another worker may look them up again.
const PRICE_CHECK_LEASE_MS: i64 = 60_000;

impl Messaging {
    /// Looks up Twilio's price of the messages that are due; returns how
    /// many prices became known. Run periodically.
    pub async fn check_prices(&self, now_ms: i64) -> Result<usize, super::MessagingError> {
        let due = self
            .store
            .messages()
            .claim_price_checks(now_ms, now_ms + PRICE_CHECK_LEASE_MS, 100)
            .await?;
        let mut known = 0;
        let base_delay = crate::clock::millis(self.settings.price_check_delay).max(1000);
        for check in due {
            let price = match self.sender.fetch_price(&check.twilio_sid).await {
                Ok(price) => price,
                Err(error) => {
                    tracing::warn!(sid = %check.twilio_sid, %error, "could not fetch the Twilio price; will retry");
                    None
                }
            };
            if price.is_some() {
                known += 1;
            }
            let next_check_at = match price {
                Some(_) => None,
                None if check.checks + 1 >= MAX_PRICE_CHECKS => None,
                None => Some(now_ms + base_delay * (1 << (check.checks + 1).min(10))),
            };
            self.store
                .messages()
                .record_price_check(check.message_id, price, next_check_at)
                .await?;
        }
        Ok(known)
    }
}

/// Parses Twilio's price (a negative decimal string such as "-0.00750")
/// into a positive amount.
pub fn parse_twilio_price(text: &str) -> Option<Money> {
    let amount = Money::parse_dollars(text).ok()?;
    Some(if amount.is_negative() {
        -amount
    } else {
        amount
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_prices_are_negative_strings() {
        assert_eq!(
            parse_twilio_price("-0.00750"),
            Some(Money::from_micros(7_500))
        );
        assert_eq!(
            parse_twilio_price("-0.0113"),
            Some(Money::from_micros(11_300))
        );
        assert_eq!(
            parse_twilio_price("0.0113"),
            Some(Money::from_micros(11_300))
        );
        assert_eq!(parse_twilio_price("n/a"), None);
    }
}

//! `sms-credit reconcile`: what messages were charged against what Twilio
//! actually charged, per country and overall.

use clap::Args;
use sms_credit_actors::messaging::reconcile::{self, ReconciliationLine};
use sms_credit_actors::Money;

use super::output::{print_json, with_store};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct ReconcileCommand {
    /// Print the report as JSON (the same as GET /v1/admin/reconciliation).
    #[arg(long)]
    json: bool,
}

fn margin(basis_points: Option<i64>) -> String {
    basis_points.map_or("n/a".to_string(), |points| {
        format!("{}.{:02}%", points / 100, (points % 100).abs())
    })
}

fn print_line(name: &str, line: &ReconciliationLine) {
    say!(
        "{name:<8} {:>8} {:>9} {:>14} {:>14} {:>14} {:>8}",
        line.messages,
        line.segments,
        Money::from_micros(line.charged_micros).to_string(),
        Money::from_micros(line.expected_carrier_cost_micros).to_string(),
        Money::from_micros(line.actual_carrier_cost_micros).to_string(),
        margin(line.margin_basis_points)
    );
}

impl ReconcileCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let report = with_store(settings, |store| async move {
            reconcile::report_from(&store)
                .await
                .map_err(|error| error.to_string())
        })?;
        if self.json {
            return print_json(&report);
        }
        say!(
            "{:<8} {:>8} {:>9} {:>14} {:>14} {:>14} {:>8}",
            "country",
            "messages",
            "segments",
            "charged",
            "expected cost",
            "actual cost",
            "margin"
        );
        for (country, country_line) in &report.by_country {
            print_line(country, country_line);
        }
        print_line("all", &report.overall);
        print_line("service", &report.service);
        for (status, auto) in &report.auto_top_ups {
            say!(
                "auto top-ups {status}: {} for {}",
                auto.attempts,
                Money::from_micros(auto.amount_micros)
            );
        }
        for mismatch in &report.mismatches {
            say!(
                "MISMATCH message {} ({}) to {}: {} per segment charged by Twilio, {} in the rate table",
                mismatch.message_id,
                mismatch.twilio_sid.as_deref().unwrap_or("-"),
                mismatch.country,
                Money::from_micros(mismatch.actual_per_segment_micros),
                Money::from_micros(mismatch.expected_per_segment_micros)
            );
        }
        Ok(())
    }
}

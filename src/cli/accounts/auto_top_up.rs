//! `sms-credit accounts auto-top-up`: shows an account's auto top-up, or
//! turns it on or off and changes its terms.

use clap::Args;
use sms_credit_actors::billing::auto_charge::{self, AutoTopUpView};
use sms_credit_actors::billing::auto_top_up::{ConsentVia, SettingRequest};
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::{AccountId, Money};

use crate::cli::output::{print_json, with_store};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct AutoTopUpCommand {
    /// The account.
    id: i64,
    /// Turn it on (needs a saved card and an active account; recorded as the admin's consent).
    #[arg(long, conflicts_with = "off")]
    on: bool,
    /// Turn it off.
    #[arg(long)]
    off: bool,
    /// Top up when a debit leaves the balance below this many dollars (e.g. 2.00).
    #[arg(long)]
    threshold: Option<String>,
    /// Charge this many whole dollars each time (at least 10).
    #[arg(long)]
    amount: Option<String>,
    /// Charge at most this many dollars a calendar month (UTC).
    #[arg(long)]
    cap: Option<String>,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

fn dollars(name: &str, text: Option<String>) -> Result<Option<Money>, String> {
    text.map(|text| Money::parse_dollars(&text).map_err(|error| format!("--{name}: {error}")))
        .transpose()
}

impl AutoTopUpCommand {
    /// What the flags ask to change (nothing when none is given).
    fn request(&self) -> Result<SettingRequest, String> {
        Ok(SettingRequest {
            enabled: match (self.on, self.off) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            threshold: dollars("threshold", self.threshold.clone())?,
            amount: dollars("amount", self.amount.clone())?,
            monthly_cap: dollars("cap", self.cap.clone())?,
        })
    }

    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let request = self.request()?;
        let changes = request.enabled.is_some()
            || request.threshold.is_some()
            || request.amount.is_some()
            || request.monthly_cap.is_some();
        let account_id = AccountId(self.id);
        let now_ms = SystemClock.now_ms();
        let shown = with_store(settings, |store| async move {
            if changes {
                auto_charge::change(&store, account_id, request, ConsentVia::Admin, now_ms)
                    .await
                    .map_err(|error| error.to_string())?;
            }
            auto_charge::view(&store, account_id, now_ms)
                .await
                .map_err(|error| error.to_string())
        })?;
        if self.json {
            print_json(&shown)?;
        } else {
            print_auto_top_up(account_id, &shown);
        }
        Ok(())
    }
}

/// An account's auto top-up, for people.
fn print_auto_top_up(account_id: AccountId, view: &AutoTopUpView) {
    let money = Money::from_micros;
    say!(
        "account {account_id} auto top-up {}: below {} charge {} (at most {} a month; {} this month)",
        if view.enabled { "on" } else { "off" },
        money(view.threshold_micros),
        money(view.amount_micros),
        money(view.monthly_cap_micros),
        money(view.month_charged_micros),
    );
    match &view.card {
        Some(card) => say!(
            "  card: {} ending {} (expires {:02}/{})",
            card.brand,
            card.last4,
            card.exp_month,
            card.exp_year
        ),
        None => say!("  card: none saved"),
    }
    if let Some(consent) = &view.consent {
        say!(
            "  turned on {} via {}: \"{}\"",
            format_rfc3339_ms(consent.at_ms),
            consent.via.as_str(),
            consent.text
        );
    }
    if let Some(reason) = &view.paused_reason {
        say!("  turned itself off: {reason}");
    }
    say!("  failures in a row: {}", view.consecutive_failures);
    for attempt in &view.attempts {
        say!(
            "  {}  {:>10}  {}{}",
            format_rfc3339_ms(attempt.at_ms),
            money(attempt.amount_micros).to_string(),
            attempt.status.as_str(),
            attempt
                .reason
                .as_deref()
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        );
    }
}

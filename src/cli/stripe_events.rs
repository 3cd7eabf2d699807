//! `sms-credit stripe-events`: the Stripe events received and what became
//! of each, newest first.

use clap::Args;
use serde_json::json;
use sms_credit_actors::billing::events::EventStatus;
use sms_credit_actors::clock::format_rfc3339_ms;

use super::output::{print_json, with_store};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct StripeEventsCommand {
    /// Only events of this status.
    #[arg(long, value_parser = ["received", "applied", "ignored", "waiting", "expired", "failed"])]
    status: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Print the events as JSON.
    #[arg(long)]
    json: bool,
}

impl StripeEventsCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let status = self.status.as_deref().and_then(EventStatus::parse);
        let limit = self.limit.clamp(1, 100_000);
        let events = with_store(settings, |store| async move {
            store
                .events()
                .list(status, limit)
                .await
                .map_err(|error| error.to_string())
        })?;
        if self.json {
            return print_json(&json!({ "events": events }));
        }
        say!(
            "{:<28} {:<34} {:<8} {:<24} detail",
            "received",
            "event",
            "status",
            "type"
        );
        for event in events {
            say!(
                "{:<28} {:<34} {:<8} {:<24} {}",
                format_rfc3339_ms(event.received_at_ms),
                event.event_id,
                event.status.as_str(),
                event.event_type,
                event.detail.unwrap_or_default()
            );
        }
        Ok(())
    }
}

//! `sms-credit quote`: what a message will cost, from the rate table alone.

use clap::Args;
use sms_credit_actors::rating::{quote, QuoteRequest};
use sms_credit_actors::Money;

use super::output::print_json;
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct QuoteCommand {
    /// The destination in international form, e.g. +14155551234.
    #[arg(long)]
    to: String,
    /// Quote the message as sent after smart encoding (look-alike characters replaced).
    #[arg(long)]
    smart: bool,
    /// Print the quote as JSON (the same fields as POST /v1/quote).
    #[arg(long)]
    json: bool,
    /// The message text.
    text: String,
}

fn plural(count: u32) -> &'static str {
    if count == 1 {
        "segment"
    } else {
        "segments"
    }
}

impl QuoteCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let request = QuoteRequest {
            to: &self.to,
            body: &self.text,
            smart_encoding: self.smart,
        };
        let quoted = quote(request, &settings.messages.rates).map_err(|error| error.to_string())?;
        if self.json {
            return print_json(&quoted);
        }
        say!(
            "{} ({}): {} {}, {}, at {} each = {}{}",
            quoted.to,
            quoted.country,
            quoted.segments,
            plural(quoted.segments),
            quoted.encoding,
            Money::from_micros(quoted.price_per_segment_micros),
            quoted.total(),
            if quoted.smart_encoding_applied {
                " (smart encoded)"
            } else {
                ""
            }
        );
        say!(
            "$10 buys {} segments to {}",
            quoted.segments_per_10_dollars,
            quoted.country
        );
        let smart_quote = &quoted.smart_encoding;
        if !quoted.smart_encoding_applied && smart_quote.replacements > 0 {
            say!(
                "smart encoding would send {} {}, {}, for {} (saves {}; {} characters replaced)",
                smart_quote.segments,
                plural(smart_quote.segments),
                smart_quote.encoding,
                Money::from_micros(smart_quote.total_micros),
                Money::from_micros(smart_quote.saved_micros),
                smart_quote.replacements
            );
        }
        Ok(())
    }
}

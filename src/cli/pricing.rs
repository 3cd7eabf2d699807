//! `sms-credit pricing`: shows or sets the pricing mode of access.

use clap::Args;
use sms_credit_actors::billing::pricing::{Pricing, PricingMode};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::Money;

use super::output::{print_json, with_store, with_store_creating};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct PricingCommand {
    /// The new mode: launch ($29.99), rrp ($49.99) or sale (with --sale-price); without it, the current pricing is shown.
    #[arg(value_parser = ["launch", "rrp", "sale"])]
    mode: Option<String>,
    /// The sale price in dollars, with the sale mode (e.g. 19.99).
    #[arg(long)]
    sale_price: Option<String>,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

fn show(pricing: &Pricing, as_json: bool) -> Result<(), String> {
    if as_json {
        return print_json(&crate::routes::admin::pricing::view(pricing));
    }
    say!("pricing: {} at {}", pricing.mode.as_str(), pricing.price());
    Ok(())
}

impl PricingCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let as_json = self.json;
        let Some(mode) = self.mode else {
            let current = with_store(settings, |store| async move {
                store
                    .billing()
                    .pricing()
                    .await
                    .map_err(|error| error.to_string())
            })?;
            return show(&current, as_json);
        };
        let mode = PricingMode::parse(&mode).ok_or("the mode is launch, rrp or sale")?;
        let sale_price = self
            .sale_price
            .map(|text| Money::parse_dollars(&text))
            .transpose()
            .map_err(|error| error.to_string())?;
        let new_pricing = Pricing::new(mode, sale_price)?;
        with_store_creating(settings, |store| async move {
            store
                .billing()
                .set_pricing(new_pricing, SystemClock.now_ms())
                .await
                .map_err(|error| error.to_string())?;
            show(&new_pricing, as_json)
        })
    }
}

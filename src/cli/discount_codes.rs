//! `sms-credit discount-codes`: create, list, activate and deactivate codes.

use clap::Subcommand;
use sms_credit_actors::billing::discounts::{normalize_code, Discount, DiscountCode};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::Money;

use super::output::{print_json, with_store, with_store_creating};
use crate::config::Settings;
use crate::routes::admin::discount_codes::DiscountCodes;

#[derive(Subcommand, Debug)]
pub enum DiscountCodesCommand {
    /// Create a code: --percent N or --amount DOLLARS off, optionally --max-uses N.
    Create {
        /// The code customers type (letters, digits, '-' and '_'; case does not matter).
        code: String,
        /// A percentage off the price of access (1 to 100).
        #[arg(long, conflicts_with = "amount", required_unless_present = "amount")]
        percent: Option<i64>,
        /// A fixed amount off, in dollars (e.g. 5 or 7.50).
        #[arg(long)]
        amount: Option<String>,
        /// How many times the code may be used in all (no limit without it).
        #[arg(long)]
        max_uses: Option<i64>,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// List every code with its uses.
    List {
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Let a code be used again.
    Activate {
        /// The code.
        code: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Stop a code from being used.
    Deactivate {
        /// The code.
        code: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
}

impl DiscountCodesCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        match self {
            DiscountCodesCommand::List { json } => list(settings, json),
            DiscountCodesCommand::Create {
                code,
                percent,
                amount,
                max_uses,
                json,
            } => create(settings, &code, percent, amount, max_uses, json),
            DiscountCodesCommand::Activate { code, json } => {
                set_active(settings, &code, true, json)
            }
            DiscountCodesCommand::Deactivate { code, json } => {
                set_active(settings, &code, false, json)
            }
        }
    }
}

/// One discount code, for people.
fn print_code(code: &DiscountCode) {
    let off = match code.discount {
        Discount::Percent { percent } => format!("{percent}%"),
        Discount::Fixed { amount } => amount.to_string(),
    };
    say!(
        "{:<20} {:<12} {:>6} {:>8}  {}",
        code.code,
        off,
        code.current_uses,
        code.max_uses.map_or("-".to_string(), |max| max.to_string()),
        if code.active { "yes" } else { "no" }
    );
}

fn list(settings: &Settings, as_json: bool) -> Result<(), String> {
    let codes = with_store(settings, |store| async move {
        store
            .billing()
            .discount_codes()
            .await
            .map_err(|error| error.to_string())
    })?;
    if as_json {
        return print_json(&DiscountCodes::new(codes));
    }
    say!(
        "{:<20} {:<12} {:>6} {:>8}  active",
        "code",
        "off",
        "uses",
        "max"
    );
    for code in codes {
        print_code(&code);
    }
    Ok(())
}

fn create(
    settings: &Settings,
    code: &str,
    percent: Option<i64>,
    amount: Option<String>,
    max_uses: Option<i64>,
    as_json: bool,
) -> Result<(), String> {
    let code = normalize_code(code)?;
    let discount = match (percent, amount) {
        (Some(percent), None) => Discount::new_percent(percent)?,
        (None, Some(amount)) => {
            Discount::new_fixed(Money::parse_dollars(&amount).map_err(|error| error.to_string())?)?
        }
        _ => return Err("give --percent N or --amount DOLLARS".to_string()),
    };
    if max_uses.is_some_and(|uses| uses < 1) {
        return Err("--max-uses must be at least 1".to_string());
    }
    with_store_creating(settings, |store| async move {
        let price_now = store
            .billing()
            .pricing()
            .await
            .map_err(|error| error.to_string())?
            .price();
        let discount = discount.fits(price_now)?;
        let created = store
            .billing()
            .create_discount_code(code, discount, max_uses, SystemClock.now_ms())
            .await
            .map_err(|error| error.to_string())?
            .ok_or("that code exists already")?;
        if as_json {
            return print_json(&created);
        }
        print_code(&created);
        Ok(())
    })
}

fn set_active(settings: &Settings, code: &str, active: bool, as_json: bool) -> Result<(), String> {
    let code = normalize_code(code)?;
    with_store(settings, |store| async move {
        let updated = store
            .billing()
            .set_discount_code_active(code.clone(), active)
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("there is no discount code {code}"))?;
        if as_json {
            // The code as the API's PATCH answers it.
            return print_json(&updated);
        }
        say!("{code}: {}", if active { "active" } else { "inactive" });
        Ok(())
    })
}

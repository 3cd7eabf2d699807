//! The checks of each section of settings, from text to typed values. A
//! refusal says why; [`Values`] adds the name of the setting where it was set.

use std::net::ToSocketAddrs;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sms_credit_actors::adapters::{Checkpoints, DatabaseLocation, IfMissing};
use sms_credit_actors::billing::auto_top_up::AutoTopUpPolicy;
use sms_credit_actors::rating::RateTable;
use sms_credit_actors::sign_in::{CodeLimits, SignInPolicy};
use sms_credit_actors::Money;

use super::layers::Values;
use super::{
    AccessSettings, ConfigError, DatabaseSettings, FeedSettings, LogFormat, MessageSettings,
    Secret, ServerSettings, StripeSettings, TwilioSettings, WebhookSettings,
};

/// The longest span a duration setting may have: a year. Longer ones are
/// surely mistakes, and every duration must fit in i64 milliseconds.
const MAX_DAYS_IN_SECONDS: u64 = 366 * 86_400;
/// The longest passivation time: what 32-bit milliseconds hold (24 days).
const MAX_PASSIVATE_AFTER_SECS: u64 = i32::MAX as u64 / 1000;
/// The most threads of one kind.
const MAX_THREADS: usize = 1024;

pub(super) fn server(values: &Values) -> Result<ServerSettings, ConfigError> {
    Ok(ServerSettings {
        bind: values.required("bind", listen_address)?,
        public_url: values.optional("public_url", url)?,
        signup_url: values.optional("signup_url", url)?,
        service_name: values.required("service_name", service_name)?,
        log_format: values.required("log_format", log_format)?,
        http_workers: values.required("http_workers", number(1..=MAX_THREADS))?,
        actor_threads: values.required("actor_threads", number(1..=MAX_THREADS))?,
        // Actors keep idle times in 32-bit milliseconds (24 days).
        passivate_after: values.required(
            "passivate_after_secs",
            seconds(1..=MAX_PASSIVATE_AFTER_SECS),
        )?,
    })
}

pub(super) fn database(values: &Values) -> Result<DatabaseSettings, ConfigError> {
    Ok(DatabaseSettings {
        location: values.required("database", DatabaseLocation::parse)?,
        checkpoints: values.required("sqlite_checkpoints", Checkpoints::parse)?,
        instance_timeout: values.required("instance_timeout_secs", seconds(2..=3_600))?,
        if_missing: IfMissing::Create,
    })
}

pub(super) fn access(values: &Values) -> Result<AccessSettings, ConfigError> {
    Ok(AccessSettings {
        admin_token: values.optional("admin_token", bearer_token)?,
        api_key: values.optional("api_key", bearer_token)?,
        metrics_token: values.optional("metrics_token", bearer_token)?,
        metrics_bind: values.optional("metrics_bind", listen_address)?,
        max_adjustment: values.required("max_adjustment", dollars("10000.00"))?,
        trusted_proxies: values
            .optional("trusted_proxies", addresses)?
            // Unset: no proxy is trusted, every caller is its own peer.
            .unwrap_or_default(),
        forwarded_header: values.required("forwarded_header", |text| text.parse())?,
        sign_in: SignInPolicy {
            token_lifetime_ms: values
                .required("sign_in_token_days", number(1i64..=3_650))?
                .saturating_mul(86_400_000),
            limits: CodeLimits {
                min_gap_ms: CodeLimits::default().min_gap_ms,
                per_phone_per_hour: values
                    .required("sign_in_codes_per_phone_hour", number(1i64..=1_000))?,
                per_phone_total_per_hour: values
                    .required("sign_in_codes_per_phone_total_hour", number(1i64..=10_000))?,
                per_phone_per_day: values
                    .required("sign_in_codes_per_phone_day", number(1i64..=100_000))?,
                per_address_per_hour: values
                    .required("sign_in_codes_per_address_hour", number(1i64..=1_000_000))?,
                per_hour: values.required("sign_in_codes_per_hour", number(1i64..=1_000_000))?,
                per_country_per_hour: values
                    .required("sign_in_codes_per_country_hour", number(1i64..=1_000_000))?,
            },
        },
        anonymous_calls_per_minute: values
            .required("anonymous_calls_per_minute", number(1u32..=1_000_000))?,
    })
}

/// IP addresses, comma-separated.
fn addresses(text: &str) -> Result<Vec<std::net::IpAddr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse()
                .map_err(|_| format!("'{part}' is not an IP address"))
        })
        .collect()
}

/// The fewest characters a bearer token of this server may have: a short
/// one can be guessed.
const MIN_TOKEN_CHARS: usize = 16;

/// A token callers present (admin, API key, metrics): long enough not to be
/// guessed.
fn bearer_token(value: &str) -> Result<Secret, String> {
    let token = secret(value)?;
    if value.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "is shorter than {MIN_TOKEN_CHARS} characters; make a good one with `openssl rand -hex 32`"
        ));
    }
    Ok(token)
}

/// Stripe is all or nothing: a secret key without the webhook secret would
/// take customers' money and never credit it (the webhook could not be
/// verified), and without a public URL Checkout cannot send customers back.
pub(super) fn stripe(
    values: &Values,
    server: &ServerSettings,
) -> Result<Option<StripeSettings>, ConfigError> {
    let secret_key = values.optional("stripe_secret_key", secret)?;
    let webhook_secret = values.optional("stripe_webhook_secret", secret)?;
    let api_base = values.required("stripe_api_base", url)?;
    let allow_promotion_codes = values.required("stripe_allow_promotion_codes", boolean)?;
    let included_credit = values.required("included_credit", dollars("5.00"))?;
    let buy_daily_limit = values.required("buy_daily_limit", dollars("30.00"))?;
    // Each named where the operator set them (a variable, a flag, or a key
    // in the config file), the missing one beside the one that needs it.
    let missing = |absent: &'static str, present: &'static str, why: &str| ConfigError::Invalid {
        setting: values.name_beside(absent, present),
        reason: format!("is required when {} is set{why}", values.name(present)),
    };
    match (secret_key, webhook_secret) {
        (Some(secret_key), Some(webhook_secret)) => {
            if server.public_url.is_none() {
                return Err(missing(
                    "public_url",
                    "stripe_secret_key",
                    " (Checkout sends customers back to it and Stripe's webhook is pointed at it)",
                ));
            }
            Ok(Some(StripeSettings {
                secret_key,
                webhook_secret,
                api_base,
                allow_promotion_codes,
                included_credit,
                buy_daily_limit,
            }))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err(missing(
            "stripe_webhook_secret",
            "stripe_secret_key",
            ": without it Stripe's events cannot be verified, and payments would never be credited",
        )),
        (None, Some(_)) => Err(missing("stripe_secret_key", "stripe_webhook_secret", "")),
    }
}

/// Twilio is all or nothing too, and needs the number it sends from.
pub(super) fn twilio(values: &Values) -> Result<Option<TwilioSettings>, ConfigError> {
    let account_sid = values.optional("twilio_account_sid", account_sid)?;
    let auth_token = values.optional("twilio_auth_token", secret)?;
    let from = values.optional("twilio_from", |text| Ok(text.to_string()))?;
    let api_base = values.required("twilio_api_base", url)?;
    let missing = |absent: &'static str, present: &'static str, why: &str| ConfigError::Invalid {
        setting: values.name_beside(absent, present),
        reason: format!("is required when {} is set{why}", values.name(present)),
    };
    match (account_sid, auth_token) {
        (Some(account_sid), Some(auth_token)) => {
            let from = from.ok_or_else(|| {
                missing(
                    "twilio_from",
                    "twilio_account_sid",
                    " (the number messages are sent from)",
                )
            })?;
            Ok(Some(TwilioSettings {
                account_sid,
                auth_token,
                from: Some(from),
                api_base,
            }))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err(missing("twilio_auth_token", "twilio_account_sid", "")),
        (None, Some(_)) => Err(missing("twilio_account_sid", "twilio_auth_token", "")),
    }
}

pub(super) fn messages(values: &Values) -> Result<MessageSettings, ConfigError> {
    let rates = values.optional("rates_file", |path| {
        RateTable::load(Path::new(path)).map_err(|error| error.to_string())
    })?;
    let rates = match rates {
        Some(rates) => rates,
        None => RateTable::embedded().map_err(|error| ConfigError::Invalid {
            setting: "SMS_CREDIT_RATES_FILE".to_string(),
            reason: format!("the embedded rate table does not load: {error}"),
        })?,
    };
    Ok(MessageSettings {
        rates: Arc::new(rates),
        low_balance_threshold: values.required("low_balance_threshold", dollars("2.00"))?,
        low_balance_cooldown: values.required(
            "low_balance_cooldown_secs",
            seconds(0..=MAX_DAYS_IN_SECONDS),
        )?,
        reconcile_delay: values
            .required("reconcile_delay_secs", seconds(0..=MAX_DAYS_IN_SECONDS))?,
    })
}

pub(super) fn feed(values: &Values) -> Result<FeedSettings, ConfigError> {
    Ok(FeedSettings {
        heartbeat: values.required("feed_heartbeat_secs", seconds(1..=3_600))?,
        queue: values.required("feed_queue", number(1..=1_000_000))?,
        max_per_account: values.required("feed_max_per_account", number(1..=10_000))?,
    })
}

pub(super) fn auto_top_up(
    values: &Values,
    database: &DatabaseSettings,
) -> Result<AutoTopUpPolicy, ConfigError> {
    Ok(AutoTopUpPolicy {
        backoff: values.required("auto_top_up_backoff", waits)?,
        max_failures: values.required("auto_top_up_max_failures", number(1..=100))?,
        lease: database.instance_timeout,
        // At least a day: a charge is asked about (not sent again) only
        // after Stripe may have forgotten its key.
        undecided_after: values.required("auto_top_up_undecided_after", |text| {
            let undecided = wait(text)?;
            if undecided < Duration::from_secs(86_400) {
                return Err(format!("'{text}' is less than a day (1d)"));
            }
            Ok(undecided)
        })?,
    })
}

pub(super) fn webhooks(values: &Values) -> Result<WebhookSettings, ConfigError> {
    Ok(WebhookSettings {
        allow_private: values.required("webhooks_allow_private", boolean)?,
        // At least a week: longer than a delivery is tried (three days), so
        // nothing is pruned that is still to be sent, and an event's dedupe
        // key outlives the retries of whatever made it.
        retention: values.required("webhooks_retention", |text| {
            let retention = wait(text)?;
            if retention < Duration::from_secs(7 * 86_400) {
                return Err(format!("'{text}' is less than a week (7d)"));
            }
            Ok(retention)
        })?,
    })
}

fn listen_address(address: &str) -> Result<String, String> {
    match address.to_socket_addrs() {
        Ok(_) => Ok(address.to_string()),
        Err(error) => Err(format!(
            "'{address}' is not an address to listen on ({error})"
        )),
    }
}

fn secret(value: &str) -> Result<Secret, String> {
    if value.trim().is_empty() {
        return Err("is set but empty".to_string());
    }
    Ok(Secret::new(value))
}

/// A Twilio account SID: `AC` and 32 hexadecimal characters, as the
/// console shows it. A mistyped one would be refused by Twilio only at the
/// first message sent, so it is refused at start.
fn account_sid(sid: &str) -> Result<String, String> {
    let well_formed = sid
        .strip_prefix("AC")
        .is_some_and(|hex| hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()));
    if !well_formed {
        return Err(format!(
            "'{sid}' is not a Twilio account SID: one is AC followed by 32 hexadecimal characters, as the Twilio console shows it"
        ));
    }
    Ok(sid.to_string())
}

fn log_format(text: &str) -> Result<LogFormat, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("'{text}' is not text or json")),
    }
}

fn service_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 60 || name.chars().any(char::is_control) {
        return Err("a name of 1 to 60 characters, without control characters".into());
    }
    Ok(name.to_string())
}

/// A whole number within `range`.
fn number<T>(range: RangeInclusive<T>) -> impl FnOnce(&str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    move |text| {
        let out_of_range = || {
            format!(
                "'{text}' is not a whole number from {} to {}",
                range.start(),
                range.end()
            )
        };
        let value: T = text.trim().parse().map_err(|_| out_of_range())?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(out_of_range())
        }
    }
}

/// A whole number of seconds within `range`.
fn seconds(range: RangeInclusive<u64>) -> impl FnOnce(&str) -> Result<Duration, String> {
    move |text| number(range)(text).map(Duration::from_secs)
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{text}' is not true or false")),
    }
}

/// A non-negative amount of dollars (`2`, `2.00` or `$2`).
fn dollars(example: &'static str) -> impl FnOnce(&str) -> Result<Money, String> {
    move |text| {
        Money::parse_dollars(text)
            .ok()
            .filter(|amount| !amount.is_negative())
            .ok_or_else(|| format!("'{text}' is not an amount of dollars such as {example}"))
    }
}

fn url(url: &str) -> Result<String, String> {
    let valid = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url.chars().any(char::is_whitespace);
    if !valid {
        return Err(format!("'{url}' is not an http(s) URL"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Waits like `1h,6h,24h` (each a whole number with `s`, `m`, `h` or `d`,
/// from 1 s to a year), in order.
fn waits(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',').map(str::trim).map(wait).collect()
}

fn wait(part: &str) -> Result<Duration, String> {
    let unit_at = part
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{part}' has no unit (s, m, h or d)"))?;
    let (number, unit) = part.split_at(unit_at);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{part}' is not a whole number with a unit"))?;
    let seconds = match unit {
        "s" => Some(number),
        "m" => number.checked_mul(60),
        "h" => number.checked_mul(3_600),
        "d" => number.checked_mul(86_400),
        _ => return Err(format!("'{part}': the unit is s, m, h or d")),
    };
    match seconds {
        Some(seconds) if (1..=365 * 86_400).contains(&seconds) => Ok(Duration::from_secs(seconds)),
        _ => Err(format!("'{part}' is not from 1s to 365d")),
    }
}

//! The server's configuration: one typed struct, loaded once from defaults,
//! then an optional TOML file, then environment variables and flags.
//!
//! Every option is a flag and an environment variable (its doc comment is
//! the `--help` text), and a key of the same name in the config file.

use std::fmt;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use sms_credit_actors::billing::auto_top_up::AutoTopUpPolicy;
use sms_credit_actors::rating::RateTable;
use sms_credit_actors::store::DatabaseLocation;
use sms_credit_actors::Money;

/// A secret value whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::new(text))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A scalar from the config file (a string, a whole number or a boolean)
/// as text, so that every option is checked in one place and its errors
/// name its variable. Floats are refused: amounts of money are written as
/// strings ("2.00") or whole numbers, never as binary fractions.
fn scalar_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Boolean(bool),
    }
    Ok(
        Option::<Scalar>::deserialize(deserializer)?.map(|scalar| match scalar {
            Scalar::Text(text) => text,
            Scalar::Integer(number) => number.to_string(),
            Scalar::Boolean(flag) => flag.to_string(),
        }),
    )
}

/// The options every command reads: the config file and the database.
#[derive(Args, Clone, Debug, Default)]
pub struct GlobalOptions {
    /// An optional TOML file that sets any option (keys as the long flags,
    /// with '_' for '-'); flags and environment variables win over it.
    #[arg(
        long,
        env = "SMS_CREDIT_CONFIG",
        global = true,
        value_name = "FILE",
        display_order = 1001
    )]
    pub config: Option<PathBuf>,

    /// The database: an SQLite file path or sqlite://path, or postgres://user:password@host/name (created or migrated as needed) [default: ./sms-credit.db].
    #[arg(
        long,
        env = "SMS_CREDIT_DATABASE",
        global = true,
        hide_env_values = true,
        value_name = "PATH|URL",
        display_order = 1000
    )]
    pub database: Option<String>,
}

/// The server's options as given on the command line, in the environment
/// or in the config file, before they are checked (shown on `serve`, not on
/// the commands that do not use them).
#[derive(Args, Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// The config file (from [`GlobalOptions`]).
    #[arg(skip)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address and port the HTTP server listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "SMS_CREDIT_BIND", value_name = "ADDR")]
    pub bind: Option<String>,

    /// The database (from [`GlobalOptions`], or the config file).
    #[arg(skip)]
    pub database: Option<String>,

    /// Bearer token for the admin API under /v1/admin; without it the admin API answers 503.
    #[arg(
        long,
        env = "SMS_CREDIT_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<Secret>,

    /// API key of the host application (for /v1/messages).
    #[arg(
        long,
        env = "SMS_CREDIT_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<Secret>,

    /// The URL the world reaches this server at (Checkout redirects, Twilio signatures), e.g. https://sms.example.com.
    #[arg(long, env = "SMS_CREDIT_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Stripe secret key; without it the paid features answer 503 stripe_not_configured.
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_SECRET_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub stripe_secret_key: Option<Secret>,

    /// Stripe webhook endpoint secret (whsec_…), used to verify /webhooks/stripe.
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub stripe_webhook_secret: Option<Secret>,

    /// Base URL of the Stripe API [default: https://api.stripe.com].
    #[arg(long, env = "SMS_CREDIT_STRIPE_API_BASE", value_name = "URL")]
    pub stripe_api_base: Option<String>,

    /// Let customers type Stripe promotion codes on the Checkout page (true/false) [default: false].
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES",
        value_name = "BOOL"
    )]
    #[serde(deserialize_with = "scalar_text")]
    pub stripe_allow_promotion_codes: Option<String>,

    /// Credit that comes with access, in dollars, credited once when access is paid [default: 0.00].
    #[arg(long, env = "SMS_CREDIT_INCLUDED_CREDIT", value_name = "DOLLARS")]
    #[serde(deserialize_with = "scalar_text")]
    pub included_credit: Option<String>,

    /// Twilio account SID (AC…); without it and the auth token the SMS features answer 503 twilio_not_configured.
    #[arg(long, env = "SMS_CREDIT_TWILIO_ACCOUNT_SID", value_name = "SID")]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token, also the key of Twilio's webhook signatures.
    #[arg(
        long,
        env = "SMS_CREDIT_TWILIO_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub twilio_auth_token: Option<Secret>,

    /// The Twilio number messages are sent from (E.164).
    #[arg(long, env = "SMS_CREDIT_TWILIO_FROM", value_name = "NUMBER")]
    pub twilio_from: Option<String>,

    /// Base URL of the Twilio REST API [default: https://api.twilio.com].
    #[arg(long, env = "SMS_CREDIT_TWILIO_API_BASE", value_name = "URL")]
    pub twilio_api_base: Option<String>,

    /// A TOML rate table to use instead of the embedded one (see actors/src/rating/default_rates.toml).
    #[arg(long, env = "SMS_CREDIT_RATES_FILE", value_name = "FILE")]
    pub rates_file: Option<PathBuf>,

    /// A debit that leaves the balance below this (dollars) sends a warning SMS [default: 2.00].
    #[arg(long, env = "SMS_CREDIT_LOW_BALANCE_THRESHOLD", value_name = "DOLLARS")]
    #[serde(deserialize_with = "scalar_text")]
    pub low_balance_threshold: Option<String>,

    /// At most one low-balance warning per account in this many seconds [default: 86400].
    #[arg(
        long,
        env = "SMS_CREDIT_LOW_BALANCE_COOLDOWN_SECS",
        value_name = "SECONDS"
    )]
    #[serde(deserialize_with = "scalar_text")]
    pub low_balance_cooldown_secs: Option<String>,

    /// The service's name, shown as the account page's title [default: SMS credit].
    #[arg(long, env = "SMS_CREDIT_SERVICE_NAME", value_name = "NAME")]
    pub service_name: Option<String>,

    /// Where people sign up and top up on the web, sent in SMS replies [default: the public URL + /account].
    #[arg(long, env = "SMS_CREDIT_SIGNUP_URL", value_name = "URL")]
    pub signup_url: Option<String>,

    /// Seconds after sending before Twilio's actual price is fetched for reconciliation [default: 300].
    #[arg(long, env = "SMS_CREDIT_RECONCILE_DELAY_SECS", value_name = "SECONDS")]
    #[serde(deserialize_with = "scalar_text")]
    pub reconcile_delay_secs: Option<String>,

    /// Seconds an idle account actor stays in memory [default: 900].
    #[arg(long, env = "SMS_CREDIT_PASSIVATE_AFTER_SECS", value_name = "SECONDS")]
    #[serde(deserialize_with = "scalar_text")]
    pub passivate_after_secs: Option<String>,

    /// Threads that run account actors [default: 2].
    #[arg(long, env = "SMS_CREDIT_ACTOR_THREADS", value_name = "N")]
    #[serde(deserialize_with = "scalar_text")]
    pub actor_threads: Option<String>,

    /// HTTP worker threads [default: 2].
    #[arg(long, env = "SMS_CREDIT_HTTP_WORKERS", value_name = "N")]
    #[serde(deserialize_with = "scalar_text")]
    pub http_workers: Option<String>,

    /// Seconds between the balance feed's pings; a client silent for three is dropped [default: 15].
    #[arg(long, env = "SMS_CREDIT_FEED_HEARTBEAT_SECS", value_name = "SECONDS")]
    #[serde(deserialize_with = "scalar_text")]
    pub feed_heartbeat_secs: Option<String>,

    /// Seconds after its last heartbeat that an instance counts as gone, so that what it left half-done (a reservation of a message being sent) is resolved by another [default: 30].
    #[arg(long, env = "SMS_CREDIT_INSTANCE_TIMEOUT_SECS", value_name = "SECONDS")]
    #[serde(deserialize_with = "scalar_text")]
    pub instance_timeout_secs: Option<String>,

    /// Waits before the next auto top-up after the 1st, 2nd, … failure in a row, comma-separated, each a number with s, m, h or d [default: 1h,6h,24h].
    #[arg(long, env = "SMS_CREDIT_AUTO_TOP_UP_BACKOFF", value_name = "WAITS")]
    #[serde(deserialize_with = "scalar_text")]
    pub auto_top_up_backoff: Option<String>,

    /// Failures in a row after which an account's auto top-up turns itself off [default: 3].
    #[arg(long, env = "SMS_CREDIT_AUTO_TOP_UP_MAX_FAILURES", value_name = "N")]
    #[serde(deserialize_with = "scalar_text")]
    pub auto_top_up_max_failures: Option<String>,

    /// Bearer token that opens GET /metrics on the main listen address; without it (and without --metrics-bind) /metrics answers 503, because it reports the ledger's money totals.
    #[arg(
        long,
        env = "SMS_CREDIT_METRICS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub metrics_token: Option<Secret>,

    /// A separate address (for example 127.0.0.1:9464) that serves only GET /metrics, without a token, for a Prometheus that can reach it.
    #[arg(long, env = "SMS_CREDIT_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<String>,

    /// Ledger rows queued per feed client before it is dropped as too slow [default: 256].
    #[arg(long, env = "SMS_CREDIT_FEED_QUEUE", value_name = "N")]
    #[serde(deserialize_with = "scalar_text")]
    pub feed_queue: Option<String>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{variable}: {reason}")]
    Invalid {
        variable: &'static str,
        reason: String,
    },
}

/// Stripe credentials and where its API is.
#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: Secret,
    pub webhook_secret: Secret,
    pub api_base: String,
    pub allow_promotion_codes: bool,
}

/// Twilio credentials and where its API is.
#[derive(Clone, Debug)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: Option<String>,
    pub api_base: String,
}

/// The checked configuration of the server.
#[derive(Clone, Debug)]
pub struct Settings {
    pub bind: String,
    pub database: DatabaseLocation,
    pub admin_token: Option<Secret>,
    pub api_key: Option<Secret>,
    pub public_url: Option<String>,
    /// `None` when Stripe is not configured.
    pub stripe: Option<StripeSettings>,
    /// `None` when Twilio is not configured.
    pub twilio: Option<TwilioSettings>,
    /// The rate table: per destination country, carrier cost and customer rate.
    pub rates: Arc<RateTable>,
    /// Credit that comes with access.
    pub included_credit: Money,
    pub low_balance_threshold: Money,
    pub low_balance_cooldown: Duration,
    /// Sent in SMS replies: where to sign up and top up.
    pub signup_url: Option<String>,
    /// The account page's title.
    pub service_name: String,
    pub reconcile_delay: Duration,
    pub passivate_after: Duration,
    pub actor_threads: usize,
    pub http_workers: usize,
    pub feed_heartbeat: Duration,
    pub feed_queue: usize,
    /// Opens `/metrics` on the main address.
    pub metrics_token: Option<Secret>,
    /// After this long without a heartbeat an instance counts as gone.
    pub instance_timeout: Duration,
    /// A separate address that serves only `/metrics`.
    pub metrics_bind: Option<String>,
    /// Auto top-up's waits after failures, its limit and its lease.
    pub auto_top_up: AutoTopUpPolicy,
}

impl Settings {
    /// The URL the world reaches this server at: the configured public URL,
    /// or the listen address.
    pub fn public_base_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.bind))
    }

    /// Where SMS replies send people to sign up or top up.
    pub fn web_link(&self) -> String {
        self.signup_url
            .clone()
            .unwrap_or_else(|| format!("{}/account", self.public_base_url()))
    }

    /// Settings for a server on `database` with nothing else configured.
    pub fn local(database: impl Into<PathBuf>) -> Settings {
        let mut settings = Settings::from_options(Options::default())
            .unwrap_or_else(|_| unreachable!("default settings are valid"));
        settings.database = DatabaseLocation::Sqlite(database.into());
        settings
    }

    /// Merges flags/environment over the config file over defaults, and checks the result.
    pub fn load(given: Options) -> Result<Settings, ConfigError> {
        let from_file = match &given.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        Settings::from_options(merge(given, from_file))
    }

    pub fn from_options(options: Options) -> Result<Settings, ConfigError> {
        let bind = listen_address(
            "SMS_CREDIT_BIND",
            options.bind.unwrap_or_else(|| "127.0.0.1:8080".to_string()),
        )?;
        let public_url = options
            .public_url
            .map(|url| checked_url("SMS_CREDIT_PUBLIC_URL", url))
            .transpose()?;

        // Stripe is all or nothing: a secret key without the webhook secret
        // would take customers' money and never credit it (the webhook could
        // not be verified), and without a public URL Checkout cannot send
        // customers back.
        let allow_promotion_codes = parse_bool(
            "SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES",
            options.stripe_allow_promotion_codes,
            false,
        )?;
        let stripe = match (options.stripe_secret_key, options.stripe_webhook_secret) {
            (Some(secret_key), Some(webhook_secret)) => {
                if public_url.is_none() {
                    return Err(ConfigError::Invalid {
                        variable: "SMS_CREDIT_PUBLIC_URL",
                        reason: "is required when SMS_CREDIT_STRIPE_SECRET_KEY is set (Checkout sends customers back to it and Stripe's webhook is pointed at it)".to_string(),
                    });
                }
                Some(StripeSettings {
                    secret_key: non_empty_secret("SMS_CREDIT_STRIPE_SECRET_KEY", secret_key)?,
                    webhook_secret: non_empty_secret(
                        "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
                        webhook_secret,
                    )?,
                    api_base: checked_url(
                        "SMS_CREDIT_STRIPE_API_BASE",
                        options
                            .stripe_api_base
                            .unwrap_or_else(|| "https://api.stripe.com".to_string()),
                    )?,
                    allow_promotion_codes,
                })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    variable: "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
                    reason: "is required when SMS_CREDIT_STRIPE_SECRET_KEY is set: without it Stripe's events cannot be verified, and payments would never be credited".to_string(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    variable: "SMS_CREDIT_STRIPE_SECRET_KEY",
                    reason: "is required when SMS_CREDIT_STRIPE_WEBHOOK_SECRET is set".to_string(),
                })
            }
        };

        let twilio = match (options.twilio_account_sid, options.twilio_auth_token) {
            (Some(account_sid), Some(auth_token)) => {
                if !account_sid.starts_with("AC") || account_sid.len() < 4 {
                    return Err(ConfigError::Invalid {
                        variable: "SMS_CREDIT_TWILIO_ACCOUNT_SID",
                        reason: "a Twilio account SID starts with 'AC'".to_string(),
                    });
                }
                let from = options.twilio_from.ok_or_else(|| ConfigError::Invalid {
                    variable: "SMS_CREDIT_TWILIO_FROM",
                    reason:
                        "is required when Twilio is configured (the number messages are sent from)"
                            .to_string(),
                })?;
                Some(TwilioSettings {
                    account_sid,
                    auth_token: non_empty_secret("SMS_CREDIT_TWILIO_AUTH_TOKEN", auth_token)?,
                    from: Some(from),
                    api_base: checked_url(
                        "SMS_CREDIT_TWILIO_API_BASE",
                        options
                            .twilio_api_base
                            .unwrap_or_else(|| "https://api.twilio.com".to_string()),
                    )?,
                })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    variable: "SMS_CREDIT_TWILIO_AUTH_TOKEN",
                    reason: "is required when SMS_CREDIT_TWILIO_ACCOUNT_SID is set".to_string(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    variable: "SMS_CREDIT_TWILIO_ACCOUNT_SID",
                    reason: "is required when SMS_CREDIT_TWILIO_AUTH_TOKEN is set".to_string(),
                })
            }
        };

        let rates = match &options.rates_file {
            Some(path) => RateTable::load(path),
            None => RateTable::embedded(),
        }
        .map_err(|error| ConfigError::Invalid {
            variable: "SMS_CREDIT_RATES_FILE",
            reason: error.to_string(),
        })?;

        let included_credit = match &options.included_credit {
            Some(text) => Money::parse_dollars(text)
                .ok()
                .filter(|amount| !amount.is_negative())
                .ok_or_else(|| ConfigError::Invalid {
                    variable: "SMS_CREDIT_INCLUDED_CREDIT",
                    reason: format!("'{text}' is not an amount of dollars such as 5.00"),
                })?,
            None => Money::ZERO,
        };

        let low_balance_threshold = match &options.low_balance_threshold {
            Some(text) => Money::parse_dollars(text)
                .ok()
                .filter(|amount| !amount.is_negative())
                .ok_or_else(|| ConfigError::Invalid {
                    variable: "SMS_CREDIT_LOW_BALANCE_THRESHOLD",
                    reason: format!("'{text}' is not an amount of dollars such as 2.00"),
                })?,
            None => Money::from_micros(2_000_000),
        };
        let database =
            DatabaseLocation::parse(options.database.as_deref().unwrap_or("./sms-credit.db"))
                .map_err(|reason| ConfigError::Invalid {
                    variable: "SMS_CREDIT_DATABASE",
                    reason,
                })?;
        let signup_url = options
            .signup_url
            .map(|url| checked_url("SMS_CREDIT_SIGNUP_URL", url))
            .transpose()?;
        let service_name = match options.service_name {
            None => "SMS credit".to_string(),
            Some(name) => {
                let name = name.trim().to_string();
                if name.is_empty()
                    || name.chars().count() > 60
                    || name.chars().any(char::is_control)
                {
                    return Err(ConfigError::Invalid {
                        variable: "SMS_CREDIT_SERVICE_NAME",
                        reason: "a name of 1 to 60 characters, without control characters".into(),
                    });
                }
                name
            }
        };

        let instance_timeout = Duration::from_secs(parse_number(
            "SMS_CREDIT_INSTANCE_TIMEOUT_SECS",
            options.instance_timeout_secs,
            30,
            2..=3_600,
        )?);
        Ok(Settings {
            bind,
            database,
            admin_token: options
                .admin_token
                .map(|token| non_empty_secret("SMS_CREDIT_ADMIN_TOKEN", token))
                .transpose()?,
            api_key: options
                .api_key
                .map(|key| non_empty_secret("SMS_CREDIT_API_KEY", key))
                .transpose()?,
            public_url,
            stripe,
            twilio,
            rates: Arc::new(rates),
            included_credit,
            low_balance_threshold,
            low_balance_cooldown: Duration::from_secs(parse_number(
                "SMS_CREDIT_LOW_BALANCE_COOLDOWN_SECS",
                options.low_balance_cooldown_secs,
                86_400,
                0..=MAX_DAYS_IN_SECONDS,
            )?),
            signup_url,
            service_name,
            reconcile_delay: Duration::from_secs(parse_number(
                "SMS_CREDIT_RECONCILE_DELAY_SECS",
                options.reconcile_delay_secs,
                300,
                0..=MAX_DAYS_IN_SECONDS,
            )?),
            passivate_after: Duration::from_secs(parse_number(
                "SMS_CREDIT_PASSIVATE_AFTER_SECS",
                options.passivate_after_secs,
                900,
                // Actors keep idle times in 32-bit milliseconds (24 days).
                1..=MAX_PASSIVATE_AFTER_SECS,
            )?),
            actor_threads: parse_number(
                "SMS_CREDIT_ACTOR_THREADS",
                options.actor_threads,
                2,
                1..=MAX_THREADS,
            )?,
            http_workers: parse_number(
                "SMS_CREDIT_HTTP_WORKERS",
                options.http_workers,
                2,
                1..=MAX_THREADS,
            )?,
            feed_heartbeat: Duration::from_secs(parse_number(
                "SMS_CREDIT_FEED_HEARTBEAT_SECS",
                options.feed_heartbeat_secs,
                15,
                1..=3_600,
            )?),
            feed_queue: parse_number(
                "SMS_CREDIT_FEED_QUEUE",
                options.feed_queue,
                256,
                1..=1_000_000,
            )?,
            instance_timeout,
            metrics_token: options
                .metrics_token
                .map(|token| non_empty_secret("SMS_CREDIT_METRICS_TOKEN", token))
                .transpose()?,
            metrics_bind: options
                .metrics_bind
                .map(|address| listen_address("SMS_CREDIT_METRICS_BIND", address))
                .transpose()?,
            auto_top_up: AutoTopUpPolicy {
                backoff: match options.auto_top_up_backoff {
                    Some(text) => parse_waits("SMS_CREDIT_AUTO_TOP_UP_BACKOFF", &text)?,
                    None => AutoTopUpPolicy::default().backoff,
                },
                max_failures: parse_number(
                    "SMS_CREDIT_AUTO_TOP_UP_MAX_FAILURES",
                    options.auto_top_up_max_failures,
                    3,
                    1..=100,
                )?,
                lease: instance_timeout,
            },
        })
    }
}

fn read_file(path: &Path) -> Result<Options, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
    toml::from_str(&text).map_err(|error| file_error(error.to_string()))
}

impl Options {
    /// These options, with the config file and database of `global`, over
    /// `fallback` (the options given before the subcommand).
    pub fn with(self, global: GlobalOptions, fallback: Options) -> Options {
        let mut merged = merge(self, fallback);
        merged.config = global.config;
        merged.database = global.database.or(merged.database);
        merged
    }
}

/// Each option from `winner` if it has one, else from `fallback`.
fn merge(winner: Options, fallback: Options) -> Options {
    Options {
        config: winner.config,
        bind: winner.bind.or(fallback.bind),
        database: winner.database.or(fallback.database),
        admin_token: winner.admin_token.or(fallback.admin_token),
        api_key: winner.api_key.or(fallback.api_key),
        public_url: winner.public_url.or(fallback.public_url),
        stripe_secret_key: winner.stripe_secret_key.or(fallback.stripe_secret_key),
        stripe_webhook_secret: winner
            .stripe_webhook_secret
            .or(fallback.stripe_webhook_secret),
        stripe_api_base: winner.stripe_api_base.or(fallback.stripe_api_base),
        stripe_allow_promotion_codes: winner
            .stripe_allow_promotion_codes
            .or(fallback.stripe_allow_promotion_codes),
        included_credit: winner.included_credit.or(fallback.included_credit),
        twilio_account_sid: winner.twilio_account_sid.or(fallback.twilio_account_sid),
        twilio_auth_token: winner.twilio_auth_token.or(fallback.twilio_auth_token),
        twilio_from: winner.twilio_from.or(fallback.twilio_from),
        twilio_api_base: winner.twilio_api_base.or(fallback.twilio_api_base),
        rates_file: winner.rates_file.or(fallback.rates_file),
        low_balance_threshold: winner
            .low_balance_threshold
            .or(fallback.low_balance_threshold),
        low_balance_cooldown_secs: winner
            .low_balance_cooldown_secs
            .or(fallback.low_balance_cooldown_secs),
        signup_url: winner.signup_url.or(fallback.signup_url),
        service_name: winner.service_name.or(fallback.service_name),
        reconcile_delay_secs: winner
            .reconcile_delay_secs
            .or(fallback.reconcile_delay_secs),
        passivate_after_secs: winner
            .passivate_after_secs
            .or(fallback.passivate_after_secs),
        actor_threads: winner.actor_threads.or(fallback.actor_threads),
        http_workers: winner.http_workers.or(fallback.http_workers),
        feed_heartbeat_secs: winner.feed_heartbeat_secs.or(fallback.feed_heartbeat_secs),
        feed_queue: winner.feed_queue.or(fallback.feed_queue),
        metrics_token: winner.metrics_token.or(fallback.metrics_token),
        instance_timeout_secs: winner
            .instance_timeout_secs
            .or(fallback.instance_timeout_secs),
        metrics_bind: winner.metrics_bind.or(fallback.metrics_bind),
        auto_top_up_backoff: winner.auto_top_up_backoff.or(fallback.auto_top_up_backoff),
        auto_top_up_max_failures: winner
            .auto_top_up_max_failures
            .or(fallback.auto_top_up_max_failures),
    }
}

fn listen_address(variable: &'static str, address: String) -> Result<String, ConfigError> {
    match address.to_socket_addrs() {
        Ok(_) => Ok(address),
        Err(error) => Err(ConfigError::Invalid {
            variable,
            reason: format!("'{address}' is not an address to listen on ({error})"),
        }),
    }
}

fn non_empty_secret(variable: &'static str, value: Secret) -> Result<Secret, ConfigError> {
    if value.expose().trim().is_empty() {
        return Err(ConfigError::Invalid {
            variable,
            reason: "is set but empty".to_string(),
        });
    }
    Ok(value)
}

/// The longest span a duration setting may have: a year. Longer ones are
/// surely mistakes, and every duration must fit in i64 milliseconds.
const MAX_DAYS_IN_SECONDS: u64 = 366 * 86_400;
/// The longest passivation time: what 32-bit milliseconds hold (24 days).
const MAX_PASSIVATE_AFTER_SECS: u64 = i32::MAX as u64 / 1000;
/// The most threads of one kind.
const MAX_THREADS: usize = 1024;

/// Waits like `1h,6h,24h` (each a whole number with `s`, `m`, `h` or `d`,
/// from 1 s to a year), in order.
fn parse_waits(variable: &'static str, text: &str) -> Result<Vec<Duration>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { variable, reason };
    let mut waits = Vec::new();
    for part in text.split(',').map(str::trim) {
        let unit_at = part
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| invalid(format!("'{part}' has no unit (s, m, h or d)")))?;
        let (number, unit) = part.split_at(unit_at);
        let number: u64 = number
            .parse()
            .map_err(|_| invalid(format!("'{part}' is not a whole number with a unit")))?;
        let seconds = match unit {
            "s" => Some(number),
            "m" => number.checked_mul(60),
            "h" => number.checked_mul(3_600),
            "d" => number.checked_mul(86_400),
            _ => return Err(invalid(format!("'{part}': the unit is s, m, h or d"))),
        };
        match seconds {
            Some(seconds) if (1..=365 * 86_400).contains(&seconds) => {
                waits.push(Duration::from_secs(seconds));
            }
            _ => return Err(invalid(format!("'{part}' is not from 1s to 365d"))),
        }
    }
    Ok(waits)
}

/// A whole number within `range`, or `default` when unset; anything else
/// names its variable.
fn parse_number<T>(
    variable: &'static str,
    text: Option<String>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    let Some(text) = text else {
        return Ok(default);
    };
    let out_of_range = || ConfigError::Invalid {
        variable,
        reason: format!(
            "'{text}' is not a whole number from {} to {}",
            range.start(),
            range.end()
        ),
    };
    let value: T = text.trim().parse().map_err(|_| out_of_range())?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range())
    }
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or `default`.
fn parse_bool(
    variable: &'static str,
    text: Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            variable,
            reason: format!("'{text}' is not true or false"),
        }),
    }
}

fn checked_url(variable: &'static str, url: String) -> Result<String, ConfigError> {
    let valid = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url.chars().any(char::is_whitespace);
    if !valid {
        return Err(ConfigError::Invalid {
            variable,
            reason: format!("'{url}' is not an http(s) URL"),
        });
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_is_valid() {
        let settings = Settings::from_options(Options::default());
        assert!(matches!(
            settings,
            Ok(Settings {
                stripe: None,
                twilio: None,
                admin_token: None,
                ..
            })
        ));
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let options = Options {
            bind: Some("not an address".into()),
            ..Options::default()
        };
        let message = Settings::from_options(options)
            .err()
            .map(|error| error.to_string());
        assert!(message.is_some_and(|message| message.starts_with("SMS_CREDIT_BIND")));

        let options = Options {
            twilio_account_sid: Some("AC123".into()),
            ..Options::default()
        };
        let message = Settings::from_options(options)
            .err()
            .map(|error| error.to_string());
        assert!(message.is_some_and(|message| message.starts_with("SMS_CREDIT_TWILIO_AUTH_TOKEN")));

        let options = Options {
            public_url: Some("ftp://x".into()),
            ..Options::default()
        };
        let message = Settings::from_options(options)
            .err()
            .map(|error| error.to_string());
        assert!(message.is_some_and(|message| message.starts_with("SMS_CREDIT_PUBLIC_URL")));
    }

    fn error_of(options: Options) -> String {
        match Settings::from_options(options) {
            Ok(_) => "accepted".to_string(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let options = Options {
            admin_token: Some(Secret::new("hunter2")),
            api_key: Some(Secret::new("hunter3")),
            stripe_secret_key: Some(Secret::new("sk_live_hunter4")),
            stripe_webhook_secret: Some(Secret::new("whsec_hunter5")),
            twilio_auth_token: Some(Secret::new("hunter6")),
            ..Options::default()
        };
        let shown = format!("{options:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5", "hunter6"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let settings = Settings::from_options(options);
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn a_stripe_key_without_its_webhook_secret_or_public_url_is_refused() {
        let stripe_key_only = Options {
            stripe_secret_key: Some(Secret::new("sk_test_1")),
            public_url: Some("https://sms.example.com".into()),
            ..Options::default()
        };
        assert!(error_of(stripe_key_only).starts_with("SMS_CREDIT_STRIPE_WEBHOOK_SECRET"));
        let no_public_url = Options {
            stripe_secret_key: Some(Secret::new("sk_test_1")),
            stripe_webhook_secret: Some(Secret::new("whsec_1")),
            ..Options::default()
        };
        assert!(error_of(no_public_url).starts_with("SMS_CREDIT_PUBLIC_URL"));
        let webhook_secret_only = Options {
            stripe_webhook_secret: Some(Secret::new("whsec_1")),
            ..Options::default()
        };
        assert!(error_of(webhook_secret_only).starts_with("SMS_CREDIT_STRIPE_SECRET_KEY"));
        let complete = Options {
            stripe_secret_key: Some(Secret::new("sk_test_1")),
            stripe_webhook_secret: Some(Secret::new("whsec_1")),
            public_url: Some("https://sms.example.com".into()),
            ..Options::default()
        };
        assert_eq!(error_of(complete), "accepted");
    }

    #[test]
    fn auto_top_up_waits_and_limit_are_read_and_checked() {
        let read = |backoff: &str, max: &str| {
            Settings::from_options(Options {
                auto_top_up_backoff: Some(backoff.to_string()),
                auto_top_up_max_failures: Some(max.to_string()),
                ..Options::default()
            })
        };
        let settings = read("30s, 5m,2h,1d", "4").unwrap();
        assert_eq!(
            settings.auto_top_up.backoff,
            [30, 300, 7_200, 86_400].map(Duration::from_secs).to_vec()
        );
        assert_eq!(settings.auto_top_up.max_failures, 4);
        let defaults = Settings::from_options(Options::default()).unwrap();
        assert_eq!(
            defaults.auto_top_up.backoff,
            [3_600, 21_600, 86_400].map(Duration::from_secs).to_vec()
        );
        assert_eq!(defaults.auto_top_up.max_failures, 3);
        for (backoff, max) in [
            ("1h,6", "3"),
            ("1w", "3"),
            ("0s", "3"),
            ("400d", "3"),
            ("1h", "0"),
        ] {
            let error = read(backoff, max).unwrap_err().to_string();
            assert!(
                error.starts_with("SMS_CREDIT_AUTO_TOP_UP_"),
                "{backoff} {max}: {error}"
            );
        }
    }

    #[test]
    fn numbers_are_bounded_and_name_their_variable() {
        type Setter = fn(&mut Options, String);
        let cases: [(&str, Setter); 7] = [
            ("SMS_CREDIT_LOW_BALANCE_COOLDOWN_SECS", |o, v| {
                o.low_balance_cooldown_secs = Some(v)
            }),
            ("SMS_CREDIT_RECONCILE_DELAY_SECS", |o, v| {
                o.reconcile_delay_secs = Some(v)
            }),
            ("SMS_CREDIT_PASSIVATE_AFTER_SECS", |o, v| {
                o.passivate_after_secs = Some(v)
            }),
            ("SMS_CREDIT_ACTOR_THREADS", |o, v| o.actor_threads = Some(v)),
            ("SMS_CREDIT_HTTP_WORKERS", |o, v| o.http_workers = Some(v)),
            ("SMS_CREDIT_FEED_HEARTBEAT_SECS", |o, v| {
                o.feed_heartbeat_secs = Some(v)
            }),
            ("SMS_CREDIT_FEED_QUEUE", |o, v| o.feed_queue = Some(v)),
        ];
        for (variable, set) in cases {
            // u64::MAX seconds would wrap to a negative i64 of milliseconds.
            for bad in [
                "abc",
                "-1",
                "18446744073709551615",
                "9223372036854775807",
                "1.5",
            ] {
                let mut options = Options::default();
                set(&mut options, bad.to_string());
                let error = error_of(options);
                assert!(error.starts_with(variable), "{variable}={bad}: {error}");
            }
            let mut options = Options::default();
            set(&mut options, "30".to_string());
            assert_eq!(error_of(options), "accepted", "{variable}=30");
        }
        let options = Options {
            stripe_allow_promotion_codes: Some("maybe".into()),
            ..Options::default()
        };
        assert!(error_of(options).starts_with("SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES"));
    }

    #[test]
    fn dollar_amounts_may_have_a_dollar_sign() {
        let options = Options {
            low_balance_threshold: Some("$2".into()),
            included_credit: Some("5".into()),
            ..Options::default()
        };
        let settings = Settings::from_options(options).ok();
        assert_eq!(
            settings.map(|settings| (settings.low_balance_threshold, settings.included_credit)),
            Some((Money::from_micros(2_000_000), Money::from_micros(5_000_000)))
        );
    }

    #[test]
    fn the_file_may_write_numbers_and_booleans_as_toml_scalars() {
        let file: Result<Options, _> = toml::from_str(
            "feed_queue = 512\nstripe_allow_promotion_codes = true\nlow_balance_threshold = \"1.50\"",
        );
        let file = file.ok();
        assert_eq!(
            file.as_ref().and_then(|file| file.feed_queue.clone()),
            Some("512".to_string())
        );
        assert_eq!(
            file.and_then(|file| file.stripe_allow_promotion_codes),
            Some("true".to_string())
        );
        let float: Result<Options, _> = toml::from_str("low_balance_threshold = 1.5");
        assert!(float.is_err(), "money is never a binary fraction");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: Options =
            toml::from_str("bind = \"127.0.0.1:9000\"\ndatabase = \"from-file.db\"")
                .unwrap_or_default();
        let flags = Options {
            database: Some("from-flag.db".to_string()),
            ..Options::default()
        };
        let merged = merge(flags, file);
        assert_eq!(merged.bind.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(merged.database.as_deref(), Some("from-flag.db"));
    }
}

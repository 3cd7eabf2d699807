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
use sms_credit_actors::rating::RateTable;
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

/// The options as given on the command line, in the environment or in the
/// config file, before they are checked.
#[derive(Args, Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// An optional TOML file that sets any of these options (keys as the
    /// long flags, with '_' for '-'); flags and environment variables win over it.
    #[arg(long, env = "SMS_CREDIT_CONFIG", global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address and port the HTTP server listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "SMS_CREDIT_BIND", global = true, value_name = "ADDR")]
    pub bind: Option<String>,

    /// SQLite database file; created and migrated if absent [default: ./sms-credit.db].
    #[arg(long, env = "SMS_CREDIT_DATABASE", global = true, value_name = "FILE")]
    pub database: Option<PathBuf>,

    /// Bearer token for the admin API under /v1/admin; without it the admin API answers 503.
    #[arg(
        long,
        env = "SMS_CREDIT_ADMIN_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// API key of the host application (for /v1/messages).
    #[arg(
        long,
        env = "SMS_CREDIT_API_KEY",
        global = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// The URL the world reaches this server at (Checkout redirects, Twilio signatures), e.g. https://sms.example.com.
    #[arg(long, env = "SMS_CREDIT_PUBLIC_URL", global = true, value_name = "URL")]
    pub public_url: Option<String>,

    /// Stripe secret key; without it the paid features answer 503 stripe_not_configured.
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_SECRET_KEY",
        global = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub stripe_secret_key: Option<String>,

    /// Stripe webhook endpoint secret (whsec_…), used to verify /webhooks/stripe.
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
        global = true,
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub stripe_webhook_secret: Option<String>,

    /// Base URL of the Stripe API [default: https://api.stripe.com].
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_API_BASE",
        global = true,
        value_name = "URL"
    )]
    pub stripe_api_base: Option<String>,

    /// Let customers type Stripe promotion codes on the Checkout page (true/false) [default: false].
    #[arg(
        long,
        env = "SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES",
        global = true,
        value_name = "BOOL"
    )]
    pub stripe_allow_promotion_codes: Option<bool>,

    /// Credit that comes with access, in dollars, credited once when access is paid [default: 0.00].
    #[arg(
        long,
        env = "SMS_CREDIT_INCLUDED_CREDIT",
        global = true,
        value_name = "DOLLARS"
    )]
    pub included_credit: Option<String>,

    /// Twilio account SID (AC…); without it and the auth token the SMS features answer 503 twilio_not_configured.
    #[arg(
        long,
        env = "SMS_CREDIT_TWILIO_ACCOUNT_SID",
        global = true,
        value_name = "SID"
    )]
    pub twilio_account_sid: Option<String>,

    /// Twilio auth token, also the key of Twilio's webhook signatures.
    #[arg(
        long,
        env = "SMS_CREDIT_TWILIO_AUTH_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub twilio_auth_token: Option<String>,

    /// The Twilio number messages are sent from (E.164).
    #[arg(
        long,
        env = "SMS_CREDIT_TWILIO_FROM",
        global = true,
        value_name = "NUMBER"
    )]
    pub twilio_from: Option<String>,

    /// Base URL of the Twilio REST API [default: https://api.twilio.com].
    #[arg(
        long,
        env = "SMS_CREDIT_TWILIO_API_BASE",
        global = true,
        value_name = "URL"
    )]
    pub twilio_api_base: Option<String>,

    /// A TOML rate table to use instead of the embedded one (see actors/src/rating/default_rates.toml).
    #[arg(
        long,
        env = "SMS_CREDIT_RATES_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub rates_file: Option<PathBuf>,

    /// A debit that leaves the balance below this (dollars) sends a warning SMS [default: 2.00].
    #[arg(
        long,
        env = "SMS_CREDIT_LOW_BALANCE_THRESHOLD",
        global = true,
        value_name = "DOLLARS"
    )]
    pub low_balance_threshold: Option<String>,

    /// At most one low-balance warning per account in this many seconds [default: 86400].
    #[arg(
        long,
        env = "SMS_CREDIT_LOW_BALANCE_COOLDOWN_SECS",
        global = true,
        value_name = "SECONDS"
    )]
    pub low_balance_cooldown_secs: Option<u64>,

    /// Where people sign up and top up on the web, sent in SMS replies [default: the public URL + /account].
    #[arg(long, env = "SMS_CREDIT_SIGNUP_URL", global = true, value_name = "URL")]
    pub signup_url: Option<String>,

    /// Seconds after sending before Twilio's actual price is fetched for reconciliation [default: 300].
    #[arg(
        long,
        env = "SMS_CREDIT_RECONCILE_DELAY_SECS",
        global = true,
        value_name = "SECONDS"
    )]
    pub reconcile_delay_secs: Option<u64>,

    /// Seconds an idle account actor stays in memory [default: 900].
    #[arg(
        long,
        env = "SMS_CREDIT_PASSIVATE_AFTER_SECS",
        global = true,
        value_name = "SECONDS"
    )]
    pub passivate_after_secs: Option<u64>,

    /// Threads that run account actors [default: 2].
    #[arg(
        long,
        env = "SMS_CREDIT_ACTOR_THREADS",
        global = true,
        value_name = "N"
    )]
    pub actor_threads: Option<usize>,

    /// HTTP worker threads [default: 2].
    #[arg(long, env = "SMS_CREDIT_HTTP_WORKERS", global = true, value_name = "N")]
    pub http_workers: Option<usize>,

    /// Seconds between the balance feed's pings; a client silent for three is dropped [default: 15].
    #[arg(
        long,
        env = "SMS_CREDIT_FEED_HEARTBEAT_SECS",
        global = true,
        value_name = "SECONDS"
    )]
    pub feed_heartbeat_secs: Option<u64>,

    /// Ledger rows queued per feed client before it is dropped as too slow [default: 256].
    #[arg(long, env = "SMS_CREDIT_FEED_QUEUE", global = true, value_name = "N")]
    pub feed_queue: Option<usize>,
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
    pub webhook_secret: Option<Secret>,
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
    pub database: PathBuf,
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
    pub reconcile_delay: Duration,
    pub passivate_after: Duration,
    pub actor_threads: usize,
    pub http_workers: usize,
    pub feed_heartbeat: Duration,
    pub feed_queue: usize,
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
        let options = Options {
            database: Some(database.into()),
            ..Options::default()
        };
        // Defaults only: cannot fail.
        Settings::from_options(options)
            .unwrap_or_else(|_| unreachable!("default settings are valid"))
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
        let bind = options.bind.unwrap_or_else(|| "127.0.0.1:8080".to_string());
        bind.to_socket_addrs()
            .map_err(|error| ConfigError::Invalid {
                variable: "SMS_CREDIT_BIND",
                reason: format!("'{bind}' is not an address to listen on ({error})"),
            })?;
        let public_url = options
            .public_url
            .map(|url| checked_url("SMS_CREDIT_PUBLIC_URL", url))
            .transpose()?;

        let stripe = match options.stripe_secret_key {
            Some(secret_key) => Some(StripeSettings {
                secret_key: non_empty_secret("SMS_CREDIT_STRIPE_SECRET_KEY", secret_key)?,
                webhook_secret: options
                    .stripe_webhook_secret
                    .map(|secret| non_empty_secret("SMS_CREDIT_STRIPE_WEBHOOK_SECRET", secret))
                    .transpose()?,
                api_base: checked_url(
                    "SMS_CREDIT_STRIPE_API_BASE",
                    options
                        .stripe_api_base
                        .unwrap_or_else(|| "https://api.stripe.com".to_string()),
                )?,
                allow_promotion_codes: options.stripe_allow_promotion_codes.unwrap_or(false),
            }),
            None => None,
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

        let positive = |variable: &'static str, value: usize| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    variable,
                    reason: "must be at least 1".to_string(),
                })
            } else {
                Ok(value)
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
        let signup_url = options
            .signup_url
            .map(|url| checked_url("SMS_CREDIT_SIGNUP_URL", url))
            .transpose()?;

        Ok(Settings {
            bind,
            database: options
                .database
                .unwrap_or_else(|| PathBuf::from("./sms-credit.db")),
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
            low_balance_cooldown: Duration::from_secs(
                options.low_balance_cooldown_secs.unwrap_or(86_400),
            ),
            signup_url,
            reconcile_delay: Duration::from_secs(options.reconcile_delay_secs.unwrap_or(300)),
            passivate_after: Duration::from_secs(options.passivate_after_secs.unwrap_or(900)),
            actor_threads: positive(
                "SMS_CREDIT_ACTOR_THREADS",
                options.actor_threads.unwrap_or(2),
            )?,
            http_workers: positive("SMS_CREDIT_HTTP_WORKERS", options.http_workers.unwrap_or(2))?,
            feed_heartbeat: Duration::from_secs(positive(
                "SMS_CREDIT_FEED_HEARTBEAT_SECS",
                options.feed_heartbeat_secs.unwrap_or(15) as usize,
            )? as u64),
            feed_queue: positive("SMS_CREDIT_FEED_QUEUE", options.feed_queue.unwrap_or(256))?,
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
    }
}

fn non_empty_secret(variable: &'static str, value: String) -> Result<Secret, ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::Invalid {
            variable,
            reason: "is set but empty".to_string(),
        });
    }
    Ok(Secret::new(value))
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

    #[test]
    fn secrets_do_not_show_in_debug() {
        let options = Options {
            admin_token: Some("hunter2".into()),
            ..Options::default()
        };
        let settings = Settings::from_options(options);
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: Options =
            toml::from_str("bind = \"127.0.0.1:9000\"\ndatabase = \"from-file.db\"")
                .unwrap_or_default();
        let flags = Options {
            database: Some(PathBuf::from("from-flag.db")),
            ..Options::default()
        };
        let merged = merge(flags, file);
        assert_eq!(merged.bind.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(merged.database, Some(PathBuf::from("from-flag.db")));
    }
}

//! The server's configuration: one typed struct in sections, loaded once
//! from defaults, then an optional TOML file, then environment variables,
//! then flags.
//!
//! - `catalog` — the one list of settings (key, section, help, default);
//!   the flags, variables, `--help` and the file's keys come from it.
//! - `layers` — the layered loader (figment), which remembers where each
//!   value came from.
//! - `checks` — one small check per section, from text to typed values.

mod catalog;
mod checks;
mod layers;
mod secret;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sms_credit_actors::adapters::{Checkpoints, DatabaseLocation, IfMissing, StoreSettings};
use sms_credit_actors::billing::auto_top_up::AutoTopUpPolicy;
use sms_credit_actors::rating::RateTable;
use sms_credit_actors::Money;

pub use catalog::{GlobalOptions, Options, Section, Setting, SETTINGS};
pub use layers::{Origin, Values};
pub use secret::Secret;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {reason}")]
    File { path: String, reason: String },
    /// `setting` names where the value was set: the variable, the flag, or
    /// the key and the file.
    #[error("{setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

/// Where the server listens and how many threads it runs.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub bind: String,
    pub public_url: Option<String>,
    /// Sent in SMS replies: where to sign up and top up.
    pub signup_url: Option<String>,
    /// The account page's title.
    pub service_name: String,
    /// How log lines look (every command's, not only the server's).
    pub log_format: LogFormat,
    pub http_workers: usize,
    pub actor_threads: usize,
    pub passivate_after: Duration,
}

/// How log lines on standard error are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: one line of text per event, coloured on a terminal.
    Text,
    /// For a log collector: one JSON object a line, the fields of the
    /// request it happened in (`request_id`, `account_id`) among its own.
    Json,
}

/// Which header the trusted proxies write the client's address into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy's `option forwardfor`, Caddy,
    /// Traefik, Envoy, the clouds' load balancers).
    #[default]
    XForwardedFor,
    /// The standard `Forwarded` (RFC 7239; HAProxy's `option forwarded`).
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<ForwardedHeader, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            _ => Err(format!("'{text}' is not x-forwarded-for or forwarded")),
        }
    }
}

/// The database, and how long another instance may be silent.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub location: DatabaseLocation,
    /// Who checkpoints SQLite's write-ahead log (Litestream, when it
    /// replicates the file).
    pub checkpoints: Checkpoints,
    /// After this long without a heartbeat an instance counts as gone.
    pub instance_timeout: Duration,
    /// Whether a database is made where there is none: the server's and
    /// the creating commands' settings do; the other commands refuse.
    pub if_missing: IfMissing,
}

impl DatabaseSettings {
    /// How the store is opened, for the server and every command.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            checkpoints: self.checkpoints,
            if_missing: self.if_missing,
            instance_timeout: Some(self.instance_timeout),
            ..StoreSettings::new(self.location.clone())
        }
    }
}

/// Who may call the admin API, the host API and `/metrics`.
#[derive(Clone, Debug)]
pub struct AccessSettings {
    pub admin_token: Option<Secret>,
    pub api_key: Option<Secret>,
    /// Opens `/metrics` on the main address.
    pub metrics_token: Option<Secret>,
    /// A separate address that serves only `/metrics`.
    pub metrics_bind: Option<String>,
    /// The largest admin adjustment, either sign.
    pub max_adjustment: Money,
    /// Proxies whose `X-Forwarded-For` (or `Forwarded`) is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The header those proxies write.
    pub forwarded_header: ForwardedHeader,
    /// Sign-in by phone: how long its tokens live, how often codes may be asked for.
    pub sign_in: sms_credit_actors::sign_in::SignInPolicy,
    /// Calls to the routes that need no credential, per client address and
    /// minute, on each instance (at least 1).
    pub anonymous_calls_per_minute: u32,
}

/// Stripe credentials, where its API is, and what access includes.
#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: Secret,
    pub webhook_secret: Secret,
    pub api_base: String,
    pub allow_promotion_codes: bool,
    /// Credit that comes with access.
    pub included_credit: Money,
    /// The most `BUY` by SMS may charge one account in a UTC day.
    pub buy_daily_limit: Money,
}

/// Twilio credentials and where its API is.
#[derive(Clone, Debug)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: Option<String>,
    pub api_base: String,
}

/// What messages cost, when an account is warned, and when prices are checked.
#[derive(Clone, Debug)]
pub struct MessageSettings {
    /// The rate table: per destination country, carrier cost and customer rate.
    pub rates: Arc<RateTable>,
    pub low_balance_threshold: Money,
    pub low_balance_cooldown: Duration,
    pub reconcile_delay: Duration,
}

/// The balance feed's heartbeat and per-client queue.
#[derive(Clone, Debug)]
pub struct FeedSettings {
    pub heartbeat: Duration,
    pub queue: usize,
    /// Feeds one account may have open at once (per instance).
    pub max_per_account: usize,
}

/// The checked configuration of the server.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub access: AccessSettings,
    /// `None` when Stripe is not configured.
    pub stripe: Option<StripeSettings>,
    /// `None` when Twilio is not configured.
    pub twilio: Option<TwilioSettings>,
    pub messages: MessageSettings,
    pub feed: FeedSettings,
    /// Auto top-up's waits after failures, its limit and its lease.
    pub auto_top_up: AutoTopUpPolicy,
    pub webhooks: WebhookSettings,
}

/// Where webhook endpoints may point, and how long their history is kept.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `http://` and private addresses allowed (development and tests).
    pub allow_private: bool,
    /// How long made and ended deliveries, their tries and the events no
    /// delivery needs are kept.
    pub retention: std::time::Duration,
}

impl Settings {
    /// The URL the world reaches this server at: the configured public URL,
    /// or the listen address.
    pub fn public_base_url(&self) -> String {
        self.server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.bind))
    }

    /// Where SMS replies send people to sign up or top up.
    pub fn web_link(&self) -> String {
        self.server
            .signup_url
            .clone()
            .unwrap_or_else(|| format!("{}/account", self.public_base_url()))
    }

    /// Settings for a server on `database` with nothing else configured.
    pub fn local(database: impl Into<PathBuf>) -> Settings {
        let mut settings = Settings::check(&Values::defaults())
            .unwrap_or_else(|_| unreachable!("default settings are valid"));
        settings.database.location = DatabaseLocation::Sqlite(database.into());
        settings
    }

    /// Loads the layers (defaults, file, environment, flags) and checks them.
    pub fn load(global: &GlobalOptions, options: &Options) -> Result<Settings, ConfigError> {
        Settings::check(&Values::load(global, options)?)
    }

    /// Checks every section; the first refusal names its setting.
    pub fn check(values: &Values) -> Result<Settings, ConfigError> {
        let server = checks::server(values)?;
        let database = checks::database(values)?;
        Ok(Settings {
            access: checks::access(values)?,
            stripe: checks::stripe(values, &server)?,
            twilio: checks::twilio(values)?,
            messages: checks::messages(values)?,
            feed: checks::feed(values)?,
            auto_top_up: checks::auto_top_up(values, &database)?,
            webhooks: checks::webhooks(values)?,
            server,
            database,
        })
    }
}

#[cfg(test)]
mod tests;

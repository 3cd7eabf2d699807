//! The one list of settings: each with its key, section, help and default.
//! The flags, the environment variables, `--help`, the config file's keys
//! and `sms-credit config` are all made from it.

use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

/// Where a group of settings shows in `--help` and in `sms-credit config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Server,
    Database,
    Access,
    Stripe,
    Twilio,
    Messages,
    Feed,
    AutoTopUp,
    Webhooks,
}

impl Section {
    pub fn title(self) -> &'static str {
        match self {
            Section::Server => "Server",
            Section::Database => "Database",
            Section::Access => "Access and metrics",
            Section::Stripe => "Stripe",
            Section::Twilio => "Twilio",
            Section::Messages => "Messages and warnings",
            Section::Feed => "Balance feed",
            Section::AutoTopUp => "Auto top-up",
            Section::Webhooks => "Webhooks to the host application",
        }
    }
}

/// One setting. Its flag is the key with '-' for '_', its environment
/// variable `SMS_CREDIT_` and the key in capitals.
#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    pub section: Section,
    /// What the value looks like in `--help`.
    pub value_name: &'static str,
    /// The value when nothing sets it; `None` leaves the setting unset.
    pub default: Option<&'static str>,
    /// Never shown: `***` in `sms-credit config`, hidden in `--help`.
    pub secret: bool,
    /// On every command, not only `serve` (the database).
    pub global: bool,
    pub help: &'static str,
}

impl Setting {
    pub fn variable(&self) -> String {
        format!("SMS_CREDIT_{}", self.key.to_ascii_uppercase())
    }

    pub fn flag(&self) -> String {
        format!("--{}", self.long())
    }

    fn long(&self) -> String {
        self.key.replace('_', "-")
    }

    /// The setting as a clap argument: flag, variable, default and help.
    fn arg(&self) -> Arg {
        let arg = Arg::new(self.key)
            .long(self.long())
            .env(self.variable())
            .value_name(self.value_name)
            .help(self.help)
            .hide_env_values(self.secret || self.key == "database")
            .help_heading(self.section.title());
        let arg = match self.default {
            Some(default) => arg.default_value(default),
            None => arg,
        };
        if self.global {
            // After each command's own options.
            arg.global(true).display_order(1000)
        } else {
            arg
        }
    }
}

/// Looks a setting up by its key.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|setting| setting.key == key)
}

/// Every setting, in the order `--help` and `sms-credit config` show them.
pub static SETTINGS: &[Setting] = &[
    Setting {
        key: "bind",
        section: Section::Server,
        value_name: "ADDR",
        default: Some("127.0.0.1:8080"),
        secret: false,
        global: false,
        help: "Address and port the HTTP server listens on",
    },
    Setting {
        key: "public_url",
        section: Section::Server,
        value_name: "URL",
        default: None,
        secret: false,
        global: false,
        help: "The URL the world reaches this server at (Checkout redirects, Twilio signatures), e.g. https://sms.example.com",
    },
    Setting {
        key: "service_name",
        section: Section::Server,
        value_name: "NAME",
        default: Some("SMS credit"),
        secret: false,
        global: false,
        help: "The service's name, shown as the account page's title",
    },
    Setting {
        key: "signup_url",
        section: Section::Server,
        value_name: "URL",
        default: None,
        secret: false,
        global: false,
        help: "Where people sign up and top up on the web, sent in SMS replies [default: the public URL + /account]",
    },
    Setting {
        key: "log_format",
        section: Section::Server,
        value_name: "FORMAT",
        default: Some("text"),
        secret: false,
        global: false,
        help: "How log lines on standard error look: text (for people; coloured only on a terminal and unless NO_COLOR is set) or json (one object a line, with the request's request_id and account_id as fields, for a log collector)",
    },
    Setting {
        key: "http_workers",
        section: Section::Server,
        value_name: "N",
        default: Some("2"),
        secret: false,
        global: false,
        help: "HTTP worker threads",
    },
    Setting {
        key: "actor_threads",
        section: Section::Server,
        value_name: "N",
        default: Some("2"),
        secret: false,
        global: false,
        help: "Threads that run account actors",
    },
    Setting {
        key: "passivate_after_secs",
        section: Section::Server,
        value_name: "SECONDS",
        default: Some("900"),
        secret: false,
        global: false,
        help: "Seconds an idle account actor stays in memory",
    },
    Setting {
        key: "database",
        section: Section::Database,
        value_name: "PATH|URL",
        default: Some("./sms-credit.db"),
        secret: false,
        global: true,
        help: "The database: an SQLite file path (or sqlite:path, sqlite://path), or postgres://user:password@host/name; migrated as needed, and made only by serve, migrate and the commands that create something",
    },
    Setting {
        key: "sqlite_checkpoints",
        section: Section::Database,
        value_name: "server|litestream",
        default: Some("server"),
        secret: false,
        global: true,
        help: "Who copies SQLite's write-ahead log back into the database file: server (the server, every 64 MiB of log) or litestream (left to Litestream, which replicates the log, so that no checkpoint races its own; without Litestream running the log grows without bound)",
    },
    Setting {
        key: "instance_timeout_secs",
        section: Section::Database,
        value_name: "SECONDS",
        default: Some("30"),
        secret: false,
        global: false,
        help: "Seconds after its last heartbeat that an instance counts as gone, so that what it left half-done (a reservation of a message being sent) is resolved by another",
    },
    Setting {
        key: "admin_token",
        section: Section::Access,
        value_name: "TOKEN",
        default: None,
        secret: true,
        global: false,
        help: "Bearer token for the admin API under /v1/admin; without it the admin API answers 503",
    },
    Setting {
        key: "api_key",
        section: Section::Access,
        value_name: "KEY",
        default: None,
        secret: true,
        global: false,
        help: "API key of the host application (for /v1/messages)",
    },
    Setting {
        key: "metrics_token",
        section: Section::Access,
        value_name: "TOKEN",
        default: None,
        secret: true,
        global: false,
        help: "Bearer token that opens GET /metrics on the main listen address; without it (and without --metrics-bind) /metrics answers 503, because it reports the ledger's money totals",
    },
    Setting {
        key: "metrics_bind",
        section: Section::Access,
        value_name: "ADDR",
        default: None,
        secret: false,
        global: false,
        help: "A separate address (for example 127.0.0.1:9464) that serves only GET /metrics, without a token, for a Prometheus that can reach it",
    },
    Setting {
        key: "max_adjustment",
        section: Section::Access,
        value_name: "DOLLARS",
        default: Some("10000.00"),
        secret: false,
        global: false,
        help: "The largest admin adjustment of a balance, in dollars, either sign; a larger one is refused",
    },
    Setting {
        key: "trusted_proxies",
        section: Section::Access,
        value_name: "ADDRS",
        default: None,
        secret: false,
        global: false,
        help: "Comma-separated addresses of the proxies in front of this server; a request from one is counted under the client address they wrote, read from the right past trusted proxies only (without it, under the connection's own address)",
    },
    Setting {
        key: "forwarded_header",
        section: Section::Access,
        value_name: "HEADER",
        default: Some("x-forwarded-for"),
        secret: false,
        global: false,
        help: "The header the trusted proxies write the client's address into: x-forwarded-for (nginx, HAProxy's option forwardfor, Caddy, Traefik, Envoy, cloud load balancers) or forwarded (the standard one; HAProxy's option forwarded); the other is not believed",
    },
    Setting {
        key: "sign_in_token_days",
        section: Section::Access,
        value_name: "DAYS",
        default: Some("30"),
        secret: false,
        global: false,
        help: "Days an account token made by signing in with a texted code lasts before the customer signs in again",
    },
    Setting {
        key: "sign_in_codes_per_phone_hour",
        section: Section::Access,
        value_name: "N",
        default: Some("5"),
        secret: false,
        global: false,
        help: "Sign-in codes one phone may be sent in an hour at the request of one client address (an IPv6 client: its /64), and never two within 30 seconds; one more from that address is refused with 429",
    },
    Setting {
        key: "sign_in_codes_per_phone_total_hour",
        section: Section::Access,
        value_name: "N",
        default: Some("10"),
        secret: false,
        global: false,
        help: "Sign-in codes one phone may be sent in an hour, whoever asks (higher than the codes per phone from one address, so that one address cannot use a phone's codes up); one more is refused with 429 until the admin lifts the phone's limits",
    },
    Setting {
        key: "sign_in_codes_per_phone_day",
        section: Section::Access,
        value_name: "N",
        default: Some("24"),
        secret: false,
        global: false,
        help: "Sign-in codes one phone may be sent in 24 hours, whoever asks, a customer's phone too (customers are texted past the caps of the hour, so this bounds what one number can be sent); one more is refused with 429 until the oldest is a day old or the admin lifts the phone's limits",
    },
    Setting {
        key: "sign_in_codes_per_address_hour",
        section: Section::Access,
        value_name: "N",
        default: Some("30"),
        secret: false,
        global: false,
        help: "Sign-in codes one client address (an IPv6 client: its /64) may ask for in an hour, whatever the phones; one more is refused with 429",
    },
    Setting {
        key: "sign_in_codes_per_hour",
        section: Section::Access,
        value_name: "N",
        default: Some("100"),
        secret: false,
        global: false,
        help: "Sign-in codes asked for in an hour, whoever asks and for whichever phone, a customer's too (what signing in may cost in an hour, against SMS pumping); past it a phone that has no account is answered as any other and not texted (a customer still is), until the oldest is an hour old",
    },
    Setting {
        key: "sign_in_codes_per_country_hour",
        section: Section::Access,
        value_name: "N",
        default: Some("50"),
        secret: false,
        global: false,
        help: "The same, for the codes of an hour to one destination (the country the rate table prices the phone as); past it a phone that has no account is answered as any other and not texted",
    },
    Setting {
        key: "anonymous_calls_per_minute",
        section: Section::Access,
        value_name: "N",
        default: Some("60"),
        secret: false,
        global: false,
        help: "Calls one client address may make in a minute to the routes that need no credential (quote, sign-in, access checkout without the API key, checkout status), counted on each instance; one more is refused with 429",
    },
    Setting {
        key: "stripe_secret_key",
        section: Section::Stripe,
        value_name: "KEY",
        default: None,
        secret: true,
        global: false,
        help: "Stripe secret key; without it the paid features answer 503 stripe_not_configured",
    },
    Setting {
        key: "stripe_webhook_secret",
        section: Section::Stripe,
        value_name: "SECRET",
        default: None,
        secret: true,
        global: false,
        help: "Stripe webhook endpoint secret (whsec_…), used to verify /webhooks/stripe",
    },
    Setting {
        key: "stripe_api_base",
        section: Section::Stripe,
        value_name: "URL",
        default: Some("https://api.stripe.com"),
        secret: false,
        global: false,
        help: "Base URL of the Stripe API",
    },
    Setting {
        key: "stripe_allow_promotion_codes",
        section: Section::Stripe,
        value_name: "BOOL",
        default: Some("false"),
        secret: false,
        global: false,
        help: "Let customers type Stripe promotion codes on the Checkout page (true/false)",
    },
    Setting {
        key: "included_credit",
        section: Section::Stripe,
        value_name: "DOLLARS",
        default: Some("0.00"),
        secret: false,
        global: false,
        help: "Credit that comes with access, in dollars, credited once when access is paid",
    },
    Setting {
        key: "buy_daily_limit",
        section: Section::Stripe,
        value_name: "DOLLARS",
        default: Some("30.00"),
        secret: false,
        global: false,
        help: "The most BUY by SMS may charge one account in a day (UTC); past it the reply says so and points to the web",
    },
    Setting {
        key: "twilio_account_sid",
        section: Section::Twilio,
        value_name: "SID",
        default: None,
        secret: false,
        global: false,
        help: "Twilio account SID (AC and 32 hexadecimal characters); without it and the auth token the SMS features answer 503 twilio_not_configured",
    },
    Setting {
        key: "twilio_auth_token",
        section: Section::Twilio,
        value_name: "TOKEN",
        default: None,
        secret: true,
        global: false,
        help: "Twilio auth token, also the key of Twilio's webhook signatures",
    },
    Setting {
        key: "twilio_from",
        section: Section::Twilio,
        value_name: "NUMBER",
        default: None,
        secret: false,
        global: false,
        help: "The Twilio number messages are sent from (E.164)",
    },
    Setting {
        key: "twilio_api_base",
        section: Section::Twilio,
        value_name: "URL",
        default: Some("https://api.twilio.com"),
        secret: false,
        global: false,
        help: "Base URL of the Twilio REST API",
    },
    Setting {
        key: "rates_file",
        section: Section::Messages,
        value_name: "FILE",
        default: None,
        secret: false,
        global: false,
        help: "A TOML rate table to use instead of the embedded one (see actors/src/rating/default_rates.toml)",
    },
    Setting {
        key: "low_balance_threshold",
        section: Section::Messages,
        value_name: "DOLLARS",
        default: Some("2.00"),
        secret: false,
        global: false,
        help: "A debit that leaves the balance below this (dollars) sends a warning SMS",
    },
    Setting {
        key: "low_balance_cooldown_secs",
        section: Section::Messages,
        value_name: "SECONDS",
        default: Some("86400"),
        secret: false,
        global: false,
        help: "At most one low-balance warning per account in this many seconds",
    },
    Setting {
        key: "reconcile_delay_secs",
        section: Section::Messages,
        value_name: "SECONDS",
        default: Some("300"),
        secret: false,
        global: false,
        help: "Seconds after sending before Twilio's actual price is fetched for reconciliation",
    },
    Setting {
        key: "feed_heartbeat_secs",
        section: Section::Feed,
        value_name: "SECONDS",
        default: Some("15"),
        secret: false,
        global: false,
        help: "Seconds between the balance feed's pings; a client silent for three is dropped",
    },
    Setting {
        key: "feed_queue",
        section: Section::Feed,
        value_name: "N",
        default: Some("256"),
        secret: false,
        global: false,
        help: "Changes sent to a feed client and not yet read before the server waits for it to read (a client that reads nothing for 10 s is closed as too slow)",
    },
    Setting {
        key: "feed_max_per_account",
        section: Section::Feed,
        value_name: "N",
        default: Some("10"),
        secret: false,
        global: false,
        help: "Feeds one account may have open at once on an instance; one more is refused with 429",
    },
    Setting {
        key: "auto_top_up_backoff",
        section: Section::AutoTopUp,
        value_name: "WAITS",
        default: Some("1h,6h,24h"),
        secret: false,
        global: false,
        help: "Waits before the next auto top-up after the 1st, 2nd, … failure in a row, comma-separated, each a number with s, m, h or d",
    },
    Setting {
        key: "auto_top_up_undecided_after",
        section: Section::AutoTopUp,
        value_name: "WAIT",
        default: Some("3d"),
        secret: false,
        global: false,
        help: "An auto top-up whose charge Stripe neither answers nor can be asked about for this long (a number with s, m, h or d) is marked unknown and auto top-up is turned off, never charged blind",
    },
    Setting {
        key: "auto_top_up_max_failures",
        section: Section::AutoTopUp,
        value_name: "N",
        default: Some("3"),
        secret: false,
        global: false,
        help: "Failures in a row after which an account's auto top-up turns itself off",
    },
    Setting {
        key: "webhooks_allow_private",
        section: Section::Webhooks,
        value_name: "BOOL",
        default: Some("false"),
        secret: false,
        global: false,
        help: "Allow webhook endpoints on http:// and on loopback, private and link-local addresses: for local development and tests only (otherwise only https:// to public addresses)",
    },
    Setting {
        key: "webhooks_retention",
        section: Section::Webhooks,
        value_name: "WAIT",
        default: Some("30d"),
        secret: false,
        global: false,
        help: "How long delivered and ended webhook deliveries, their tries and the events no delivery needs any more are kept (a number with s, m, h or d, at least 7d); a replay reaches back no further",
    },
];

/// How clap found a value: typed on the command line or read from the
/// environment (defaults come from [`SETTINGS`], not from clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GivenBy {
    Flag,
    Environment,
}

/// One value clap found for a setting.
#[derive(Clone)]
pub struct Given {
    pub setting: &'static Setting,
    pub value: String,
    pub by: GivenBy,
}

impl fmt::Debug for Given {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.setting.secret {
            "[redacted]"
        } else {
            &self.value
        };
        write!(formatter, "{}={value} ({:?})", self.setting.key, self.by)
    }
}

/// The settings' values found on one command line level (flags, or the
/// environment), for every setting that is or is not `global`.
fn given(matches: &ArgMatches, global: bool) -> Vec<Given> {
    SETTINGS
        .iter()
        .filter(|setting| setting.global == global)
        .filter_map(|setting| {
            let by = match matches.value_source(setting.key)? {
                ValueSource::CommandLine => GivenBy::Flag,
                ValueSource::EnvVariable => GivenBy::Environment,
                _ => return None,
            };
            let value = matches
                .try_get_one::<String>(setting.key)
                .ok()
                .flatten()?
                .clone();
            Some(Given { setting, value, by })
        })
        .collect()
}

fn add_settings(command: Command, global: bool) -> Command {
    command.args(
        SETTINGS
            .iter()
            .filter(|setting| setting.global == global)
            .map(Setting::arg),
    )
}

/// The server's settings as clap found them (shown on `serve`, not on the
/// commands that do not use them).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub given: Vec<Given>,
}

impl Options {
    /// These values over `fallback`'s (the options given before the subcommand).
    pub fn over(self, fallback: Options) -> Options {
        let mut given = fallback.given;
        given.extend(self.given);
        Options { given }
    }
}

impl FromArgMatches for Options {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Options {
            given: given(matches, false),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Options::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for Options {
    fn augment_args(command: Command) -> Command {
        add_settings(command, false)
    }

    fn augment_args_for_update(command: Command) -> Command {
        add_settings(command, false)
    }
}

/// What every command reads: the config file and the global settings (the
/// database).
#[derive(Clone, Debug, Default)]
pub struct GlobalOptions {
    pub config: Option<PathBuf>,
    pub given: Vec<Given>,
}

impl FromArgMatches for GlobalOptions {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(GlobalOptions {
            config: matches
                .try_get_one::<PathBuf>("config")
                .ok()
                .flatten()
                .cloned(),
            given: given(matches, true),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = GlobalOptions::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for GlobalOptions {
    fn augment_args(command: Command) -> Command {
        let config = Arg::new("config")
            .long("config")
            .env("SMS_CREDIT_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .global(true)
            .display_order(1001)
            .help("An optional TOML file that sets any setting (keys as the long flags, with '_' for '-'); the environment and flags win over it.");
        add_settings(command.arg(config), true)
    }

    fn augment_args_for_update(command: Command) -> Command {
        GlobalOptions::augment_args(command)
    }
}

//! The checks and the layering, without a process: values come as if from
//! the environment (or from a file written by the test).

use std::io::Write;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use super::*;

fn error_of(values: &[(&'static str, &str)]) -> String {
    match Settings::check(&Values::with_environment(values)) {
        Ok(_) => "accepted".to_string(),
        Err(error) => error.to_string(),
    }
}

fn settings_of(values: &[(&'static str, &str)]) -> Settings {
    Settings::check(&Values::with_environment(values)).unwrap()
}

#[test]
fn nothing_configured_is_valid() {
    let settings = Settings::check(&Values::defaults()).unwrap();
    assert!(settings.stripe.is_none() && settings.twilio.is_none());
    assert!(settings.access.admin_token.is_none());
    assert_eq!(settings.server.bind, "127.0.0.1:8080");
    assert_eq!(settings.feed.queue, 256);
}

#[test]
fn every_setting_is_checked() {
    let values = Values::defaults();
    Settings::check(&values).unwrap();
    let read = values.keys_read();
    for setting in SETTINGS {
        assert!(
            read.contains(setting.key),
            "{} is never checked",
            setting.key
        );
    }
    assert_eq!(
        read.len(),
        SETTINGS.len(),
        "a check reads a key that is not a setting"
    );
}

#[test]
fn malformed_values_name_their_variable() {
    assert!(error_of(&[("bind", "not an address")]).starts_with("SMS_CREDIT_BIND"));
    assert!(
        error_of(&[("twilio_account_sid", TWILIO_SID)]).starts_with("SMS_CREDIT_TWILIO_AUTH_TOKEN")
    );
    assert!(error_of(&[("public_url", "ftp://x")]).starts_with("SMS_CREDIT_PUBLIC_URL"));
    for key in ["admin_token", "api_key", "metrics_token"] {
        let error = error_of(&[(key, "a")]);
        let variable = format!("SMS_CREDIT_{}", key.to_ascii_uppercase());
        assert!(
            error.starts_with(&variable) && error.contains("openssl rand -hex 32"),
            "{error}"
        );
        assert_eq!(error_of(&[(key, "sixteen-chars-ok")]), "accepted");
    }
}

/// An account SID as Twilio makes them.
const TWILIO_SID: &str = "AC0123456789abcdef0123456789ABCDEF";

#[test]
fn a_twilio_account_sid_is_ac_and_32_hexadecimal_characters() {
    let token = ("twilio_auth_token", "twilio-token");
    let from = ("twilio_from", "+14155550100");
    for wrong in [
        "ACx",
        "AC",
        "AC0123456789abcdef0123456789abcde",
        "AC0123456789abcdef0123456789abcdef0",
        "AC0123456789abcdef0123456789abcdeg",
        "MG0123456789abcdef0123456789abcdef",
        "ac0123456789abcdef0123456789abcdef",
    ] {
        let error = error_of(&[("twilio_account_sid", wrong), token, from]);
        assert_eq!(
            error,
            format!(
                "SMS_CREDIT_TWILIO_ACCOUNT_SID: '{wrong}' is not a Twilio account SID: one is AC followed by 32 hexadecimal characters, as the Twilio console shows it"
            )
        );
    }
    let settings = settings_of(&[("twilio_account_sid", TWILIO_SID), token, from]);
    assert_eq!(
        settings.twilio.map(|twilio| twilio.account_sid).as_deref(),
        Some(TWILIO_SID)
    );
}

#[test]
fn secrets_do_not_show_in_debug() {
    let values = Values::with_environment(&[
        ("admin_token", "hunter2"),
        ("api_key", "hunter3"),
        ("stripe_secret_key", "sk_live_hunter4"),
        ("stripe_webhook_secret", "whsec_hunter5"),
        ("twilio_auth_token", "hunter6"),
    ]);
    let shown = format!("{values:?}");
    for secret in ["hunter2", "hunter3", "hunter4", "hunter5", "hunter6"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let settings = Settings::check(&values);
    assert!(!format!("{settings:?}").contains("hunter2"));
}

#[test]
fn a_stripe_key_without_its_webhook_secret_or_public_url_is_refused() {
    let key = ("stripe_secret_key", "sk_test_1");
    let webhook = ("stripe_webhook_secret", "whsec_1");
    let public = ("public_url", "https://sms.example.com");
    assert!(error_of(&[key, public]).starts_with("SMS_CREDIT_STRIPE_WEBHOOK_SECRET"));
    assert!(
        error_of(&[key, public]).contains("is required when SMS_CREDIT_STRIPE_SECRET_KEY is set")
    );
    assert!(error_of(&[key, webhook]).starts_with("SMS_CREDIT_PUBLIC_URL"));
    assert!(error_of(&[webhook]).starts_with("SMS_CREDIT_STRIPE_SECRET_KEY"));
    assert_eq!(error_of(&[key, webhook, public]), "accepted");
}

#[test]
fn auto_top_up_waits_and_limit_are_read_and_checked() {
    let read = |backoff: &str, max: &str| {
        Settings::check(&Values::with_environment(&[
            ("auto_top_up_backoff", backoff),
            ("auto_top_up_max_failures", max),
        ]))
    };
    let settings = read("30s, 5m,2h,1d", "4").unwrap();
    assert_eq!(
        settings.auto_top_up.backoff,
        [30, 300, 7_200, 86_400].map(Duration::from_secs).to_vec()
    );
    assert_eq!(settings.auto_top_up.max_failures, 4);
    let defaults = settings_of(&[]);
    assert_eq!(
        defaults.auto_top_up.backoff,
        [3_600, 21_600, 86_400].map(Duration::from_secs).to_vec()
    );
    assert_eq!(defaults.auto_top_up.max_failures, 3);
    assert_eq!(
        defaults.auto_top_up.undecided_after,
        Duration::from_secs(3 * 86_400)
    );
    assert!(error_of(&[("auto_top_up_undecided_after", "12h")])
        .starts_with("SMS_CREDIT_AUTO_TOP_UP_UNDECIDED_AFTER"));
    assert_eq!(
        error_of(&[("auto_top_up_undecided_after", "2d")]),
        "accepted"
    );
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
    for key in [
        "low_balance_cooldown_secs",
        "reconcile_delay_secs",
        "passivate_after_secs",
        "actor_threads",
        "http_workers",
        "feed_heartbeat_secs",
        "feed_queue",
    ] {
        let variable = format!("SMS_CREDIT_{}", key.to_ascii_uppercase());
        // u64::MAX seconds would wrap to a negative i64 of milliseconds.
        for bad in [
            "abc",
            "-1",
            "18446744073709551615",
            "9223372036854775807",
            "1.5",
        ] {
            let error = error_of(&[(key, bad)]);
            assert!(error.starts_with(&variable), "{variable}={bad}: {error}");
        }
        assert_eq!(error_of(&[(key, "30")]), "accepted", "{variable}=30");
    }
    assert_eq!(settings_of(&[]).access.anonymous_calls_per_minute, 60);
    assert_eq!(
        settings_of(&[("anonymous_calls_per_minute", "5")])
            .access
            .anonymous_calls_per_minute,
        5
    );
    for bad in ["0", "-1", "1000001", "lots"] {
        let error = error_of(&[("anonymous_calls_per_minute", bad)]);
        assert!(
            error.starts_with("SMS_CREDIT_ANONYMOUS_CALLS_PER_MINUTE"),
            "{bad}: {error}"
        );
    }
    assert_eq!(settings_of(&[]).server.log_format, LogFormat::Text);
    assert_eq!(
        settings_of(&[("log_format", "json")]).server.log_format,
        LogFormat::Json
    );
    assert_eq!(
        error_of(&[("log_format", "yaml")]),
        "SMS_CREDIT_LOG_FORMAT: 'yaml' is not text or json"
    );
    assert!(error_of(&[("stripe_allow_promotion_codes", "maybe")])
        .starts_with("SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES"));
    // Checkpoints: the server's unless Litestream is to take them.
    use sms_credit_actors::adapters::Checkpoints;
    assert_eq!(
        settings_of(&[]).database.store_settings().checkpoints,
        Checkpoints::Server
    );
    assert_eq!(
        settings_of(&[("sqlite_checkpoints", "litestream")])
            .database
            .store_settings()
            .checkpoints,
        Checkpoints::Litestream
    );
    assert_eq!(
        error_of(&[("sqlite_checkpoints", "sometimes")]),
        "SMS_CREDIT_SQLITE_CHECKPOINTS: 'sometimes' is not server or litestream"
    );
}

#[test]
fn dollar_amounts_may_have_a_dollar_sign() {
    let settings = settings_of(&[("low_balance_threshold", "$2")]);
    assert_eq!(
        settings.messages.low_balance_threshold,
        Money::from_micros(2_000_000)
    );
}

/// A config file written for one test.
fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// The command line as `sms-credit` would parse it.
fn parsed(arguments: &[&str]) -> (GlobalOptions, Options) {
    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        global: GlobalOptions,
        #[command(flatten)]
        options: Options,
    }
    let matches = Line::command()
        .try_get_matches_from(std::iter::once("sms-credit").chain(arguments.iter().copied()))
        .unwrap();
    let line = Line::from_arg_matches(&matches).unwrap();
    (line.global, line.options)
}

#[test]
fn the_file_may_write_numbers_and_booleans_as_toml_scalars() {
    let file = file_with(
        "feed_queue = 512\nstripe_allow_promotion_codes = true\nlow_balance_threshold = \"1.50\"",
    );
    let path = file.path().to_str().unwrap();
    let (global, options) = parsed(&["--config", path]);
    let settings = Settings::load(&global, &options).unwrap();
    assert_eq!(settings.feed.queue, 512);
    assert_eq!(
        settings.messages.low_balance_threshold,
        Money::from_micros(1_500_000)
    );

    let float = file_with("low_balance_threshold = 1.5");
    let (global, options) = parsed(&["--config", float.path().to_str().unwrap()]);
    let error = Settings::load(&global, &options).unwrap_err().to_string();
    assert!(
        error.starts_with("low_balance_threshold in the config file"),
        "money is never a binary fraction: {error}"
    );
}

#[test]
fn a_mistake_in_the_file_names_the_key_and_the_file() {
    let file = file_with("feed_queue = \"lots\"");
    let path = file.path().to_str().unwrap();
    let (global, options) = parsed(&["--config", path]);
    let error = Settings::load(&global, &options).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("feed_queue in the config file {path}: 'lots'")),
        "{error}"
    );

    let unknown = file_with("feed_queues = 5");
    let path = unknown.path().to_str().unwrap();
    let (global, options) = parsed(&["--config", path]);
    let error = Settings::load(&global, &options).unwrap_err().to_string();
    assert!(
        error.contains(path) && error.contains("unknown key 'feed_queues'"),
        "{error}"
    );
}

#[test]
fn a_mistaken_flag_is_named_as_a_flag() {
    let (global, options) = parsed(&["--feed-queue", "lots"]);
    let error = Settings::load(&global, &options).unwrap_err().to_string();
    assert!(
        error.starts_with("--feed-queue (SMS_CREDIT_FEED_QUEUE): 'lots'"),
        "{error}"
    );
}

#[test]
fn flags_win_over_the_file_and_each_value_knows_its_origin() {
    let file = file_with("bind = \"127.0.0.1:9000\"\ndatabase = \"from-file.db\"\nfeed_queue = 9");
    let path = file.path().to_str().unwrap();
    let (global, options) = parsed(&["--config", path, "--database", "from-flag.db"]);
    let values = Values::load(&global, &options).unwrap();
    let settings = Settings::check(&values).unwrap();
    assert_eq!(settings.server.bind, "127.0.0.1:9000");
    assert_eq!(
        settings.database.location.to_string(),
        "sqlite://from-flag.db"
    );
    let origins: std::collections::BTreeMap<&str, (Option<String>, String)> = values
        .view()
        .into_iter()
        .map(|(setting, value, origin)| (setting.key, (value, origin)))
        .collect();
    assert_eq!(origins["bind"].1, format!("file: {path}"));
    assert_eq!(origins["database"].1, "flag");
    assert_eq!(
        origins["feed_heartbeat_secs"],
        (Some("15".into()), "default".into())
    );
    assert_eq!(origins["admin_token"], (None, "default".into()));
}

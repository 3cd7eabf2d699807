//! The command line, run as the real binary on a database file.

use crate::helpers::{fresh_directory, run_cli};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

on_both_stores!(sync accounts_verify_and_tampering);
fn accounts_verify_and_tampering() {
    let directory = fresh_directory();
    let created = run_cli(
        &directory,
        &[
            "accounts",
            "create",
            "--phone",
            "+14155550400",
            "--email",
            "hiker@example.com",
            "--json",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let account: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = account["id"].as_i64().unwrap().to_string();

    let adjust = |amount: &str, key: &str| {
        run_cli(
            &directory,
            &[
                "accounts",
                "adjust",
                &id,
                "--amount",
                amount,
                "--reason",
                "cli test",
                "--idempotency-key",
                key,
                "--json",
            ],
        )
    };
    let first = adjust("5.00", "cli-1");
    assert!(first.status.success(), "{first:?}");
    // A command's output is its own: no server log lines on it.
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        !stderr.contains("flushed") && !stderr.contains("INFO"),
        "{stderr}"
    );
    assert!(
        stdout(&first).contains("\"balance_after_micros\":5000000"),
        "{}",
        stdout(&first)
    );
    let repeated = adjust("5.00", "cli-1");
    assert!(
        stdout(&repeated).contains("\"replayed\":true"),
        "{}",
        stdout(&repeated)
    );
    let negative = adjust("-1.25", "cli-2");
    assert!(
        stdout(&negative).contains("\"balance_after_micros\":3750000"),
        "{}",
        stdout(&negative)
    );
    let bad = adjust("ten", "cli-3");
    assert!(!bad.status.success());

    let shown = run_cli(&directory, &["accounts", "show", &id]);
    assert!(shown.status.success());
    assert!(
        stdout(&shown).contains("balance $3.75 seq 2"),
        "{}",
        stdout(&shown)
    );

    let verified = run_cli(&directory, &["verify"]);
    assert!(verified.status.success(), "{verified:?}");
    assert!(
        stdout(&verified).contains("checked 1 account and 2 transactions: clean"),
        "{}",
        stdout(&verified)
    );

    // Tamper with the ledger behind the store's back: verify must notice.
    directory.execute("UPDATE account_balances SET balance = balance + 1");
    directory.execute("DELETE FROM transactions WHERE seq = 1");
    let verified = run_cli(&directory, &["verify", "--json"]);
    assert_eq!(verified.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| problem["problem"].as_str().unwrap())
        .collect();
    assert!(problems.contains(&"seq_gap"), "{problems:?}");
    assert!(problems.contains(&"snapshot_mismatch"), "{problems:?}");
}

on_both_stores!(sync malformed_configuration_names_the_variable);
fn malformed_configuration_names_the_variable() {
    let directory = fresh_directory();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("SMS_CREDIT_PUBLIC_URL", "not a url")],
            "SMS_CREDIT_PUBLIC_URL",
        ),
        (&[("SMS_CREDIT_FEED_QUEUE", "abc")], "SMS_CREDIT_FEED_QUEUE"),
        (
            &[("SMS_CREDIT_HTTP_WORKERS", "0")],
            "SMS_CREDIT_HTTP_WORKERS",
        ),
        (
            &[(
                "SMS_CREDIT_LOW_BALANCE_COOLDOWN_SECS",
                "18446744073709551615",
            )],
            "SMS_CREDIT_LOW_BALANCE_COOLDOWN_SECS",
        ),
        (
            &[("SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES", "perhaps")],
            "SMS_CREDIT_STRIPE_ALLOW_PROMOTION_CODES",
        ),
        (
            &[("SMS_CREDIT_LOG_FORMAT", "yaml")],
            "SMS_CREDIT_LOG_FORMAT: 'yaml' is not text or json",
        ),
        (
            &[("SMS_CREDIT_TWILIO_ACCOUNT_SID", "ACx")],
            "SMS_CREDIT_TWILIO_ACCOUNT_SID: 'ACx' is not a Twilio account SID: one is AC followed by 32 hexadecimal characters",
        ),
        // Half a Stripe configuration would take money and never credit it.
        (
            &[
                ("SMS_CREDIT_STRIPE_SECRET_KEY", "sk_test_1"),
                ("SMS_CREDIT_PUBLIC_URL", "https://sms.example.com"),
            ],
            "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
        ),
        (
            &[
                ("SMS_CREDIT_STRIPE_SECRET_KEY", "sk_test_1"),
                ("SMS_CREDIT_STRIPE_WEBHOOK_SECRET", "whsec_1"),
            ],
            "SMS_CREDIT_PUBLIC_URL",
        ),
    ];
    for (env, variable) in cases {
        for command in ["verify", "serve"] {
            let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"));
            process
                .arg(command)
                .env("SMS_CREDIT_DATABASE", directory.path().join("x.db"))
                .env("SMS_CREDIT_BIND", "127.0.0.1:0")
                .env_remove("SMS_CREDIT_CONFIG");
            for (name, value) in env.iter() {
                process.env(name, value);
            }
            let output = process.output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command} {env:?}: {stderr}");
            assert!(
                stderr.contains(variable),
                "{command} {env:?} should name {variable}: {stderr}"
            );
        }
    }
}

on_both_stores!(sync pricing_mode_and_discount_codes_from_the_command_line);
fn pricing_mode_and_discount_codes_from_the_command_line() {
    let directory = fresh_directory();
    assert!(run_cli(&directory, &["migrate"]).status.success());
    assert_eq!(
        stdout(&run_cli(&directory, &["pricing"])).trim(),
        "pricing: launch at $29.99"
    );
    let shown = run_cli(&directory, &["pricing", "--json"]);
    assert!(
        stdout(&shown).contains("\"mode\":\"launch\"")
            && stdout(&shown).contains("\"price_micros\":29990000"),
        "{}",
        stdout(&shown)
    );
    let set = run_cli(&directory, &["pricing", "sale", "--sale-price", "19.99"]);
    assert!(set.status.success(), "{set:?}");
    assert!(
        stdout(&run_cli(&directory, &["pricing", "--json"])).contains("\"price_micros\":19990000")
    );
    assert!(
        !run_cli(&directory, &["pricing", "sale"]).status.success(),
        "sale needs a price"
    );
    assert!(!run_cli(&directory, &["pricing", "cheap"]).status.success());

    let created = run_cli(
        &directory,
        &[
            "discount-codes",
            "create",
            "spring",
            "--percent",
            "20",
            "--max-uses",
            "5",
            "--json",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    assert!(stdout(&created).contains("\"code\":\"SPRING\""));
    assert!(
        !run_cli(
            &directory,
            &["discount-codes", "create", "SPRING", "--percent", "20"]
        )
        .status
        .success(),
        "duplicate code"
    );
    assert!(run_cli(
        &directory,
        &["discount-codes", "create", "FLAT", "--amount", "5.00"]
    )
    .status
    .success());
    assert!(
        run_cli(&directory, &["discount-codes", "deactivate", "spring"])
            .status
            .success()
    );
    let table = stdout(&run_cli(&directory, &["discount-codes", "list"]));
    assert!(
        table.contains("SPRING") && table.contains("20%") && table.contains("$5.00"),
        "{table}"
    );
    let listed = stdout(&run_cli(&directory, &["discount-codes", "list", "--json"]));
    assert!(
        listed.contains("\"code\":\"SPRING\"") && listed.contains("\"active\":false"),
        "{listed}"
    );
    assert!(listed.contains("\"amount_micros\":5000000"), "{listed}");
}

on_both_stores!(sync admin_tools_from_the_command_line);
fn admin_tools_from_the_command_line() {
    let directory = fresh_directory();
    for phone in ["+14155553700", "+14155553701"] {
        let created = run_cli(&directory, &["accounts", "create", "--phone", phone]);
        assert!(created.status.success(), "{created:?}");
    }
    let listed = stdout(&run_cli(
        &directory,
        &["accounts", "list", "--search", "3701"],
    ));
    assert_eq!(listed.lines().count(), 2, "a header and one row: {listed}");
    assert!(listed.contains("+14155553701"));
    let listed: serde_json::Value = serde_json::from_slice(
        &run_cli(
            &directory,
            &["accounts", "list", "--search", "3701", "--json"],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        listed["accounts"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    let adjusted = run_cli(
        &directory,
        &[
            "accounts",
            "adjust",
            "1",
            "--amount",
            "3.10",
            "--reason",
            "hello, world",
            "--idempotency-key",
            "k1",
        ],
    );
    assert!(adjusted.status.success(), "{adjusted:?}");
    assert_eq!(
        stdout(&adjusted).trim(),
        "account 1: +$3.10 (ledger #1), balance $3.10"
    );
    let csv = stdout(&run_cli(&directory, &["accounts", "export", "1"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    // The holder's description (the neutral one: none was given), then,
    // last, the operator's reason.
    assert!(
        lines[1].starts_with("1,1,adjustment,3100000,3.10,3100000,3.10,k1,,Balance adjustment,")
            && lines[1].ends_with(",\"hello, world\",")
            && lines[0].ends_with(",description,created_at,reason,funded_by"),
        "{csv}"
    );
    // The operator reads the reason; a description is the holder's.
    let described = run_cli(
        &directory,
        &[
            "accounts",
            "adjust",
            "1",
            "--amount",
            "1",
            "--reason",
            "ticket 42",
            "--description",
            "A thank-you from us",
            "--idempotency-key",
            "k2",
        ],
    );
    assert!(described.status.success(), "{described:?}");
    let shown = stdout(&run_cli(&directory, &["accounts", "show", "1"]));
    assert!(
        shown.contains("A thank-you from us (reason: ticket 42)")
            && shown.contains("Balance adjustment (reason: hello, world)"),
        "{shown}"
    );
    assert!(!run_cli(&directory, &["accounts", "export", "9"])
        .status
        .success());

    let issued: serde_json::Value = serde_json::from_slice(
        &run_cli(&directory, &["accounts", "token", "issue", "1", "--json"]).stdout,
    )
    .unwrap();
    assert!(issued["token"].as_str().unwrap().starts_with("sct_"));
    let rotated: serde_json::Value = serde_json::from_slice(
        &run_cli(&directory, &["accounts", "token", "rotate", "1", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(rotated["revoked"], 1);
    assert_ne!(rotated["token"], issued["token"]);
    let revoked: serde_json::Value = serde_json::from_slice(
        &run_cli(&directory, &["accounts", "token", "revoke", "1", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(
        (revoked["revoked"].as_i64(), revoked["token"].is_null()),
        (Some(1), true)
    );
    let listed: serde_json::Value = serde_json::from_slice(
        &run_cli(&directory, &["accounts", "token", "list", "1", "--json"]).stdout,
    )
    .unwrap();
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{listed}");
    assert!(tokens
        .iter()
        .all(|token| token["source"] == "admin" && !token["revoked_at"].is_null()));
    assert!(!listed.to_string().contains("sct_"), "never a token");
    let live = directory.number("SELECT COUNT(*) FROM account_tokens WHERE revoked_at IS NULL");
    // A number whose country has no rate: made, with a word for the operator.
    let unpriced = run_cli(
        &directory,
        &["accounts", "create", "--phone", "+447911123457"],
    );
    let text = stdout(&unpriced);
    assert!(unpriced.status.success(), "{unpriced:?}");
    assert!(
        text.contains("warning: messages to +447911123457 (GG) cannot be priced yet"),
        "{text}"
    );
    assert_eq!(live, 0);
}

#[test]
fn help_never_shows_the_database_password() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .arg("--help")
        .env(
            "SMS_CREDIT_DATABASE",
            "postgres://billing:hunter2secret@db.internal/sms",
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--database"), "{help}");
    assert!(!help.contains("hunter2secret"), "{help}");
}

#[test]
fn each_command_shows_its_own_options_first_and_only_what_it_uses() {
    let help = |arguments: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(arguments)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let adjust = help(&["accounts", "adjust"]);
    for own in [
        "<ID>  The account",
        "--amount",
        "--reason",
        "--idempotency-key",
    ] {
        let at = adjust
            .find(own)
            .unwrap_or_else(|| panic!("{own} in {adjust}"));
        assert!(
            at < adjust.find("--database").unwrap(),
            "{own} first:\n{adjust}"
        );
    }
    for server_only in [
        "--bind",
        "--stripe-secret-key",
        "--feed-queue",
        "--actor-threads",
    ] {
        assert!(
            !adjust.contains(server_only),
            "{server_only} on adjust:\n{adjust}"
        );
    }
    // Every option says what it is (beside it, or on the next line).
    let lines: Vec<&str> = adjust.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("--") {
            continue;
        }
        let beside = line.split_whitespace().count() > 2;
        let below = lines
            .get(index + 1)
            .is_some_and(|next| !next.trim().is_empty() && !next.trim_start().starts_with('-'));
        assert!(beside || below, "undescribed: {line}\n{adjust}");
    }
    let serve = help(&["serve"]);
    for option in [
        "--bind",
        "--stripe-secret-key",
        "--feed-queue",
        "--database",
    ] {
        assert!(serve.contains(option), "{option} on serve:\n{serve}");
    }
    let create = help(&["discount-codes", "create"]);
    assert!(
        create.contains("--percent <PERCENT>") && create.contains("--amount <AMOUNT>"),
        "{create}"
    );
    let pricing = help(&["pricing"]);
    assert!(
        pricing.contains("launch") && pricing.contains("rrp") && pricing.contains("sale"),
        "{pricing}"
    );
    let list = help(&["accounts", "list"]);
    assert!(list.contains("Only accounts whose phone"), "{list}");
    // copy reads --from and --to, never the database setting.
    let copy = help(&["copy"]);
    assert!(
        copy.contains("--from") && !copy.contains("--database"),
        "{copy}"
    );
}

/// The configuration view as `sms-credit config --json` prints it, by key:
/// (value, source).
fn config_view(
    arguments: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::Output,
    std::collections::BTreeMap<String, (serde_json::Value, String)>,
) {
    let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"));
    process.arg("config").arg("--json").args(arguments);
    for (name, _) in std::env::vars() {
        if name.starts_with("SMS_CREDIT_") {
            process.env_remove(name);
        }
    }
    for (name, value) in env {
        process.env(name, value);
    }
    let output = process.output().unwrap();
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let settings = view["settings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|setting| {
            let key = setting["key"].as_str().unwrap_or_default().to_string();
            let source = setting["source"].as_str().unwrap_or_default().to_string();
            (key, (setting["value"].clone(), source))
        })
        .collect();
    (output, settings)
}

#[test]
fn config_shows_each_setting_its_value_and_where_it_came_from() {
    let directory = fresh_directory();
    let file = directory.path().join("sms-credit.toml");
    std::fs::write(
        &file,
        "feed_queue = 512\nbind = \"127.0.0.1:9000\"\nservice_name = \"Trail forecasts\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (output, view) = config_view(
        &["--bind", "127.0.0.1:9100"],
        &[
            ("SMS_CREDIT_CONFIG", file),
            ("SMS_CREDIT_SERVICE_NAME", "Peak forecasts"),
            ("SMS_CREDIT_ADMIN_TOKEN", "hunter2hunter2hunter2"),
            (
                "SMS_CREDIT_DATABASE",
                "postgres://billing:hunter2secret@db.internal/sms",
            ),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(!text.contains("hunter2"), "{text}");
    let flag = "flag".to_string();
    assert_eq!(view["bind"], (serde_json::json!("127.0.0.1:9100"), flag));
    assert_eq!(
        view["feed_queue"],
        (serde_json::json!("512"), format!("file: {file}"))
    );
    assert_eq!(
        view["service_name"],
        (
            serde_json::json!("Peak forecasts"),
            "environment".to_string()
        )
    );
    assert_eq!(view["admin_token"].0, serde_json::json!("***"));
    assert_eq!(
        view["api_key"],
        (serde_json::Value::Null, "default".to_string())
    );
    assert_eq!(
        view["feed_heartbeat_secs"],
        (serde_json::json!("15"), "default".to_string())
    );
    let database = view["database"].0.as_str().unwrap_or_default();
    assert!(
        database.starts_with("postgres://billing:") && database.contains("db.internal"),
        "{database}"
    );
    assert_eq!(view.len(), sms_credit::config::SETTINGS.len());

    // People's output: one line a setting, under its section.
    let people = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["config", "--feed-queue", "64"])
        .env_remove("SMS_CREDIT_CONFIG")
        .env_remove("SMS_CREDIT_FEED_QUEUE")
        .output()
        .unwrap();
    let people = stdout(&people);
    let line = people
        .lines()
        .find(|line| line.starts_with("feed_queue "))
        .unwrap_or_default();
    assert!(
        line.contains(" 64 ") && line.contains(" flag ") && line.ends_with("SMS_CREDIT_FEED_QUEUE"),
        "{people}"
    );
    assert!(people.contains("# Balance feed"), "{people}");
}

#[test]
fn config_prints_then_names_the_mistake() {
    let directory = fresh_directory();
    let file = directory.path().join("bad.toml");
    std::fs::write(&file, "feed_queue = \"lots\"\n").unwrap();
    let file = file.to_str().unwrap();
    let (output, view) = config_view(&[], &[("SMS_CREDIT_CONFIG", file)]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(view["feed_queue"].0, serde_json::json!("lots"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "feed_queue in the config file {file}: 'lots' is not a whole number"
        )),
        "{stderr}"
    );
    // The same mistake stops the server, named the same way.
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["serve", "--config", file, "--bind", "127.0.0.1:0"])
        .env_remove("SMS_CREDIT_FEED_QUEUE")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("feed_queue in the config file"));

    std::fs::write(directory.path().join("unknown.toml"), "feed_queues = 5\n").unwrap();
    let unknown = directory.path().join("unknown.toml");
    let (output, _) = config_view(&["--config", unknown.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown key 'feed_queues'"));
}

/// The variables named in the first column of the configuration table of
/// the operator's page, docs/operating.md.
fn documented_variables() -> std::collections::BTreeSet<String> {
    let page = include_str!("../docs/operating.md");
    let section = page
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/operating.md has a Configuration section");
    section
        .lines()
        .filter(|line| line.starts_with("| `SMS_CREDIT_"))
        .filter_map(|line| line.split('`').nth(1))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_setting_is_in_help_and_in_the_operating_docs_and_nothing_else_is() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = stdout(&output);
    let documented = documented_variables();
    let mut settings = std::collections::BTreeSet::from(["SMS_CREDIT_CONFIG".to_string()]);
    for setting in sms_credit::config::SETTINGS {
        let variable = setting.variable();
        assert!(
            help.contains(&setting.flag()),
            "{} not in --help:\n{help}",
            setting.flag()
        );
        assert!(
            help.contains(&format!("[env: {variable}")),
            "{variable} not in --help:\n{help}"
        );
        assert!(
            documented.contains(&variable),
            "{variable} is not in the table of docs/operating.md"
        );
        settings.insert(variable);
    }
    assert!(help.contains("[env: SMS_CREDIT_CONFIG"), "{help}");
    let stray: Vec<_> = documented.difference(&settings).collect();
    assert!(
        stray.is_empty(),
        "the table of docs/operating.md names variables that are not settings: {stray:?}"
    );
}

/// What a test database holds: the files in its directory (SQLite) or its
/// tables (Postgres), to see that nothing was made.
fn what_the_database_holds(directory: &crate::database::TestDatabase) -> String {
    match crate::database::current_store() {
        crate::database::StoreKind::Sqlite => {
            let mut names: Vec<String> = std::fs::read_dir(directory.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.join(", ")
        }
        crate::database::StoreKind::Postgres => {
            let tables = directory.number(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
            );
            if tables == 0 {
                String::new()
            } else {
                format!("{tables} tables")
            }
        }
    }
}

on_both_stores!(sync read_only_commands_never_make_a_database);
fn read_only_commands_never_make_a_database() {
    let directory = fresh_directory();
    // The database's name as messages show it (a Postgres URL without its
    // password): its last part.
    let name = directory.url().rsplit('/').next().unwrap().to_string();
    let read_only: &[&[&str]] = &[
        &["accounts", "show", "1"],
        &["accounts", "list"],
        &["accounts", "list", "--json"],
        &["accounts", "export", "1"],
        &["accounts", "token", "list", "1"],
        &["accounts", "auto-top-up", "1"],
        &[
            "accounts",
            "adjust",
            "1",
            "--amount",
            "1",
            "--reason",
            "r",
            "--idempotency-key",
            "k",
        ],
        &["pricing"],
        &["verify"],
        &["verify", "--json"],
        &["stripe-events"],
        &["reconcile"],
        &["discount-codes", "list"],
        &["webhooks", "list"],
        &["orders", "refunds", "1"],
    ];
    for arguments in read_only {
        let output = run_cli(&directory, arguments);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{arguments:?}: {output:?}");
        assert!(
            stderr.contains(&name) && stderr.contains("no sms-credit database"),
            "{arguments:?} should say there is no database at {name}: {stderr}"
        );
        assert_eq!(
            what_the_database_holds(&directory),
            "",
            "{arguments:?} made a database"
        );
    }
    // A command that creates something makes it.
    let created = run_cli(
        &directory,
        &["accounts", "create", "--phone", "+14155550401"],
    );
    assert!(created.status.success(), "{created:?}");
    let shown = run_cli(&directory, &["accounts", "show", "1"]);
    assert!(shown.status.success(), "{shown:?}");
    let verified = run_cli(&directory, &["verify"]);
    assert!(verified.status.success(), "{verified:?}");
}

on_both_stores!(sync amounts_are_shown_to_the_micro_dollar);
fn amounts_are_shown_to_the_micro_dollar() {
    let directory = fresh_directory();
    let created = run_cli(
        &directory,
        &["accounts", "create", "--phone", "+14155550402"],
    );
    assert!(created.status.success(), "{created:?}");
    let adjust = |amount: &str, key: &str| {
        let output = run_cli(
            &directory,
            &[
                "accounts",
                "adjust",
                "1",
                "--amount",
                amount,
                "--reason",
                "exact",
                "--idempotency-key",
                key,
            ],
        );
        assert!(output.status.success(), "{output:?}");
        stdout(&output).trim().to_string()
    };
    // Neither -$82.26 (cut) nor -$82.27 (rounded): -$82.266.
    assert_eq!(
        adjust("-82.266", "exact-1"),
        "account 1: -$82.266 (ledger #1), balance -$82.266"
    );
    assert_eq!(
        adjust("1.234", "exact-2"),
        "account 1: +$1.234 (ledger #2), balance -$81.032"
    );
    let shown = stdout(&run_cli(&directory, &["accounts", "show", "1"]));
    assert!(shown.contains("balance -$81.032"), "{shown}");
    // The rows are in dollars too, as the header says.
    assert!(
        shown.contains("+$1.234") && shown.contains("-$82.266"),
        "{shown}"
    );
    let listed = stdout(&run_cli(&directory, &["accounts", "list"]));
    assert!(listed.contains("-$81.032"), "{listed}");
}

#[test]
fn typos_get_a_suggestion() {
    for (arguments, suggested) in [
        (&["confg"][..], "'config'"),
        (&["accounts", "shw"][..], "'show'"),
        (&["serve", "--feed-qeue", "5"][..], "'--feed-queue'"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(arguments)
            .env_remove("SMS_CREDIT_CONFIG")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("similar") && stderr.contains(suggested),
            "{arguments:?}: {stderr}"
        );
    }
}

on_both_stores!(sync a_closed_pipe_ends_a_command_quietly);
fn a_closed_pipe_ends_a_command_quietly() {
    let directory = fresh_directory();
    assert!(run_cli(
        &directory,
        &["accounts", "create", "--phone", "+14155550403"]
    )
    .status
    .success());
    for arguments in [
        &["config"][..],
        &["accounts", "list"],
        &["accounts", "export", "1"],
    ] {
        // The reader is gone before the command writes (`| head -0`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(arguments)
            .env("SMS_CREDIT_DATABASE", directory.url())
            .env("RUST_BACKTRACE", "1")
            .env_remove("SMS_CREDIT_CONFIG")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(101), "{arguments:?}: {stderr}");
        assert_eq!(stderr, "", "{arguments:?} ends quietly");
    }
}

/// Makes `path` read-only even for root (as the tests may run): `chmod`,
/// then, where that does not hold, `chattr +i`; answers how to undo it.
fn read_only(path: &std::path::Path) -> impl FnOnce() {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o555 } else { 0o444 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let probe = if path.is_dir() {
        std::fs::write(path.join(".probe"), b"").is_ok()
    } else {
        std::fs::OpenOptions::new().append(true).open(path).is_ok()
    };
    let immutable = probe && {
        let _ = std::fs::remove_file(path.join(".probe"));
        let made = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            made,
            "{} stays writable for this user (root?) and chattr +i failed",
            path.display()
        );
        true
    };
    let path = path.to_path_buf();
    move || {
        if immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&path)
                .status();
        }
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn database_locations_say_what_is_wrong() {
    let directory = fresh_directory();
    let run = |database: &str, arguments: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(arguments)
            .env("SMS_CREDIT_DATABASE", database)
            .env_remove("SMS_CREDIT_CONFIG")
            .current_dir(directory.path())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // A directory that does not exist.
    let missing = directory.path().join("no-such-dir/sms-credit.db");
    let (ok, stderr) = run(missing.to_str().unwrap(), &["migrate"]);
    assert!(!ok);
    assert!(
        stderr.contains("no-such-dir")
            && stderr.contains("directory")
            && stderr.contains("does not exist"),
        "{stderr}"
    );
    // A directory that cannot be written.
    let locked = directory.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let undo = read_only(&locked);
    let (ok, stderr) = run(locked.join("sms-credit.db").to_str().unwrap(), &["migrate"]);
    undo();
    assert!(!ok);
    assert!(
        stderr.contains("locked")
            && stderr.contains("directory")
            && stderr.contains("not writable"),
        "{stderr}"
    );
    // A database file that cannot be written: named, not its log.
    let file = directory.path().join("kept.db");
    let (ok, stderr) = run(file.to_str().unwrap(), &["migrate"]);
    assert!(ok, "{stderr}");
    let undo = read_only(&file);
    let (ok, stderr) = run(file.to_str().unwrap(), &["verify"]);
    undo();
    assert!(!ok);
    assert!(
        stderr.contains("kept.db") && stderr.contains("read-only") && !stderr.contains("-wal"),
        "{stderr}"
    );
    // sqlx's spelling is understood: a relative file, not a file named so.
    let (ok, stderr) = run("sqlite:rel.db", &["migrate"]);
    assert!(ok, "{stderr}");
    assert!(directory.path().join("rel.db").is_file());
    assert!(!directory.path().join("sqlite:rel.db").exists());
    // Another database's URL says which are supported.
    let (ok, stderr) = run("mysql://user@db/sms", &["verify"]);
    assert!(!ok);
    assert!(
        stderr.contains("mysql") && stderr.contains("postgres://") && stderr.contains("sqlite:"),
        "{stderr}"
    );
    assert!(!directory.path().join("mysql:").exists());
    // A query string (sqlx's options) is refused, not made part of a file's
    // name; so is SQLite's in-memory database, which no two processes share.
    let (ok, stderr) = run("sqlite://x.db?mode=rwc", &["migrate"]);
    assert!(!ok);
    assert!(
        stderr.contains("?mode=rwc") && stderr.contains("query"),
        "{stderr}"
    );
    for memory in ["sqlite::memory:", ":memory:", "sqlite://:memory:"] {
        let (ok, stderr) = run(memory, &["migrate"]);
        assert!(!ok, "{memory}");
        assert!(
            stderr.contains("in-memory") && !stderr.contains("-wal"),
            "{memory}: {stderr}"
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("x.db") || name.contains("memory"))
        .collect();
    left.sort();
    assert!(left.is_empty(), "made {left:?}");
}

on_both_stores!(sync input_an_operator_gets_wrong_is_refused_saying_why);
fn input_an_operator_gets_wrong_is_refused_saying_why() {
    let directory = fresh_directory();
    assert!(run_cli(
        &directory,
        &["accounts", "create", "--phone", "+14155550404"]
    )
    .status
    .success());
    let refused = |arguments: &[&str], says: &[&str]| {
        let output = run_cli(&directory, arguments);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{arguments:?}: {output:?}");
        for said in says {
            assert!(stderr.contains(said), "{arguments:?}: {said} in {stderr}");
        }
    };
    // A sale above the recommended price is no sale.
    refused(
        &["pricing", "sale", "--sale-price", "59.99"],
        &["sale", "$49.99"],
    );
    // A fixed discount larger than access costs now ($29.99 at launch).
    refused(
        &["discount-codes", "create", "HUGE", "--amount", "40"],
        &["$40.00", "$29.99"],
    );
    assert!(
        run_cli(&directory, &["discount-codes", "list", "--json"])
            .stdout
            .starts_with(b"{\"discount_codes\":[]}"),
        "nothing made"
    );
    // The API's bounds for a page of accounts.
    refused(&["accounts", "list", "--limit", "0"], &["1", "1000"]);
    refused(&["accounts", "list", "--limit", "100000"], &["1", "1000"]);
    assert!(
        run_cli(&directory, &["accounts", "list", "--limit", "1000"])
            .status
            .success()
    );
    // The refunds of an order that does not exist.
    refused(&["orders", "refunds", "999"], &["order 999 does not exist"]);
    // Event types: spaces around commas are fine; a wrong one lists them.
    let added = run_cli(
        &directory,
        &[
            "webhooks",
            "add",
            "https://hooks.example.com/in",
            "--events",
            "balance.low, payment.succeeded",
            "--json",
        ],
    );
    assert!(added.status.success(), "{added:?}");
    let added: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(
        added["events"],
        serde_json::json!(["balance.low", "payment.succeeded"])
    );
    refused(
        &[
            "webhooks",
            "add",
            "https://hooks.example.com/in",
            "--events",
            "balance.lo",
        ],
        &["balance.lo", "balance.low", "payment.refunded"],
    );
}

/// A command's `--help`, which must succeed.
fn help_of(arguments: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(arguments)
        .arg("--help")
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{arguments:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_describes_every_argument_in_the_readmes_words() {
    let mut commands: Vec<Vec<&str>> = [
        "add",
        "list",
        "show",
        "deliveries",
        "replay",
        "rotate-secret",
        "enable",
        "disable",
        "remove",
        "test",
    ]
    .iter()
    .map(|name| vec!["webhooks", name])
    .collect();
    commands.push(vec!["orders", "refunds"]);
    for command in &commands {
        let help = help_of(command);
        let own = help.split("\nDatabase:").next().unwrap();
        for line in own.lines() {
            let trimmed = line.trim_start();
            let is_argument = trimmed.starts_with('<') || trimmed.starts_with("--");
            if is_argument && !trimmed.starts_with("--config") {
                assert!(
                    trimmed.split_whitespace().count() > 2,
                    "{command:?}: undescribed {trimmed:?}\n{help}"
                );
            }
        }
    }
    // `accounts` says what it holds, in the words of docs/command-line.md.
    let top = help_of(&[]);
    let accounts = top
        .lines()
        .find(|line| line.trim_start().starts_with("accounts "))
        .unwrap();
    for subcommand in [
        "create",
        "show",
        "list",
        "export",
        "adjust",
        "account tokens",
        "auto top-up",
    ] {
        assert!(accounts.contains(subcommand), "{subcommand}: {accounts}");
    }
    let accounts = help_of(&["accounts"]);
    assert!(
        accounts.contains("account tokens") && !accounts.contains("sign-in tokens"),
        "{accounts}"
    );
}

#[test]
fn a_missing_half_of_stripe_set_in_the_file_is_named_as_the_file_names_it() {
    let directory = fresh_directory();
    let file = directory.path().join("sms-credit.toml");
    std::fs::write(
        &file,
        "stripe_secret_key = \"sk_test_1\"\npublic_url = \"https://sms.example.com\"\n",
    )
    .unwrap();
    let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"));
    process.args(["config", "--config", file.to_str().unwrap()]);
    for (name, _) in std::env::vars() {
        if name.starts_with("SMS_CREDIT_") {
            process.env_remove(name);
        }
    }
    let output = process.output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stripe_webhook_secret in the config file")
            && stderr.contains("when stripe_secret_key in the config file")
            && !stderr.contains("SMS_CREDIT_"),
        "{stderr}"
    );
}

on_both_stores!(sync output_for_people_lines_up_and_reads_as_sentences);
fn output_for_people_lines_up_and_reads_as_sentences() {
    let directory = fresh_directory();
    for (phone, email) in [
        ("+14155550405", "a@example.com"),
        ("+447911123456", "someone.with.a.long.address@example.com"),
    ] {
        let created = run_cli(
            &directory,
            &["accounts", "create", "--phone", phone, "--email", email],
        );
        assert!(created.status.success(), "{created:?}");
    }
    let adjusted = run_cli(
        &directory,
        &[
            "accounts",
            "adjust",
            "2",
            "--amount",
            "-1234.567",
            "--reason",
            "wide",
            "--idempotency-key",
            "wide-1",
        ],
    );
    assert!(adjusted.status.success(), "{adjusted:?}");
    // Each column starts at the same place on every line.
    let listed = stdout(&run_cli(&directory, &["accounts", "list"]));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let header = listed.lines().next().unwrap();
    let email_column = header.find("email").unwrap();
    for line in listed.lines().skip(1) {
        let email = line.rsplit(' ').next().unwrap();
        assert_eq!(
            line.len() - email.len(),
            email_column,
            "the emails line up:\n{listed}"
        );
    }
    // Counted in words; a problem said in a sentence.
    let verified = stdout(&run_cli(&directory, &["verify"]));
    assert!(
        verified.contains("checked 2 accounts and 1 transaction: clean"),
        "{verified}"
    );
    directory.execute("UPDATE account_balances SET balance = balance + 1 WHERE account_id = 2");
    let verified = stdout(&run_cli(&directory, &["verify"]));
    assert!(
        !verified.contains("PROBLEM {")
            && verified.contains("problem: account 2: its balance says"),
        "{verified}"
    );
    assert!(verified.contains(": 1 problem"), "{verified}");
    // The configuration's columns stay in line beside a long value.
    let long = format!(
        "{}/{}/sms-credit.db",
        directory.path().display(),
        "a".repeat(60)
    );
    let config = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .arg("config")
        .env("SMS_CREDIT_DATABASE", &long)
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    let config = stdout(&config);
    let variable_at: std::collections::BTreeSet<usize> = config
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.find("SMS_CREDIT_").unwrap())
        .collect();
    assert_eq!(variable_at.len(), 1, "{config}");
}

on_both_stores!(sync accounts_adjust_checks_its_texts_as_the_api_does);
fn accounts_adjust_checks_its_texts_as_the_api_does() {
    let directory = fresh_directory();
    assert!(run_cli(
        &directory,
        &["accounts", "create", "--phone", "+14155550405"]
    )
    .status
    .success());
    let adjust = |reason: &str, description: Option<&str>, key: &str| {
        let mut arguments = vec![
            "accounts",
            "adjust",
            "1",
            "--amount",
            "1",
            "--reason",
            reason,
            "--idempotency-key",
            key,
            "--json",
        ];
        if let Some(description) = description {
            arguments.extend(["--description", description]);
        }
        run_cli(&directory, &arguments)
    };
    let long = "x".repeat(501);
    for (reason, description, named) in [
        ("", None, "reason"),
        ("   ", None, "reason"),
        (long.as_str(), None, "reason"),
        ("fine", Some(""), "description"),
        ("fine", Some(" \t "), "description"),
        ("fine", Some(long.as_str()), "description"),
    ] {
        let refused = adjust(reason, description, "refused");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{reason:?} {description:?}");
        assert!(
            stderr.contains(named) && stderr.contains("500"),
            "{named}: {stderr}"
        );
    }
    let shown = run_cli(&directory, &["accounts", "show", "1", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["account"]["seq"], 0, "nothing was written: {shown}");
    // What is kept is trimmed, as the API keeps it; 500 characters pass.
    let adjusted = adjust("  ticket 7  ", Some("  A thank-you  "), "trimmed");
    assert!(adjusted.status.success(), "{adjusted:?}");
    let adjusted: serde_json::Value = serde_json::from_slice(&adjusted.stdout).unwrap();
    assert_eq!(adjusted["transaction"]["reason"], "ticket 7");
    assert_eq!(adjusted["transaction"]["description"], "A thank-you");
    let most = "y".repeat(500);
    assert!(adjust(&most, None, "most").status.success());
}

on_both_stores!(sync a_closed_pipe_never_hides_an_error);
fn a_closed_pipe_never_hides_an_error() {
    let directory = fresh_directory();
    let file = directory.path().join("bad.toml");
    std::fs::write(&file, "feed_queue = \"lots\"\n").unwrap();
    // The reader is gone before the command writes (`| head -0`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["config"])
        .env("SMS_CREDIT_DATABASE", directory.url())
        .env("SMS_CREDIT_CONFIG", &file)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("feed_queue") && stderr.contains("not a whole number"),
        "{stderr}"
    );
    // A command that finds something wrong after it began printing says
    // so by its exit code (and an error on standard error), pipe or no pipe:
    // verify of a tampered ledger prints its problems, then fails.
    assert!(run_cli(
        &directory,
        &["accounts", "create", "--phone", "+14155550406"]
    )
    .status
    .success());
    directory.execute("UPDATE account_balances SET balance = balance + 1");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["verify"])
        .env("SMS_CREDIT_DATABASE", directory.url())
        .env_remove("SMS_CREDIT_CONFIG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
}

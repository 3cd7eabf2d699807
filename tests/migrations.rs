//! Migrations: refinery applies each once, `sms-credit migrate` applies
//! them without serving, a database made by an earlier release (its history
//! in its own table) is adopted as it stands, and one migrated by a newer
//! release is refused.

use crate::helpers::{fresh_directory, run_cli};

const LEGACY: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_core",
        include_str!("../migrations/sqlite/V1__core.sql"),
    ),
    (
        2,
        "0002_billing",
        include_str!("../migrations/sqlite/V2__billing.sql"),
    ),
    (
        3,
        "0003_account_tokens",
        include_str!("../migrations/sqlite/V3__account_tokens.sql"),
    ),
    (
        4,
        "0004_messaging",
        include_str!("../migrations/sqlite/V4__messaging.sql"),
    ),
    (
        5,
        "0005_early_statuses",
        include_str!("../migrations/sqlite/V5__early_statuses.sql"),
    ),
];

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_database_of_an_earlier_release_is_adopted_without_being_rebuilt() {
    let directory = fresh_directory();
    let path = directory.path().join("sms-credit.db");
    {
        // The database as the release before refinery left it, with a
        // waiting Stripe event and an account with money.
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
            )
            .unwrap();
        for (version, name, sql) in LEGACY {
            connection.execute_batch(sql).unwrap();
            connection
                .execute(
                    "INSERT INTO schema_migrations VALUES (?1, ?2, 1795253400000)",
                    (version, name),
                )
                .unwrap();
        }
        connection
            .execute_batch(
                "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550123', 'active', 0);
                 INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, created_at)
                      VALUES (1, 1, 'credit', 2500000, 2500000, 'opening', 0);
                 INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
                      VALUES (1, 2, 'adjustment', 500000, 3000000, 'goodwill-1', 'goodwill: broken promise', 0);
                 INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 3000000, 2, 0);
                 INSERT INTO stripe_events (event_id, event_type, received_at, payload)
                      VALUES ('evt_old', 'charge.refunded', 0,
                              '{\"kind\":\"charge_refunded\",\"charge_id\":\"ch_1\",\"payment_intent_id\":\"pi_1\",\"amount_refunded_cents\":100}');",
            )
            .unwrap();
    }
    let migrated = run_cli(&directory, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let text = stdout(&migrated);
    assert!(
        text.contains("applied V6__stripe_event_status") && !text.contains("V1__core"),
        "only what the earlier release lacked is applied: {text}"
    );
    let again = run_cli(&directory, &["migrate"]);
    assert!(stdout(&again).contains("up to date"), "{again:?}");

    let verified = run_cli(&directory, &["verify"]);
    assert!(verified.status.success(), "{verified:?}");
    let shown = run_cli(&directory, &["accounts", "show", "1"]);
    assert!(stdout(&shown).contains("balance $3.00"), "{shown:?}");
    // An adjustment made before kept the operator's reason as what the
    // holder reads: the reason is the operator's now, and the holder reads
    // the neutral description.
    assert_eq!(
        directory.number(
            "SELECT COUNT(*) FROM transactions WHERE seq = 2 \
             AND reason = 'goodwill: broken promise' AND description = 'Balance adjustment'"
        ),
        1
    );
    let waiting = run_cli(
        &directory,
        &["stripe-events", "--status", "waiting", "--json"],
    );
    let waiting: serde_json::Value = serde_json::from_slice(&waiting.stdout).unwrap();
    assert_eq!(waiting["events"][0]["event_id"], "evt_old");
    assert_eq!(waiting["events"][0]["waiting_on"], "payment_intent:pi_1");
}

on_both_stores!(sync a_database_migrated_by_a_newer_release_is_refused);
fn a_database_migrated_by_a_newer_release_is_refused() {
    let directory = fresh_directory();
    assert!(run_cli(&directory, &["migrate"]).status.success());
    directory.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES (99, 'from_the_future', '2027-01-01T00:00:00Z', '1')",
    );
    for command in [&["migrate"][..], &["verify"][..]] {
        let refused = run_cli(&directory, command);
        assert!(!refused.status.success(), "{command:?}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("migrat"), "{command:?}: {stderr}");
    }
}

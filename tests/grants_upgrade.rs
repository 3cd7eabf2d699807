//! The upgrade to credit grants (#36) against what a real database holds:
//! an account whose ledger does not lead to its balance is left without
//! grants and the others migrate; the migration that makes grants is not
//! applied while an earlier release's server beats on the database; rows
//! such a server wrote after the upgrade are given their funding by
//! `sms-credit migrate` while no instance runs; and a give-back never
//! reads such a debit as drawing on nothing. On both stores.

use std::sync::Arc;

use sms_credit::startup::Core;
use sms_credit_actors::clock::SystemClock;
use sms_credit_actors::grants::{Category, GrantSource};
use sms_credit_actors::{
    AccountId, Adjust, Credit, Debit, IdempotencyKey, LedgerEntry, Money, Refund,
};

use crate::database::{current_store, StoreKind, TestDatabase};
use crate::helpers::{fresh_directory, run_cli, test_settings};
use crate::ledger_actors::{key, new_account};

/// The last migration of the release before grants.
fn before_grants() -> u32 {
    match current_store() {
        StoreKind::Sqlite => 34,
        StoreKind::Postgres => 25,
    }
}

/// The migration that makes grants, as refinery names it.
fn grants_migration() -> &'static str {
    match current_store() {
        StoreKind::Sqlite => "V35__credit_grants",
        StoreKind::Postgres => "V26__credit_grants",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `work` on a core of the database (a core beats no heartbeat), in
/// an actix system of its own, and shuts the core down after.
fn on_core<T>(
    directory: &TestDatabase,
    work: impl for<'a> FnOnce(&'a Core) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>,
) -> T {
    actix_rt::System::new().block_on(async {
        let core = Core::start(&test_settings(directory), Arc::new(SystemClock)).unwrap();
        let outcome = work(&core).await;
        core.shutdown().await;
        outcome
    })
}

fn message_debit(micros: i64, message_id: i64) -> Debit {
    Debit {
        amount: Money::from_micros(micros),
        idempotency_key: IdempotencyKey::message(message_id),
        description: "SMS".into(),
        one_segment: None,
    }
}

fn void(micros: i64, message_id: i64) -> Refund {
    Refund {
        amount: Money::from_micros(micros),
        idempotency_key: IdempotencyKey::message_void(message_id),
        description: "SMS not sent".into(),
        order_id: None,
        event: None,
    }
}

/// A row's funding as (grant, category, micro-dollars).
fn draws(entry: &LedgerEntry) -> Vec<(i64, &'static str, i64)> {
    entry
        .funded_by
        .draws()
        .iter()
        .map(|draw| (draw.grant_id, draw.category.as_str(), draw.amount.micros()))
        .collect()
}

/// What `verify` says, with its exit code.
fn verified(directory: &TestDatabase) -> (Option<i32>, String) {
    let output = run_cli(directory, &["verify"]);
    (output.status.code(), stdout(&output) + &stderr(&output))
}

on_both_stores!(sync an_account_whose_ledger_does_not_lead_to_its_balance_is_left_and_the_others_migrate);
/// Account 2's balance row says $5.00 at #1, but its one credit is $4.00
/// (a hand edit), and account 3's credit is of an order of a type this
/// release does not know: `migrate` makes account 1's grants, leaves the others' undone
/// saying why, and exits 0; `verify` names account 2 (its grants and its
/// balance) and account 3; account 1 is debited, account 2 refused.
/// Repaired by SQL, the next `migrate` makes their grants and `verify` is
/// clean.
fn an_account_whose_ledger_does_not_lead_to_its_balance_is_left_and_the_others_migrate() {
    let directory = TestDatabase::at_migration(before_grants());
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES
             (1, '+14155550420', 'active', 0), (2, '+14155550421', 'active', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at) VALUES
             (1, 1, 'credit', 3000000, 3000000, 'opening-1', 'opening', 1),
             (2, 1, 'credit', 4000000, 4000000, 'opening-2', 'opening', 1);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES
             (1, 3000000, 1, 0), (2, 5000000, 1, 0);",
    );
    // Account 3's one credit is of an order of a type this release does
    // not know.
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (3, '+14155550425', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, status, created_at) VALUES
             (9, 3, 'top_up', 1000000, 1000000, 'completed', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at) VALUES
             (3, 1, 'credit', 1000000, 1000000, 'stripe-order:9', 9, 'top-up by Checkout', 1);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (3, 1000000, 1, 0);",
    );
    directory.tamper(
        "orders",
        "UPDATE orders SET order_type = 'gift' WHERE id = 9",
    );
    let migrated = run_cli(&directory, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let said = stdout(&migrated);
    assert!(
        said.contains(&format!("applied {}", grants_migration()))
            && said.contains("made the credit grants of 1 account from their ledgers")
            && said.contains(
                "account 2: it was left without credit grants, which its ledger does not give"
            )
            && said.contains("its ledger sums to $4.00 at #1, but its balance says $5.00 at #1")
            && said.contains("account 3: it was left without credit grants")
            && said.contains("orders row 9: unknown order_type 'gift'"),
        "{said}"
    );
    assert_eq!(
        directory.texts("SELECT grants FROM account_balances ORDER BY account_id"),
        vec![Some("1:3000000".to_string()), None, None]
    );
    assert_eq!(
        directory.number("SELECT COUNT(*) FROM credit_grants WHERE account_id = 2"),
        0
    );

    let (code, said) = verified(&directory);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("account 2: its credit grants were never made")
            && said.contains(
                "account 2: its balance says $5.00 at #1, but its ledger sums to $4.00 at #1"
            )
            && said.contains("account 3: its credit grants were never made")
            && !said.contains("account 1:"),
        "{said}"
    );

    let (first, second) = on_core(&directory, |core| {
        Box::pin(async move {
            (
                core.registry
                    .send(AccountId(1), message_debit(1_000_000, 1))
                    .await,
                core.registry
                    .send(AccountId(2), message_debit(1_000_000, 2))
                    .await,
            )
        })
    });
    let debited = first.unwrap();
    assert_eq!(debited.entry.balance_after, Money::from_micros(2_000_000));
    assert_eq!(draws(&debited.entry), vec![(1, "paid", 1_000_000)]);
    let refused = second.unwrap_err().to_string();
    assert!(
        refused.contains("the credit grants of account 2 cannot be used (they were never made)"),
        "{refused}"
    );
    assert_eq!(
        directory.number("SELECT COUNT(*) FROM transactions WHERE account_id = 2"),
        1,
        "nothing was written to account 2"
    );

    // Repaired, the next migration makes their grants.
    directory.execute(
        "UPDATE account_balances SET balance = 4000000 WHERE account_id = 2;
         UPDATE orders SET order_type = 'top_up' WHERE id = 9;",
    );
    let migrated = run_cli(&directory, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    assert!(
        stdout(&migrated).contains("made the credit grants of 2 accounts from their ledgers"),
        "{migrated:?}"
    );
    assert_eq!(
        directory.texts("SELECT grants FROM account_balances ORDER BY account_id"),
        vec![
            Some("1:2000000".to_string()),
            Some("1:4000000".to_string()),
            Some("1:1000000".to_string()),
        ]
    );
    let (code, said) = verified(&directory);
    assert_eq!(code, Some(0), "{said}");
}

on_both_stores!(sync a_row_of_a_type_no_release_writes_stops_the_migration_saying_why);
/// A row of a type no release writes (a hand edit past the schema's
/// check) cannot be carried into the ledger the migration to grants
/// rebuilds: the migration stops, saying the database's own words (on
/// Postgres too, not only "db error"), and applies nothing.
fn a_row_of_a_type_no_release_writes_stops_the_migration_saying_why() {
    let directory = TestDatabase::at_migration(before_grants());
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550426', 'active', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at) VALUES
             (1, 1, 'credit', 1000000, 1000000, 'opening-1', 'opening', 1);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 1000000, 1, 0);",
    );
    let expected: &[&str] = match current_store() {
        StoreKind::Sqlite => {
            directory.tamper(
                "transactions",
                "UPDATE transactions SET type = 'bonus' WHERE account_id = 1",
            );
            &["CHECK constraint failed: type IN"]
        }
        StoreKind::Postgres => {
            // The check put back as the schema has it, but not over the
            // rows already there.
            directory.execute(
                "ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
                 UPDATE transactions SET type = 'bonus' WHERE account_id = 1;
                 ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
                     CHECK (type IN ('credit', 'debit', 'refund', 'adjustment')) NOT VALID;",
            );
            &[
                grants_migration(),
                "check constraint \"transactions_type_check\" of relation \"transactions\" is violated by some row",
            ]
        }
    };
    let refused = run_cli(&directory, &["migrate"]);
    assert!(!refused.status.success(), "{refused:?}");
    let said = stderr(&refused);
    for expected in expected {
        assert!(said.contains(expected), "{expected:?} in {said}");
    }
    assert_eq!(
        directory.number(&format!(
            "SELECT COUNT(*) FROM refinery_schema_history WHERE version > {}",
            before_grants()
        )),
        0
    );
}

on_both_stores!(sync the_migration_to_grants_waits_for_the_earlier_releases_servers_to_stop);
/// A database of the release before grants with a live heartbeat (its own
/// timeout, 60 s, not passed): `migrate` refuses, naming the instance and
/// saying to stop the earlier release's servers, and applies nothing; a
/// server start refuses alike. Once the heartbeat is older than its
/// timeout (a crash's), it migrates.
fn the_migration_to_grants_waits_for_the_earlier_releases_servers_to_stop() {
    let directory = TestDatabase::at_migration(before_grants());
    directory.execute(&format!(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550422', 'active', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at) VALUES
             (1, 1, 'credit', 3000000, 3000000, 'opening-1', 'opening', 1);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 3000000, 1, 0);
         INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
              VALUES ('earlier-a1b2-60000ms', 0, {}, 60000);",
        now_ms() - 5_000
    ));
    let history = || {
        directory.number(&format!(
            "SELECT COUNT(*) FROM refinery_schema_history WHERE version > {}",
            before_grants()
        ))
    };
    for command in [&["migrate"][..], &["verify"][..]] {
        let refused = run_cli(&directory, command);
        assert!(!refused.status.success(), "{command:?}: {refused:?}");
        let said = stderr(&refused);
        for expected in [
            "instances of an earlier release are running on the database: earlier-a1b2-60000ms",
            "last heartbeat ",
            "its instance_timeout_secs is 60 s",
            "Stop the earlier release's servers first",
            grants_migration(),
            "Nothing was applied",
        ] {
            assert!(
                said.contains(expected),
                "{command:?}: {expected:?} in {said}"
            );
        }
        assert_eq!(history(), 0, "{command:?} applied nothing");
    }
    let started = actix_rt::System::new().block_on(async {
        Core::start(&test_settings(&directory), Arc::new(SystemClock)).map(|_| ())
    });
    assert!(
        started
            .unwrap_err()
            .to_string()
            .contains("instances of an earlier release are running"),
        "a server does not start either"
    );
    assert_eq!(history(), 0);

    // A crash's heartbeat, past its own timeout: it is gone.
    directory.execute(&format!(
        "UPDATE instances SET heartbeat_at = {}",
        now_ms() - 61_000
    ));
    let migrated = run_cli(&directory, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    assert!(
        stdout(&migrated).contains(&format!("applied {}", grants_migration())),
        "{migrated:?}"
    );
    assert_eq!(
        directory.text("SELECT grants FROM account_balances WHERE account_id = 1"),
        "1:3000000"
    );
    // Past it, a live heartbeat changes nothing: the migration is applied.
    directory.execute(&format!("UPDATE instances SET heartbeat_at = {}", now_ms()));
    let again = run_cli(&directory, &["migrate"]);
    assert!(stdout(&again).contains("up to date"), "{again:?}");
    let (code, said) = verified(&directory);
    assert_eq!(code, Some(0), "{said}");
}

on_both_stores!(sync instances_of_this_release_starting_at_once_make_the_grants_once);
/// Several `migrate`s of this release at once on a database of the
/// release before grants: one applies the migration and makes the grants,
/// the others find them made; all succeed.
fn instances_of_this_release_starting_at_once_make_the_grants_once() {
    let directory = TestDatabase::at_migration(before_grants());
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550423', 'active', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at) VALUES
             (1, 1, 'credit', 3000000, 3000000, 'opening-1', 'opening', 1);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 3000000, 1, 0);",
    );
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let directory = directory.clone();
            std::thread::spawn(move || run_cli(&directory, &["migrate"]))
        })
        .collect();
    let outputs: Vec<_> = runs.into_iter().map(|run| run.join().unwrap()).collect();
    for output in &outputs {
        assert!(output.status.success(), "{output:?}");
    }
    let made = outputs
        .iter()
        .filter(|output| stdout(output).contains("made the credit grants of 1 account"))
        .count();
    assert_eq!(made, 1, "{outputs:?}");
    assert_eq!(
        directory.number("SELECT COUNT(*) FROM credit_grants WHERE account_id = 1"),
        1
    );
    let (code, said) = verified(&directory);
    assert_eq!(code, Some(0), "{said}");
}

/// An account of this release: a promotional adjustment (grant 1), paid
/// credit (grant 2) and a debit that drew on the promotional credit.
fn an_account_of_this_release(directory: &TestDatabase) -> AccountId {
    on_core(directory, |core| {
        Box::pin(async move {
            let account = new_account(core, "+14155550424").await;
            core.registry
                .send(
                    account,
                    Adjust {
                        amount: Money::from_micros(1_000_000),
                        idempotency_key: key("welcome"),
                        reason: "welcome".into(),
                        description: None,
                        category: Some(Category::Promotional),
                        priority: None,
                        expires_at_ms: None,
                    },
                )
                .await
                .unwrap();
            core.registry
                .send(
                    account,
                    Credit {
                        amount: Money::from_micros(5_000_000),
                        idempotency_key: key("top-up"),
                        description: "top-up".into(),
                        order_id: None,
                        source: GrantSource::TopUp,
                        event: None,
                    },
                )
                .await
                .unwrap();
            let debited = core
                .registry
                .send(account, message_debit(300_000, 1))
                .await
                .unwrap();
            assert_eq!(draws(&debited.entry), vec![(1, "promotional", 300_000)]);
            account
        })
    })
}

/// What an earlier release's server writes: a row without funding and
/// the balance moved on, its grants left as they were.
fn written_by_the_earlier_release(
    directory: &TestDatabase,
    account: AccountId,
    kind: &str,
    micros: i64,
    idempotency_key: &str,
) {
    directory.execute(&format!(
        "INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
              SELECT account_id, seq + 1, '{kind}', {micros}, balance + {micros}, '{idempotency_key}', 'earlier', {}
                FROM account_balances WHERE account_id = {account};
         UPDATE account_balances SET balance = balance + {micros}, seq = seq + 1 WHERE account_id = {account};",
        now_ms()
    ));
}

on_both_stores!(sync a_debit_an_earlier_release_wrote_after_the_upgrade_gets_its_funding_from_migrate);
/// After the upgrade, an earlier release's server debits an account: its
/// grants no longer sum to its balance, and the account refuses every
/// change. `migrate` does not touch it while an instance beats, then,
/// with none, decides that row's funding by the rules (the promotional
/// credit first) and keeps the rest: the account is debited again and
/// `verify` is clean.
fn a_debit_an_earlier_release_wrote_after_the_upgrade_gets_its_funding_from_migrate() {
    let directory = fresh_directory();
    assert!(run_cli(&directory, &["migrate"]).status.success());
    let account = an_account_of_this_release(&directory);
    written_by_the_earlier_release(&directory, account, "debit", -1_000, "msg:2");

    let refused = on_core(&directory, |core| {
        Box::pin(async move {
            core.registry
                .send(account, message_debit(1_000, 3))
                .await
                .unwrap_err()
                .to_string()
        })
    });
    assert!(
        refused.contains(&format!(
            "the credit grants of account {account} cannot be used (they hold $5.70 in all, but the balance is $5.699)"
        )),
        "{refused}"
    );
    let (code, said) = verified(&directory);
    assert_eq!(code, Some(1), "{said}");

    // Not while an instance beats on the database.
    directory.execute(&format!(
        "INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
              VALUES ('running-c3d4-30000ms', 0, {}, 30000)",
        now_ms()
    ));
    let waiting = run_cli(&directory, &["migrate"]);
    assert!(waiting.status.success(), "{waiting:?}");
    let said = stdout(&waiting);
    assert!(
        said.contains(&format!(
            "the credit grants of account {account} no longer account for"
        )) && said.contains("running-c3d4-30000ms")
            && said.contains("Stop every server, then run sms-credit migrate again"),
        "{said}"
    );
    assert_eq!(
        directory.texts(&format!(
            "SELECT funded_by FROM transactions WHERE account_id = {account} AND seq = 4"
        )),
        vec![None]
    );

    directory.execute("DELETE FROM instances");
    let repaired = run_cli(&directory, &["migrate"]);
    assert!(repaired.status.success(), "{repaired:?}");
    assert!(
        stdout(&repaired).contains(&format!(
            "made again from their ledgers the credit grants of the account an earlier release's server wrote to after the upgrade: {account}"
        )),
        "{repaired:?}"
    );
    assert_eq!(
        directory.texts(&format!(
            "SELECT funded_by FROM transactions WHERE account_id = {account} ORDER BY seq"
        )),
        vec![
            None,
            None,
            Some("1:r:300000".to_string()),
            Some("1:r:1000".to_string()),
        ]
    );
    let debited = on_core(&directory, |core| {
        Box::pin(async move {
            core.registry
                .send(account, message_debit(1_000, 3))
                .await
                .unwrap()
        })
    });
    assert_eq!(draws(&debited.entry), vec![(1, "promotional", 1_000)]);
    let (code, said) = verified(&directory);
    assert_eq!(code, Some(0), "{said}");
    // Nothing more to make again.
    let again = run_cli(&directory, &["migrate"]);
    assert_eq!(stdout(&again).lines().count(), 1, "{again:?}");
}

on_both_stores!(sync the_void_of_a_debit_without_funding_is_refused_not_made_paid_credit);
/// An earlier release's server debits message 2 after the upgrade, then
/// credits as much: the grants sum to the balance again, so the account
/// is usable, but that debit says nothing of what it drew on. Its void is
/// refused (never read as drawing on nothing, which would make the whole
/// cost a new paid grant); once `migrate` has given the debit its funding
/// (the promotional credit), the void gives back to the promotional grant.
fn the_void_of_a_debit_without_funding_is_refused_not_made_paid_credit() {
    let directory = fresh_directory();
    assert!(run_cli(&directory, &["migrate"]).status.success());
    let account = an_account_of_this_release(&directory);
    written_by_the_earlier_release(&directory, account, "debit", -1_000, "msg:2");
    written_by_the_earlier_release(&directory, account, "adjustment", 1_000, "goodwill");

    let refused = on_core(&directory, |core| {
        Box::pin(async move { core.registry.send(account, void(1_000, 2)).await })
    });
    let refused = match refused {
        Ok(receipt) => panic!(
            "the void was written, giving back {:?}",
            draws(&receipt.entry)
        ),
        Err(error) => error.to_string(),
    };
    assert!(
        refused.contains("the debit #4 of message 2 does not say which grants paid its $0.001"),
        "{refused}"
    );
    assert_eq!(
        directory.number(&format!(
            "SELECT COUNT(*) FROM credit_grants WHERE account_id = {account} AND category = 'paid'"
        )),
        1,
        "no paid credit was made"
    );

    let repaired = run_cli(&directory, &["migrate"]);
    assert!(repaired.status.success(), "{repaired:?}");
    let voided = on_core(&directory, |core| {
        Box::pin(async move { core.registry.send(account, void(1_000, 2)).await.unwrap() })
    });
    assert_eq!(draws(&voided.entry), vec![(1, "promotional", -1_000)]);
    assert_eq!(
        directory.texts(&format!(
            "SELECT id || ':' || category || ':' || source FROM credit_grants
              WHERE account_id = {account} ORDER BY id"
        )),
        vec![
            Some("1:promotional:adjustment".to_string()),
            Some("2:paid:top_up".to_string()),
            Some("5:promotional:adjustment".to_string()),
        ]
    );
    let (code, said) = verified(&directory);
    assert_eq!(code, Some(0), "{said}");
}

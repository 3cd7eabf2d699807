//! `sms-credit copy`: an SQLite database with every kind of row moved into
//! an empty Postgres one (and back), row for row, verified on both sides; a
//! server on the copy carries on where the original stopped; a target that
//! holds data, or a source a server is running on, is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::json;
use sms_credit_actors::adapters::{self, FillTarget, StoreSettings};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::store::copy::{self, CopyError, StillStopped, TABLES};

use crate::database::{StoreKind, TestDatabase};
use crate::fake_stripe::{EventFactory, FakeStripe};
use crate::fake_twilio::FakeTwilio;
use crate::helpers::{
    run_cli, stripe_settings, test_settings, with_twilio, ServerProcess, TestApp,
};
use crate::ledger_actors::assert_verified;
use crate::stripe::{create_code, start_access};

fn copy(from: &TestDatabase, to: &TestDatabase) -> std::process::Output {
    run_cli(to, &["copy", "--from", from.url(), "--to", to.url()])
}

/// Every row of every copied table, in key order, read through the port.
async fn every_row(database: &TestDatabase) -> Vec<(&'static str, Vec<String>)> {
    let store = adapters::open(&StoreSettings::new(database.location())).unwrap();
    let mut rows = Vec::new();
    for table in TABLES {
        let page = store
            .copying()
            .export_page(table, None, 1_000_000)
            .await
            .unwrap();
        rows.push((
            table.name,
            page.iter().map(|row| format!("{row:?}")).collect(),
        ));
    }
    rows
}

#[actix_rt::test]
async fn an_sqlite_database_moves_to_postgres_and_back_row_for_row() {
    // A source with accounts, ledger rows, orders, a discount code, Stripe
    // events, messages (sent and inbound), tokens and a low-balance notice.
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let source = TestDatabase::of(StoreKind::Sqlite);
    let settings = with_twilio(stripe_settings(&source, &stripe.base_url), &twilio.base_url);
    let app = TestApp::spawn_with(source.clone(), settings).await;
    create_code(
        &app,
        json!({"code": "MOVE10", "type": "percent", "percent": 10, "max_uses": 5}),
    )
    .await;
    let mut events = EventFactory::new();
    let (account, order, session, customer) =
        start_access(&app, "+14155550990", Some("MOVE10")).await;
    app.deliver(&events.checkout_completed(&session, order, &customer, 2699, "pi_move"))
        .await;
    // A refund the admin asked Stripe for.
    let (status, refunded) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            Some(crate::helpers::ADMIN_TOKEN),
            Some(json!({"amount_micros": 1_000_000, "reason": "moving", "idempotency_key": "move-refund"})),
        )
        .await;
    assert!(status.is_success(), "{refunded}");
    let token = app.issue_token(account).await;
    let (status, sent) = app
        .post_message(
            json!({"account_id": account, "body": "Forecast: sun", "idempotency_key": "move-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let (status, _) = app
        .post_twilio_sms("SMmove1", "+14155550990", "BALANCE")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post_adjustment(account, -3_000_000, "move-adj").await;
    assert_eq!(status, StatusCode::OK);
    app.settle_notices(account).await;
    let other = app.create_account("+14155550991").await;
    app.post_adjustment(other, 1_234_567, "other").await;
    // A dispute of the access payment, and a refund of it that failed.
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_move",
        "ch_move",
        "pi_move",
        2699,
        "needs_response",
    );
    assert_eq!(app.deliver(&disputed).await.0, StatusCode::OK);
    let failed = events.companion(
        "refund.failed",
        "refund",
        &[
            ("id", json!("re_move")),
            ("amount", json!(100)),
            ("payment_intent", json!("pi_move")),
            ("status", json!("failed")),
        ],
    );
    assert_eq!(app.deliver(&failed).await.0, StatusCode::OK);
    let balance = app.balance_micros(account).await;
    let source = app.stop().await;

    // Into Postgres.
    let target = TestDatabase::of(StoreKind::Postgres);
    let copied = copy(&source, &target);
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert!(copied.status.success(), "{copied:?}");
    assert!(stdout.contains("verify is clean on both"), "{stdout}");
    assert!(stdout.contains("transactions"), "{stdout}");
    let original = every_row(&source).await;
    assert_eq!(every_row(&target).await, original, "row for row");
    for table in [
        "accounts",
        "transactions",
        "orders",
        "order_refunds",
        "messages",
        "stripe_events",
        "disputes",
        "stripe_refunds",
    ] {
        assert!(
            original
                .iter()
                .any(|(name, rows)| *name == table && !rows.is_empty()),
            "the source's {table} rows are copied"
        );
    }

    // A second copy into it is refused and changes nothing.
    let again = copy(&source, &target);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds data"), "{stderr}");
    assert_eq!(every_row(&target).await, original);

    // A server on the copy carries on: the same balance and token, an old
    // key replayed, new rows after the copied ones.
    let app = TestApp::spawn_with(target.clone(), test_settings(&target)).await;
    assert_eq!(app.balance_micros(account).await, balance);
    let (status, replayed) = app.post_adjustment(account, -3_000_000, "move-adj").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replayed["replayed"], true);
    let (status, me) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let newer = app.create_account("+14155550992").await;
    assert_eq!(
        newer,
        other + 1,
        "the id sequence moved past the copied rows"
    );
    let (status, _) = app.post_adjustment(account, 500_000, "after-copy").await;
    assert_eq!(status, StatusCode::OK);
    let target = app.stop().await;
    assert_verified(&target);

    // And back into a fresh SQLite file.
    let back = TestDatabase::of(StoreKind::Sqlite);
    let copied = copy(&target, &back);
    assert!(copied.status.success(), "{copied:?}");
    assert_eq!(every_row(&back).await, every_row(&target).await);
    assert_verified(&back);
}

#[actix_rt::test]
async fn a_source_in_use_is_refused() {
    let source = TestDatabase::of(StoreKind::Sqlite);
    let server = ServerProcess::start(&source, &[]);
    let target = TestDatabase::of(StoreKind::Postgres);
    let refused = copy(&source, &target);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("instances are running on the source"),
        "{stderr}"
    );
    drop(server);
}

/// What a target holds after a refused copy: nothing at all (no SQLite
/// file beside it, no tables in Postgres).
fn left_behind(target: &TestDatabase) -> String {
    match target.location().sqlite_path() {
        Some(path) => {
            let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.join(", ")
        }
        None => match target
            .number("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'")
        {
            0 => String::new(),
            tables => format!("{tables} tables"),
        },
    }
}

#[test]
fn after_a_crash_copy_says_it_waits_for_a_stale_heartbeat_and_leaves_nothing() {
    crate::watchdog::watch();
    let source = TestDatabase::of(StoreKind::Sqlite);
    assert!(
        run_cli(&source, &["accounts", "create", "--phone", "+14155550993"])
            .status
            .success()
    );
    // A server that crashed 5 s ago: its heartbeat is still fresh.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    source.execute(&format!(
        "INSERT INTO instances (id, started_at, heartbeat_at) VALUES ('crashed-1', 0, {})",
        now_ms - 5_000
    ));
    for kind in [StoreKind::Sqlite, StoreKind::Postgres] {
        let target = TestDatabase::of(kind);
        let refused = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(["copy", "--from", source.url(), "--to", target.url()])
            .env("SMS_CREDIT_INSTANCE_TIMEOUT_SECS", "40")
            .env_remove("SMS_CREDIT_CONFIG")
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        // Who, since when, until when, and what governs it (a second may
        // pass between the heartbeat written and the copy's look).
        for said in [
            &["crashed-1"][..],
            &["last heartbeat 5 s ago", "last heartbeat 6 s ago"],
            &["in 35 s", "in 34 s"],
            &["instance_timeout_secs"],
            &["SMS_CREDIT_INSTANCE_TIMEOUT_SECS"],
        ] {
            assert!(
                said.iter().any(|said| stderr.contains(said)),
                "{kind:?}: {said:?} in {stderr}"
            );
        }
        assert_eq!(
            left_behind(&target),
            "",
            "{kind:?}: a refused copy made this"
        );
    }
    // Once the heartbeat is older than the timeout, the copy goes ahead.
    source.execute(&format!(
        "UPDATE instances SET heartbeat_at = {}",
        now_ms - 50_000
    ));
    let target = TestDatabase::of(StoreKind::Sqlite);
    let copied = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["copy", "--from", source.url(), "--to", target.url()])
        .env("SMS_CREDIT_INSTANCE_TIMEOUT_SECS", "40")
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    assert!(copied.status.success(), "{copied:?}");
    // A source that does not exist is refused, and makes nothing either.
    let missing = TestDatabase::of(StoreKind::Sqlite);
    let target = TestDatabase::of(StoreKind::Sqlite);
    let refused = copy(&missing, &target);
    assert!(!refused.status.success(), "{refused:?}");
    assert_eq!(left_behind(&missing), "");
    assert_eq!(left_behind(&target), "");
}

/// A source whose last table copied holds a value this release cannot
/// read (text in an integer column): reading it fails after every other
/// table's rows have gone to the target. Its verify is clean.
fn failing_source(phone: &str) -> TestDatabase {
    let source = TestDatabase::of(StoreKind::Sqlite);
    assert!(run_cli(&source, &["accounts", "create", "--phone", phone])
        .status
        .success());
    source.execute(
        "INSERT INTO backups (id, taken_at, path, accounts, transactions, bytes, duration_ms)
         VALUES (1, 'yesterday', '/backups/one.db', 1, 0, 0, 0)",
    );
    assert_eq!(TABLES.last().unwrap().name, "backups");
    source
}

/// Every byte of a file, to tell whether anything changed it.
fn bytes_of(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_copy_or_restore_that_fails_part_way_leaves_the_target_as_it_was() {
    crate::watchdog::watch();
    let source = failing_source("+14155550994");
    let before = bytes_of(source.url());
    for kind in [StoreKind::Sqlite, StoreKind::Postgres] {
        // Into a target that does not exist yet: nothing is left of it.
        let fresh = TestDatabase::of(kind);
        let copied = copy(&source, &fresh);
        assert!(!copied.status.success(), "{kind:?}: {copied:?}");
        assert_eq!(left_behind(&fresh), "", "{kind:?}: a failed copy made this");
        let restored = run_cli(&fresh, &["restore", "--from", source.url()]);
        assert!(!restored.status.success(), "{kind:?}: {restored:?}");
        let stderr = String::from_utf8_lossy(&restored.stderr);
        assert!(
            stderr.contains("nothing was restored"),
            "{kind:?}: {stderr}"
        );
        assert_eq!(
            left_behind(&fresh),
            "",
            "{kind:?}: a failed restore made this"
        );
        // Into an empty database that exists: it holds no accounts after.
        let empty = TestDatabase::of(kind);
        assert!(run_cli(&empty, &["migrate"]).status.success());
        assert!(!copy(&source, &empty).status.success());
        assert_eq!(empty.number("SELECT COUNT(*) FROM accounts"), 0, "{kind:?}");
        let restored = run_cli(&empty, &["restore", "--from", source.url()]);
        assert!(!restored.status.success(), "{kind:?}: {restored:?}");
        assert_eq!(empty.number("SELECT COUNT(*) FROM accounts"), 0, "{kind:?}");
    }
    assert_eq!(
        bytes_of(source.url()),
        before,
        "restore never changes its --from"
    );
}

on_both_stores!(sync a_target_of_an_earlier_release_that_holds_data_is_refused_untouched);
fn a_target_of_an_earlier_release_that_holds_data_is_refused_untouched() {
    let source = TestDatabase::of(StoreKind::Sqlite);
    assert!(
        run_cli(&source, &["accounts", "create", "--phone", "+14155550995"])
            .status
            .success()
    );
    // A target as the release before this one left it, with an account.
    let earlier = crate::database::migration_before_the_last(crate::database::current_store());
    let target = with_an_account(TestDatabase::at_migration(earlier), "+14155550996");
    let refused = copy(&source, &target);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already holds data"), "{stderr}");
    assert_eq!(
        target.number("SELECT MAX(version) FROM refinery_schema_history"),
        earlier as i64,
        "the target was not migrated"
    );
    let restored = run_cli(&target, &["restore", "--from", source.url()]);
    assert!(!restored.status.success(), "{restored:?}");
    assert!(
        String::from_utf8_lossy(&restored.stderr).contains("already holds data"),
        "{restored:?}"
    );
    assert_eq!(
        target.number("SELECT MAX(version) FROM refinery_schema_history"),
        earlier as i64,
        "the target was not migrated"
    );
}

#[test]
fn a_server_with_a_longer_timeout_than_copy_s_is_judged_by_its_own() {
    crate::watchdog::watch();
    let source = TestDatabase::of(StoreKind::Sqlite);
    // It beats every 50 s: between two beats it is running all the same.
    let server = ServerProcess::start(&source, &[("SMS_CREDIT_INSTANCE_TIMEOUT_SECS", "200")]);
    let target = TestDatabase::of(StoreKind::Sqlite);
    // Copy's own timeout (2 s) would call it gone 2 s after a heartbeat.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["copy", "--from", source.url(), "--to", target.url()])
        .env("SMS_CREDIT_INSTANCE_TIMEOUT_SECS", "2")
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("instances are running on the source") && stderr.contains("200 s"),
        "{stderr}"
    );
    assert_eq!(left_behind(&target), "");
    drop(server);
}

/// `database` with an account written as any release writes one.
fn with_an_account(database: TestDatabase, phone: &str) -> TestDatabase {
    database.execute(&format!(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '{phone}', 'active', 0);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 0, 0, 0);"
    ));
    database
}

/// The time now, in Unix milliseconds.
fn now_ms() -> i64 {
    SystemClock.now_ms()
}

on_both_stores!(sync a_source_of_an_earlier_release_is_refused_and_never_changed);
/// `copy` only reads its --from: a source of an earlier release, its
/// servers just stopped (a heartbeat still fresh), is refused before
/// anything is done to it, saying to stop its servers and migrate it
/// first; its migration history and (SQLite) every byte of it are as they
/// were. Migrated, it copies.
fn a_source_of_an_earlier_release_is_refused_and_never_changed() {
    let earlier = crate::database::migration_before_the_last(crate::database::current_store());
    let source = with_an_account(TestDatabase::at_migration(earlier), "+14155550981");
    source.execute(&format!(
        "INSERT INTO instances (id, started_at, heartbeat_at) VALUES ('just-stopped', 0, {})",
        now_ms()
    ));
    let sqlite_file = source.location().sqlite_path().map(|path| {
        // One file, whose header says its journal mode.
        source.execute("PRAGMA journal_mode = DELETE");
        path.to_path_buf()
    });
    let bytes_before = sqlite_file
        .as_deref()
        .map(|path| std::fs::read(path).unwrap());
    let target = TestDatabase::of(StoreKind::Sqlite);
    let refused = copy(&source, &target);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("earlier release") && stderr.contains("sms-credit migrate"),
        "{stderr}"
    );
    assert_eq!(
        source.number("SELECT MAX(version) FROM refinery_schema_history"),
        earlier as i64,
        "the source was not migrated"
    );
    assert!(
        sqlite_file
            .as_deref()
            .map(|path| std::fs::read(path).unwrap())
            == bytes_before,
        "not a byte of the source changed"
    );
    if let Some(path) = &sqlite_file {
        assert!(!path.with_extension("db-wal").exists(), "no log was made");
    }
    assert_eq!(left_behind(&target), "");
    // Stopped and migrated, it copies.
    source.execute("DELETE FROM instances");
    assert!(run_cli(&source, &["migrate"]).status.success());
    let copied = copy(&source, &target);
    assert!(copied.status.success(), "{copied:?}");
    assert_eq!(target.number("SELECT COUNT(*) FROM accounts"), 1);
}

#[test]
fn a_read_only_source_file_is_copied_and_left_byte_for_byte() {
    crate::watchdog::watch();
    let source = TestDatabase::of(StoreKind::Sqlite);
    for phone in ["+14155550982", "+14155550983"] {
        assert!(run_cli(&source, &["accounts", "create", "--phone", phone])
            .status
            .success());
    }
    source.execute("PRAGMA journal_mode = DELETE");
    let path = std::path::PathBuf::from(source.url());
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&path, permissions).unwrap();
    let before = bytes_of(source.url());
    for kind in [StoreKind::Sqlite, StoreKind::Postgres] {
        let target = TestDatabase::of(kind);
        let copied = copy(&source, &target);
        assert!(copied.status.success(), "{kind:?}: {copied:?}");
        assert_eq!(
            target.number("SELECT COUNT(*) FROM accounts"),
            2,
            "{kind:?}"
        );
        assert!(
            bytes_of(source.url()) == before,
            "{kind:?}: the source changed"
        );
        assert_eq!(
            left_behind(&source),
            "sms-credit.db",
            "{kind:?}: nothing was made beside the source"
        );
    }
}

on_both_stores!(sync a_source_that_is_not_clean_is_refused_before_the_target_is_looked_at);
/// The source is verified before the target is looked at: a source whose
/// ledger does not sum to its balances is refused as such, whatever the
/// target holds (here data, which would be refused too).
fn a_source_that_is_not_clean_is_refused_before_the_target_is_looked_at() {
    let source = TestDatabase::of(StoreKind::Sqlite);
    assert!(
        run_cli(&source, &["accounts", "create", "--phone", "+14155550984"])
            .status
            .success()
    );
    source.execute("UPDATE account_balances SET balance = balance + 1");
    let target = TestDatabase::fresh();
    assert!(
        run_cli(&target, &["accounts", "create", "--phone", "+14155550985"])
            .status
            .success()
    );
    let refused = copy(&source, &target);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("not clean on the source") && !stderr.contains("already holds data"),
        "{stderr}"
    );
}

/// Waits for a thread's answer, for at most `within`.
fn join_within<T>(thread: std::thread::JoinHandle<T>, within: Duration, what: &str) -> T {
    let deadline = Instant::now() + within;
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "{what} ended within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap()
}

/// Fills `target` from `source` as `copy` does, on a thread of its own;
/// `waiting` is told if it waits for another fill.
fn fill_on_a_thread(
    source: copy::Source,
    filling: impl FnOnce() -> Result<FillTarget, CopyError> + Send + 'static,
    target: adapters::DatabaseLocation,
) -> std::thread::JoinHandle<Result<copy::CopyReport, String>> {
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let report = copy::verify_source(&source)
                .await
                .map_err(|error| error.to_string())?;
            let filling = filling().map_err(|error| error.to_string())?;
            filling
                .fill(&source, report, StoreSettings::new(target), None)
                .await
                .map_err(|error| error.to_string())
        })
    })
}

on_both_stores!(sync a_failed_fill_never_takes_away_one_that_succeeded);
/// Two fills of one new target: B looks at it first (nothing there yet),
/// then A looks and fills, and is held after its first page (or, where
/// the store makes a second fill wait for the first, waits for B). B fills
/// from a source that fails part-way, then A is let go: A's copy stands,
/// whole. What B's failure takes away is only what B made.
fn a_failed_fill_never_takes_away_one_that_succeeded() {
    let good = TestDatabase::of(StoreKind::Sqlite);
    for phone in ["+14155550986", "+14155550987", "+14155550988"] {
        assert!(run_cli(&good, &["accounts", "create", "--phone", phone])
            .status
            .success());
    }
    let bad = failing_source("+14155550989");
    let target = TestDatabase::fresh();
    let location = target.location();
    let b_filling = FillTarget::look(&location, &|| {}).unwrap();

    let a_source = adapters::open_source(&good.location()).unwrap();
    let hold = a_source.hold_after_first_page_for_testing();
    let (waiting, a_waits) = std::sync::mpsc::channel();
    let a_location = location.clone();
    let a = fill_on_a_thread(
        a_source,
        move || {
            FillTarget::look(&a_location, &move || {
                let _ = waiting.send(());
            })
        },
        location.clone(),
    );
    actix_rt::System::new().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if a_waits.try_recv().is_ok() {
                break;
            }
            let held = actix_rt::time::timeout(Duration::from_millis(20), hold.reached()).await;
            if held.is_ok() {
                break;
            }
            assert!(!a.is_finished(), "A ended before its first page");
            assert!(
                Instant::now() < deadline,
                "A was held after its first page, or waited for B, within 60 s"
            );
        }
    });
    let b_source = adapters::open_source(&bad.location()).unwrap();
    let b = fill_on_a_thread(b_source, move || Ok(b_filling), location.clone());
    hold.release();
    let b = join_within(b, Duration::from_secs(120), "B");
    assert!(b.is_err(), "{b:?}");
    let a = join_within(a, Duration::from_secs(120), "A");
    assert!(a.is_ok(), "{a:?}");
    assert_eq!(target.number("SELECT COUNT(*) FROM accounts"), 3);
    if target.location().sqlite_path().is_some() {
        assert_eq!(left_behind(&target), "sms-credit.db");
    }
}

on_both_stores!(an_instance_that_starts_on_the_source_during_a_copy_stops_it);
/// `copy` checks that no instance runs on its source before it reads it,
/// and again once it has read it all, before the target may commit: a
/// server that started meanwhile (its heartbeat is fresh) stops the copy,
/// and the target is left as it was.
async fn an_instance_that_starts_on_the_source_during_a_copy_stops_it() {
    let source = TestDatabase::fresh();
    for phone in ["+14155550970", "+14155550971"] {
        assert!(run_cli(&source, &["accounts", "create", "--phone", phone])
            .status
            .success());
    }
    let target = TestDatabase::of(StoreKind::Sqlite);
    let reader = adapters::open_source(&source.location()).unwrap();
    copy::check_source_stopped(&reader, now_ms(), 2_000)
        .await
        .unwrap();
    let report = copy::verify_source(&reader).await.unwrap();
    let hold = reader.hold_after_first_page_for_testing();
    let filling = FillTarget::look(&target.location(), &|| {}).unwrap();
    let (filled, ()) = futures_util::join!(
        filling.fill(
            &reader,
            report,
            StoreSettings::new(target.location()),
            Some(StillStopped {
                clock: Arc::new(SystemClock),
                fallback_timeout_ms: 2_000,
            }),
        ),
        async {
            hold.reached().await;
            source.execute(&format!(
                "INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
                 VALUES ('started-meanwhile', {0}, {0}, 30000)",
                now_ms()
            ));
            hold.release();
        }
    );
    let error = filled.unwrap_err();
    assert!(
        matches!(error.cause, CopyError::SourceStarted(_)),
        "{error}"
    );
    assert!(error.to_string().contains("started-meanwhile"), "{error}");
    assert_eq!(left_behind(&target), "", "the target is as it was");
}

on_both_stores!(a_copy_holds_one_moment_of_its_source);
/// What a copy holds is one moment of its source, whatever is written on
/// it while the copy reads (a command run on it meanwhile: servers are
/// refused): a change to a table already read and a row in a table not yet
/// read, both written after the copy began, are both left out.
async fn a_copy_holds_one_moment_of_its_source() {
    let source = TestDatabase::fresh();
    for phone in ["+14155550960", "+14155550961"] {
        assert!(run_cli(&source, &["accounts", "create", "--phone", phone])
            .status
            .success());
    }
    let target = TestDatabase::of(StoreKind::Sqlite);
    let reader = adapters::open_source(&source.location()).unwrap();
    let report = copy::verify_source(&reader).await.unwrap();
    let hold = reader.hold_after_first_page_for_testing();
    let filling = FillTarget::look(&target.location(), &|| {}).unwrap();
    let (filled, ()) = futures_util::join!(
        filling.fill(
            &reader,
            report,
            StoreSettings::new(target.location()),
            Some(StillStopped {
                clock: Arc::new(SystemClock),
                fallback_timeout_ms: 2_000,
            }),
        ),
        async {
            actix_rt::time::timeout(Duration::from_secs(60), hold.reached())
                .await
                .expect("the copy reached its first page within 60 s");
            source.execute(
                "UPDATE accounts SET phone = '+14155550969' WHERE id = 1;
                 INSERT INTO opt_outs (phone, opted_out_at, via, keyword)
                      VALUES ('+14155550961', 0, 'keyword', 'STOP');",
            );
            hold.release();
        }
    );
    filled.unwrap();
    assert_eq!(
        target.text("SELECT phone FROM accounts WHERE id = 1"),
        "+14155550960",
        "a change to a table already read is not in the copy"
    );
    assert_eq!(
        target.number("SELECT COUNT(*) FROM opt_outs"),
        0,
        "a row written after the copy began is not in it"
    );
    drop(reader);
    assert_eq!(source.number("SELECT COUNT(*) FROM opt_outs"), 1);
}

/// A Postgres target without sms-credit's tables, holding another
/// program's table; a fill into it from a source that fails after every
/// other table, held after its first page while `meanwhile` runs on the
/// target. Answers how the fill failed.
async fn failed_fill_into_a_shared_schema(
    target: &TestDatabase,
    meanwhile: impl FnOnce(),
) -> adapters::FillError {
    target.execute("CREATE TABLE other_before (x INTEGER)");
    let source = failing_source("+14155550962");
    let reader = adapters::open_source(&source.location()).unwrap();
    let report = copy::verify_source(&reader).await.unwrap();
    let hold = reader.hold_after_first_page_for_testing();
    let filling = FillTarget::look(&target.location(), &|| {}).unwrap();
    let (filled, ()) = futures_util::join!(
        filling.fill(&reader, report, StoreSettings::new(target.location()), None),
        async {
            actix_rt::time::timeout(Duration::from_secs(60), hold.reached())
                .await
                .expect("the fill reached its first page within 60 s");
            meanwhile();
            hold.release();
        }
    );
    filled.unwrap_err()
}

/// The tables of the target's schema, sorted, comma-separated.
fn schema_tables(target: &TestDatabase) -> String {
    target.text(
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables
          WHERE schemaname = current_schema()",
    )
}

#[actix_web::test]
async fn a_failed_fill_takes_away_only_the_tables_its_migration_made() {
    crate::watchdog::watch();
    let target = TestDatabase::of(StoreKind::Postgres);
    let error = failed_fill_into_a_shared_schema(&target, || {
        target.execute("CREATE TABLE other_during (x INTEGER)");
    })
    .await;
    assert!(error.not_undone.is_none(), "{error}");
    assert_eq!(
        schema_tables(&target),
        "other_before,other_during",
        "what the fill made is gone, and only that"
    );
}

#[actix_web::test]
async fn a_failed_fill_keeps_tables_something_else_wrote_to_meanwhile() {
    crate::watchdog::watch();
    let target = TestDatabase::of(StoreKind::Postgres);
    let error = failed_fill_into_a_shared_schema(&target, || {
        // A server started on the target while it was filled.
        target.execute(
            "INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
                  VALUES ('started-on-the-target', 0, 0, 30000)",
        );
    })
    .await;
    let kept = error.not_undone.as_ref().map(ToString::to_string);
    assert!(
        kept.as_deref()
            .is_some_and(|kept| kept.contains("instances") && kept.contains("kept")),
        "{error}"
    );
    assert_eq!(
        target.number("SELECT COUNT(*) FROM instances"),
        1,
        "what the server wrote is still there"
    );
    assert!(schema_tables(&target).contains("other_before"));
}

#[actix_web::test]
async fn a_fill_that_lost_its_hold_takes_nothing_away() {
    crate::watchdog::watch();
    let target = TestDatabase::of(StoreKind::Postgres);
    let error = failed_fill_into_a_shared_schema(&target, || {
        // The session holding the fill's lock ends (a restart of the
        // server, an idle-session timeout, an operator's terminate).
        target.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
              WHERE locktype = 'advisory' AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND pid <> pg_backend_pid()",
        );
    })
    .await;
    let kept = error.not_undone.as_ref().map(ToString::to_string);
    assert!(
        kept.as_deref().is_some_and(|kept| kept.contains("hold")),
        "{error}"
    );
    assert!(
        schema_tables(&target).contains("accounts"),
        "nothing was taken away unheld"
    );
}

on_both_stores!(a_fill_refused_at_its_last_check_leaves_the_target_s_sequences_as_they_were);
/// The checks before the commit come first, then the id sequences are
/// moved past the copied rows (Postgres' `setval`, which no rollback
/// undoes): a copy refused at its last check leaves an existing empty
/// target as it was, and its next account is account 1.
async fn a_fill_refused_at_its_last_check_leaves_the_target_s_sequences_as_they_were() {
    let source = TestDatabase::of(StoreKind::Sqlite);
    for phone in ["+14155550972", "+14155550973", "+14155550974"] {
        assert!(run_cli(&source, &["accounts", "create", "--phone", phone])
            .status
            .success());
    }
    let target = TestDatabase::fresh();
    assert!(run_cli(&target, &["migrate"]).status.success());
    let reader = adapters::open_source(&source.location()).unwrap();
    let report = copy::verify_source(&reader).await.unwrap();
    let hold = reader.hold_after_first_page_for_testing();
    let filling = FillTarget::look(&target.location(), &|| {}).unwrap();
    let (filled, ()) = futures_util::join!(
        filling.fill(
            &reader,
            report,
            StoreSettings::new(target.location()),
            Some(StillStopped {
                clock: Arc::new(SystemClock),
                fallback_timeout_ms: 2_000,
            }),
        ),
        async {
            hold.reached().await;
            // A server started on the source meanwhile.
            source.execute(&format!(
                "INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
                 VALUES ('started-meanwhile', {0}, {0}, 30000)",
                now_ms()
            ));
            hold.release();
        }
    );
    let error = filled.unwrap_err();
    assert!(
        matches!(error.cause, CopyError::SourceStarted(_)),
        "{error}"
    );
    assert_eq!(target.number("SELECT COUNT(*) FROM accounts"), 0);
    let created = run_cli(
        &target,
        &["accounts", "create", "--phone", "+14155550975", "--json"],
    );
    assert!(created.status.success(), "{created:?}");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(created["id"], 1, "the id sequence was not moved: {created}");
}

#[test]
fn another_program_s_sqlite_database_is_refused_as_a_target_untouched() {
    crate::watchdog::watch();
    let source = TestDatabase::of(StoreKind::Sqlite);
    assert!(
        run_cli(&source, &["accounts", "create", "--phone", "+14155550976"])
            .status
            .success()
    );
    let target = TestDatabase::of(StoreKind::Sqlite);
    target.execute(
        "PRAGMA journal_mode = DELETE;
         CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    );
    let before = bytes_of(target.url());
    for command in [
        vec!["copy", "--from", source.url(), "--to", target.url()],
        vec!["restore", "--from", source.url()],
    ] {
        let refused = run_cli(&target, &command);
        assert!(!refused.status.success(), "{refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("not an sms-credit database"), "{stderr}");
        assert!(bytes_of(target.url()) == before, "{command:?} changed it");
        assert_eq!(left_behind(&target), "sms-credit.db");
    }
}

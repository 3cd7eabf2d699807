//! `sms-credit backup` and `sms-credit restore`, as the real binary, on
//! both stores: a backup taken while a server takes hundreds of
//! adjustments a second (and holds a message's reservation) is one moment
//! of the database, verified; it restores into either store, where a key
//! it holds is answered with its first outcome; a target that holds data
//! is refused; a killed backup leaves no file under its name; `--keep`
//! keeps the newest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::{json, Value};
use sms_credit_actors::adapters::{self, StoreSettings};
use sms_credit_actors::store::copy::{CopyValue, TABLES};

use crate::database::{current_store, StoreKind, TestDatabase};
use crate::fake_twilio::FakeTwilio;
use crate::helpers::{
    fresh_directory, process_env, run_cli, test_settings, with_twilio, ServerProcess, TestApp,
    ADMIN_TOKEN, API_KEY,
};

fn other_kind() -> StoreKind {
    match current_store() {
        StoreKind::Sqlite => StoreKind::Postgres,
        StoreKind::Postgres => StoreKind::Sqlite,
    }
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A database file for a backup to be written to (an SQLite test database
/// whose file does not exist yet).
fn backup_file() -> TestDatabase {
    TestDatabase::of(StoreKind::Sqlite)
}

/// Each account's ledger rows (seq, amount, balance after, key), in seq
/// order, read through the port.
async fn ledgers(database: &TestDatabase) -> BTreeMap<i64, Vec<Vec<CopyValue>>> {
    let store = adapters::open(&StoreSettings::new(database.location())).unwrap();
    let table = TABLES
        .iter()
        .find(|table| table.name == "transactions")
        .unwrap();
    let rows = store
        .copying()
        .export_page(table, None, 10_000_000)
        .await
        .unwrap();
    let mut ledgers: BTreeMap<i64, Vec<Vec<CopyValue>>> = BTreeMap::new();
    for row in rows {
        let CopyValue::Integer(account) = row[0] else {
            panic!("an account id: {row:?}")
        };
        // seq, type, amount, balance_after, idempotency_key
        ledgers.entry(account).or_default().push(row[1..6].to_vec());
    }
    ledgers
}

async fn admin_post(client: &awc::Client, url: String, body: Value) -> (StatusCode, Value) {
    let mut response = client
        .post(url)
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&body)
        .await
        .unwrap();
    let answer = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status(), answer)
}

/// An adjustment acknowledged by the server.
#[derive(Clone, Debug)]
struct Acknowledged {
    account: i64,
    key: String,
    amount: i64,
    balance_after: i64,
}

/// Posts adjustments to `accounts` in turn, each waiting for the last's
/// answer, until `stop`; records each acknowledged one.
async fn writer(
    base: String,
    accounts: Vec<i64>,
    prefix: String,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    count: Arc<AtomicU64>,
) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut n = 0_i64;
    while !stop.load(Ordering::Relaxed) {
        for account in &accounts {
            n += 1;
            let key = format!("{prefix}-{n}");
            // Credits and small debits, never below zero.
            let amount = if n % 3 == 0 { -1_000 } else { 2_500 + n };
            let (status, answer) = admin_post(
                &client,
                format!("{base}/v1/admin/accounts/{account}/adjustments"),
                json!({"amount_micros": amount, "reason": "test adjustment", "idempotency_key": key}),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            acknowledged.lock().unwrap().push(Acknowledged {
                account: *account,
                key,
                amount,
                balance_after: answer["transaction"]["balance_after_micros"]
                    .as_i64()
                    .unwrap(),
            });
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits (up to `within`) until `count` reaches `at_least`.
async fn wait_for_count(count: &AtomicU64, at_least: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {at_least} within {within:?}",
            count.load(Ordering::Relaxed)
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the CLI on a thread of its own, so that this test's runtime (its
/// writers) goes on meanwhile; waits up to two minutes for it.
async fn run_cli_beside(database: &TestDatabase, arguments: &[&str]) -> std::process::Output {
    let database = database.clone();
    let arguments: Vec<String> = arguments.iter().map(|text| text.to_string()).collect();
    let running = std::thread::spawn(move || {
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        run_cli(&database, &arguments)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !running.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the command ended within 2 minutes"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    running.join().unwrap()
}

on_both_stores!(a_backup_under_writes_is_one_moment_and_restores_into_either_store);
async fn a_backup_under_writes_is_one_moment_and_restores_into_either_store() {
    let twilio = FakeTwilio::start().await;
    let live = fresh_directory();
    let server = ServerProcess::start(&live, &process_env(&twilio.base_url, None));
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut accounts = Vec::new();
    for index in 0..8 {
        let (status, created) = admin_post(
            &client,
            server.url("/v1/admin/accounts"),
            json!({"phone": format!("+1415555380{index}")}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_i64().unwrap();
        let (status, _) = admin_post(
            &client,
            server.url(&format!("/v1/admin/accounts/{id}/adjustments")),
            json!({"amount_micros": 5_000_000, "reason": "test adjustment", "idempotency_key": "seed"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        accounts.push(id);
    }
    let send_message = |key: &'static str, body: &'static str, account: i64| {
        let url = server.url("/v1/messages");
        async move {
            let mut response = awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish()
                .post(url)
                .insert_header(("Authorization", format!("Bearer {API_KEY}")))
                .send_json(&json!({"account_id": account, "body": body, "idempotency_key": key}))
                .await
                .unwrap();
            let answer = response.json::<Value>().await.unwrap();
            (response.status(), answer)
        }
    };
    // A message sent before, whose key the backup will hold.
    let (status, sent_before) = send_message("before-backup", "Sent before", accounts[7]).await;
    assert_eq!(status, StatusCode::OK, "{sent_before}");
    // A message whose reservation is in flight while the backup is taken:
    // debited, waiting for Twilio's answer.
    twilio.hold("Held during the backup");
    let in_flight = actix_rt::spawn(send_message(
        "during-backup",
        "Held during the backup",
        accounts[6],
    ));
    twilio.wait_for_held(1).await;

    // Writers: one that writes accounts 0 then 1 in turn (each waiting for
    // the last), and six more on the others.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let mut writers = vec![actix_rt::spawn(writer(
        server.base_url.clone(),
        vec![accounts[0], accounts[1]],
        "pair".to_string(),
        Arc::clone(&stop),
        Arc::clone(&acknowledged),
        Arc::clone(&count),
    ))];
    for index in 0..6 {
        writers.push(actix_rt::spawn(writer(
            server.base_url.clone(),
            vec![accounts[2 + index % 4], accounts[2 + (index + 1) % 4]],
            format!("w{index}"),
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            Arc::clone(&count),
        )));
    }
    let load_started = Instant::now();
    wait_for_count(
        &count,
        300,
        Duration::from_secs(60),
        "writes before the backup",
    )
    .await;
    let backup = backup_file();
    let before = count.load(Ordering::Relaxed);
    let made = run_cli_beside(&live, &["backup", "--to", backup.url(), "--json"]).await;
    let during = count.load(Ordering::Relaxed) - before;
    wait_for_count(
        &count,
        count.load(Ordering::Relaxed) + 200,
        Duration::from_secs(60),
        "writes after the backup",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / load_started.elapsed().as_secs_f64();
    println!("{rate:.0} adjustments a second; {during} acknowledged during the backup");
    twilio.release();
    let (status, sent_during) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{sent_during}");
    let mut server = server;
    std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(server.child.wait().unwrap().success());

    assert!(made.status.success(), "{}", text(&made));
    let report: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(report["verify"], "clean", "{report}");
    assert!(
        during > 0,
        "writes were acknowledged while the backup was taken"
    );
    let verified = run_cli(&backup, &["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));

    // Each account's rows in the backup are the first of its live ledger,
    // and the live ledger went on after them.
    let (backed_up, live_ledgers) = (ledgers(&backup).await, ledgers(&live).await);
    assert_eq!(
        backed_up.keys().collect::<Vec<_>>(),
        live_ledgers.keys().collect::<Vec<_>>()
    );
    for (account, rows) in &backed_up {
        let live_rows = &live_ledgers[account];
        assert!(
            rows.len() <= live_rows.len() && rows[..] == live_rows[..rows.len()],
            "account {account}: its backed-up rows are the first of its live ledger"
        );
    }
    let (rows_backed_up, rows_live): (usize, usize) = (
        backed_up.values().map(Vec::len).sum(),
        live_ledgers.values().map(Vec::len).sum(),
    );
    assert!(
        rows_backed_up < rows_live,
        "{rows_backed_up} rows backed up of {rows_live}"
    );
    assert_eq!(
        report["transactions"].as_u64().unwrap() as usize,
        rows_backed_up
    );
    // One moment across accounts: account 0 was written, then account 1,
    // each after the other's answer, so no moment has 1 ahead of 0, nor 0
    // two rows ahead of 1.
    let (first, second) = (backed_up[&accounts[0]].len(), backed_up[&accounts[1]].len());
    assert!(
        first == second || first == second + 1,
        "one moment: {first} rows of account 0 and {second} of account 1"
    );
    // The message in flight: its row and its debit, both or neither.
    let message = backup.number(
        "SELECT COUNT(*) FROM messages WHERE idempotency_key = 'during-backup' AND state IN ('reserved', 'sending')",
    );
    let debit = backup.number(
        "SELECT COUNT(*) FROM transactions t JOIN messages m ON t.idempotency_key = 'msg:' || m.id
          WHERE m.idempotency_key = 'during-backup'",
    );
    assert_eq!((message, debit), (1, 1), "the reservation, with its debit");
    assert_eq!(
        backup.number("SELECT COUNT(*) FROM instances"),
        0,
        "the running server is not in the backup"
    );
    // The backup was recorded in the live database.
    assert_eq!(live.number("SELECT COUNT(*) FROM backups"), 1);

    // A target that holds data is refused, and left as it was.
    let refused = run_cli(&live, &["restore", "--from", backup.url()]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("already holds data"),
        "{}",
        text(&refused)
    );
    assert_eq!(ledgers(&live).await, live_ledgers);

    // Restored into the other store kind: verified, and a key the backup
    // holds is answered with its first outcome (once).
    let restored = TestDatabase::of(other_kind());
    let restoring = run_cli(&restored, &["restore", "--from", backup.url(), "--json"]);
    assert!(restoring.status.success(), "{}", text(&restoring));
    assert!(
        !std::path::Path::new(&format!("{}-wal", backup.url())).exists(),
        "the backup is left one file"
    );
    let verified = run_cli(&restored, &["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert_eq!(ledgers(&restored).await, backed_up);
    let app = TestApp::spawn_with(
        restored.clone(),
        with_twilio(test_settings(&restored), &twilio.base_url),
    )
    .await;
    let backed_up_keys: Vec<Acknowledged> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter(|write| {
            backed_up[&write.account]
                .iter()
                .any(|row| row[4] == CopyValue::Text(write.key.clone()))
        })
        .cloned()
        .collect();
    assert!(!backed_up_keys.is_empty());
    for write in backed_up_keys.iter().rev().take(5) {
        let balance = app.balance_micros(write.account).await;
        let (status, again) = app
            .post_adjustment(write.account, write.amount, &write.key)
            .await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["replayed"], true, "{again}");
        assert_eq!(
            again["transaction"]["balance_after_micros"], write.balance_after,
            "{again}"
        );
        assert_eq!(app.balance_micros(write.account).await, balance, "once");
    }
    let (status, again) = app
        .request(
            "POST",
            "/v1/messages",
            Some(API_KEY),
            Some(json!({"account_id": accounts[7], "body": "Sent before", "idempotency_key": "before-backup"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["message"]["id"], sent_before["message"]["id"]);
    let restored = app.stop().await;
    let verified = run_cli(&restored, &["verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
}

on_both_stores!(sync a_killed_backup_leaves_no_file_under_its_name);
fn a_killed_backup_leaves_no_file_under_its_name() {
    let live = fresh_directory();
    let created = run_cli(&live, &["accounts", "create", "--phone", "+14155550410"]);
    assert!(created.status.success(), "{}", text(&created));
    let folder = backup_file();
    let final_path = folder.path().join("nightly.db");
    let marker = folder.path().join("held");
    let mut backup = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["backup", "--to", final_path.to_str().unwrap()])
        .env("SMS_CREDIT_DATABASE", live.url())
        .env("SMS_CREDIT_BACKUP_HOLD_FOR_TESTING", &marker)
        .env_remove("SMS_CREDIT_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the backup reached the moment before it is put in place within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Another backup to the same name meanwhile (two cron runs
    // overlapping) is refused, touching nothing of the first's.
    let overlapping = run_cli(&live, &["backup", "--to", final_path.to_str().unwrap()]);
    assert!(!overlapping.status.success(), "{}", text(&overlapping));
    assert!(
        text(&overlapping).contains("another backup to"),
        "{}",
        text(&overlapping)
    );
    backup.kill().unwrap();
    backup.wait().unwrap();
    assert!(
        folder.path().join(".nightly.db.partial").exists(),
        "the backup was written, under another name"
    );
    assert!(!final_path.exists(), "nothing has the final name");

    // The next backup replaces what the killed one left.
    let again = run_cli(&live, &["backup", "--to", final_path.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("holds 1 account and"),
        "{}",
        text(&again)
    );
    assert!(final_path.exists());
    assert!(!folder.path().join(".nightly.db.partial").exists());
}

on_both_stores!(sync keep_keeps_the_newest_backups_in_a_directory);
fn keep_keeps_the_newest_backups_in_a_directory() {
    let live = fresh_directory();
    let created = run_cli(&live, &["accounts", "create", "--phone", "+14155550420"]);
    assert!(created.status.success(), "{}", text(&created));
    let folder = backup_file();
    let directory = format!("{}/backups/", folder.path().display());
    let unrelated = folder.path().join("backups-notes.txt");
    std::fs::write(&unrelated, "not a backup").unwrap();
    let mut made = Vec::new();
    for _ in 0..4 {
        let backup = run_cli(
            &live,
            &["backup", "--to", &directory, "--keep", "2", "--json"],
        );
        assert!(backup.status.success(), "{}", text(&backup));
        let report: Value = serde_json::from_slice(&backup.stdout).unwrap();
        made.push(report["path"].as_str().unwrap().to_string());
        // Names carry the time to the millisecond: no two alike.
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut left: Vec<String> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().path().display().to_string())
        .collect();
    left.sort();
    assert_eq!(left, made[2..].to_vec(), "the newest two are kept");
    assert!(unrelated.exists());
    assert!(made[3].contains("/backups/sms-credit-"), "{}", made[3]);

    // The newest restores into an empty database of the same store.
    let restored = fresh_directory();
    let restoring = run_cli(&restored, &["restore", "--from", &made[3]]);
    assert!(restoring.status.success(), "{}", text(&restoring));
    assert!(
        text(&restoring).contains("1 account and"),
        "{}",
        text(&restoring)
    );

    // --keep only with a directory.
    let refused = run_cli(
        &live,
        &[
            "backup",
            "--to",
            folder.path().join("one.db").to_str().unwrap(),
            "--keep",
            "2",
        ],
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--keep"), "{}", text(&refused));

    // Never over the database itself.
    if current_store() == StoreKind::Sqlite {
        let over = run_cli(&live, &["backup", "--to", live.url()]);
        assert!(!over.status.success());
        assert!(
            text(&over).contains("the database itself"),
            "{}",
            text(&over)
        );
    }

    // A backup that cannot be written says why, and leaves nothing.
    let nowhere = folder.path().join("missing").join("one.db");
    let failed = run_cli(&live, &["backup", "--to", nowhere.to_str().unwrap()]);
    assert!(!failed.status.success());
    assert!(
        text(&failed).contains("no backup was made"),
        "{}",
        text(&failed)
    );
    assert!(!folder.path().join("missing").exists());
    assert_eq!(
        live.number("SELECT COUNT(*) FROM backups"),
        4,
        "not recorded"
    );
}

on_both_stores!(the_last_backup_is_on_the_console_and_in_the_metrics);
async fn the_last_backup_is_on_the_console_and_in_the_metrics() {
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.access.metrics_token = Some(sms_credit::config::Secret::new("metrics-token"));
    let clock = sms_credit_actors::clock::ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let metric = |body: &Value| -> Option<i64> {
        body["raw"]
            .as_str()?
            .lines()
            .find_map(|line| line.strip_prefix("sms_credit_last_backup_timestamp_seconds "))
            .map(|value| value.parse().unwrap())
    };
    let metrics = || app.request("GET", "/metrics", Some("metrics-token"), None);

    // None taken yet: overdue, and 0 for an alert.
    let (status, overview) = app
        .request("GET", "/v1/admin/overview", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["last_backup"], Value::Null);
    assert_eq!(overview["backup_overdue"], true);
    assert_eq!(metric(&metrics().await.1), Some(0));

    // One taken an hour ago.
    let taken_at_ms = 1_795_253_400_000 - 3_600_000;
    app.store
        .as_ref()
        .unwrap()
        .backups()
        .record_backup(sms_credit_actors::store::backup::BackupRecord {
            taken_at_ms,
            path: "/var/backups/sms-credit/nightly.db".to_string(),
            accounts: 12,
            transactions: 345,
            bytes: 65_536,
            duration_ms: 120,
        })
        .await
        .unwrap();
    let (_, overview) = app
        .request("GET", "/v1/admin/overview", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(overview["backup_overdue"], false, "{overview}");
    assert_eq!(
        overview["last_backup"]["taken_at"],
        sms_credit_actors::clock::format_rfc3339_ms(taken_at_ms)
    );
    assert_eq!(
        overview["last_backup"]["path"],
        "/var/backups/sms-credit/nightly.db"
    );
    assert_eq!(overview["last_backup"]["transactions"], 345);
    assert_eq!(metric(&metrics().await.1), Some(taken_at_ms / 1000));

    // A day and a minute after it: overdue again.
    clock.advance_ms(23 * 3_600_000 + 60_000);
    let (_, overview) = app
        .request("GET", "/v1/admin/overview", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(overview["backup_overdue"], true, "{overview}");
    app.stop().await;
}

on_both_stores!(sync restore_takes_only_a_backup_and_never_changes_it);
fn restore_takes_only_a_backup_and_never_changes_it() {
    let target = fresh_directory();
    let folder = tempfile::tempdir().unwrap();
    // An empty file (a backup cut short, a wrong path made by `touch`).
    let empty = folder.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    // An SQLite file of something else.
    let other = folder.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT); INSERT INTO notes (text) VALUES ('hello');")
        .unwrap();
    let other_bytes = std::fs::read(&other).unwrap();
    for (file, before) in [(&empty, Vec::new()), (&other, other_bytes)] {
        let refused = run_cli(&target, &["restore", "--from", file.to_str().unwrap()]);
        assert!(!refused.status.success(), "{file:?}: {}", text(&refused));
        assert!(
            text(&refused).contains("not an sms-credit backup"),
            "{}",
            text(&refused)
        );
        assert_eq!(std::fs::read(file).unwrap(), before, "{file:?} was changed");
        let mut beside: Vec<String> = std::fs::read_dir(folder.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        beside.sort();
        assert_eq!(beside, ["empty.db", "other.db"], "nothing made beside it");
    }
    // Nothing was made or restored in the target either.
    let verified = run_cli(&target, &["verify"]);
    if current_store() == StoreKind::Sqlite {
        assert!(!target.location().sqlite_path().unwrap().exists());
    } else {
        assert_eq!(
            target.number(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ),
            0,
            "{}",
            text(&verified)
        );
    }
}

#[test]
fn restore_s_copy_of_the_backup_is_its_user_s_alone_and_goes_when_it_is_stopped() {
    use std::os::unix::fs::PermissionsExt;
    crate::watchdog::watch();
    let live = TestDatabase::of(StoreKind::Sqlite);
    for phone in ["+14155550420", "+14155550421"] {
        let created = run_cli(&live, &["accounts", "create", "--phone", phone]);
        assert!(created.status.success(), "{}", text(&created));
    }
    let folder = backup_file();
    let backup = folder.path().join("nightly.db");
    let taken = run_cli(&live, &["backup", "--to", backup.to_str().unwrap()]);
    assert!(taken.status.success(), "{}", text(&taken));
    // Where restore makes its working directory (its TMPDIR).
    let temporary = tempfile::tempdir().unwrap();
    let target = TestDatabase::of(StoreKind::Sqlite);
    let target_folder = target
        .location()
        .sqlite_path()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let names = |folder: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let marker = folder.path().join("held");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let mut restoring = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(["restore", "--from", backup.to_str().unwrap()])
            .env("SMS_CREDIT_DATABASE", target.url())
            .env("SMS_CREDIT_RESTORE_HOLD_FOR_TESTING", &marker)
            .env("TMPDIR", temporary.path())
            .env_remove("SMS_CREDIT_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !marker.exists() {
            assert!(
                Instant::now() < deadline,
                "the restore's import was held within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Its working directory and the copy of the backup in it (with its
        // log) are its user's alone.
        let [working] = &names(temporary.path())[..] else {
            panic!("one working directory: {:?}", names(temporary.path()));
        };
        assert!(working.starts_with("sms-credit-restore-"), "{working}");
        let working = temporary.path().join(working);
        assert_eq!(mode(&working), 0o700, "{}", working.display());
        let copies = names(&working);
        assert!(copies.contains(&"backup.db".to_string()), "{copies:?}");
        for copy in &copies {
            assert_eq!(mode(&working.join(copy)), 0o600, "{copy}");
        }
        // Stopped by the signal, it removes it, and what it was filling.
        let killed = std::process::Command::new("kill")
            .args([format!("-{signal}"), restoring.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = restoring.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "SIG{signal} ended the restore within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert!(
            names(temporary.path()).is_empty(),
            "SIG{signal}: {:?}",
            names(temporary.path())
        );
        assert!(
            names(&target_folder).is_empty(),
            "SIG{signal}: {:?}",
            names(&target_folder)
        );
        std::fs::remove_file(&marker).unwrap();
    }
    // Not stopped, it restores, and leaves nothing behind either.
    let restored = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["restore", "--from", backup.to_str().unwrap()])
        .env("SMS_CREDIT_DATABASE", target.url())
        .env("TMPDIR", temporary.path())
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(names(temporary.path()).is_empty());
    assert_eq!(names(&target_folder), ["sms-credit.db"]);
    assert_eq!(target.number("SELECT COUNT(*) FROM accounts"), 2);
}

//! Scale figures: memory per active account actor, resident memory with a
//! large database and many active accounts, and the time from start to
//! ready on that database (activation is lazy, so it should not depend on
//! the database's size).
//!
//! `cargo bench --bench scale` (options: `-- --accounts N --rows-per-account N
//! --active N`; defaults 1 000 000, 10 and 10 000). The database is built
//! once per run in a temporary directory (a few GB for the defaults).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use sms_credit::config::Settings;
use sms_credit::startup::Core;
use sms_credit_actors::adapters;
use sms_credit_actors::clock::SystemClock;
use sms_credit_actors::{AccountId, GetBalance};

struct Options {
    accounts: i64,
    rows_per_account: i64,
    active: i64,
}

fn options() -> Options {
    let mut options = Options {
        accounts: 1_000_000,
        rows_per_account: 10,
        active: 10_000,
    };
    let arguments: Vec<String> = std::env::args().collect();
    for pair in arguments.windows(2) {
        let value = pair[1].parse::<i64>().ok();
        match (pair[0].as_str(), value) {
            ("--accounts", Some(value)) => options.accounts = value.max(1),
            ("--rows-per-account", Some(value)) => options.rows_per_account = value.max(1),
            ("--active", Some(value)) => options.active = value.max(1),
            _ => {}
        }
    }
    options.active = options.active.min(options.accounts);
    options
}

/// Resident memory of a process, in KiB (Linux `/proc`).
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// Accounts with valid US numbers and `rows` credits (grants) each, written with
/// the journal off (it is a benchmark fixture, not data).
fn build_database(path: &Path, accounts: i64, rows: i64) {
    let connection = adapters::sqlite::raw_connection(path).unwrap();
    connection
        .pragma_update(None, "journal_mode", "OFF")
        .unwrap();
    connection
        .pragma_update(None, "synchronous", "OFF")
        .unwrap();
    connection.execute_batch("BEGIN").unwrap();
    {
        let mut account = connection
            .prepare(
                "INSERT INTO accounts (id, phone, status, created_at) VALUES (?1, ?2, 'active', 0)",
            )
            .unwrap();
        let mut row = connection
            .prepare(
                "INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
                 VALUES (?1, ?2, 'credit', 1000000, ?3, ?4, 'fixture', 0)",
            )
            .unwrap();
        let mut grant = connection
            .prepare(
                "INSERT INTO credit_grants (account_id, id, category, source, amount, priority, granted_at)
                 VALUES (?1, ?2, 'paid', 'migration', 1000000, 50, 0)",
            )
            .unwrap();
        let mut balance = connection
            .prepare("INSERT INTO account_balances (account_id, balance, seq, updated_at, grants) VALUES (?1, ?2, ?3, 0, ?4)")
            .unwrap();
        for id in 1..=accounts {
            let phone = format!(
                "+1415{:03}{:04}",
                200 + (id - 1) / 10_000,
                (id - 1) % 10_000
            );
            account.execute((id, phone)).unwrap();
            // Each credit is a grant of its own, none spent.
            let mut grants = Vec::with_capacity(rows as usize);
            for seq in 1..=rows {
                row.execute((id, seq, seq * 1_000_000, format!("k{seq}")))
                    .unwrap();
                grant.execute((id, seq)).unwrap();
                grants.push(format!("{seq}:1000000"));
            }
            balance
                .execute((id, rows * 1_000_000, rows, grants.join(",")))
                .unwrap();
        }
    }
    connection.execute_batch("COMMIT").unwrap();
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
}

/// Activates `count` account actors in a core on `path`; returns the RSS
/// before and after, in KiB.
fn activate(path: &Path, count: i64) -> (u64, u64) {
    let settings = Settings::local(path);
    actix_rt::System::new().block_on(async move {
        let core = Core::start(&settings, Arc::new(SystemClock)).unwrap();
        // One actor first, so that the arbiters and the store have warmed up.
        core.registry.send(AccountId(1), GetBalance).await.unwrap();
        // Warm the store's page cache with the snapshots the actors will
        // load, so that the figure is the actors' memory, not SQLite's cache.
        for chunk in (1..=count).collect::<Vec<_>>().chunks(1_000) {
            join_all(
                chunk
                    .iter()
                    .map(|id| core.store.ledger().snapshot(AccountId(*id))),
            )
            .await;
        }
        let before = rss_kib("self");
        for chunk in (2..=count).collect::<Vec<_>>().chunks(1_000) {
            join_all(
                chunk
                    .iter()
                    .map(|id| core.registry.send(AccountId(*id), GetBalance)),
            )
            .await;
        }
        assert_eq!(core.registry.active_count() as i64, count);
        let after = rss_kib("self");
        (before, after)
    })
}

/// Starts the server binary on `path` and times it until `/readyz` says 200.
fn time_to_ready(path: &Path) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .arg("serve")
        .env("SMS_CREDIT_DATABASE", path)
        .env("SMS_CREDIT_BIND", "127.0.0.1:18787")
        .env("RUST_LOG", "warn")
        .env_remove("SMS_CREDIT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = loop {
        if let Ok(mut stream) = TcpStream::connect("127.0.0.1:18787") {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not ready after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let rss = rss_kib(&child.id().to_string());
    let _ = child.kill();
    let _ = child.wait();
    (ready, rss)
}

fn main() {
    let options = options();
    let directory = tempfile::tempdir().unwrap();

    // Memory per active actor, on a small database.
    let small = directory.path().join("small.db");
    build_database(&small, options.active, 1);
    let (before, after) = activate(&small, options.active);
    let per_actor = (after.saturating_sub(before) * 1024) as f64 / (options.active - 1) as f64;

    // The large database.
    let large = directory.path().join("large.db");
    let building = Instant::now();
    build_database(&large, options.accounts, options.rows_per_account);
    let built = building.elapsed();
    let size_mib = std::fs::metadata(&large).unwrap().len() / (1024 * 1024);
    let (_, active_rss) = activate(&large, options.active);
    let (ready, ready_rss) = time_to_ready(&large);

    println!("scale: {} accounts × {} ledger rows ({} rows, {size_mib} MiB, built in {:.0} s), {} active", options.accounts, options.rows_per_account, options.accounts * options.rows_per_account, built.as_secs_f64(), options.active);
    println!("memory per active account actor:   {per_actor:.0} bytes (RSS {before} KiB → {after} KiB for {} actors)", options.active - 1);
    println!(
        "RSS, large database, {} active: {:.1} MiB",
        options.active,
        active_rss as f64 / 1024.0
    );
    println!(
        "start to ready (/readyz 200):      {:.0} ms (RSS at ready {:.1} MiB)",
        ready.as_secs_f64() * 1000.0,
        ready_rss as f64 / 1024.0
    );
}

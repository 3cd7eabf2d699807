//! Durable debits through the account actors, and the naive design beside
//! them: prints debits/s, acknowledge latency and the ratio.
//!
//! `cargo bench --bench ledger` (options: `-- --debits N --callers N
//! --accounts N --naive-debits N --actor-threads N`; the actors get the
//! server's default number of threads unless told) runs on SQLite files in
//! a temporary directory. With `-- --database postgres://user:pw@host/db`
//! it runs on Postgres instead (in fresh databases named after `db`, made
//! and dropped by the bench), and adds three instances on shared accounts
//! and how stale another instance's view is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sms_credit::config::Settings;
use sms_credit::startup::Core;
use sms_credit_actors::adapters::{self, DatabaseLocation, StoreSettings};
use sms_credit_actors::clock::SystemClock;
use sms_credit_actors::grants::{Category, Draw, Funding};
use sms_credit_actors::store::{LedgerWrite, StoreError};
use sms_credit_actors::{
    AccountId, Debit, IdempotencyKey, LedgerEntry, Money, Snapshot, TransactionKind,
};

struct Options {
    debits: u64,
    callers: u64,
    accounts: i64,
    naive_debits: u64,
    /// Threads for the account actors: the server's default unless given.
    actor_threads: usize,
    /// A Postgres URL; SQLite when absent.
    postgres: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        debits: 400_000,
        callers: 256,
        accounts: 10_000,
        naive_debits: 3_000,
        actor_threads: Settings::local("unused.db").server.actor_threads,
        postgres: None,
    };
    let arguments: Vec<String> = std::env::args().collect();
    let mut index = 1;
    while index < arguments.len() {
        let value = arguments
            .get(index + 1)
            .and_then(|value| value.parse::<u64>().ok());
        if arguments[index] == "--database" {
            options.postgres = arguments.get(index + 1).cloned();
            index += 2;
            continue;
        }
        match (arguments[index].as_str(), value) {
            ("--debits", Some(value)) => options.debits = value,
            ("--callers", Some(value)) => options.callers = value.max(1),
            ("--accounts", Some(value)) => options.accounts = value.max(1) as i64,
            ("--naive-debits", Some(value)) => options.naive_debits = value,
            ("--actor-threads", Some(value)) => options.actor_threads = value.max(1) as usize,
            _ => {
                index += 1;
                continue;
            }
        }
        index += 2;
    }
    options
}

/// A fresh database for one part of the run: an SQLite file, or a Postgres
/// database made for it (dropped when this is).
struct BenchDatabase {
    location: DatabaseLocation,
    _directory: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.postgres {
            postgres_batch(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// Runs SQL on a Postgres database from a runtime of its own.
fn postgres_batch(url: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(&sql).await.unwrap();
        });
    })
    .join()
    .unwrap();
}

fn fresh(options: &Options, part: &str) -> BenchDatabase {
    let directory = tempfile::tempdir().unwrap();
    match &options.postgres {
        None => BenchDatabase {
            location: DatabaseLocation::Sqlite(directory.path().join(format!("{part}.db"))),
            _directory: directory,
            postgres: None,
        },
        Some(url) => {
            let (base, database) = url.rsplit_once('/').expect("a URL ending in /database");
            let database = database.split('?').next().unwrap_or(database);
            let name = format!("{database}_bench_{part}_{}", std::process::id());
            postgres_batch(url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            postgres_batch(url, &format!("CREATE DATABASE {name}"));
            BenchDatabase {
                location: DatabaseLocation::parse(&format!("{base}/{name}")).unwrap(),
                _directory: directory,
                postgres: Some((url.clone(), name)),
            }
        }
    }
}

/// Creates the accounts, each with one opening credit (its grant 1), in
/// one transaction.
fn seed(database: &BenchDatabase, accounts: i64, opening_micros: i64) {
    match &database.location {
        DatabaseLocation::Sqlite(path) => seed_sqlite(path, accounts, opening_micros),
        DatabaseLocation::Postgres(_) => {
            // Migrated by opening it once.
            drop(adapters::open(&StoreSettings::new(database.location.clone())).unwrap());
            postgres_batch(
                &postgres_url(database),
                &format!(
                    "BEGIN;
                     INSERT INTO accounts (id, phone, status, created_at)
                       SELECT g, '+1415' || lpad(g::text, 7, '0'), 'active', 0 FROM generate_series(1, {accounts}) g;
                     INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
                       SELECT g, 1, 'credit', {opening_micros}, {opening_micros}, 'opening', 'opening credit', 0 FROM generate_series(1, {accounts}) g;
                     INSERT INTO credit_grants (account_id, id, category, source, amount, priority, granted_at)
                       SELECT g, 1, 'paid', 'migration', {opening_micros}, 50, 0 FROM generate_series(1, {accounts}) g;
                     INSERT INTO account_balances (account_id, balance, seq, updated_at, grants)
                       SELECT g, {opening_micros}, 1, 0, '1:{opening_micros}' FROM generate_series(1, {accounts}) g;
                     SELECT setval(pg_get_serial_sequence('accounts', 'id'), {accounts});
                     COMMIT;
                     ANALYZE;"
                ),
            );
        }
    }
}

/// The URL of a bench database, password included (for the bench's own
/// connections).
fn postgres_url(database: &BenchDatabase) -> String {
    let (admin, name) = database.postgres.as_ref().unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn seed_sqlite(path: &std::path::Path, accounts: i64, opening_micros: i64) {
    let mut connection = adapters::sqlite::raw_connection(path).unwrap();
    let transaction = connection.transaction().unwrap();
    for id in 1..=accounts {
        transaction
            .execute(
                "INSERT INTO accounts (id, phone, status, created_at) VALUES (?1, ?2, 'active', 0)",
                (id, format!("+1415{:07}", id)),
            )
            .unwrap();
        transaction
            .execute(
                "INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
                 VALUES (?1, 1, 'credit', ?2, ?2, 'opening', 'opening credit', 0)",
                (id, opening_micros),
            )
            .unwrap();
        transaction
            .execute(
                "INSERT INTO credit_grants (account_id, id, category, source, amount, priority, granted_at)
                 VALUES (?1, 1, 'paid', 'migration', ?2, 50, 0)",
                (id, opening_micros),
            )
            .unwrap();
        transaction
            .execute(
                "INSERT INTO account_balances (account_id, balance, seq, updated_at, grants)
                 VALUES (?1, ?2, 1, 0, ?3)",
                (id, opening_micros, format!("1:{opening_micros}")),
            )
            .unwrap();
    }
    transaction.commit().unwrap();
}

fn percentile(sorted: &[u32], fraction_per_mille: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * fraction_per_mille / 1000]
}

fn millis(micros: u32) -> f64 {
    Duration::from_micros(u64::from(micros)).as_secs_f64() * 1000.0
}

/// What a run of debits through the actors came to.
struct Run {
    rate: f64,
    p50: u32,
    p99: u32,
    commits: u64,
    writes: u64,
    conflicts: u64,
    /// Debits answered "not applied" (see the callers).
    not_applied: u64,
}

/// Durable debits through the actors of `instances` cores on one database
/// (each with its own store, as separate servers would have), with many
/// concurrent callers spread over them and over the accounts.
fn actor_debits(options: &Options, instances: usize) -> Run {
    let database = fresh(options, &format!("actors{instances}"));
    seed(&database, options.accounts, 1_000_000_000);
    let mut settings = Settings::local("unused.db");
    settings.database.location = database.location.clone();
    settings.server.actor_threads = options.actor_threads;

    actix_rt::System::new().block_on(async move {
        let cores: Vec<Core> = (0..instances)
            .map(|_| Core::start(&settings, Arc::new(SystemClock)).unwrap())
            .collect();
        // Warm up: activate every account actor once on every instance.
        for core in &cores {
            let warm = (1..=options.accounts).map(|id| {
                let registry = core.registry.clone();
                async move {
                    registry
                        .send(AccountId(id), sms_credit_actors::GetBalance)
                        .await
                        .unwrap();
                }
            });
            futures_util::future::join_all(warm).await;
        }

        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let callers = (0..options.callers).map(|caller| {
            let registry = cores[caller as usize % instances].registry.clone();
            let next = Arc::clone(&next);
            let total = options.debits;
            let accounts = options.accounts as u64;
            actix_rt::spawn(async move {
                let mut latencies = Vec::new();
                let mut not_applied = 0_u64;
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    if number >= total {
                        break;
                    }
                    let account = AccountId((number % accounts) as i64 + 1);
                    let debit = Debit {
                        one_segment: None,
                        amount: Money::from_micros(56_500),
                        idempotency_key: IdempotencyKey::parse(&format!("bench-{number}")).unwrap(),
                        description: String::new(),
                    };
                    let sent = Instant::now();
                    match registry.send(account, debit).await {
                        Ok(_) => latencies
                            .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        // Computed again MAX_ATTEMPTS times and still beaten
                        // by another instance: not applied (an HTTP caller
                        // gets 503 and asks again with the same key).
                        Err(sms_credit_actors::LedgerError::Store(
                            StoreError::MovedOn(_) | StoreError::Conflict,
                        )) => not_applied += 1,
                        Err(error) => panic!("{error}"),
                    }
                }
                (latencies, not_applied)
            })
        });
        let mut latencies: Vec<u32> = Vec::with_capacity(options.debits as usize);
        let mut not_applied = 0_u64;
        for caller in futures_util::future::join_all(callers).await {
            let (caller_latencies, caller_not_applied) = caller.unwrap();
            latencies.extend(caller_latencies);
            not_applied += caller_not_applied;
        }
        let elapsed = started.elapsed();
        latencies.sort_unstable();
        let stat = |read: fn(&sms_credit_actors::store::StoreStats) -> u64| -> u64 {
            cores.iter().map(|core| read(core.store.stats())).sum()
        };
        let commits = stat(|stats| stats.commits.load(Ordering::Relaxed));
        let writes = stat(|stats| stats.committed_writes.load(Ordering::Relaxed));
        let batch_micros = stat(|stats| stats.batch_micros.load(Ordering::Relaxed));
        let commit_micros = stat(|stats| stats.commit_micros.load(Ordering::Relaxed));
        let sync_micros = stat(|stats| stats.sync_micros.load(Ordering::Relaxed));
        let conflicts = stat(|stats| stats.conflicts.load(Ordering::Relaxed));
        let in_store = stat(|stats| stats.ack_latency.sum());
        let acked = stat(|stats| stats.ack_latency.count());
        println!(
            "  mean latency {:.3} ms at the caller, of which {:.3} ms from the write's submission to its answer by the store",
            latencies.iter().map(|&micros| f64::from(micros)).sum::<f64>() / latencies.len().max(1) as f64 / 1000.0,
            in_store as f64 / acked.max(1) as f64 / 1000.0
        );
        println!(
            "  writers busy {:.0}% of the run (summed over instances); per write {:.2} µs in statements, {:.2} µs in COMMIT, {:.2} µs in fsync beside them (SQLite's syncer)",
            batch_micros as f64 / elapsed.as_micros() as f64 * 100.0,
            (batch_micros - commit_micros) as f64 / writes.max(1) as f64,
            commit_micros as f64 / writes.max(1) as f64,
            sync_micros as f64 / writes.max(1) as f64
        );
        for core in cores {
            core.shutdown().await;
        }
        Run {
            rate: (options.debits - not_applied) as f64 / elapsed.as_secs_f64(),
            p50: percentile(&latencies, 500),
            p99: percentile(&latencies, 990),
            commits,
            writes,
            conflicts,
            not_applied,
        }
    })
}

/// The naive design: one transaction per debit (SQLite with
/// synchronous=FULL; Postgres with synchronous_commit on), one at a time.
fn naive_debits(options: &Options) -> f64 {
    let database = fresh(options, "naive");
    seed(&database, options.accounts, 1_000_000_000);
    match &database.location {
        DatabaseLocation::Sqlite(path) => naive_sqlite(options, path),
        DatabaseLocation::Postgres(_) => naive_postgres(options, &postgres_url(&database)),
    }
}

fn naive_sqlite(options: &Options, path: &std::path::Path) -> f64 {
    let connection = adapters::sqlite::raw_connection(path).unwrap();
    let started = Instant::now();
    for number in 0..options.naive_debits {
        let account = (number % options.accounts as u64) as i64 + 1;
        let key = format!("naive-{number}");
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        let exists: bool = connection
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = ?1 AND idempotency_key = ?2)")
            .unwrap()
            .query_row((account, &key), |row| row.get(0))
            .unwrap();
        assert!(!exists);
        let (balance, seq): (i64, i64) = connection
            .prepare_cached("SELECT balance, seq FROM account_balances WHERE account_id = ?1")
            .unwrap()
            .query_row([account], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        let balance_after = balance - 56_500;
        assert!(balance_after >= 0);
        connection
            .prepare_cached(
                "INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
                 VALUES (?1, ?2, 'debit', -56500, ?3, ?4, '', 0)",
            )
            .unwrap()
            .execute((account, seq + 1, balance_after, &key))
            .unwrap();
        connection
            .prepare_cached(
                "UPDATE account_balances SET balance = ?2, seq = ?3 WHERE account_id = ?1",
            )
            .unwrap()
            .execute((account, balance_after, seq + 1))
            .unwrap();
        connection.execute_batch("COMMIT").unwrap();
    }
    options.naive_debits as f64 / started.elapsed().as_secs_f64()
}

fn naive_postgres(options: &Options, url: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let exists = client
            .prepare("SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = $1 AND idempotency_key = $2)")
            .await
            .unwrap();
        let snapshot = client
            .prepare("SELECT balance, seq FROM account_balances WHERE account_id = $1 FOR UPDATE")
            .await
            .unwrap();
        let insert = client
            .prepare(
                "INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, description, created_at)
                 VALUES ($1, $2, 'debit', -56500, $3, $4, '', 0)",
            )
            .await
            .unwrap();
        let update = client
            .prepare("UPDATE account_balances SET balance = $2, seq = $3 WHERE account_id = $1")
            .await
            .unwrap();
        let started = Instant::now();
        for number in 0..options.naive_debits {
            let account = (number % options.accounts as u64) as i64 + 1;
            let key = format!("naive-{number}");
            let transaction = client.transaction().await.unwrap();
            let found: bool = transaction
                .query_one(&exists, &[&account, &key])
                .await
                .unwrap()
                .get(0);
            assert!(!found);
            let row = transaction.query_one(&snapshot, &[&account]).await.unwrap();
            let (balance, seq): (i64, i64) = (row.get(0), row.get(1));
            let balance_after = balance - 56_500;
            assert!(balance_after >= 0);
            transaction
                .execute(&insert, &[&account, &(seq + 1), &balance_after, &key])
                .await
                .unwrap();
            transaction
                .execute(&update, &[&account, &balance_after, &(seq + 1)])
                .await
                .unwrap();
            transaction.commit().await.unwrap();
        }
        options.naive_debits as f64 / started.elapsed().as_secs_f64()
    })
}

/// Ledger writes submitted straight to the store's port, no actors, from
/// one thread, each account's writes chained: the floor under the actor
/// design on this machine. With a `window`, at most that many writes are
/// unanswered at once (as with that many callers, each waiting for its
/// answer before the next), so the store's batches are no larger than the
/// actors'; without, everything is queued at once.
fn store_floor(options: &Options, window: Option<usize>) -> f64 {
    let database = fresh(options, "floor");
    seed(&database, options.accounts, 1_000_000_000);
    let location = database.location.clone();
    actix_rt::System::new().block_on(async move {
        let store = adapters::open(&StoreSettings::new(location)).unwrap();
        let mut snapshots: Vec<Snapshot> = (0..=options.accounts)
            .map(|_| Snapshot {
                balance: Money::from_micros(1_000_000_000),
                seq: 1,
                low_balance_warned_at_ms: None,
            })
            .collect();
        let mut grants: Vec<std::sync::Arc<str>> = (0..=options.accounts)
            .map(|_| std::sync::Arc::from("1:1000000000"))
            .collect();
        let total = options.debits;
        let generation = store.next_generation();
        let started = Instant::now();
        let mut answers: std::collections::VecDeque<
            tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
        > = std::collections::VecDeque::with_capacity(total as usize);
        for number in 0..total {
            if let Some(window) = window {
                if answers.len() >= window {
                    let oldest = answers.pop_front().unwrap();
                    oldest.await.unwrap().unwrap();
                }
            }
            let account = (number % options.accounts as u64) as i64 + 1;
            let previous = snapshots[account as usize];
            let next = Snapshot {
                balance: Money::from_micros(previous.balance.micros() - 56_500),
                seq: previous.seq + 1,
                ..previous
            };
            let (done, answer) = tokio::sync::oneshot::channel();
            // What the actors write: the row's funding and the snapshot's
            // grants (all from the opening credit, grant 1).
            let grants_after: std::sync::Arc<str> =
                std::sync::Arc::from(format!("1:{}", next.balance.micros()));
            let previous_grants = std::mem::replace(
                &mut grants[account as usize],
                std::sync::Arc::clone(&grants_after),
            );
            store
                .ledger()
                .submit(LedgerWrite {
                    entry: LedgerEntry {
                        account_id: AccountId(account),
                        seq: next.seq,
                        kind: TransactionKind::Debit,
                        amount: Money::from_micros(-56_500),
                        balance_after: next.balance,
                        idempotency_key: format!("floor-{number}"),
                        order_id: None,
                        description: String::new(),
                        reason: None,
                        created_at_ms: 0,
                        funded_by: Funding::new(vec![Draw {
                            grant_id: 1,
                            category: Category::Paid,
                            amount: Money::from_micros(56_500),
                        }]),
                    },
                    previous,
                    next,
                    grants: grants_after,
                    previous_grants,
                    funded_by: Some("1:p:56500".to_string()),
                    generation,
                    done,
                    submitted_at: Instant::now(),
                    outbox: None,
                })
                .unwrap();
            answers.push_back(answer);
            snapshots[account as usize] = next;
        }
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}

/// How long after one instance acknowledges a debit another instance's
/// balance feed has the row (Postgres: NOTIFY, then a read): the most a
/// read on the other instance can lag, when it does not reload itself.
fn staleness(options: &Options) -> (u32, u32, u32) {
    let database = fresh(options, "stale");
    seed(&database, 100, 1_000_000_000);
    let mut settings = Settings::local("unused.db");
    settings.database.location = database.location.clone();
    actix_rt::System::new().block_on(async move {
        let writer = Core::start(&settings, Arc::new(SystemClock)).unwrap();
        let reader = Core::start(&settings, Arc::new(SystemClock)).unwrap();
        let mut seen = reader.store.feed().subscribe(None, 1024);
        let mut lags = Vec::new();
        for number in 0..500_i64 {
            let account = AccountId(number % 100 + 1);
            let debit = Debit {
                one_segment: None,
                amount: Money::from_micros(56_500),
                idempotency_key: IdempotencyKey::parse(&format!("stale-{number}")).unwrap(),
                description: String::new(),
            };
            let receipt = writer.registry.send(account, debit).await.unwrap();
            let acknowledged = Instant::now();
            loop {
                let entry = tokio::time::timeout(Duration::from_secs(10), seen.receiver.recv())
                    .await
                    .expect("the other instance sees the row within 10 s")
                    .unwrap();
                if entry.account_id == account && entry.seq == receipt.entry.seq {
                    break;
                }
            }
            lags.push(acknowledged.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        lags.sort_unstable();
        writer.shutdown().await;
        reader.shutdown().await;
        (
            percentile(&lags, 500),
            percentile(&lags, 990),
            *lags.last().unwrap(),
        )
    })
}

fn main() {
    let options = options();
    let store = match &options.postgres {
        None => "SQLite (WAL, fsynced before any answer)".to_string(),
        Some(url) => format!(
            "Postgres ({}; synchronous_commit on)",
            DatabaseLocation::parse(url).expect("a Postgres URL")
        ),
    };
    println!(
        "durable debits on {store} over {} accounts, {} concurrent callers, {} actor thread(s), {} cores",
        options.accounts,
        options.callers,
        options.actor_threads,
        std::thread::available_parallelism().map_or(0, |cores| cores.get())
    );
    let naive = naive_debits(&options);
    println!(
        "naive (one transaction per debit): {naive:.0} debits/s over {} debits",
        options.naive_debits
    );
    let floor = store_floor(&options, None);
    println!("store alone (writes submitted to the port from one thread, no actors): {floor:.0} debits/s");
    let windowed = store_floor(&options, Some(options.callers as usize));
    println!(
        "store alone, at most {} writes unanswered (the callers' concurrency): {windowed:.0} debits/s",
        options.callers
    );
    let run = actor_debits(&options, 1);
    println!(
        "actors + group commit: {:.0} debits/s over {} debits ({} not applied)",
        run.rate, options.debits, run.not_applied
    );
    println!(
        "acknowledge latency: p50 {:.3} ms, p99 {:.3} ms",
        millis(run.p50),
        millis(run.p99)
    );
    println!(
        "commits: {}, mean batch {:.0} writes",
        run.commits,
        run.writes as f64 / run.commits.max(1) as f64
    );
    println!("ratio to naive: {:.1}x", run.rate / naive);
    println!(
        "actors / store alone: {:.0}%; actors / store alone at the callers' concurrency: {:.0}%",
        run.rate / floor * 100.0,
        run.rate / windowed * 100.0
    );
    if options.postgres.is_some() {
        let shared = actor_debits(&options, 3);
        println!(
            "three instances on the same accounts: {:.0} debits/s ({:.0}% of one), p50 {:.3} ms, p99 {:.3} ms, {} conflicts computed again ({:.1} per 1000 debits), {} not applied",
            shared.rate,
            shared.rate / run.rate * 100.0,
            millis(shared.p50),
            millis(shared.p99),
            shared.conflicts,
            shared.conflicts as f64 * 1000.0 / options.debits as f64,
            shared.not_applied
        );
        // The worst case, for the record: a few hot accounts, each written
        // by all three instances within the same milliseconds, so a
        // snapshot is often stale before the note arrives.
        let hot = Options {
            accounts: 100,
            debits: options.debits / 4,
            postgres: options.postgres.clone(),
            ..options
        };
        let alone = actor_debits(&hot, 1);
        let contended = actor_debits(&hot, 3);
        println!(
            "the same on 100 hot accounts ({} debits): one instance {:.0} debits/s, three {:.0} debits/s ({:.0}%), p99 {:.3} ms, {:.1} of 1000 debits computed again, {} not applied (beaten on every try)",
            hot.debits,
            alone.rate,
            contended.rate,
            contended.rate / alone.rate * 100.0,
            millis(contended.p99),
            contended.conflicts as f64 * 1000.0 / hot.debits as f64,
            contended.not_applied
        );
        let (p50, p99, max) = staleness(&options);
        println!(
            "another instance's feed has a row after its acknowledgement: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            millis(p50),
            millis(p99),
            millis(max)
        );
    }
}

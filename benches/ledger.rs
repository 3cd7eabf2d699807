//! Durable debits through the account actors, and the naive design beside
//! them: prints debits/s, acknowledge latency and the ratio.
//!
//! `cargo bench --bench ledger` (options: `-- --debits N --callers N
//! --accounts N --naive-debits N --actor-threads N`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sms_credit::config::Settings;
use sms_credit::startup::Core;
use sms_credit_actors::clock::SystemClock;
use sms_credit_actors::store::{self, LedgerWrite, Store, StoreSettings};
use sms_credit_actors::{
    AccountId, Debit, IdempotencyKey, LedgerEntry, Money, Snapshot, TransactionKind,
};

struct Options {
    debits: u64,
    callers: u64,
    accounts: i64,
    naive_debits: u64,
    actor_threads: usize,
}

fn options() -> Options {
    let mut options = Options {
        debits: 400_000,
        callers: 256,
        accounts: 10_000,
        naive_debits: 3_000,
        actor_threads: 1,
    };
    let arguments: Vec<String> = std::env::args().collect();
    let mut index = 1;
    while index < arguments.len() {
        let value = arguments
            .get(index + 1)
            .and_then(|value| value.parse::<u64>().ok());
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

/// Creates the accounts, each with one opening credit, in one transaction.
fn seed(path: &std::path::Path, accounts: i64, opening_micros: i64) {
    let mut connection = store::sqlite::raw_connection(path).unwrap();
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
                "INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (?1, ?2, 1, 0)",
                (id, opening_micros),
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

/// Durable debits through the actors with many concurrent callers.
fn actor_debits(options: &Options) -> (f64, u32, u32, u64, u64) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bench.db");
    seed(&path, options.accounts, 1_000_000_000);
    let mut settings = Settings::local(&path);
    settings.actor_threads = options.actor_threads;

    actix_rt::System::new().block_on(async move {
        let core = Core::start(&settings, Arc::new(SystemClock)).unwrap();
        // Warm up: activate every account actor once.
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

        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let callers = (0..options.callers).map(|_| {
            let registry = core.registry.clone();
            let next = Arc::clone(&next);
            let total = options.debits;
            let accounts = options.accounts as u64;
            actix_rt::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    if number >= total {
                        break latencies;
                    }
                    let account = AccountId((number % accounts) as i64 + 1);
                    let debit = Debit {
                        amount: Money::from_micros(56_500),
                        idempotency_key: IdempotencyKey::parse(&format!("bench-{number}")).unwrap(),
                        description: String::new(),
                    };
                    let sent = Instant::now();
                    registry.send(account, debit).await.unwrap();
                    latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
            })
        });
        let mut latencies: Vec<u32> = Vec::with_capacity(options.debits as usize);
        for caller in futures_util::future::join_all(callers).await {
            latencies.extend(caller.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort_unstable();
        let commits = core.store.stats().commits.load(Ordering::Relaxed);
        let writes = core.store.stats().committed_writes.load(Ordering::Relaxed);
        let batch_micros = core.store.stats().batch_micros.load(Ordering::Relaxed);
        let commit_micros = core.store.stats().commit_micros.load(Ordering::Relaxed);
        println!(
            "writer busy {:.0}% of the run; per write {:.2} µs in statements, {:.2} µs in COMMIT",
            batch_micros as f64 / elapsed.as_micros() as f64 * 100.0,
            (batch_micros - commit_micros) as f64 / writes.max(1) as f64,
            commit_micros as f64 / writes.max(1) as f64
        );
        core.shutdown().await;
        let rate = options.debits as f64 / elapsed.as_secs_f64();
        (
            rate,
            percentile(&latencies, 500),
            percentile(&latencies, 990),
            commits,
            writes,
        )
    })
}

/// The naive design: one SQLite transaction per debit, synchronous=FULL.
fn naive_debits(options: &Options) -> f64 {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("naive.db");
    seed(&path, options.accounts, 1_000_000_000);
    let connection = store::sqlite::raw_connection(&path).unwrap();
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

/// Ledger writes submitted straight to the store's port, no actors, from
/// one thread, each account's writes chained: the floor under the actor
/// design on this machine.
fn store_floor(options: &Options) -> f64 {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("floor.db");
    seed(&path, options.accounts, 1_000_000_000);
    actix_rt::System::new().block_on(async move {
        let store = Store::open(&StoreSettings::sqlite(&path)).unwrap();
        let mut snapshots: Vec<Snapshot> = (0..=options.accounts)
            .map(|_| Snapshot {
                balance: Money::from_micros(1_000_000_000),
                seq: 1,
                low_balance_warned_at_ms: None,
            })
            .collect();
        let total = options.debits.min(200_000);
        let generation = store.next_generation();
        let started = Instant::now();
        let mut answers = Vec::with_capacity(total as usize);
        for number in 0..total {
            let account = (number % options.accounts as u64) as i64 + 1;
            let previous = snapshots[account as usize];
            let next = Snapshot {
                balance: Money::from_micros(previous.balance.micros() - 56_500),
                seq: previous.seq + 1,
                ..previous
            };
            let (done, answer) = tokio::sync::oneshot::channel();
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
                        created_at_ms: 0,
                    },
                    previous,
                    next,
                    generation,
                    done,
                    submitted_at: Instant::now(),
                    notice: None,
                })
                .unwrap();
            answers.push(answer);
            snapshots[account as usize] = next;
        }
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}

fn main() {
    let options = options();
    println!(
        "durable debits over {} accounts, {} concurrent callers, {} actor thread(s), {} cores",
        options.accounts,
        options.callers,
        options.actor_threads,
        std::thread::available_parallelism().map_or(0, |cores| cores.get())
    );
    let naive = naive_debits(&options);
    println!(
        "naive (one transaction per debit, synchronous=FULL): {naive:.0} debits/s over {} debits",
        options.naive_debits
    );
    let floor = store_floor(&options);
    println!("store alone (writes submitted to the port from one thread, no actors): {floor:.0} debits/s");
    let (rate, p50, p99, commits, writes) = actor_debits(&options);
    println!(
        "actors + group commit: {rate:.0} debits/s over {} debits",
        options.debits
    );
    println!(
        "acknowledge latency: p50 {:.3} ms, p99 {:.3} ms",
        Duration::from_micros(u64::from(p50)).as_secs_f64() * 1000.0,
        Duration::from_micros(u64::from(p99)).as_secs_f64() * 1000.0
    );
    println!(
        "commits: {commits}, mean batch {:.0} writes",
        writes as f64 / commits.max(1) as f64
    );
    println!("ratio to naive: {:.1}x", rate / naive);
}

//! The account actors and the store, driven directly: idempotency,
//! concurrency, passivation and failed commits.

use std::time::Duration;

use futures_util::future::join_all;
use sms_credit::startup::Core;
use sms_credit_actors::accounts::{AccountStatus, NewAccount, PhoneNumber};
use sms_credit_actors::store::StoreError;
use sms_credit_actors::{AccountId, Credit, Debit, GetBalance, IdempotencyKey, LedgerError, Money};

use crate::helpers::{fresh_directory, start_core, TestDatabase};

const NEVER: Duration = Duration::from_secs(3600);

pub async fn new_account(core: &Core, phone: &str) -> AccountId {
    let new_account = NewAccount {
        phone: PhoneNumber::parse(phone).unwrap(),
        email: None,
        status: AccountStatus::Active,
    };
    core.store
        .accounts()
        .create(new_account, 0)
        .await
        .unwrap()
        .id
}

pub fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).unwrap()
}

pub fn credit(micros: i64, idempotency_key: &str) -> Credit {
    Credit {
        event: None,
        amount: Money::from_micros(micros),
        idempotency_key: key(idempotency_key),
        description: "credit".into(),
        order_id: None,
        source: sms_credit_actors::grants::GrantSource::Migration,
    }
}

pub fn debit(micros: i64, idempotency_key: &str) -> Debit {
    Debit {
        one_segment: None,
        amount: Money::from_micros(micros),
        idempotency_key: key(idempotency_key),
        description: "debit".into(),
    }
}

/// Recomputes every account of the database in `directory` from its
/// ledger (through a store of its own) and fails on any problem.
pub fn assert_verified(directory: &TestDatabase) {
    let location = directory.location();
    let report = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let store =
                sms_credit_actors::adapters::open(&sms_credit_actors::StoreSettings::new(location))
                    .unwrap();
            store.ledger().verify().await.unwrap()
        })
    })
    .join()
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

on_both_stores!(debits_never_take_the_balance_below_zero);
async fn debits_never_take_the_balance_below_zero() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550200").await;
    core.registry
        .send(account, credit(100_000, "c1"))
        .await
        .unwrap();
    let refused = core.registry.send(account, debit(100_001, "d1")).await;
    assert_eq!(
        refused,
        Err(LedgerError::InsufficientCredit {
            balance: Money::from_micros(100_000),
            needed: Money::from_micros(100_001)
        })
    );
    let spent = core
        .registry
        .send(account, debit(100_000, "d2"))
        .await
        .unwrap();
    assert_eq!(spent.entry.balance_after, Money::ZERO);
    // A refused debit used no key: the same key may succeed once there is credit.
    core.registry
        .send(account, credit(200_000, "c2"))
        .await
        .unwrap();
    let retried = core
        .registry
        .send(account, debit(100_001, "d1"))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert_eq!(
        core.registry
            .send(account, GetBalance)
            .await
            .unwrap()
            .balance,
        Money::from_micros(99_999)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_key_repeated_while_in_flight_takes_effect_once);
async fn a_key_repeated_while_in_flight_takes_effect_once() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550201").await;
    let answers =
        join_all((0..50).map(|_| core.registry.send(account, credit(1_000, "same")))).await;
    let receipts: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        receipts.iter().filter(|receipt| !receipt.replayed).count(),
        1
    );
    assert!(receipts
        .iter()
        .all(|receipt| receipt.entry == receipts[0].entry));
    let conflicting = core.registry.send(account, debit(1_000, "same")).await;
    assert!(
        matches!(conflicting, Err(LedgerError::IdempotencyConflict { .. })),
        "{conflicting:?}"
    );
    let snapshot = core.registry.send(account, GetBalance).await.unwrap();
    assert_eq!(
        (snapshot.balance, snapshot.seq),
        (Money::from_micros(1_000), 1)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(many_tasks_on_one_account_and_many_accounts_end_exact);
async fn many_tasks_on_one_account_and_many_accounts_end_exact() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let mut accounts = Vec::new();
    for index in 0..20 {
        accounts.push(new_account(&core, &format!("+1415555{:04}", 3000 + index)).await);
    }
    for account in &accounts {
        core.registry
            .send(*account, credit(1_000_000, &format!("seed-{account}")))
            .await
            .unwrap();
    }
    // Per account: 30 credits of 7 µ$ and 30 debits of 11 µ$, all at once.
    let mut work = Vec::new();
    for account in &accounts {
        for index in 0..30 {
            let registry = core.registry.clone();
            let account = *account;
            work.push(actix_rt::spawn(async move {
                registry
                    .send(account, credit(7, &format!("credit-{account}-{index}")))
                    .await
                    .unwrap();
            }));
            let registry = core.registry.clone();
            work.push(actix_rt::spawn(async move {
                registry
                    .send(account, debit(11, &format!("debit-{account}-{index}")))
                    .await
                    .unwrap();
            }));
        }
    }
    for task in join_all(work).await {
        task.unwrap();
    }
    for account in &accounts {
        let snapshot = core.registry.send(*account, GetBalance).await.unwrap();
        assert_eq!(
            snapshot.balance,
            Money::from_micros(1_000_000 + 30 * 7 - 30 * 11)
        );
        assert_eq!(snapshot.seq, 61);
    }
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(concurrent_debits_succeed_exactly_as_far_as_the_balance_goes);
async fn concurrent_debits_succeed_exactly_as_far_as_the_balance_goes() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550202").await;
    core.registry
        .send(account, credit(56_500 * 300, "seed"))
        .await
        .unwrap();
    let answers = join_all((0..1000).map(|index| {
        core.registry
            .send(account, debit(56_500, &format!("sms-{index}")))
    }))
    .await;
    let succeeded = answers.iter().filter(|answer| answer.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|answer| matches!(answer, Err(LedgerError::InsufficientCredit { .. })))
        .count();
    assert_eq!((succeeded, refused), (300, 700));
    assert_eq!(
        core.registry
            .send(account, GetBalance)
            .await
            .unwrap()
            .balance,
        Money::ZERO
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(idle_actors_passivate_and_come_back_from_their_snapshot);
async fn idle_actors_passivate_and_come_back_from_their_snapshot() {
    let directory = fresh_directory();
    let core = start_core(&directory, Duration::from_millis(30));
    let account = new_account(&core, "+14155550203").await;
    core.registry
        .send(account, credit(5_000, "before"))
        .await
        .unwrap();
    assert_eq!(core.registry.active_count(), 1);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(core.registry.active_count(), 0, "the idle actor passivated");
    // A replay after passivation is found in the ledger, not applied again.
    let replayed = core
        .registry
        .send(account, credit(5_000, "before"))
        .await
        .unwrap();
    assert!(replayed.replayed);
    let after = core
        .registry
        .send(account, credit(1_000, "after"))
        .await
        .unwrap();
    assert_eq!(
        (after.entry.seq, after.entry.balance_after),
        (2, Money::from_micros(6_000))
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(messages_racing_passivation_are_never_lost);
async fn messages_racing_passivation_are_never_lost() {
    let directory = fresh_directory();
    // Actors passivate after 1 ms idle, so they stop between bursts all the time.
    let core = start_core(&directory, Duration::from_millis(1));
    let account = new_account(&core, "+14155550204").await;
    for burst in 0..40 {
        let sends = (0..5).map(|index| {
            core.registry
                .send(account, credit(1, &format!("b{burst}-{index}")))
        });
        for answer in join_all(sends).await {
            answer.unwrap();
        }
        actix_rt::time::sleep(Duration::from_millis(burst % 3)).await;
    }
    assert_eq!(
        core.registry
            .send(account, GetBalance)
            .await
            .unwrap()
            .balance,
        Money::from_micros(200)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(unknown_accounts_are_refused);
async fn unknown_accounts_are_refused() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let answer = core.registry.send(AccountId(77), credit(1, "x")).await;
    assert_eq!(answer, Err(LedgerError::AccountNotFound(AccountId(77))));
    core.shutdown().await;
}

on_both_stores!(the_balance_never_shows_a_write_that_has_not_committed);
async fn the_balance_never_shows_a_write_that_has_not_committed() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550207").await;
    core.registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();

    // The next commit fails. A credit is queued and, behind it in the same
    // mailbox, balance reads: while the credit is in flight (or after it
    // failed) they answer the committed balance, never the working one.
    core.store.fail_next_commits_for_testing(1);
    let queued = core.registry.send(account, credit(5_000, "never-lands"));
    let reads = join_all((0..3).map(|_| core.registry.send(account, GetBalance)));
    let (credited, reads) = futures_util::join!(queued, reads);
    assert!(
        matches!(credited, Err(LedgerError::Store(_))),
        "{credited:?}"
    );
    for read in reads {
        let snapshot = read.unwrap();
        assert_eq!(
            (snapshot.seq, snapshot.balance),
            (1, Money::from_micros(10_000))
        );
    }
    // After the failure the actor holds what is on disk, and goes on from it.
    let after = core
        .registry
        .send(account, credit(5_000, "lands"))
        .await
        .unwrap();
    assert_eq!(
        (after.entry.seq, after.entry.balance_after),
        (2, Money::from_micros(15_000))
    );
    let snapshot = core.registry.send(account, GetBalance).await.unwrap();
    assert_eq!(
        (snapshot.seq, snapshot.balance),
        (2, Money::from_micros(15_000))
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_failed_commit_fails_its_callers_and_leaves_no_trace);
async fn a_failed_commit_fails_its_callers_and_leaves_no_trace() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550205").await;
    let other = new_account(&core, "+14155550206").await;
    core.registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    core.registry
        .send(other, credit(10_000, "seed"))
        .await
        .unwrap();

    core.store.fail_next_commits_for_testing(1);
    let answers = join_all((0..20).map(|index| {
        core.registry
            .send(account, debit(100, &format!("d{index}")))
    }))
    .await;
    let failed = answers
        .iter()
        .filter(|answer| matches!(answer, Err(LedgerError::Store(_))))
        .count();
    let applied: i64 = answers.iter().filter(|answer| answer.is_ok()).count() as i64;
    assert!(failed >= 1, "{answers:?}");
    assert_eq!(
        failed as i64 + applied,
        20,
        "every answer is a commit or a store failure: {answers:?}"
    );
    for answer in &answers {
        if let Err(LedgerError::Store(error)) = answer {
            assert!(
                matches!(error, StoreError::CommitFailed(_) | StoreError::Aborted),
                "{error:?}"
            );
        }
    }
    // Memory fell back to disk: the balance counts exactly the committed debits.
    let snapshot = core.registry.send(account, GetBalance).await.unwrap();
    assert_eq!(snapshot.balance, Money::from_micros(10_000 - 100 * applied));
    // The failed keys were not used: retrying them now succeeds once each.
    let retries = join_all((0..20).map(|index| {
        core.registry
            .send(account, debit(100, &format!("d{index}")))
    }))
    .await;
    assert!(retries.iter().all(Result::is_ok), "{retries:?}");
    assert_eq!(
        retries
            .iter()
            .filter(|answer| matches!(answer, Ok(receipt) if !receipt.replayed))
            .count() as i64,
        failed as i64
    );
    assert_eq!(
        core.registry
            .send(account, GetBalance)
            .await
            .unwrap()
            .balance,
        Money::from_micros(8_000)
    );
    assert_eq!(
        core.registry.send(other, GetBalance).await.unwrap().balance,
        Money::from_micros(10_000)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_commit_failing_mid_load_fails_only_its_callers_and_leaves_no_trace);
async fn a_commit_failing_mid_load_fails_only_its_callers_and_leaves_no_trace() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let mut accounts = Vec::new();
    for index in 0..40 {
        let account = new_account(&core, &format!("+141555507{index:02}")).await;
        core.registry
            .send(account, credit(1_000_000, "seed"))
            .await
            .unwrap();
        accounts.push(account);
    }
    // 40 accounts × 25 debits, in two waves of concurrent debits; the
    // first commit of the second wave fails.
    let wave = |range: std::ops::Range<i32>| {
        join_all(
            accounts
                .iter()
                .flat_map(move |account| range.clone().map(move |index| (*account, index)))
                .map(|(account, index)| {
                    let registry = core.registry.clone();
                    async move {
                        let answer = registry
                            .send(account, debit(1_000, &format!("load-{index}")))
                            .await;
                        (account, index, answer)
                    }
                }),
        )
    };
    let mut answers = wave(0..12).await;
    assert!(answers.iter().all(|(_, _, answer)| answer.is_ok()));
    core.store.fail_next_commits_for_testing(1);
    answers.extend(wave(12..25).await);
    let failed: Vec<_> = answers
        .iter()
        .filter(|(_, _, answer)| matches!(answer, Err(LedgerError::Store(_))))
        .collect();
    assert!(answers
        .iter()
        .all(|(_, _, answer)| answer.is_ok() || matches!(answer, Err(LedgerError::Store(_)))));
    assert!(!failed.is_empty(), "the injected failure hit some callers");
    assert!(failed.len() < answers.len(), "and only some");

    // On disk: exactly the acknowledged debits, none of the failed ones.
    for (account, index, answer) in &answers {
        let rows = directory.number(&format!(
            "SELECT COUNT(*) FROM transactions WHERE account_id = {account} AND idempotency_key = 'load-{index}'"
        ));
        assert_eq!(
            rows,
            i64::from(answer.is_ok()),
            "{account} load-{index}: {answer:?}"
        );
    }
    // In memory: each actor agrees with its own acknowledged debits.
    for account in &accounts {
        let acknowledged = answers
            .iter()
            .filter(|(owner, _, answer)| owner == account && answer.is_ok())
            .count() as i64;
        let snapshot = core.registry.send(*account, GetBalance).await.unwrap();
        assert_eq!(
            snapshot.balance,
            Money::from_micros(1_000_000 - 1_000 * acknowledged),
            "{account}"
        );
    }
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_key_from_an_earlier_activation_is_decided_by_the_ledgers_unique_index);
/// Keys used before this activation (here: before a restart) are not read
/// before writing: the write meets the unique index, and the caller gets
/// what the key already holds — the same request its row (replayed), even
/// when the balance could no longer pay it; another amount a conflict.
/// The store says `DuplicateKey` for such a write on both adapters, and
/// changes nothing.
async fn a_key_from_an_earlier_activation_is_decided_by_the_ledgers_unique_index() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550211").await;
    core.registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    let first = core
        .registry
        .send(account, debit(9_000, "big"))
        .await
        .unwrap();
    assert!(!first.replayed);
    core.shutdown().await;

    let core = start_core(&directory, NEVER);
    // The balance (1 000) cannot pay 9 000 again: the key's row answers.
    let again = core
        .registry
        .send(account, debit(9_000, "big"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.entry.seq, first.entry.seq);
    let other = core.registry.send(account, debit(100, "big")).await;
    assert!(
        matches!(other, Err(LedgerError::IdempotencyConflict { .. })),
        "{other:?}"
    );
    let seed_again = core
        .registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    assert!(seed_again.replayed);
    // A fresh key still applies, after the refused ones, in order.
    let fresh = core
        .registry
        .send(account, debit(500, "small"))
        .await
        .unwrap();
    assert_eq!(
        (fresh.entry.seq, fresh.entry.balance_after),
        (3, Money::from_micros(500))
    );

    // The store itself: a write whose key the ledger holds is refused
    // `DuplicateKey`, and nothing moves.
    let snapshot = core
        .store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .unwrap();
    let mut entry = fresh.entry.clone();
    entry.seq = snapshot.seq + 1;
    entry.balance_after = Money::from_micros(400);
    entry.amount = Money::from_micros(-100);
    let mut next = snapshot;
    next.seq += 1;
    next.balance = Money::from_micros(400);
    assert_eq!(
        submit_directly(&core, entry, snapshot, next).await,
        Err(StoreError::DuplicateKey)
    );
    assert_eq!(
        core.store.ledger().snapshot(account).await.unwrap(),
        Some(snapshot)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_stale_write_is_refused_with_where_the_account_stands);
/// A write computed on a snapshot that is no longer the one on disk changes
/// nothing and is refused with the snapshot as it stands, on both stores.
async fn a_stale_write_is_refused_with_where_the_account_stands() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550212").await;
    let first = core
        .registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    let now = core
        .store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .unwrap();
    let mut stale = now;
    stale.seq = 0;
    stale.balance = Money::ZERO;
    let mut next = stale;
    next.seq = 1;
    next.balance = Money::from_micros(7);
    let mut entry = first.entry.clone();
    entry.seq = 1;
    entry.amount = Money::from_micros(7);
    entry.balance_after = Money::from_micros(7);
    entry.idempotency_key = "stale".into();
    assert_eq!(
        submit_directly(&core, entry, stale, next).await,
        Err(StoreError::MovedOn(Box::new(
            sms_credit_actors::ledger::Standing {
                snapshot: now,
                // The seed's credit is grant 1, none of it spent.
                grants: Some(vec![sms_credit_actors::grants::Remaining {
                    grant_id: 1,
                    amount: Money::from_micros(10_000),
                }]),
            }
        )))
    );
    assert_eq!(
        core.store.ledger().snapshot(account).await.unwrap(),
        Some(now)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

/// Submits a ledger write straight to the store (no actor) and answers
/// what the store decided.
async fn submit_directly(
    core: &Core,
    entry: sms_credit_actors::LedgerEntry,
    previous: sms_credit_actors::Snapshot,
    next: sms_credit_actors::Snapshot,
) -> Result<(), StoreError> {
    // The grants as they stand (a refused write leaves them so).
    let remaining = core
        .store
        .ledger()
        .account_grants(entry.account_id)
        .await
        .unwrap()
        .unwrap()
        .remaining
        .unwrap();
    let grants: std::sync::Arc<str> =
        std::sync::Arc::from(sms_credit_actors::grants::encode_remaining(&remaining));
    let funded_by = entry.funded_by.encode();
    let (done, answer) = tokio::sync::oneshot::channel();
    core.store
        .ledger()
        .submit(sms_credit_actors::store::LedgerWrite {
            entry,
            previous,
            next,
            grants: std::sync::Arc::clone(&grants),
            previous_grants: grants,
            funded_by,
            generation: core.store.next_generation(),
            done,
            submitted_at: std::time::Instant::now(),
            outbox: None,
        })
        .unwrap();
    answer.await.unwrap()
}

/// SQLite only: its writer commits without an fsync and the syncer makes
/// the commit durable after (Postgres's COMMIT is durable before anyone can
/// see it, so there is nothing to hold there). While the fsync is held, the
/// row is in the database file, yet nothing about it is told: not the
/// caller, not a read, not the balance feed.
#[actix_rt::test]
async fn sqlite_tells_nothing_of_a_commit_before_it_is_durable() {
    crate::database::use_store(crate::database::StoreKind::Sqlite);
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550208").await;
    core.registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    let mut feed = core.store.feed().subscribe(Some(account), 16);

    core.store.hold_syncs_for_testing(true);
    let credited = actix_rt::spawn({
        let registry = core.registry.clone();
        async move { registry.send(account, credit(5_000, "held")).await }
    });
    // The commit is in the file (another connection sees it)...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while directory.number(&format!(
        "SELECT COUNT(*) FROM transactions WHERE account_id = {} AND idempotency_key = 'held'",
        account.0
    )) == 0
    {
        assert!(std::time::Instant::now() < deadline, "never committed");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    // ...but this process's reads wait for it to be durable.
    let read = actix_rt::spawn({
        let store = core.store.clone();
        async move {
            store
                .ledger()
                .entry_by_key(account, IdempotencyKey::parse("held").unwrap())
                .await
        }
    });
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(!credited.is_finished(), "acknowledged before durable");
    assert!(!read.is_finished(), "read before durable");
    assert!(feed.receiver.try_recv().is_err(), "fed before durable");

    core.store.hold_syncs_for_testing(false);
    let receipt = credited.await.unwrap().unwrap();
    assert_eq!(
        (receipt.entry.seq, receipt.entry.balance_after),
        (2, Money::from_micros(15_000))
    );
    let row = read.await.unwrap().unwrap().expect("the row, once durable");
    assert_eq!(row.seq, 2);
    let fed = actix_rt::time::timeout(Duration::from_secs(10), feed.receiver.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fed.seq, 2);
    core.shutdown().await;
    assert_verified(&directory);
}

/// SQLite only (see above): when the write-ahead log cannot be made
/// durable, the writes it held are answered as failed commits, and the
/// store takes no more writes and answers no more reads, saying why,
/// until it is restarted; after a restart what reached the disk is there,
/// and nothing more.
#[actix_rt::test]
async fn sqlite_stops_writing_when_its_log_cannot_be_made_durable() {
    crate::database::use_store(crate::database::StoreKind::Sqlite);
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550209").await;
    core.registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();

    core.store.fail_next_sync_for_testing();
    let failed = core.registry.send(account, credit(5_000, "unsynced")).await;
    assert!(
        matches!(
            &failed,
            Err(LedgerError::Store(StoreError::CommitFailed(_)))
        ),
        "{failed:?}"
    );
    let refused = core.registry.send(account, credit(1_000, "after")).await;
    let Err(LedgerError::Store(error)) = &refused else {
        panic!("a write after a failed fsync: {refused:?}");
    };
    assert!(
        error.to_string().contains("could not be made durable"),
        "{error}"
    );
    let read = core
        .store
        .ledger()
        .entry_by_key(account, IdempotencyKey::parse("seed").unwrap())
        .await;
    assert!(
        matches!(&read, Err(error) if error.to_string().contains("could not be made durable")),
        "{read:?}"
    );
    core.shutdown().await;

    // A restart finds what reached the file (here the page cache kept the
    // unsynced commit, as a process crash would): the caller who was told
    // it failed asks again with the same key and is answered from the row.
    let core = start_core(&directory, NEVER);
    let again = core
        .registry
        .send(account, credit(5_000, "unsynced"))
        .await
        .unwrap();
    assert_eq!(again.entry.seq, 2);
    assert!(again.replayed);
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_refused_write_in_a_batch_leaves_the_others_committed);
/// Writes in one transaction (the test switch gathers them): the one
/// refused (a phone already taken, which aborts a Postgres transaction)
/// leaves nothing, and the accounts made and the credit beside it commit.
async fn a_refused_write_in_a_batch_leaves_the_others_committed() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let taken = new_account(&core, "+14155550700").await;
    let new = |phone: &str| NewAccount {
        phone: PhoneNumber::parse(phone).unwrap(),
        email: None,
        status: AccountStatus::Active,
    };
    let accounts = core.store.accounts();
    core.store.gather_next_batch_for_testing(4);
    let (first, clash, second, credited) = futures_util::join!(
        accounts.create(new("+14155550701"), 0),
        accounts.create(new("+14155550700"), 0),
        accounts.create(new("+14155550702"), 0),
        core.registry.send(taken, credit(2_500_000, "beside")),
    );
    assert!(
        matches!(
            clash,
            Err(sms_credit_actors::store::CreateAccountError::PhoneTaken(_))
        ),
        "{clash:?}"
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(credited.unwrap().entry.balance_after.micros(), 2_500_000);
    for (phone, made) in [("+14155550701", &first), ("+14155550702", &second)] {
        let found = accounts
            .by_phone(PhoneNumber::parse(phone).unwrap())
            .await
            .unwrap()
            .expect("the account made beside the refused one is there");
        assert_eq!(found.id, made.id);
    }
    let owner = accounts
        .by_phone(PhoneNumber::parse("+14155550700").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.id, taken);
    let snapshot = core.registry.send(taken, GetBalance).await.unwrap();
    assert_eq!((snapshot.balance.micros(), snapshot.seq), (2_500_000, 1));
    drop(core);
    assert_verified(&directory);
}

on_both_stores!(a_write_failing_after_its_row_leaves_nothing_and_its_batch_commits);
/// A ledger write whose row went in and whose notice, or webhook events,
/// then failed (a full disk, no memory; the test switch fails that
/// statement), in one transaction with another account's write: nothing of
/// the failed write commits (no row, no snapshot moved, no notice, no
/// event), its caller is told it failed and was not applied, the write
/// beside it commits and is answered, and asked again with the same key the
/// failed write applies once, with its notice and its event.
async fn a_write_failing_after_its_row_leaves_nothing_and_its_batch_commits() {
    use sms_credit_actors::store::WritePart;
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let beside = new_account(&core, "+14155550230").await;
    for (index, part) in [WritePart::Notice, WritePart::Events, WritePart::Row]
        .into_iter()
        .enumerate()
    {
        let account = new_account(&core, &format!("+1415555024{index}")).await;
        core.registry
            .send(account, credit(5_000_000, "seed"))
            .await
            .unwrap();
        let count = |table: &str| {
            directory.number(&format!(
                "SELECT COUNT(*) FROM {table} WHERE account_id = {}",
                account.0
            ))
        };
        let (notices, events) = (count("notices"), count("webhook_events"));
        let key_of = format!("low-{index}");

        // Down to $1, under the $2 threshold: a warning and `balance.low`.
        core.store.fail_ledger_write_for_testing(&key_of, part);
        core.store.gather_next_batch_for_testing(2);
        let (failed, beside_credit) = futures_util::join!(
            core.registry.send(account, debit(4_000_000, &key_of)),
            core.registry
                .send(beside, credit(1_000, &format!("beside-{index}"))),
        );
        let Err(LedgerError::Store(StoreError::CommitFailed(reason))) = &failed else {
            panic!("{part:?}: the failed write is answered as failed: {failed:?}");
        };
        assert!(reason.contains("test switch"), "{part:?}: {reason}");
        let beside_credit = beside_credit.unwrap();
        assert_eq!(
            (beside_credit.entry.seq, beside_credit.replayed),
            (index as i64 + 1, false),
            "{part:?}: the write beside it commits"
        );
        assert_eq!(
            directory.number(&format!(
                "SELECT COUNT(*) FROM transactions WHERE idempotency_key = '{key_of}'"
            )),
            0,
            "{part:?}: no row"
        );
        assert_eq!(
            (count("notices"), count("webhook_events")),
            (notices, events),
            "{part:?}: no notice, no event"
        );
        let on_disk = core
            .store
            .ledger()
            .snapshot(account)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (on_disk.seq, on_disk.balance),
            (1, Money::from_micros(5_000_000)),
            "{part:?}: the snapshot did not move"
        );

        // Asked again with the same key: applied once, whole.
        let applied = core
            .registry
            .send(account, debit(4_000_000, &key_of))
            .await
            .unwrap();
        assert_eq!(
            (
                applied.entry.seq,
                applied.entry.balance_after,
                applied.replayed
            ),
            (2, Money::from_micros(1_000_000), false),
            "{part:?}"
        );
        assert_eq!(
            (count("notices"), count("webhook_events")),
            (notices + 1, events + 1),
            "{part:?}: its notice and its event"
        );
        let again = core
            .registry
            .send(account, debit(4_000_000, &key_of))
            .await
            .unwrap();
        assert_eq!((again.entry.seq, again.replayed), (2, true), "{part:?}");
        assert_eq!(
            core.registry
                .send(account, GetBalance)
                .await
                .unwrap()
                .balance,
            Money::from_micros(1_000_000)
        );
    }

    // A write with nothing but its row (no notice, no event) whose row
    // fails: the snapshot it moved is put back, and it is answered alike.
    let before = core.store.ledger().snapshot(beside).await.unwrap().unwrap();
    core.store
        .fail_ledger_write_for_testing("plain", WritePart::Row);
    let failed = core.registry.send(beside, credit(1_000, "plain")).await;
    assert!(
        matches!(
            &failed,
            Err(LedgerError::Store(StoreError::CommitFailed(_)))
        ),
        "{failed:?}"
    );
    assert_eq!(
        core.store.ledger().snapshot(beside).await.unwrap(),
        Some(before)
    );
    let applied = core
        .registry
        .send(beside, credit(1_000, "plain"))
        .await
        .unwrap();
    assert_eq!(
        (applied.entry.seq, applied.replayed),
        (before.seq + 1, false)
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_failed_read_of_what_a_changes_events_need_does_not_refuse_the_change);
/// Before an adjustment that takes credit away the actor reads the
/// account's own number (for `balance.depleted`), and before a first climb
/// past the threshold whether the account ever had it (for
/// `balance.replenished`). When that read fails, the change still goes
/// ahead: the money does not depend on its events.
async fn a_failed_read_of_what_a_changes_events_need_does_not_refuse_the_change() {
    use sms_credit_actors::Adjust;
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550208").await;
    core.registry
        .send(account, credit(5_000_000, "seed"))
        .await
        .unwrap();

    core.store.fail_next_reads_for_testing(1);
    let taken = core
        .registry
        .send(
            account,
            Adjust {
                amount: Money::from_micros(-1_000_000),
                idempotency_key: key("take"),
                reason: "correction".into(),
                description: None,
                category: None,
                priority: None,
                expires_at_ms: None,
            },
        )
        .await;
    assert!(taken.is_ok(), "{taken:?}");
    let fresh = new_account(&core, "+14155550209").await;
    core.store.fail_next_reads_for_testing(1);
    let climbed = core.registry.send(fresh, credit(3_000_000, "climb")).await;
    assert!(climbed.is_ok(), "{climbed:?}");

    // Each switch was spent by the read the change needed: the store reads
    // again now.
    let snapshots = (
        core.store
            .ledger()
            .snapshot(account)
            .await
            .unwrap()
            .unwrap(),
        core.store.ledger().snapshot(fresh).await.unwrap().unwrap(),
    );
    assert_eq!(
        (snapshots.0.balance, snapshots.1.balance),
        (Money::from_micros(4_000_000), Money::from_micros(3_000_000))
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(an_actor_whose_snapshot_could_not_be_read_reads_it_again_for_a_balance);
/// An actor whose snapshot read failed (the store was away for a moment)
/// reads it again when next asked for the balance, instead of answering
/// "could not be read" until a write comes.
async fn an_actor_whose_snapshot_could_not_be_read_reads_it_again_for_a_balance() {
    let directory = fresh_directory();
    let first = start_core(&directory, NEVER);
    let account = new_account(&first, "+14155550208").await;
    first
        .registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    // Another process: its actor for the account starts with a read that fails.
    let second = start_core(&directory, NEVER);
    second.store.fail_next_reads_for_testing(1);
    for ask in 0..3 {
        let balance = second.registry.send(account, GetBalance).await;
        assert_eq!(
            balance.map(|snapshot| snapshot.balance),
            Ok(Money::from_micros(10_000)),
            "ask {ask}"
        );
    }
    first.shutdown().await;
    second.shutdown().await;
}

on_both_stores!(a_write_whose_answer_was_lost_and_cannot_be_looked_up_stays_unknown);
/// A write commits and its answer is lost; looking it up by its key fails
/// too: the caller is told the outcome is unknown, never "not applied"
/// (a caller told "not applied" would make it again under another key).
/// Found, it is answered as applied, once.
async fn a_write_whose_answer_was_lost_and_cannot_be_looked_up_stays_unknown() {
    let directory = fresh_directory();
    let core = start_core(&directory, NEVER);
    let account = new_account(&core, "+14155550209").await;
    core.registry
        .send(account, credit(10_000, "seed"))
        .await
        .unwrap();
    core.store.lose_commit_answer_after_for_testing(0);
    core.store.fail_next_reads_for_testing(1);
    let lost = core.registry.send(account, credit(5_000, "lost")).await;
    assert!(
        matches!(lost, Err(LedgerError::Store(StoreError::CommitUnknown(_)))),
        "{lost:?}"
    );
    // The same key again: it was applied, once.
    let again = core
        .registry
        .send(account, credit(5_000, "lost"))
        .await
        .unwrap();
    assert!(again.replayed, "{again:?}");
    let balance = core.registry.send(account, GetBalance).await.unwrap();
    assert_eq!(balance.balance, Money::from_micros(15_000));
    core.shutdown().await;
    assert_verified(&directory);
}

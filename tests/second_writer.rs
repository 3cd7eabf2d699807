//! A second writer on the same database (a CLI command while the server
//! runs, another process, another instance): a write whose snapshot guard
//! finds the ledger moved on reloads and is computed again, invisibly to
//! its caller, and nothing is applied twice.

use std::time::Duration;

use awc::http::StatusCode;
use futures_util::future::join_all;
use sms_credit_actors::{Adjust, GetBalance, IdempotencyKey, Money};

use crate::feed::{next_json, open};
use crate::helpers::{fresh_directory, run_cli, start_core, TestApp};
use crate::ledger_actors::{assert_verified, new_account};

const NEVER: Duration = Duration::from_secs(3600);

on_both_stores!(a_cli_write_while_the_server_runs_does_not_fail_the_next_http_write);
async fn a_cli_write_while_the_server_runs_does_not_fail_the_next_http_write() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550950").await;
    // The server's actor for the account is live with seq 1.
    let (status, first) = app.post_adjustment(account, 5_000_000, "http-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");

    let cli = run_cli(
        &app.directory,
        &[
            "accounts",
            "adjust",
            &account.to_string(),
            "--amount",
            "2.00",
            "--reason",
            "goodwill",
            "--idempotency-key",
            "cli-1",
        ],
    );
    assert!(cli.status.success(), "{cli:?}");

    // The actor's snapshot is stale; its write is refused by the guard,
    // reloaded and computed again: the caller sees a plain success.
    let (status, second) = app.post_adjustment(account, 1_000_000, "http-2").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["transaction"]["seq"], 3);
    assert_eq!(second["transaction"]["balance_after_micros"], 8_000_000);
    assert_eq!(second["replayed"], false);
    // The CLI's key, sent again through the server, is found, not applied again.
    let (status, replayed) = app.post_adjustment(account, 2_000_000, "cli-1").await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["replayed"], true);
    assert_eq!(replayed["transaction"]["seq"], 2);
    assert_eq!(app.balance_micros(account).await, 8_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(two_processes_writing_the_same_accounts_at_once_both_succeed_exactly);
async fn two_processes_writing_the_same_accounts_at_once_both_succeed_exactly() {
    let directory = fresh_directory();
    // Two cores on one database file: two writers, as two processes would be.
    let first = start_core(&directory, NEVER);
    let second = start_core(&directory, NEVER);
    let mut accounts = Vec::new();
    for index in 0..4 {
        accounts.push(new_account(&first, &format!("+1415555096{index}")).await);
    }
    // Both processes' actors are live before the burst, each with its own
    // snapshot: a cold actor of one process could otherwise load only after
    // the other had written everything, and the two would never meet (seen
    // on a loaded CI machine). A write through the first process then
    // leaves the second's snapshots behind, so its first write meets the
    // guard whatever the timing of the burst.
    for account in &accounts {
        first.registry.send(*account, GetBalance).await.unwrap();
        second.registry.send(*account, GetBalance).await.unwrap();
    }
    for account in &accounts {
        let adjust = Adjust {
            amount: Money::from_micros(1),
            idempotency_key: IdempotencyKey::parse("warm").unwrap(),
            reason: "ahead of the second process".into(),
            description: None,
            category: None,
            priority: None,
            expires_at_ms: None,
        };
        first.registry.send(*account, adjust).await.unwrap();
    }
    let mut requests = Vec::new();
    for round in 0..50 {
        for (index, account) in accounts.iter().enumerate() {
            for (core_name, core) in [("a", &first), ("b", &second)] {
                let adjust = Adjust {
                    amount: Money::from_micros(1_000 + index as i64),
                    idempotency_key: IdempotencyKey::parse(&format!("{core_name}-{round}"))
                        .unwrap(),
                    reason: "contended".into(),
                    description: None,
                    category: None,
                    priority: None,
                    expires_at_ms: None,
                };
                requests.push(core.registry.send(*account, adjust));
            }
        }
    }
    let answers = join_all(requests).await;
    let conflicts = |core: &sms_credit::startup::Core| {
        core.store
            .stats()
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let failures: Vec<_> = answers.iter().filter(|answer| answer.is_err()).collect();
    assert!(failures.is_empty(), "every write succeeds: {failures:?}");
    assert!(
        conflicts(&first) + conflicts(&second) > 0,
        "the two writers met on the same accounts"
    );
    for (index, account) in accounts.iter().enumerate() {
        let account = first.store.accounts().get(*account).await.unwrap().unwrap();
        assert_eq!(
            account.seq, 101,
            "the warm-up, then 50 rounds × 2 processes, each once"
        );
        assert_eq!(account.balance.micros(), 1 + 100 * (1_000 + index as i64));
    }
    // The same keys again, through either process: replayed, never applied twice.
    let again = Adjust {
        amount: Money::from_micros(1_000),
        idempotency_key: IdempotencyKey::parse("a-7").unwrap(),
        reason: "contended".into(),
        description: None,
        category: None,
        priority: None,
        expires_at_ms: None,
    };
    let receipt = second.registry.send(accounts[0], again).await.unwrap();
    assert!(receipt.replayed);
    first.shutdown().await;
    second.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_cli_write_reaches_the_servers_balance_feed);
async fn a_cli_write_reaches_the_servers_balance_feed() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550970").await;
    let token = app.issue_token(account).await;
    assert_eq!(
        app.post_adjustment(account, 1_000_000, "http-1").await.0,
        StatusCode::OK
    );
    let mut feed = open(
        &app,
        &format!("/v1/accounts/{account}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut feed).await["seq"], 1, "the snapshot");

    let cli = run_cli(
        &app.directory,
        &[
            "accounts",
            "adjust",
            &account.to_string(),
            "--amount",
            "0.25",
            "--reason",
            "goodwill",
            "--idempotency-key",
            "cli-1",
        ],
    );
    assert!(cli.status.success(), "{cli:?}");
    // The page's feed shows the CLI's change, written by another process.
    let change = next_json(&mut feed).await;
    assert_eq!(change["seq"], 2);
    assert_eq!(change["amount_micros"], 250_000);
    assert_eq!(change["balance_after_micros"], 1_250_000);
    // The holder's feed: the neutral description, not the operator's reason.
    assert_eq!(change["description"], "Balance adjustment");
}

on_both_stores!(a_live_actor_learns_of_another_processs_write_without_writing);
async fn a_live_actor_learns_of_another_processs_write_without_writing() {
    let directory = fresh_directory();
    let first = start_core(&directory, NEVER);
    let second = start_core(&directory, NEVER);
    let account = new_account(&first, "+14155550971").await;
    // The second process's actor is live, at seq 0.
    let before = second.registry.send(account, GetBalance).await.unwrap();
    assert_eq!(before.seq, 0);
    let adjust = Adjust {
        amount: Money::from_micros(700_000),
        idempotency_key: IdempotencyKey::parse("first-1").unwrap(),
        reason: "from the first process".into(),
        description: None,
        category: None,
        priority: None,
        expires_at_ms: None,
    };
    first.registry.send(account, adjust).await.unwrap();
    // Within the watcher's poll (100 ms), the second process's actor has
    // reloaded: its balance (what BALANCE answers) is current.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = second.registry.send(account, GetBalance).await.unwrap();
        if seen.seq == 1 {
            assert_eq!(seen.balance, Money::from_micros(700_000));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still stale: {seen:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // Having caught up (from the note's snapshot), its own write is computed
    // on where the account stands: the guard refuses nothing.
    let adjust = Adjust {
        amount: Money::from_micros(-200_000),
        idempotency_key: IdempotencyKey::parse("second-1").unwrap(),
        reason: "from the second process".into(),
        description: None,
        category: None,
        priority: None,
        expires_at_ms: None,
    };
    let receipt = second.registry.send(account, adjust).await.unwrap();
    assert_eq!(receipt.entry.seq, 2);
    assert_eq!(receipt.entry.balance_after, Money::from_micros(500_000));
    assert_eq!(
        second
            .store
            .stats()
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    first.shutdown().await;
    second.shutdown().await;
}

/// SQLite only: Postgres makes a commit durable before anyone can see it.
/// With two processes on one file, the first's commit is in the file (its
/// write-ahead log) before its syncer's fsync makes it durable; a power
/// loss then would take it away. The second process does not answer from
/// it until it is durable: it fsyncs the log itself first. Here the first
/// process's fsync is held throughout, and the second's until the test lets
/// it go: asked for the same key meanwhile, the second answers "replayed"
/// only then, while the first's caller still waits for its own fsync.
#[actix_rt::test]
async fn sqlite_another_processs_commit_is_answered_from_only_once_durable() {
    use crate::ledger_actors::{credit, debit, key};
    crate::database::use_store(crate::database::StoreKind::Sqlite);
    let directory = fresh_directory();
    let first = start_core(&directory, NEVER);
    let second = start_core(&directory, NEVER);
    let account = new_account(&first, "+14155550980").await;
    first
        .registry
        .send(account, credit(5_000_000, "seed"))
        .await
        .unwrap();

    first.store.hold_syncs_for_testing(true);
    second.store.hold_syncs_for_testing(true);
    let debited = actix_rt::spawn({
        let registry = first.registry.clone();
        async move { registry.send(account, debit(4_000_000, "held")).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while directory.number(&format!(
        "SELECT COUNT(*) FROM transactions WHERE account_id = {} AND idempotency_key = 'held'",
        account.0
    )) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first process never committed its debit"
        );
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }

    // The same request through the second process: its actor loads the
    // account (the first's debit left $1), finds the credit short, and
    // looks the key up. And the key looked up directly.
    let asked = actix_rt::spawn({
        let registry = second.registry.clone();
        async move { registry.send(account, debit(4_000_000, "held")).await }
    });
    let looked_up = actix_rt::spawn({
        let store = second.store.clone();
        async move { store.ledger().entry_by_key(account, key("held")).await }
    });
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !asked.is_finished(),
        "answered from another process's commit before it was durable"
    );
    assert!(
        !looked_up.is_finished(),
        "read another process's commit before it was durable"
    );

    second.store.hold_syncs_for_testing(false);
    let receipt = within("the second process's replay", asked).await.unwrap();
    assert_eq!((receipt.entry.seq, receipt.replayed), (2, true));
    let row = within("the second process's look-up", looked_up)
        .await
        .unwrap()
        .expect("the row");
    assert_eq!(row.seq, 2);
    assert!(
        !debited.is_finished(),
        "the first process's caller waits for its own fsync"
    );

    first.store.hold_syncs_for_testing(false);
    let receipt = within("the first process's debit", debited).await.unwrap();
    assert_eq!((receipt.entry.seq, receipt.replayed), (2, false));
    first.shutdown().await;
    second.shutdown().await;
    assert_verified(&directory);
}

/// The answer of a spawned task, within 10 s, or a failure saying what
/// did not answer.
async fn within<T>(what: &str, task: actix_rt::task::JoinHandle<T>) -> T {
    match actix_rt::time::timeout(Duration::from_secs(10), task).await {
        Ok(answer) => answer.unwrap(),
        Err(_) => panic!("{what}: no answer within 10 s"),
    }
}

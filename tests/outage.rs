//! The database vanishing under a running server (Postgres behind a proxy
//! the test cuts): requests fail with 503 and change nothing, `/readyz`
//! says 503, and once the database is back the server reconnects by
//! itself; nothing acknowledged is lost and a retried key applies once.
//! And an instance whose listening connection was lost reads, once it
//! listens again, what the other instances said meanwhile.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use sms_credit_actors::adapters::DatabaseLocation;

use crate::database::{StoreKind, TestDatabase};
use crate::feed::{close_of, next_json, open};
use crate::helpers::{start_core, test_settings, TestApp};
use crate::ledger_actors::assert_verified;
use crate::proxy::CuttableProxy;
use sms_credit_actors::{AccountId, GetBalance};

#[actix_rt::test]
async fn a_lost_database_answers_503_and_the_server_reconnects_by_itself() {
    let directory = TestDatabase::of(StoreKind::Postgres);
    let mut proxy = CuttableProxy::start(directory.postgres_address());
    let mut settings = test_settings(&directory);
    settings.database.location =
        DatabaseLocation::parse(&directory.url_through(proxy.port)).unwrap();
    let app = TestApp::spawn_with(directory, settings).await;
    let account = app.create_account("+14155550970").await;
    let (status, before) = app.post_adjustment(account, 5_000_000, "before").await;
    assert_eq!(status, StatusCode::OK, "{before}");

    proxy.cut();
    let (status, refused) = app.post_adjustment(account, 1_000_000, "during").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    let (status, ready) = app.get_readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    // Still refused, quickly, while the database stays away.
    let started = Instant::now();
    let (status, _) = app.post_adjustment(account, 1_000_000, "during").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(10));

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = app.get_readyz().await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after the database came back"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, retried) = app.post_adjustment(account, 1_000_000, "during").await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["replayed"], false);
    assert_eq!(retried["transaction"]["seq"], 2);
    let (status, replayed) = app.post_adjustment(account, 5_000_000, "before").await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["replayed"], true);
    assert_eq!(app.balance_micros(account).await, 6_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}

/// Waits (up to 5 s) until `read` answers `expected`, saying what it
/// waited for if it never does.
async fn eventually<F, Fut>(what: &str, expected: i64, mut read: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = read().await;
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {seen}, not {expected}, after 5 s"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn what_another_instance_said_while_the_listener_was_away_is_read_once_it_is_back() {
    let directory = TestDatabase::of(StoreKind::Postgres);
    let settings = test_settings(&directory);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    // A third instance, the registry in hand: whether its live actor knows
    // the balance (what BALANCE by SMS answers) is asked of the actor.
    let third = start_core(&directory, Duration::from_secs(3600));
    let moving = first.create_account("+14155550980").await;
    let revoked = first.create_account("+14155550981").await;
    let (status, answer) = first.post_adjustment(moving, 1_000_000, "before").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let moving_token = first.issue_token(moving).await;
    let revoked_token = first.issue_token(revoked).await;
    // The second instance has a feed open for each account, the third a
    // live actor for the moving account.
    let actor_balance = || async {
        third
            .registry
            .send(AccountId(moving), GetBalance)
            .await
            .unwrap()
            .balance
            .micros()
    };
    assert_eq!(actor_balance().await, 1_000_000);
    let mut moving_feed = open(
        &second,
        &format!("/v1/accounts/{moving}/feed"),
        &["sms-credit-feed", &moving_token],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut moving_feed).await["seq"], 1, "the snapshot");
    let mut revoked_feed = open(
        &second,
        &format!("/v1/accounts/{revoked}/feed"),
        &["sms-credit-feed", &revoked_token],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut revoked_feed).await["seq"], 0, "the snapshot");

    // Every instance's listening connection is ended, and none may be made
    // again for now: what is said meanwhile reaches no listener.
    assert_eq!(
        directory.number("SELECT 1"),
        1,
        "the test's own connection is made"
    );
    directory.allow_connections(false);
    let ended = directory.number(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    assert_eq!(ended, 3, "each instance's listening connection");
    for key in ["away-1", "away-2", "away-3"] {
        let (status, answer) = first.post_adjustment(moving, 250_000, key).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, answer) = first
        .request(
            "DELETE",
            &format!("/v1/admin/accounts/{revoked}/tokens"),
            Some(crate::helpers::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    directory.allow_connections(true);

    // Once they listen again, the second instance's feed gets the rows it
    // missed, in order, the feed of the token revoked meanwhile closes, and
    // the third instance's actor knows the balance.
    for (seq, balance) in [(2, 1_250_000), (3, 1_500_000), (4, 1_750_000)] {
        let row = next_json(&mut moving_feed).await;
        assert_eq!(row["seq"], seq, "{row}");
        assert_eq!(row["balance_after_micros"], balance, "{row}");
    }
    assert_eq!(
        close_of(&mut revoked_feed).await,
        (1008, "the token was revoked: sign in again".to_string())
    );
    eventually(
        "the third instance's actor's balance",
        1_750_000,
        actor_balance,
    )
    .await;
    // And what is said from now on arrives as before.
    let (status, answer) = first.post_adjustment(moving, 250_000, "back").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let row = next_json(&mut moving_feed).await;
    assert_eq!(row["seq"], 5, "{row}");
    first.stop().await;
    third.shutdown().await;
    let directory = second.stop().await;
    assert_verified(&directory);
}

#[actix_rt::test]
async fn rows_another_instance_wrote_that_could_not_be_read_reach_the_feed_all_the_same() {
    let directory = TestDatabase::of(StoreKind::Postgres);
    let settings = test_settings(&directory);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    let account = first.create_account("+14155550982").await;
    let token = first.issue_token(account).await;
    let mut feed = open(
        &second,
        &format!("/v1/accounts/{account}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut feed).await["seq"], 0, "the snapshot");
    // The second instance is told of the first's row, and cannot read it.
    second
        .store
        .as_ref()
        .unwrap()
        .fail_next_external_reads_for_testing(1);
    let (status, answer) = first.post_adjustment(account, 250_000, "unread").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The feed reads it from the ledger itself: on a quiet account no
    // later row would bring it.
    let row = next_json(&mut feed).await;
    assert_eq!(row["seq"], 1, "{row}");
    assert_eq!(row["balance_after_micros"], 250_000, "{row}");
    first.stop().await;
    second.stop().await;
}

#[actix_rt::test]
async fn a_database_that_accepts_and_never_answers_is_given_up_on_not_waited_for() {
    // A peer that takes the connection and says nothing, as a proxy in a
    // failover may: opening the store fails, in bounded time, saying why.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for stream in listener.incoming().take(8) {
            accepted.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
        drop(accepted);
    });
    let location = DatabaseLocation::parse(&format!(
        "postgres://postgres:postgres@127.0.0.1:{port}/silent"
    ))
    .unwrap();
    let started = Instant::now();
    let opened = actix_rt::time::timeout(
        Duration::from_secs(30),
        actix_rt::task::spawn_blocking(move || {
            sms_credit_actors::adapters::open(&sms_credit_actors::StoreSettings::new(location))
                .map(drop)
        }),
    )
    .await
    .expect("opening a silent database gives up within 30 s")
    .unwrap();
    let error = opened.expect_err("a database that never answers is not opened");
    assert!(error.to_string().contains("no answer within"), "{error}");
    println!("gave up after {:?}: {error}", started.elapsed());
    drop(held);
}

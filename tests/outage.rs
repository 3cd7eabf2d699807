//! The database vanishing under a running server (Postgres behind a proxy
//! the test cuts): requests fail with 503 and change nothing, `/readyz`
//! says 503, and once the database is back the server reconnects by
//! itself; nothing acknowledged is lost and a retried key applies once.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use sms_credit_actors::adapters::DatabaseLocation;

use crate::database::{StoreKind, TestDatabase};
use crate::helpers::{test_settings, TestApp};
use crate::ledger_actors::assert_verified;
use crate::proxy::CuttableProxy;

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

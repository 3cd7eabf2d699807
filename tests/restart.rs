//! Acknowledged means durable: operations answered before the server went
//! away are all there after it comes back, and `verify` is clean.

use awc::http::StatusCode;
use futures_util::future::join_all;

use crate::helpers::{test_settings, TestApp};
use crate::ledger_actors::assert_verified;

on_both_stores!(acknowledged_operations_survive_a_restart);
async fn acknowledged_operations_survive_a_restart() {
    let app = TestApp::spawn().await;
    let mut accounts = Vec::new();
    for index in 0..5 {
        accounts.push(
            app.create_account(&format!("+1415555{:04}", 4000 + index))
                .await,
        );
    }
    let requests = accounts.iter().flat_map(|account| {
        let app = &app;
        (0..20).map(move |index| async move {
            let (status, body) = app
                .post_adjustment(*account, 1_000 + index, &format!("adj-{account}-{index}"))
                .await;
            (status, body)
        })
    });
    let answers = join_all(requests).await;
    let acknowledged: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .collect();
    assert_eq!(acknowledged.len(), 100);

    let directory = app.stop().await;
    assert_verified(&directory);

    let settings = test_settings(&directory);
    let app = TestApp::spawn_with(directory, settings).await;
    let expected_total: i64 = (0..20).map(|index| 1_000 + index).sum();
    for account in &accounts {
        let (_, body) = app.get_admin_account(*account).await;
        assert_eq!(body["balance_micros"], expected_total);
        assert_eq!(body["seq"], 20);
        let (_, listed) = app.get_transactions(*account).await;
        assert_eq!(listed["transactions"].as_array().map(Vec::len), Some(20));
    }
    // Every acknowledged key is known after the restart: a retry changes nothing.
    for (_, body) in acknowledged {
        let transaction = &body["transaction"];
        let account = transaction["account_id"].as_i64().unwrap();
        let key = transaction["idempotency_key"].as_str().unwrap();
        let (status, again) = app
            .post_adjustment(account, transaction["amount_micros"].as_i64().unwrap(), key)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["replayed"], true);
        assert_eq!(&again["transaction"], transaction);
    }
    let directory = app.stop().await;
    assert_verified(&directory);
}

//! `payment.refunded` once per refund, for good: a refund whose row took
//! no credit (a dispute held it back already) is told by an event of its
//! own, and marked told with it, so a later settling of its order — any
//! event about it, the legacy sweep — never tells it again, however long
//! after the webhook retention pruned that event; refunds recorded before
//! the mark existed are marked by the migration from what shows they were
//! told. On both stores.

use awc::http::StatusCode;
use serde_json::json;

use crate::disputes::{deliver, net_of};
use crate::fake_stripe::{EventFactory, FakeStripe, Listed};
use crate::helpers::{fresh_directory, stripe_settings, TestApp, NOW_UNIX};
use crate::ledger_actors::assert_verified;
use crate::refunds::paid_top_up;
use crate::refunds_by_id::{eventually, told_refunds};
use crate::webhook_receiver::Receiver;
use crate::webhooks::add_endpoint;
use sms_credit_actors::billing::legacy_refunds::LEGACY_SWEEP_EVERY_MS;
use sms_credit_actors::clock::ManualClock;

const DAY_MS: i64 = 86_400_000;

/// The `payment.refunded` deliveries the host accepted, each event once.
async fn refunds_received(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .filter(|received| received.kind() == "payment.refunded" && received.answered < 300)
        .map(|received| received.id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The whole $10 of a top-up disputed (its credit taken back), then $3
/// refunded: its row takes nothing, and the host is told of it by an event
/// of its own. 31 days on the webhook upkeep has pruned that event (the
/// retention is 30 days); then the refund's next event, and a charge
/// event listing it, settle the order again: nothing is told again — one
/// `payment.refunded` delivery in all.
async fn a_refund_told_on_its_own_is_not_told_again_once_its_event_is_pruned() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let mut settings = stripe_settings(&directory, &fake.base_url);
    settings.webhooks.allow_private = true;
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let receiver = Receiver::start().await;
    let (_, secret) = add_endpoint(&app, &receiver.url, json!(["payment.refunded"])).await;
    receiver.trust(&secret);
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550720").await;
    let charge = format!("ch_{order}");

    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_told",
        &charge,
        &intent,
        1000,
        "needs_response",
    );
    deliver(&app, &disputed).await;
    assert_eq!(net_of(&app, account, order).await, -10_000_000);
    let refund = fake.refund_in_dashboard(&intent, &charge, 300);
    let refund_id = refund["id"].as_str().unwrap().to_string();
    let answer = deliver(&app, &events.refund_event("refund.created", refund.clone())).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    assert_eq!(net_of(&app, account, order).await, -10_000_000);
    let told = told_refunds(&directory);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["data"]["refund_id"], refund_id.as_str());
    assert_eq!(told[0]["data"]["credit_taken_back_micros"], 0);
    receiver.accepted("payment.refunded", 1).await;
    // Its try recorded before the clock moves (else it ended 31 days on).
    eventually("the delivery is recorded made", || async {
        directory.number("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'delivered'") == 1
    })
    .await;

    clock.advance_ms(31 * DAY_MS);
    eventually(
        "the webhook upkeep pruned the refund's event, 31 days old",
        || async { told_refunds(&directory).is_empty() },
    )
    .await;

    for payload in [
        events.refund_event("refund.updated", refund),
        fake.charge_refunded(&mut events, &charge, &intent, 1000, Listed::All),
    ] {
        // Signed at the clock's time, 31 days on.
        let (status, answer) = app.deliver_at(&payload, NOW_UNIX + 31 * 86_400).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["result"]["outcome"], "applied", "{answer}");
    }
    assert_eq!(net_of(&app, account, order).await, -10_000_000);
    assert!(
        told_refunds(&directory).is_empty(),
        "the refund is told again: {:?}",
        told_refunds(&directory)
    );
    // Nothing more reaches the host (its worker is woken by any new event;
    // a second after the last settling, none came).
    actix_rt::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(refunds_received(&receiver).await.len(), 1);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_told_on_its_own_is_not_told_again_once_its_event_is_pruned);

/// A release before the told mark (SQLite V35, Postgres V26), whose
/// V34/V25 migration left an order's replaced legacy record to be swept
/// again. The order, access that credited $5, has four refunds of Stripe's
/// recorded: $5 taken back by its row (told by it), and three whose rows
/// took nothing — $3 told on its own long ago (its event pruned since),
/// $2 told on its own (its event still kept), and $1 recorded a minute
/// before the upgrade by an event that stopped before telling it (Stripe
/// retries it). After the upgrade the sweep settles the order: only the $1
/// is told, once.
async fn refunds_told_before_the_mark_existed_are_not_told_again_by_the_sweep() {
    let fake = FakeStripe::start().await;
    let intent = "pi_told_before";
    let charge = "ch_told_before";
    let ids: Vec<String> = [500, 300, 200, 100]
        .into_iter()
        .map(|cents| {
            fake.refund_in_dashboard(intent, charge, cents)["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let directory = fresh_directory();
    let (sqlite_last, postgres_last) = (35, 26);
    sms_credit_actors::adapters::migrate_until_for_testing(
        &directory.location(),
        sqlite_last,
        postgres_last,
    )
    .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let a_minute_ago = now_ms - 60_000;
    let long_ago = now_ms - 40 * DAY_MS;
    let kept_event = json!({
        "id": "evt_kept", "type": "payment.refunded",
        "data": {"order_id": 1, "refund_id": ids[2], "refunded_micros": 2_000_000,
                 "credit_taken_back_micros": 0}
    });
    directory.execute(&format!(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550721', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                             amount_refunded, status, created_at, completed_at)
              VALUES (1, 1, 'initial_access', 29990000, 29990000, '{intent}', 11000000, 'completed', 0, 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                   order_id, description, created_at)
              VALUES (1, 1, 'credit', 5000000, 5000000, 'stripe-order:1', 1, 'access', 0),
                     (1, 2, 'refund', -5000000, 0, 'stripe-refund:{r5}', 1, 'refund', {long_ago});
         INSERT INTO account_balances (account_id, balance, seq, updated_at, grants)
              VALUES (1, 0, 2, 0, NULL);
         INSERT INTO stripe_refunds (refund_id, order_id, amount, standing, stripe_status,
                                     recorded_by, recorded_at, updated_at, settled_at)
              VALUES ('legacy-order-1', 1, 5000000, 'replaced', 'legacy', 'event', 0, {long_ago}, NULL),
                     ('{r5}', 1, 5000000, 'counted', 'succeeded', 'event', {long_ago}, {long_ago}, NULL),
                     ('{r3}', 1, 3000000, 'counted', 'succeeded', 'event', {long_ago}, {long_ago}, NULL),
                     ('{r2}', 1, 2000000, 'counted', 'succeeded', 'event', {long_ago}, {long_ago}, NULL),
                     ('{r1}', 1, 1000000, 'counted', 'succeeded', 'event', {a_minute_ago}, {a_minute_ago}, NULL);
         INSERT INTO webhook_events (id, type, account_id, dedupe_key, payload, created_at)
              VALUES ('evt_kept', 'payment.refunded', 1, 'payment.refunded:{r2}', '{kept_event}', {now_ms});",
        r5 = ids[0],
        r3 = ids[1],
        r2 = ids[2],
        r1 = ids[3],
    ));
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 0);

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep settled the order", || async {
        directory.number(
            "SELECT COUNT(*) FROM stripe_refunds WHERE refund_id = 'legacy-order-1'
                AND settled_at IS NOT NULL",
        ) == 1
    })
    .await;
    let mut told: Vec<(String, i64)> = told_refunds(&directory)
        .iter()
        .map(|event| {
            (
                event["data"]["refund_id"].as_str().unwrap().to_string(),
                event["data"]["credit_taken_back_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    told.sort();
    let mut expected = vec![(ids[2].clone(), 0), (ids[3].clone(), 0)];
    expected.sort();
    assert_eq!(told, expected, "the kept event, and the $1 told once");
    assert_eq!(app.balance_micros(1).await, 0);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(refunds_told_before_the_mark_existed_are_not_told_again_by_the_sweep);

/// A rolling upgrade: an earlier release's server, still running after the
/// migration that added the mark, replaces an order's legacy record; its
/// insert names no `told`, so the refund it found within what the record
/// held back is stored unmarked. That refund was told by the charge's
/// running total; a later settling of the order (the sweep) never tells it
/// again.
async fn a_refund_an_earlier_release_recorded_after_the_upgrade_is_not_told_again() {
    let fake = FakeStripe::start().await;
    let intent = "pi_rolling";
    let charge = "ch_rolling";
    let old = fake.refund_in_dashboard(intent, charge, 200)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let directory = fresh_directory();
    // Migrated to the end: the earlier release's server writes into it.
    sms_credit_actors::adapters::migrate_until_for_testing(&directory.location(), 1_000, 1_000)
        .unwrap();
    let now_ms = NOW_UNIX * 1000;
    directory.execute(&format!(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550722', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                             amount_refunded, status, created_at, completed_at)
              VALUES (1, 1, 'initial_access', 29990000, 29990000, '{intent}', 2000000, 'completed', 0, 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                   order_id, description, created_at, funded_by)
              VALUES (1, 1, 'credit', 5000000, 5000000, 'stripe-order:1', 1, 'access', 0, NULL),
                     (1, 2, 'refund', -2000000, 3000000, 'stripe-refund:{charge}:200', 1, 'refund', 1,
                      '1:p:2000000');
         INSERT INTO credit_grants (account_id, id, category, source, order_id, amount, priority,
                                    granted_at, expires_at)
              VALUES (1, 1, 'paid', 'access', 1, 5000000, 50, 0, NULL);
         INSERT INTO account_balances (account_id, balance, seq, updated_at, grants)
              VALUES (1, 3000000, 2, 1, '1:3000000');
         INSERT INTO stripe_refunds (refund_id, order_id, amount, standing, stripe_status,
                                     recorded_by, recorded_at, updated_at)
              VALUES ('legacy-order-1', 1, 2000000, 'replaced', 'legacy', 'event', 0, {now_ms}),
                     ('{old}', 1, 2000000, 'counted', 'succeeded', 'legacy_replacement', {now_ms}, {now_ms});"
    ));
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(now_ms);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 3_000_000);
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep settled the order", || async {
        directory.number(
            "SELECT COUNT(*) FROM stripe_refunds WHERE refund_id = 'legacy-order-1'
                AND settled_at IS NOT NULL",
        ) == 1
    })
    .await;
    assert_eq!(
        told_refunds(&directory),
        Vec::<serde_json::Value>::new(),
        "told by the running total, never again"
    );
    assert_eq!(app.balance_micros(1).await, 3_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_an_earlier_release_recorded_after_the_upgrade_is_not_told_again);

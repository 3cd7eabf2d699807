//! Stripe events that never apply: a refund of a payment this product did
//! not make waits (indexed by what it waits for, so it slows nothing down),
//! is given up after Stripe's 3-day retry horizon with an outcome an admin
//! sees, and an event Stripe signed that cannot be read is recorded as
//! failed rather than skipped in silence.

use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit_actors::clock::ManualClock;

use crate::fake_stripe::{sign, EventFactory, FakeStripe, WEBHOOK_SECRET};
use crate::helpers::{fresh_directory, stripe_settings, TestApp, ADMIN_TOKEN, NOW_UNIX};
use crate::stripe::{active_account, start_access};

const THREE_DAYS_MS: i64 = 3 * 24 * 3600 * 1000;

/// Waits (up to 10 s) until no event waits: the sweep records an event
/// decided just after its ledger row, which a test may see first.
async fn none_left_waiting(app: &TestApp) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting = events_with_status(app, "waiting").await;
        if waiting.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events still waiting 10 s after their refund was applied: {waiting:?}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn events_with_status(app: &TestApp, status: &str) -> Vec<Value> {
    let (code, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/stripe-events?status={status}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    answer["events"].as_array().unwrap().clone()
}

on_both_stores!(a_foreign_refund_waits_without_blocking_then_expires_visibly);
async fn a_foreign_refund_waits_without_blocking_then_expires_visibly() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let mut events = EventFactory::new();

    // A refund of a charge another product on the same Stripe account made.
    let foreign = events.charge_refunded("ch_foreign", "pi_foreign", 4000, 4000);
    let (status, answer) = app.deliver(&foreign).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "waiting", "{answer}");
    assert_eq!(answer["result"]["waiting_on"], "payment_intent:pi_foreign");

    // Our own payments still apply, with the foreign refund waiting beside them.
    let (account, _customer, _token) = active_account(&app, &mut events, "+14155551300").await;
    assert_eq!(app.balance_micros(account).await, 5_000_000);
    let waiting = events_with_status(&app, "waiting").await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["waiting_on"], "payment_intent:pi_foreign");
    assert_eq!(waiting[0]["event_type"], "charge.refunded");

    // Stripe stops retrying after 3 days, and so does the service.
    clock.advance_ms(THREE_DAYS_MS + 1);
    let later = NOW_UNIX + THREE_DAYS_MS / 1000 + 1;
    let (status, _) = app.deliver_at(&events.other(), later).await;
    assert_eq!(status, StatusCode::OK);
    assert!(events_with_status(&app, "waiting").await.is_empty());
    let expired = events_with_status(&app, "expired").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert!(expired[0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("gave up after 3 days"));
    // The same event again is a duplicate: nothing changes.
    let (status, answer) = app.deliver_at(&foreign, later).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["result"]["outcome"], "duplicate");
    assert_eq!(app.balance_micros(account).await, 5_000_000);

    // The CLI shows the same.
    let directory = app.stop().await;
    let listed = crate::helpers::run_cli(&directory, &["stripe-events", "--status", "expired"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        text.contains("charge.refunded") && text.contains("gave up"),
        "{text}"
    );
}

on_both_stores!(a_refund_before_its_payment_is_woken_by_the_payment_only);
async fn a_refund_before_its_payment_is_woken_by_the_payment_only() {
    let (app, _fake) = crate::stripe::app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let (account, order, session, customer) = start_access(&app, "+14155551301", None).await;
    for index in 0..20 {
        let foreign = events.charge_refunded(
            &format!("ch_other_{index}"),
            &format!("pi_other_{index}"),
            1000,
            1000,
        );
        assert_eq!(app.deliver(&foreign).await.0, StatusCode::OK);
    }
    let refund = events.charge_refunded("ch_access", "pi_access", 2999, 2999);
    let (_, answer) = app.deliver(&refund).await;
    assert_eq!(answer["result"]["outcome"], "waiting");
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_access");
    let (_, answer) = app.deliver(&completed).await;
    assert_eq!(answer["result"]["outcome"], "applied");
    // The included credit, then taken back by the refund that waited for it.
    assert_eq!(app.balance_micros(account).await, 0);
    assert_eq!(
        events_with_status(&app, "waiting").await.len(),
        20,
        "the unrelated refunds still wait"
    );
}

on_both_stores!(a_signed_event_that_cannot_be_read_is_recorded_as_failed);
async fn a_signed_event_that_cannot_be_read_is_recorded_as_failed() {
    let (app, _fake) = crate::stripe::app_with_fake_stripe().await;
    // Signed by Stripe, but its object is not a Checkout Session.
    let payload = json!({
        "id": "evt_unreadable",
        "object": "event",
        "type": "checkout.session.completed",
        "created": NOW_UNIX,
        "livemode": false,
        "pending_webhooks": 1,
        "api_version": "2025-09-30.clover",
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": 42}},
    })
    .to_string();
    let signature = sign(&payload, WEBHOOK_SECRET, NOW_UNIX);
    let (status, answer) = app.post_stripe_webhook(&payload, Some(signature)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "failed", "{answer}");
    let failed = events_with_status(&app, "failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["event_id"], "evt_unreadable");
    assert!(failed[0]["detail"]
        .as_str()
        .unwrap()
        .contains("could not read"));
    // A body that is not even JSON (but signed) cannot be recorded: 400.
    let signature = sign("not json", WEBHOOK_SECRET, NOW_UNIX);
    let (status, answer) = app.post_stripe_webhook("not json", Some(signature)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_event");
}

on_both_stores!(a_waiting_event_that_cannot_be_read_back_is_recorded_as_failed);
async fn a_waiting_event_that_cannot_be_read_back_is_recorded_as_failed() {
    let (app, _fake) = crate::stripe::app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let (account, order, session, customer) = start_access(&app, "+14155551302", None).await;
    let refund = events.charge_refunded("ch_1", "pi_garbled", 2999, 2999);
    assert_eq!(app.deliver(&refund).await.0, StatusCode::OK);
    app.directory.execute(
        "UPDATE stripe_events SET payload = '{\"kind\": \"from_the_future\"}' WHERE status = 'waiting'",
    );
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_garbled");
    let (_, answer) = app.deliver(&completed).await;
    assert_eq!(answer["result"]["outcome"], "applied");
    let failed = events_with_status(&app, "failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["detail"]
        .as_str()
        .unwrap()
        .contains("could not be read back"));
    assert_eq!(
        app.balance_micros(account).await,
        5_000_000,
        "nothing taken back"
    );
}

/// Waits (up to 10 s) until the account's balance is `expected`, saying
/// what it waited for if it never is.
async fn balance_becomes(app: &TestApp, account: i64, expected: i64, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = app.balance_micros(account).await;
        if seen == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the balance is still {seen}, not {expected}, after 10 s"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What the refund rows of the account took back in all (negative).
async fn taken_back(app: &TestApp, account: i64) -> i64 {
    let (status, ledger) = app.get_transactions(account).await;
    assert_eq!(status, StatusCode::OK, "{ledger}");
    ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["type"] == "refund")
        .map(|row| row["amount_micros"].as_i64().unwrap())
        .sum()
}

on_both_stores!(a_refund_its_completion_could_not_wake_is_applied_by_the_sweep_once);
async fn a_refund_its_completion_could_not_wake_is_applied_by_the_sweep_once() {
    use sms_credit_actors::billing::events::WAKE_SWEEP_EVERY_MS;
    use sms_credit_actors::store::{ReceivedEvent, Reception};
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let mut events = EventFactory::new();
    let (account, order, session, customer) = start_access(&app, "+14155551303", None).await;

    // The refund comes before the payment's completion: it waits.
    let refund = events.charge_refunded("ch_held", "pi_held", 2999, 2999);
    let (status, answer) = app.deliver(&refund).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "waiting", "{answer}");
    // Another instance is waking it just then (and stops doing so): it
    // holds the refund's claim for 30 s of the clock.
    let store = app.store.clone().unwrap();
    let claimed = store
        .events()
        .receive(ReceivedEvent {
            event_id: answer["event_id"].as_str().unwrap().to_string(),
            event_type: "charge.refunded".to_string(),
            payload: None,
            instance_id: "another-instance".to_string(),
            lease_until_ms: NOW_UNIX * 1000 + 30_000,
            now_ms: NOW_UNIX * 1000,
        })
        .await
        .unwrap();
    assert_eq!(claimed, Reception::Claimed);

    // The completion is applied and answered 200, whatever its wake-up met;
    // Stripe's retry of it is a duplicate.
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_held");
    let (status, answer) = app.deliver(&completed).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "applied", "{answer}");
    let (status, answer) = app.deliver(&completed).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "duplicate", "{answer}");
    assert_eq!(app.balance_micros(account).await, 5_000_000);

    // Once the other instance's claim has lapsed, the sweep applies the
    // refund: the credit the access came with is taken back, once.
    clock.advance_ms(WAKE_SWEEP_EVERY_MS + 1_000);
    balance_becomes(
        &app,
        account,
        0,
        "the sweep applying the refund its completion could not wake",
    )
    .await;
    none_left_waiting(&app).await;
    let later = NOW_UNIX + (WAKE_SWEEP_EVERY_MS + 1_000) / 1000;
    let (_, answer) = app.deliver_at(&refund, later).await;
    assert_eq!(answer["result"]["outcome"], "duplicate", "{answer}");
    clock.advance_ms(WAKE_SWEEP_EVERY_MS);
    actix_rt::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(taken_back(&app, account).await, -5_000_000);
    assert_eq!(app.balance_micros(account).await, 0);
    let directory = app.stop().await;
    crate::ledger_actors::assert_verified(&directory);
}

on_both_stores!(a_refund_marked_waiting_as_its_order_completes_elsewhere_is_applied_once);
async fn a_refund_marked_waiting_as_its_order_completes_elsewhere_is_applied_once() {
    use sms_credit_actors::billing::events::WAKE_SWEEP_EVERY_MS;
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let first = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let second = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let mut events = EventFactory::new();
    let (account, order, session, customer) = start_access(&first, "+14155551304", None).await;

    // The refund reaches the first instance, which finds no completed
    // order and stops just before recording that the refund waits; at
    // that moment the completion reaches the second instance, which
    // completes the order and wakes what waits for it (nothing, yet).
    let hold = first
        .store
        .as_ref()
        .unwrap()
        .hold_next_waiting_mark_for_testing();
    let refund = events.charge_refunded("ch_race", "pi_race", 2999, 2999);
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_race");
    let completing = async {
        actix_rt::time::timeout(std::time::Duration::from_secs(10), hold.reached())
            .await
            .expect("the refund on the first instance never came to be marked waiting");
        let answered = second.deliver(&completed).await;
        hold.release();
        answered
    };
    let ((refund_status, refund_answer), (completion_status, completion_answer)) =
        futures_util::join!(first.deliver(&refund), completing);
    assert_eq!(refund_status, StatusCode::OK, "{refund_answer}");
    assert_eq!(
        refund_answer["result"]["outcome"], "waiting",
        "{refund_answer}"
    );
    assert_eq!(completion_status, StatusCode::OK, "{completion_answer}");
    assert_eq!(
        completion_answer["result"]["outcome"], "applied",
        "{completion_answer}"
    );

    // Within the sweep's time the refund is applied, once.
    clock.advance_ms(WAKE_SWEEP_EVERY_MS + 1_000);
    balance_becomes(
        &first,
        account,
        0,
        "the refund marked waiting as its order completed elsewhere",
    )
    .await;
    balance_becomes(&second, account, 0, "the second instance's view").await;
    none_left_waiting(&first).await;
    let later = NOW_UNIX + (WAKE_SWEEP_EVERY_MS + 1_000) / 1000;
    for app in [&first, &second] {
        let (_, answer) = app.deliver_at(&refund, later).await;
        assert_eq!(answer["result"]["outcome"], "duplicate", "{answer}");
    }
    clock.advance_ms(WAKE_SWEEP_EVERY_MS);
    actix_rt::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(taken_back(&first, account).await, -5_000_000);
    assert_eq!(first.balance_micros(account).await, 0);
    first.stop().await;
    let directory = second.stop().await;
    crate::ledger_actors::assert_verified(&directory);
}

on_both_stores!(the_sweep_goes_on_from_where_its_last_batch_ended);
/// Waiting events whose order exists but that still wait (the order has
/// not what they need yet) are found by every sweep: read from the oldest
/// each time, a full batch of them would keep every event behind them
/// waiting until they expire. Each batch goes on after the last one's end,
/// and the sweep starts again from the oldest once it has been round.
async fn the_sweep_goes_on_from_where_its_last_batch_ended() {
    use sms_credit_actors::billing::event_log::EventStatus;
    use sms_credit_actors::store::{EventDecision, ReceivedEvent, Reception};
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (_, order, session, customer) = start_access(&app, "+14155551305", None).await;
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_swept");
    let (status, answer) = app.deliver(&completed).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Three events wait on the completed order's PaymentIntent, received
    // a second apart.
    let store = app.store.clone().unwrap();
    let ids = ["evt_sweep_a", "evt_sweep_b", "evt_sweep_c"];
    for (n, id) in ids.iter().enumerate() {
        let at = NOW_UNIX * 1000 + n as i64 * 1_000;
        let received = store
            .events()
            .receive(ReceivedEvent {
                event_id: id.to_string(),
                event_type: "charge.refunded".to_string(),
                payload: None,
                instance_id: "test".to_string(),
                lease_until_ms: at + 30_000,
                now_ms: at,
            })
            .await
            .unwrap();
        assert_eq!(received, Reception::Claimed);
        store
            .events()
            .decide(EventDecision {
                event_id: id.to_string(),
                status: EventStatus::Waiting,
                waiting_on: Some("payment_intent:pi_swept".to_string()),
                detail: "waiting".to_string(),
                now_ms: at,
            })
            .await
            .unwrap();
    }
    let batch = |after: Option<(i64, String)>| {
        let store = store.clone();
        async move {
            store
                .events()
                .waiting_unblocked("payment_intent:".to_string(), after, 2)
                .await
                .unwrap()
                .into_iter()
                .map(|record| (record.received_at_ms, record.event_id))
                .collect::<Vec<_>>()
        }
    };
    let first = batch(None).await;
    assert_eq!(
        first.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(),
        ["evt_sweep_a", "evt_sweep_b"]
    );
    let second = batch(first.last().cloned()).await;
    assert_eq!(
        second.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(),
        ["evt_sweep_c"],
        "the next batch goes on after the last one's end"
    );
    assert!(batch(second.last().cloned()).await.is_empty());
    app.stop().await;
}

//! Refunding an order through Stripe from the admin API and the CLI: once
//! per idempotency key (Stripe's key made from the order and the refund's
//! number), never more than was paid, nothing recorded as refunded when
//! Stripe refuses or cannot be reached, and the credit taken back only
//! when Stripe's refund event arrives: once, whichever instance gets which
//! of a charge's refund events, whatever failed on the way, and no more
//! than the order credited when it was sold. On both stores.

use std::sync::Arc;

use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit::startup::Core;
use sms_credit_actors::billing::events::EventOutcome;
use sms_credit_actors::billing::orders::{NewOrder, OrderType};
use sms_credit_actors::billing::BillingError;
use sms_credit_actors::clock::ManualClock;
use sms_credit_actors::supervisor::HandleStripeEvent;
use sms_credit_actors::{Money, TransactionKind};

use crate::fake_stripe::{sign, EventFactory, FakeStripe, Listed, WEBHOOK_SECRET};
use crate::helpers::{fresh_directory, stripe_settings, TestApp, ADMIN_TOKEN, NOW_UNIX};
use crate::ledger_actors::{assert_verified, new_account};

async fn refund(app: &TestApp, order: i64, body: Value) -> (StatusCode, Value) {
    app.request(
        "POST",
        &format!("/v1/admin/orders/{order}/refund"),
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await
}

async fn refunds_of(app: &TestApp, order: i64) -> Vec<Value> {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}/refunds"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["refunds"].as_array().unwrap().clone()
}

/// A completed $10 top-up of an active account: (account, order).
pub(crate) async fn paid_top_up(
    app: &TestApp,
    events: &mut EventFactory,
    phone: &str,
) -> (i64, i64, String) {
    let (account, customer, token) = crate::stripe::active_account(app, events, phone).await;
    let (order, session) = app.start_top_up(account, &token).await;
    let intent = format!("pi_top_up_{order}");
    let completed = events.checkout_completed(&session, order, &customer, 1000, &intent);
    assert_eq!(app.deliver(&completed).await.0, StatusCode::OK);
    (account, order, intent)
}

async fn an_order_is_refunded_once_and_its_credit_comes_off_with_stripes_event() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550140").await;
    assert_eq!(app.balance_micros(account).await, 15_000_000);

    // Only the admin, and only good input; nothing is asked of Stripe.
    let (status, _) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            None,
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (body, status, code) in [
        (
            json!({"reason": "  "}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"reason": "x", "amount_micros": 10_001}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"reason": "x", "amount_micros": -10_000}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"reason": "x", "amount_micros": 10_010_000}),
            StatusCode::CONFLICT,
            "not_refundable",
        ),
        (
            json!({"amount_micros": 10_000}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ] {
        let (answered, answer) = refund(&app, order, body.clone()).await;
        assert_eq!(
            (answered, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = refund(&app, 999_999, json!({"reason": "x"})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("order_not_found"))
    );
    assert_eq!(fake.refunds_made(), 0);
    assert!(refunds_of(&app, order).await.is_empty());

    // $3 back: asked once however often the same request comes.
    let body = json!({"amount_micros": 3_000_000, "reason": "storm cancelled the trip", "idempotency_key": "console-1"});
    let (status, first) = refund(&app, order, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["replayed"], false);
    assert_eq!(first["refund"]["status"], "succeeded");
    assert_eq!(first["refund"]["n"], 1);
    for _ in 0..2 {
        let (status, again) = refund(&app, order, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["replayed"], true);
        assert_eq!(again["refund"]["id"], first["refund"]["id"]);
    }
    assert_eq!(fake.refunds_made(), 1);
    let asked = fake.requests("/v1/refunds");
    assert_eq!(
        asked[0].idempotency_key.as_deref(),
        Some(format!("sms-credit-refund-{order}-1").as_str())
    );
    // Nothing comes off before Stripe says the refund was made.
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    let refunded = fake.charge_refunded(&mut events, "ch_top_up", &intent, 1000, Listed::All);
    for _ in 0..2 {
        assert_eq!(app.deliver(&refunded).await.0, StatusCode::OK);
    }
    assert_eq!(app.balance_micros(account).await, 12_000_000);

    // The rest, without an amount; then nothing is left.
    let (status, rest) = refund(&app, order, json!({"reason": "the rest"})).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(
        (
            rest["refund"]["n"].as_i64(),
            rest["refund"]["amount_micros"].as_i64()
        ),
        (Some(2), Some(7_000_000))
    );
    let (status, answer) = refund(
        &app,
        order,
        json!({"reason": "once more", "amount_micros": 10_000}),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_refundable")),
        "{answer}"
    );
    let refunded_all = fake.charge_refunded(&mut events, "ch_top_up", &intent, 1000, Listed::All);
    assert_eq!(app.deliver(&refunded_all).await.0, StatusCode::OK);
    assert_eq!(app.balance_micros(account).await, 5_000_000);
    assert_eq!(fake.refunds_made(), 2);

    // A pending order has nothing to refund.
    let token = app.issue_token(account).await;
    let (_, pending) = app
        .request("POST", "/v1/checkout/topup", Some(&token), None)
        .await;
    let pending = pending["order_id"].as_i64().unwrap();
    let (status, answer) = refund(&app, pending, json!({"reason": "x"})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_refundable"))
    );

    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(an_order_is_refunded_once_and_its_credit_comes_off_with_stripes_event);

async fn stripe_refusing_or_unreachable_refunds_nothing() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, order, _) = paid_top_up(&app, &mut events, "+14155550141").await;

    // Refused: recorded as failed, nothing refunded, the same request
    // answers the same.
    fake.set_refuse_refunds(true);
    let body =
        json!({"amount_micros": 2_000_000, "reason": "goodwill", "idempotency_key": "k-refused"});
    let (status, answer) = refund(&app, order, body.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("refund_refused")),
        "{answer}"
    );
    assert!(
        !answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disputed"),
        "Stripe's words stay in the log: {answer}"
    );
    fake.set_refuse_refunds(false);
    let (status, _) = refund(&app, order, body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let recorded = refunds_of(&app, order).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["status"], "failed");

    // Unreachable: nothing refunded; the same request asks again (with the
    // same Stripe key) and refunds once.
    fake.set_unreachable(true);
    let body = json!({"amount_micros": 2_000_000, "reason": "goodwill", "idempotency_key": "k-2"});
    let (status, answer) = refund(&app, order, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(refunds_of(&app, order).await[1]["status"], "requested");
    fake.set_unreachable(false);
    let (status, answer) = refund(&app, order, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["refund"]["n"], 2);
    assert_eq!(answer["refund"]["status"], "succeeded");
    assert_eq!(fake.refunds_made(), 1);
    let keys: Vec<Option<String>> = fake
        .requests("/v1/refunds")
        .into_iter()
        .map(|request| request.idempotency_key)
        .collect();
    let second = format!("sms-credit-refund-{order}-2");
    assert_eq!(
        keys.iter()
            .filter(|key| key.as_deref() == Some(second.as_str()))
            .count(),
        2,
        "{keys:?}"
    );
    assert_eq!(
        app.balance_micros(account).await,
        15_000_000,
        "no event, no change"
    );
    let orders = app.get_orders(account).await;
    let row = orders.iter().find(|row| row["id"] == order).unwrap();
    assert_eq!(row["amount_refunded_micros"], 0);

    // The CLI, as an operator would: the same rules, the same record.
    let database = app.directory.url().to_string();
    let base = fake.base_url.clone();
    let output = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args([
                "orders",
                "refund",
                &order.to_string(),
                "--amount",
                "1.50",
                "--reason",
                "cli",
                "--json",
            ])
            .env("SMS_CREDIT_DATABASE", database)
            .env("SMS_CREDIT_STRIPE_SECRET_KEY", "sk_test_fake")
            .env(
                "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
                crate::fake_stripe::WEBHOOK_SECRET,
            )
            .env("SMS_CREDIT_STRIPE_API_BASE", base)
            .env("SMS_CREDIT_PUBLIC_URL", "https://sms.example.com")
            .env_remove("SMS_CREDIT_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            answer["refund"]["n"].as_i64(),
            answer["refund"]["amount_micros"].as_i64()
        ),
        (Some(3), Some(1_500_000))
    );
    assert_eq!(fake.refunds_made(), 2);
    let listed = crate::helpers::run_cli(
        &app.directory,
        &["orders", "refunds", &order.to_string(), "--json"],
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["order_id"], order, "{listed}");
    assert_eq!(listed["refunds"].as_array().unwrap().len(), 3);
}
on_both_stores!(stripe_refusing_or_unreachable_refunds_nothing);

async fn the_reports_sum_payments_refunds_and_messages_by_hour_and_country() {
    use crate::auto_top_up::{burst, setup, Setup};
    let Setup {
        app, mut events, ..
    } = setup().await;
    let (account, _, _) = crate::stripe::active_account(&app, &mut events, "+14155550142").await;
    assert_eq!(burst(&app, account, "r", 2).await, 2);
    let refunded = events.charge_refunded("ch_access", &format!("pi_access_{account}"), 2999, 100);
    assert_eq!(app.deliver(&refunded).await.0, StatusCode::OK);
    let (status, reports) = app
        .request("GET", "/v1/admin/reports", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{reports}");
    let hours = reports["hours"].as_array().unwrap();
    let total =
        |field: &str| -> i64 { hours.iter().map(|hour| hour[field].as_i64().unwrap()).sum() };
    assert_eq!(total("payments_micros"), 29_990_000);
    assert_eq!(
        total("refunds_micros"),
        1_000_000,
        "credit taken back for the $1 refunded"
    );
    assert_eq!((total("messages"), total("segments")), (2, 2));
    assert!(hours
        .iter()
        .all(|hour| hour["hour"].as_str().unwrap().ends_with(":00:00.000Z")));
    assert_eq!(
        reports["margins"],
        json!([{"country": "US", "messages": 2, "segments": 2, "charged_micros": 113_000,
                "carrier_cost_micros": 22_600, "priced_messages": 0}])
    );
    // The account's messages, newest first.
    let (status, listed) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/messages"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let messages = listed["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert!(messages
        .iter()
        .all(|m| m["charged_micros"] == 56_500 && m["country"] == "US" && m["state"] == "sent"));
    assert!(messages[0]["id"].as_i64() > messages[1]["id"].as_i64());
    let (status, _) = app
        .request(
            "GET",
            "/v1/admin/accounts/999999/messages",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = app
        .request(
            "GET",
            "/v1/admin/reports?since=1970-01-01T00:00:00Z",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (status, _) = app.request("GET", "/v1/admin/reports", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
on_both_stores!(the_reports_sum_payments_refunds_and_messages_by_hour_and_country);

async fn the_attention_lists_name_the_accounts_behind_the_figures() {
    use crate::auto_top_up::{adjust_to, put_auto, setup, Setup};
    let Setup {
        app,
        twilio,
        mut events,
        clock,
        ..
    } = setup().await;
    let (account, _, token) =
        crate::stripe::active_account(&app, &mut events, "+14155550143").await;
    let low = app.create_account("+14155550144").await;
    adjust_to(&app, low, 1_000_000, "to-1").await;
    adjust_to(&app, account, 3_000_000, "to-3").await;
    // Auto top-up on, then the card is detached: off, with the reason.
    let (status, body) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detached = events.payment_method_detached(crate::fake_stripe::SAVED_CARD);
    assert_eq!(app.deliver(&detached).await.0, StatusCode::OK);
    // A message Twilio holds stays reserved; ten minutes on it needs a look.
    // (Twilio does not answer the sweep's question either, so the sweep
    // leaves it reserved too.)
    twilio.hold("held");
    twilio.fail_lists(true);
    let (client, url) = (app.client.clone(), app.url("/v1/messages"));
    let sending = actix_rt::spawn(async move {
        let _ = client
            .post(url)
            .insert_header(("Authorization", format!("Bearer {}", crate::helpers::API_KEY)))
            .send_json(&json!({"account_id": account, "body": "held forecast", "idempotency_key": "held-1"}))
            .await;
    });
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    clock.advance_ms(11 * 60_000);

    let (status, attention) = app
        .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{attention}");
    let low_ids: Vec<i64> = attention["low_balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["account_id"].as_i64().unwrap())
        .collect();
    assert_eq!(low_ids, vec![low], "{attention}");
    assert_eq!(attention["low_balances"][0]["balance_micros"], 1_000_000);
    assert_eq!(attention["auto_top_ups_off"][0]["account_id"], account);
    assert_eq!(
        attention["auto_top_ups_off"][0]["reason"],
        "the saved card is gone"
    );
    assert_eq!(attention["reservations_open"][0]["account_id"], account);
    assert_eq!(attention["notices_unsent"], json!([]));
    let (_, overview) = app
        .request("GET", "/v1/admin/overview", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(overview["accounts_below_threshold"], 1);
    twilio.release();
    sending.await.unwrap();
    let (status, _) = app.request("GET", "/v1/admin/attention", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
on_both_stores!(the_attention_lists_name_the_accounts_behind_the_figures);

/// What the refund rows of an order took back in all (negative), from the
/// ledger the admin API shows.
async fn taken_back_for(app: &TestApp, account: i64, order: i64) -> i64 {
    let (status, ledger) = app.get_transactions(account).await;
    assert_eq!(status, StatusCode::OK, "{ledger}");
    ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["type"] == "refund" && row["order_id"] == order)
        .map(|row| row["amount_micros"].as_i64().unwrap())
        .sum()
}

fn refunded_of(orders: &[Value], order: i64) -> (Option<String>, Option<i64>) {
    let row = orders.iter().find(|row| row["id"] == order).unwrap();
    (
        row["status"].as_str().map(str::to_string),
        row["amount_refunded_micros"].as_i64(),
    )
}

async fn two_refunds_of_one_charge_on_two_instances_at_once_take_back_once() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    let mut events = EventFactory::new();
    let (account, customer, token) =
        crate::stripe::active_account(&first, &mut events, "+14155550150").await;
    // Both instances' actors for the account are live.
    assert_eq!(second.balance_micros(account).await, 5_000_000);

    // Six paid $10 top-ups; each charge is refunded $3, then $2 more
    // (Stripe's running totals 300¢ and 500¢), the two events delivered at
    // the same moment, one to each instance (which gets which alternates).
    let mut top_ups = Vec::new();
    for _ in 0..6 {
        let (order, session) = first.start_top_up(account, &token).await;
        let intent = format!("pi_race_{order}");
        let completed = events.checkout_completed(&session, order, &customer, 1000, &intent);
        assert_eq!(first.deliver(&completed).await.0, StatusCode::OK);
        top_ups.push((order, intent, format!("ch_race_{order}")));
    }
    assert_eq!(first.balance_micros(account).await, 65_000_000);
    for (index, (_, intent, charge)) in top_ups.iter().enumerate() {
        let three = events.charge_refunded(charge, intent, 1000, 300);
        let five = events.charge_refunded(charge, intent, 1000, 500);
        let (one, other) = if index % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let (a, b) = futures_util::join!(one.deliver(&three), other.deliver(&five));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
    }
    // The access payment ($29.99, which credited $5): $3 and then $8 in all
    // refunded at once on the two instances take back $5, what it credited.
    let access_intent = format!("pi_access_{account}");
    let three = events.charge_refunded("ch_access_race", &access_intent, 2999, 300);
    let eight = events.charge_refunded("ch_access_race", &access_intent, 2999, 800);
    let (a, b) = futures_util::join!(second.deliver(&three), first.deliver(&eight));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");

    let orders = first.get_orders(account).await;
    for (order, _, _) in &top_ups {
        assert_eq!(
            taken_back_for(&first, account, *order).await,
            -5_000_000,
            "order {order}: $5 refunded, $5 taken back"
        );
        assert_eq!(
            refunded_of(&orders, *order),
            (Some("completed".to_string()), Some(5_000_000))
        );
    }
    let access = orders
        .iter()
        .find(|row| row["order_type"] == "initial_access")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(taken_back_for(&first, account, access).await, -5_000_000);
    assert_eq!(
        refunded_of(&orders, access),
        (Some("completed".to_string()), Some(8_000_000))
    );
    // $5 included + $60 of top-ups − $30 and $5 taken back.
    assert_eq!(first.balance_micros(account).await, 30_000_000);
    assert_eq!(second.balance_micros(account).await, 30_000_000);
    first.stop().await;
    let directory = second.stop().await;
    assert_verified(&directory);
}
on_both_stores!(two_refunds_of_one_charge_on_two_instances_at_once_take_back_once);

/// A Stripe event, signed as Stripe signs it and read by the server's own
/// webhook code, handed to a core (whose store a test can fail).
async fn deliver_to(core: &Core, payload: &str) -> Result<EventOutcome, BillingError> {
    let signature = sign(payload, WEBHOOK_SECRET, NOW_UNIX);
    let verified =
        sms_credit::stripe::verify_and_parse(payload, Some(&signature), WEBHOOK_SECRET, NOW_UNIX)
            .unwrap();
    core.stripe_supervisor
        .send(HandleStripeEvent {
            event_id: verified.id,
            event_type: verified.event_type,
            event: verified.event,
            received_at_ms: NOW_UNIX * 1000,
        })
        .await
        .unwrap()
}

/// A $10 top-up order of `account`, opened (its Checkout completion is
/// the test's to deliver); answers its id.
async fn open_ten_dollar_top_up(core: &Core, account: sms_credit_actors::AccountId) -> i64 {
    let ten = Money::from_micros(10_000_000);
    let (_, order) = core
        .store
        .billing()
        .open_order(
            NewOrder {
                account_id: account,
                order_type: OrderType::TopUp,
                amount: ten,
                list_price: ten,
                pricing_mode: None,
                discount_code_id: None,
            },
            NOW_UNIX * 1000,
        )
        .await
        .unwrap();
    order.id
}

/// How many commits handling one refund event may take (the claim, the
/// order's figure, the row or the event, the decision; one spare): each is
/// failed in turn.
const REFUND_STEPS: u64 = 5;

async fn a_failed_commit_in_a_refund_takes_back_once_whichever_event_comes_next() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let core = Core::start(&settings, Arc::new(ManualClock::new(NOW_UNIX * 1000))).unwrap();
    let account = new_account(&core, "+14155550151").await;
    let mut events = EventFactory::new();
    let mut orders = Vec::new();
    for skip in 0..REFUND_STEPS {
        for larger_first in [false, true] {
            // A paid $10 top-up.
            let order = open_ten_dollar_top_up(&core, account).await;
            let intent = format!("pi_fail_{order}");
            let charge = format!("ch_fail_{order}");
            let session = format!("cs_fail_{order}");
            let completed = events.checkout_completed(&session, order, "cus_fail", 1000, &intent);
            assert!(matches!(
                deliver_to(&core, &completed).await,
                Ok(EventOutcome::Applied(_))
            ));
            orders.push(order);

            // $3 then $5 in all refunded; one of the two events meets a
            // failed commit at step `skip` of its handling.
            let three = events.charge_refunded(&charge, &intent, 1000, 300);
            let five = events.charge_refunded(&charge, &intent, 1000, 500);
            let (failing, other) = if larger_first {
                (&five, &three)
            } else {
                (&three, &five)
            };
            core.store.fail_commit_after_for_testing(Some(skip));
            let failed = deliver_to(&core, failing).await;
            core.store.fail_commit_after_for_testing(None);
            // The charge's other event, then Stripe's retry of the one
            // that failed, then each once more: every one is decided.
            for (attempt, payload) in [other, failing, other, failing].into_iter().enumerate() {
                let outcome = deliver_to(&core, payload).await;
                assert!(
                    matches!(
                        outcome,
                        Ok(EventOutcome::Applied(_) | EventOutcome::Duplicate)
                    ),
                    "step {skip}, larger first {larger_first}, delivery {attempt}: {outcome:?} \
                     (the failed delivery: {failed:?})"
                );
            }
            let rows = core
                .store
                .ledger()
                .latest_entries(account, 1_000)
                .await
                .unwrap();
            let taken: i64 = rows
                .iter()
                .filter(|row| row.kind == TransactionKind::Refund && row.order_id == Some(order))
                .map(|row| row.amount.micros())
                .sum();
            assert_eq!(
                taken, -5_000_000,
                "step {skip}, larger first {larger_first}: $5 refunded, taken back once \
                 (the failed delivery: {failed:?})"
            );
            let recorded = core.store.billing().order(order).await.unwrap().unwrap();
            assert_eq!(
                recorded.amount_refunded,
                Money::from_micros(5_000_000),
                "step {skip}, larger first {larger_first}"
            );
        }
    }
    let balance = core
        .store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .unwrap()
        .balance;
    assert_eq!(
        balance,
        Money::from_micros(5_000_000 * orders.len() as i64),
        "$10 paid and $5 taken back, per order"
    );
    core.shutdown().await;
    assert_verified(&directory);
}
on_both_stores!(a_failed_commit_in_a_refund_takes_back_once_whichever_event_comes_next);

async fn a_refund_of_access_takes_back_what_the_sale_credited_not_todays_setting() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings.clone()).await;
    let mut events = EventFactory::new();
    let (account, _, _) = crate::stripe::active_account(&app, &mut events, "+14155550152").await;
    assert_eq!(app.balance_micros(account).await, 5_000_000);
    let directory = app.stop().await;

    // The operator now includes $8 with access; this account's access came
    // with $5. Refunded in full, it gives back those $5.
    let mut settings = settings;
    settings.stripe.as_mut().unwrap().included_credit = Money::from_micros(8_000_000);
    let app = TestApp::spawn_with(directory, settings).await;
    let refunded = events.charge_refunded(
        "ch_access_setting",
        &format!("pi_access_{account}"),
        2999,
        2999,
    );
    let (status, answer) = app.deliver(&refunded).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        app.balance_micros(account).await,
        0,
        "the $5 the sale credited is taken back, not today's $8"
    );
    let orders = app.get_orders(account).await;
    let access = orders[0]["id"].as_i64().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(taken_back_for(&app, account, access).await, -5_000_000);
    assert_eq!(
        refunded_of(&orders, access),
        (Some("refunded".to_string()), Some(29_990_000))
    );
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_of_access_takes_back_what_the_sale_credited_not_todays_setting);

on_both_stores!(a_refund_of_a_top_up_not_yet_credited_waits_for_the_credit);
/// A top-up whose order is completed and whose credit did not commit (a
/// failed commit between the two; Stripe will deliver the completion
/// again): a refund arriving meanwhile takes nothing back that was never
/// credited. It waits, and once the completion's retry credits the top-up,
/// it takes back once.
async fn a_refund_of_a_top_up_not_yet_credited_waits_for_the_credit() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let core = Core::start(&settings, Arc::new(ManualClock::new(NOW_UNIX * 1000))).unwrap();
    let account = new_account(&core, "+14155550152").await;
    let mut events = EventFactory::new();
    for skip in 0..REFUND_STEPS {
        let order = open_ten_dollar_top_up(&core, account).await;
        let intent = format!("pi_uncredited_{order}");
        let completed = events.checkout_completed(
            &format!("cs_uncredited_{order}"),
            order,
            "cus_un",
            1000,
            &intent,
        );
        let refunded =
            events.charge_refunded(&format!("ch_uncredited_{order}"), &intent, 1000, 1000);
        // One commit of the completion's handling fails, at step `skip`.
        core.store.fail_commit_after_for_testing(Some(skip));
        let _ = deliver_to(&core, &completed).await;
        core.store.fail_commit_after_for_testing(None);
        let _ = deliver_to(&core, &refunded).await;
        let balance = core
            .registry
            .send(account, sms_credit_actors::GetBalance)
            .await
            .unwrap()
            .balance;
        assert!(
            !balance.is_negative(),
            "step {skip}: nothing taken back that was not credited: {balance:?}"
        );
        // Stripe delivers the completion again: credited, and the refund
        // (woken, or delivered again) takes it back once.
        for payload in [&completed, &refunded, &completed, &refunded] {
            let outcome = deliver_to(&core, payload).await;
            assert!(
                matches!(
                    outcome,
                    Ok(EventOutcome::Applied(_) | EventOutcome::Duplicate)
                ),
                "step {skip}: {outcome:?}"
            );
        }
        let balance = core
            .registry
            .send(account, sms_credit_actors::GetBalance)
            .await
            .unwrap()
            .balance;
        assert_eq!(
            balance,
            Money::ZERO,
            "step {skip}: credited once, taken back once"
        );
    }
    core.shutdown().await;
    assert_verified(&directory);
}

/// How long after its first request a refund request is resent in these
/// tests: past the 23 hours Stripe surely keeps a key.
const DAY_AND_AN_HOUR_MS: i64 = 25 * 3_600 * 1_000;

async fn a_refund_left_requested_is_asked_about_after_23_hours_never_sent_again() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550160").await;

    // Stripe makes one refund but its answer is lost; the other never
    // reaches Stripe. Both are left requested, answered 502.
    fake.set_refund_answer_lost(true);
    let made =
        json!({"amount_micros": 2_000_000, "reason": "answer lost", "idempotency_key": "lost-1"});
    let (status, answer) = refund(&app, order, made.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    fake.set_refund_answer_lost(false);
    fake.set_unreachable(true);
    let unmade =
        json!({"amount_micros": 3_000_000, "reason": "never made", "idempotency_key": "unmade-1"});
    let (status, answer) = refund(&app, order, unmade.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    fake.set_unreachable(false);
    // A later refund is made as asked: Stripe lists it first, one a page,
    // so the lost one is found on the second page.
    let later = json!({"amount_micros": 1_000_000, "reason": "made", "idempotency_key": "later-1"});
    let (status, answer) = refund(&app, order, later).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    fake.set_page_size(Some(1));
    let statuses = |refunds: Vec<Value>| -> Vec<String> {
        refunds
            .iter()
            .map(|refund| refund["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        statuses(refunds_of(&app, order).await),
        ["requested", "requested", "succeeded"]
    );
    assert_eq!(fake.refunds_made(), 2);
    let sent = fake.requests_with("POST", "/v1/refunds").len();

    // A day and an hour on, Stripe may have forgotten both keys: the same
    // requests again ask Stripe what became of them, and send nothing.
    fake.prune_keys();
    // Just past 23 hours, a resend sent just before them may still be on
    // its way to Stripe: a refund Stripe does not list yet is not taken
    // for one never made.
    let just_past_23_hours_ms = 23 * 3_600 * 1_000 + 60_000;
    clock.advance_ms(just_past_23_hours_ms);
    let (status, answer) = refund(&app, order, unmade.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(
        statuses(refunds_of(&app, order).await),
        ["requested", "requested", "succeeded"]
    );
    clock.advance_ms(DAY_AND_AN_HOUR_MS - just_past_23_hours_ms);
    // Stripe not answering the question leaves them as they were.
    fake.set_unreachable(true);
    let (status, answer) = refund(&app, order, made.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    fake.set_unreachable(false);
    assert_eq!(
        statuses(refunds_of(&app, order).await),
        ["requested", "requested", "succeeded"]
    );
    let (status, answer) = refund(&app, order, made).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["replayed"], true);
    assert_eq!(answer["refund"]["status"], "succeeded");
    let stripe_refunds = fake.refunds_of(&intent);
    assert_eq!(stripe_refunds.len(), 2);
    assert_eq!(
        answer["refund"]["stripe_refund_id"],
        stripe_refunds[0]["id"]
    );
    let (status, answer) = refund(&app, order, unmade).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("refund_not_made")),
        "{answer}"
    );
    assert_eq!(
        statuses(refunds_of(&app, order).await),
        ["succeeded", "failed", "succeeded"]
    );
    assert_eq!(
        fake.requests_with("POST", "/v1/refunds").len(),
        sent,
        "nothing sent again"
    );
    assert_eq!(
        fake.requests_with("GET", "/v1/refunds").len(),
        7,
        "two pages for each answer, one for the one not answered"
    );
    assert_eq!(fake.refunds_made(), 2);

    // What was not refunded can be asked for again, with a new key.
    let (status, answer) = refund(
        &app,
        order,
        json!({"amount_micros": 3_000_000, "reason": "once more", "idempotency_key": "unmade-2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["refund"]["n"], 4);
    assert_eq!(fake.refunds_made(), 3);
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_left_requested_is_asked_about_after_23_hours_never_sent_again);

async fn a_refund_left_requested_is_settled_by_the_event_that_reports_it() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550161").await;

    // Stripe makes the refund; its answer is lost: requested.
    fake.set_refund_answer_lost(true);
    let (status, answer) = refund(
        &app,
        order,
        json!({"amount_micros": 2_000_000, "reason": "lost", "idempotency_key": "lost-1"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(refunds_of(&app, order).await[0]["status"], "requested");

    // Stripe's charge.refunded lists the refund: the request is settled,
    // and the credit comes off, once.
    let made = fake.refunds_of(&intent);
    assert_eq!(made.len(), 1);
    let refunded = events.charge_refunded_listing("ch_listed", &intent, 1000, 200, made.clone());
    for _ in 0..2 {
        let (status, answer) = app.deliver(&refunded).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let recorded = refunds_of(&app, order).await;
    assert_eq!(recorded[0]["status"], "succeeded", "{recorded:?}");
    assert_eq!(recorded[0]["stripe_refund_id"], made[0]["id"]);
    assert_eq!(app.balance_micros(account).await, 13_000_000);

    // A second one, settled by its refund.updated event instead.
    let (status, answer) = refund(
        &app,
        order,
        json!({"amount_micros": 1_000_000, "reason": "lost again", "idempotency_key": "lost-2"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    fake.set_refund_answer_lost(false);
    let second = fake.refunds_of(&intent)[1].clone();
    // A refund that names the request in its metadata but is not of its
    // payment, or not of its amount (metadata anyone with access to the
    // Stripe account can write), settles nothing. (The one of this
    // payment, $4 refunded in the dashboard, takes its own credit back.)
    let mut elsewhere = second.clone();
    elsewhere["id"] = json!("re_elsewhere");
    elsewhere["payment_intent"] = json!("pi_someone_else");
    let mut other_amount = second.clone();
    other_amount["id"] = json!("re_other_amount");
    other_amount["amount"] = json!(400);
    for impostor in [elsewhere, other_amount] {
        let event = events.refund_event("refund.updated", impostor);
        let (status, answer) = app.deliver(&event).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let recorded = refunds_of(&app, order).await;
        assert_eq!(recorded[1]["status"], "requested", "{recorded:?}");
    }
    let updated = events.refund_event("refund.updated", second.clone());
    let (status, answer) = app.deliver(&updated).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "applied", "{answer}");
    let recorded = refunds_of(&app, order).await;
    assert_eq!(recorded[1]["status"], "succeeded", "{recorded:?}");
    assert_eq!(recorded[1]["stripe_refund_id"], second["id"]);
    // Asked again, it is answered from the record; nothing is sent.
    let (status, answer) = refund(
        &app,
        order,
        json!({"amount_micros": 1_000_000, "reason": "lost again", "idempotency_key": "lost-2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["replayed"], true);
    assert_eq!(fake.refunds_made(), 2);
    // $15 less the $2 and the $1 asked for and the $4 of the dashboard.
    assert_eq!(app.balance_micros(account).await, 8_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_left_requested_is_settled_by_the_event_that_reports_it);

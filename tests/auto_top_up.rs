//! Auto top-up: the saved card known at once, the setting and its refusals,
//! one charge for a burst of debits, the monthly cap, failures that wait and
//! then turn it off, the SMS commands, and a crash between charge and credit.

use actix_web::http::StatusCode;
use serde_json::{json, Value};
use sms_credit_actors::clock::ManualClock;
use sms_credit_actors::messaging::notices::NoticeKind;
use sms_credit_actors::{AccountId, Money};

use crate::fake_stripe::{ChargeMode, EventFactory, FakeStripe, SAVED_CARD};
use crate::fake_twilio::FakeTwilio;
use crate::helpers::{
    fresh_directory, run_cli, stripe_settings, with_twilio, TestApp, ADMIN_TOKEN, NOW_UNIX,
};
use crate::stripe::active_account;

/// What a US message of one segment costs.
const US_MESSAGE: i64 = 56_500;

pub(crate) struct Setup {
    pub(crate) app: TestApp,
    pub(crate) stripe: FakeStripe,
    pub(crate) twilio: FakeTwilio,
    pub(crate) events: EventFactory,
    pub(crate) clock: ManualClock,
}

pub(crate) async fn setup() -> Setup {
    setup_and_second(false).await.0
}

/// As [`setup`], with a second instance on the same database (the same
/// clock and fakes) when `second` says so.
async fn setup_and_second(second: bool) -> (Setup, Option<TestApp>) {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    // Webhooks to a receiver on loopback (the webhook tests use this too).
    settings.webhooks.allow_private = true;
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let second = match second {
        true => Some(TestApp::spawn_with_clock(directory, settings, clock.clone()).await),
        false => None,
    };
    let setup = Setup {
        app,
        stripe,
        twilio,
        events: EventFactory::new(),
        clock,
    };
    (setup, second)
}

fn reply_text(twiml: &str) -> String {
    let start = twiml
        .find("<Message>")
        .map_or(0, |at| at + "<Message>".len());
    let end = twiml.find("</Message>").unwrap_or(twiml.len());
    twiml[start..end]
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub(crate) async fn get_auto(app: &TestApp, account: i64, token: &str) -> Value {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/auto-top-up"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

pub(crate) async fn put_auto(
    app: &TestApp,
    account: i64,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    app.request(
        "PUT",
        &format!("/v1/accounts/{account}/auto-top-up"),
        Some(token),
        Some(body),
    )
    .await
}

/// Sends `count` messages to the account at once; answers how many were
/// accepted.
pub(crate) async fn burst(app: &TestApp, account: i64, prefix: &str, count: usize) -> usize {
    use futures_util::StreamExt;
    let sends = (0..count).map(|index| {
        app.post_message(json!({
            "account_id": account,
            "body": "Storm at 3pm",
            "idempotency_key": format!("{prefix}-{index}")
        }))
    });
    // Up to 64 at once: the test client's requests time out after 5 s.
    futures_util::stream::iter(sends)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter(|(status, body)| {
            assert!(
                status.is_success() || *status == StatusCode::PAYMENT_REQUIRED,
                "{status} {body}"
            );
            status.is_success()
        })
        .count()
}

/// Waits (up to 20 s) until the account's attempts satisfy `done`.
pub(crate) async fn wait_for_attempts(
    app: &TestApp,
    account: i64,
    token: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let view = get_auto(app, account, token).await;
        if done(view["attempts"].as_array().unwrap()) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attempts never got there: {view}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub(crate) async fn adjust_to(app: &TestApp, account: i64, target_micros: i64, key: &str) {
    let delta = target_micros - app.balance_micros(account).await;
    let (status, body) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": delta, "reason": "test", "idempotency_key": key})),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

on_both_stores!(the_card_is_known_at_once_and_forgotten_when_stripe_says_so);
async fn the_card_is_known_at_once_and_forgotten_when_stripe_says_so() {
    let Setup {
        app,
        stripe,
        twilio,
        mut events,
        clock,
    } = setup().await;
    let (account, _, token) = active_account(&app, &mut events, "+14155553100").await;
    // Only checkout.session.completed has arrived: BUY works already.
    let (_, twiml) = app
        .post_twilio_sms("SMauto-buy", "+14155553100", "BUY $10")
        .await;
    assert_eq!(
        reply_text(&twiml),
        "Thanks! $10.00 was added from your card ending 4242. Your balance is $15.00."
    );
    assert_eq!(stripe.charges_made(), 1);
    let view = get_auto(&app, account, &token).await;
    assert_eq!(
        view["card"],
        json!({"brand": "visa", "last4": "4242", "exp_month": 8, "exp_year": 2030})
    );
    assert_eq!(
        (
            view["enabled"].as_bool(),
            view["attempts"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0))
    );

    // The customer removes the card in Stripe: forgotten, auto top-up
    // paused, the holder told once.
    put_auto(&app, account, &token, json!({"enabled": true})).await;
    let detached = events.payment_method_detached(SAVED_CARD);
    for _ in 0..2 {
        let (status, _) = app.deliver(&detached).await;
        assert_eq!(status, StatusCode::OK);
    }
    let view = get_auto(&app, account, &token).await;
    assert_eq!(
        (
            &view["card"],
            view["enabled"].as_bool(),
            view["paused_reason"].as_str()
        ),
        (&Value::Null, Some(false), Some("the saved card is gone"))
    );
    app.settle_notices(account).await;
    let told: Vec<String> = twilio
        .sent()
        .into_iter()
        .filter(|sms| sms.to == "+14155553100" && sms.body.contains("no longer usable"))
        .map(|sms| sms.body)
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    let (_, twiml) = app
        .post_twilio_sms("SMauto-buy2", "+14155553100", "BUY $10")
        .await;
    assert!(reply_text(&twiml).contains("no saved card"), "{twiml}");
    // An old event naming the forgotten card does not bring it back.
    let customer = app.get_admin_account(account).await.1["stripe_customer_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.deliver(&events.payment_intent_succeeded(
        "pi_late",
        2999,
        &customer,
        json!({"sms_credit_purpose": "checkout"}),
    ))
    .await;
    assert_eq!(get_auto(&app, account, &token).await["card"], Value::Null);
    assert_eq!(stripe.charges_made(), 1);

    // Another holder's card has expired by the time it would be charged:
    // forgotten, not charged.
    let (other, _, other_token) = active_account(&app, &mut events, "+14155553101").await;
    clock.set_ms(1_914_451_200_000); // 2030-09-01, after the card's 08/2030
    let (_, twiml) = app
        .post_twilio_sms("SMauto-expired", "+14155553101", "BUY $10")
        .await;
    assert!(reply_text(&twiml).contains("no saved card"), "{twiml}");
    assert_eq!(
        get_auto(&app, other, &other_token).await["card"],
        Value::Null
    );
    assert_eq!(stripe.charges_made(), 1);
}

on_both_stores!(bad_settings_are_refused_and_change_nothing);
async fn bad_settings_are_refused_and_change_nothing() {
    let Setup {
        app,
        stripe,
        mut events,
        ..
    } = setup().await;
    // No card: Stripe cannot say which one paid.
    stripe.set_retrieve_fails(true);
    let (account, customer, token) = active_account(&app, &mut events, "+14155553200").await;
    let (status, body) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("no_saved_card"))
    );
    app.deliver(&events.payment_intent_succeeded(
        &format!("pi_access_{account}"),
        2999,
        &customer,
        json!({"sms_credit_purpose": "checkout"}),
    ))
    .await;
    let before = get_auto(&app, account, &token).await;
    let refused = [
        json!({"enabled": true, "threshold_micros": -1}),
        json!({"enabled": true, "threshold_micros": 2_000_001}),
        json!({"enabled": true, "amount_micros": 5_000_000}),
        json!({"enabled": true, "amount_micros": 10_500_000}),
        json!({"enabled": true, "amount_micros": 20_000_000, "monthly_cap_micros": 15_000_000}),
        json!({"enabled": true, "monthly_cap_micros": 0}),
        json!({"enabled": "yes"}),
        json!({"enabled": true, "surprise": 1}),
    ];
    for body in refused {
        let (status, answer) = put_auto(&app, account, &token, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(answer["error"]["message"].as_str().is_some(), "{answer}");
    }
    let (status, _) = put_auto(&app, account + 1, &token, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .request(
            "PUT",
            &format!("/v1/accounts/{account}/auto-top-up"),
            None,
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(get_auto(&app, account, &token).await, before);

    // Turned on with the defaults: the consent is recorded.
    let (status, on) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(
        (
            on["threshold_micros"].as_i64(),
            on["amount_micros"].as_i64(),
            on["monthly_cap_micros"].as_i64()
        ),
        (Some(2_000_000), Some(10_000_000), Some(50_000_000))
    );
    assert_eq!(on["consent"]["via"], "web");
    assert_eq!(
        on["consent"]["at"],
        sms_credit_actors::clock::format_rfc3339_ms(NOW_UNIX * 1000)
    );
    let text = on["consent"]["text"].as_str().unwrap();
    assert!(
        text.contains("below $2.00") && text.contains("$10.00"),
        "{text}"
    );
    // The admin sees the same, and turns it off.
    let (status, admin_view) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/auto-top-up"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!((status, &admin_view), (StatusCode::OK, &on));
    let (status, off) = app
        .request(
            "PUT",
            &format!("/v1/admin/accounts/{account}/auto-top-up"),
            Some(ADMIN_TOKEN),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(
        (status, off["enabled"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert_eq!(
        off["consent"], on["consent"],
        "the last turning on stays visible"
    );

    // The command line: refused terms change nothing; good ones are stored.
    let id = account.to_string();
    let refused = run_cli(
        &app.directory,
        &["accounts", "auto-top-up", &id, "--on", "--amount", "5"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("at least $10.00"),
        "{refused:?}"
    );
    assert_eq!(get_auto(&app, account, &token).await["enabled"], false);
    let turned_on = run_cli(
        &app.directory,
        &[
            "accounts",
            "auto-top-up",
            &id,
            "--on",
            "--amount",
            "20",
            "--cap",
            "40",
            "--json",
        ],
    );
    assert!(turned_on.status.success(), "{turned_on:?}");
    let shown: Value = serde_json::from_slice(&turned_on.stdout).unwrap();
    assert_eq!(
        (
            shown["enabled"].as_bool(),
            shown["amount_micros"].as_i64(),
            shown["consent"]["via"].as_str()
        ),
        (Some(true), Some(20_000_000), Some("admin"))
    );
    let summary = run_cli(&app.directory, &["accounts", "auto-top-up", &id]);
    let summary = String::from_utf8_lossy(&summary.stdout);
    assert!(
        summary.contains("auto top-up on: below $2.00 charge $20.00"),
        "{summary}"
    );
}

on_both_stores!(a_thousand_concurrent_debits_below_the_threshold_start_one_charge);
async fn a_thousand_concurrent_debits_below_the_threshold_start_one_charge() {
    let Setup {
        app,
        stripe,
        mut events,
        ..
    } = setup().await;
    let (account, _, token) = active_account(&app, &mut events, "+14155553300").await;
    adjust_to(&app, account, 70_000_000, "to-70").await;
    let (status, body) = put_auto(
        &app,
        account,
        &token,
        json!({"enabled": true, "threshold_micros": 60_000_000, "amount_micros": 10_000_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The charge is held at Stripe until every debit is in.
    stripe.set_charge_mode(ChargeMode::Held);
    let accepted = burst(&app, account, "burst", 1_000).await;
    assert_eq!(accepted, 1_000);
    let charges = stripe.requests("/v1/payment_intents");
    assert_eq!(charges.len(), 1, "one charge for the whole burst");
    assert_eq!(
        charges[0].idempotency_key.as_deref(),
        Some(format!("sms-credit-charge-auto-top-up-{account}-1").as_str())
    );
    assert_eq!(charges[0].field("amount"), Some("1000"));
    stripe.release();
    let view = wait_for_attempts(&app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(view["month_charged_micros"], 10_000_000);
    assert_eq!(stripe.charges_made(), 1);
    assert_eq!(
        app.balance_micros(account).await,
        70_000_000 - 1_000 * US_MESSAGE + 10_000_000
    );
    let orders = app.get_orders(account).await;
    let auto: Vec<&Value> = orders
        .iter()
        .filter(|order| order["order_type"] == "auto_top_up")
        .collect();
    assert_eq!(auto.len(), 1);
    assert_eq!(auto[0]["status"], "completed");
    let (_, ledger) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/transactions?latest=50"),
            Some(&token),
            None,
        )
        .await;
    let credits: Vec<&Value> = ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["description"] == "auto top-up by saved card")
        .collect();
    assert_eq!(credits.len(), 1);
    let (_, verify) = app
        .request("GET", "/v1/admin/verify", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(verify["clean"], true, "{verify}");
}

on_both_stores!(the_monthly_cap_holds_and_the_warning_says_a_top_up_is_coming);
async fn the_monthly_cap_holds_and_the_warning_says_a_top_up_is_coming() {
    let Setup {
        app,
        stripe,
        twilio,
        mut events,
        ..
    } = setup().await;
    let (account, _, token) = active_account(&app, &mut events, "+14155553400").await;
    let (status, body) = put_auto(
        &app,
        account,
        &token,
        json!({"enabled": true, "monthly_cap_micros": 25_000_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let succeeded = |count: usize| {
        move |attempts: &[Value]| {
            attempts.len() == count && attempts.iter().all(|a| a["status"] == "succeeded")
        }
    };
    // $5.00 of included credit; 60 messages leave $1.61.
    assert_eq!(burst(&app, account, "wave1", 60).await, 60);
    wait_for_attempts(&app, account, &token, succeeded(1)).await;
    let warnings = app.settle_notices(account).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = twilio
        .sent()
        .into_iter()
        .find(|sms| sms.to == "+14155553400" && sms.body.contains("credit is low"))
        .expect("a low-balance warning");
    assert!(
        warning
            .body
            .contains("Topping up $10.00 from your card ending 4242"),
        "{}",
        warning.body
    );
    // Two more bursts that each leave the balance low: the second top-up
    // fits under the $25 cap, a third would not.
    assert_eq!(burst(&app, account, "wave2", 180).await, 180);
    wait_for_attempts(&app, account, &token, succeeded(2)).await;
    assert_eq!(burst(&app, account, "wave3", 180).await, 180);
    actix_rt::time::sleep(std::time::Duration::from_millis(500)).await;
    let view = get_auto(&app, account, &token).await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(view["month_charged_micros"], 20_000_000);
    assert_eq!(stripe.charges_made(), 2);
    // The admin sees them in the reconciliation report too.
    let (status, report) = app
        .request("GET", "/v1/admin/reconciliation", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        report["auto_top_ups"],
        json!({"succeeded": {"attempts": 2, "amount_micros": 20_000_000}})
    );
    assert_eq!(
        app.balance_micros(account).await,
        5_000_000 + 20_000_000 - 420 * US_MESSAGE
    );
}

on_both_stores!(three_failures_in_a_row_wait_then_turn_it_off_and_the_holder_is_told);
async fn three_failures_in_a_row_wait_then_turn_it_off_and_the_holder_is_told() {
    let Setup {
        app,
        stripe,
        twilio,
        mut events,
        clock,
    } = setup().await;
    let phone = "+14155553500";
    let (account, _, token) = active_account(&app, &mut events, phone).await;
    adjust_to(&app, account, 2_100_000, "to-2.10").await;
    put_auto(&app, account, &token, json!({"enabled": true})).await;
    stripe.set_charge_mode(ChargeMode::Decline);
    let failed = |count: usize| {
        move |attempts: &[Value]| {
            attempts.len() == count
                && attempts
                    .iter()
                    .all(|a| a["status"] != "charging" && a["status"] != "pending")
        }
    };
    let notices_to = |twilio: &FakeTwilio| -> Vec<String> {
        twilio
            .sent()
            .into_iter()
            .filter(|sms| sms.to == phone && sms.body.to_lowercase().contains("auto top-up"))
            .map(|sms| sms.body)
            .collect()
    };

    assert_eq!(burst(&app, account, "d1", 2).await, 2);
    let view = wait_for_attempts(&app, account, &token, failed(1)).await;
    assert_eq!(view["attempts"][0]["status"], "declined");
    assert_eq!(view["consecutive_failures"], 1);
    // Within the hour nothing new starts, however many debits.
    assert_eq!(burst(&app, account, "d1b", 3).await, 3);
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        get_auto(&app, account, &token).await["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The second time the bank wants the holder: a failure too.
    clock.advance_ms(3_600_000);
    stripe.set_charge_mode(ChargeMode::RequireAuthentication);
    assert_eq!(burst(&app, account, "d2", 1).await, 1);
    let view = wait_for_attempts(&app, account, &token, failed(2)).await;
    assert_eq!(view["attempts"][0]["status"], "authentication_required");
    stripe.set_charge_mode(ChargeMode::Decline);
    clock.advance_ms(6 * 3_600_000);
    assert_eq!(burst(&app, account, "d3", 1).await, 1);
    let view = wait_for_attempts(&app, account, &token, failed(3)).await;
    assert_eq!(view["enabled"], false, "{view}");
    assert!(view["paused_reason"].as_str().unwrap().contains("3 failed"));
    app.settle_notices(account).await;
    let told = notices_to(&twilio);
    assert_eq!(
        told.iter()
            .filter(|body| body.contains("was declined"))
            .count(),
        2,
        "{told:?}"
    );
    assert_eq!(
        told.iter()
            .filter(|body| body.contains("needs you to confirm") && body.contains("https://"))
            .count(),
        1,
        "{told:?}"
    );
    assert_eq!(
        told.iter()
            .filter(|body| body.contains("is now off"))
            .count(),
        1,
        "{told:?}"
    );
    // Off means off: no more attempts.
    clock.advance_ms(30 * 3_600_000);
    assert_eq!(burst(&app, account, "d4", 1).await, 1);
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        get_auto(&app, account, &token).await["attempts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(stripe.charges_made(), 0);

    // Turned on again (below the threshold): the count starts over and a
    // top-up starts at once.
    stripe.set_charge_mode(ChargeMode::Succeed);
    let (status, on) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(
        (status, on["consecutive_failures"].as_i64()),
        (StatusCode::OK, Some(0))
    );
    let view = wait_for_attempts(&app, account, &token, |attempts| {
        attempts.len() == 4 && attempts[0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(view["consecutive_failures"], 0);
    assert_eq!(stripe.charges_made(), 1);
}

on_both_stores!(auto_on_and_off_by_sms);
async fn auto_on_and_off_by_sms() {
    let Setup {
        app, mut events, ..
    } = setup().await;
    let phone = "+14155553600";
    let (account, _, token) = active_account(&app, &mut events, phone).await;
    let text = |twiml: String| reply_text(&twiml);
    let (_, help) = app.post_twilio_sms("SMa0", phone, "HELP").await;
    assert!(text(help).contains("AUTO ON"));
    let (_, status) = app.post_twilio_sms("SMa1", phone, "auto").await;
    assert!(text(status).starts_with("Auto top-up is off."));
    let (_, on) = app.post_twilio_sms("SMa2", phone, "AUTO ON").await;
    assert_eq!(
        text(on),
        "Auto top-up is on: when your credit falls below $2.00, $10.00 from your card ending 4242 \
         (at most $50.00 a month). Text AUTO OFF to stop at any time."
    );
    let view = get_auto(&app, account, &token).await;
    assert_eq!(
        (view["enabled"].as_bool(), view["consent"]["via"].as_str()),
        (Some(true), Some("sms"))
    );
    let (_, status) = app.post_twilio_sms("SMa3", phone, "AUTO").await;
    assert!(text(status).contains("This month: $0.00"));
    let (_, off) = app.post_twilio_sms("SMa4", phone, "Auto Off").await;
    assert!(text(off).starts_with("Auto top-up is off"));
    assert_eq!(get_auto(&app, account, &token).await["enabled"], false);
    let (_, odd) = app.post_twilio_sms("SMa5", phone, "AUTO MAYBE").await;
    assert!(text(odd).contains("AUTO ON to turn it on"));
}

on_both_stores!(a_lost_answer_is_asked_again_with_the_same_key_and_charges_once);
async fn a_lost_answer_is_asked_again_with_the_same_key_and_charges_once() {
    let Setup {
        app,
        stripe,
        mut events,
        clock,
        ..
    } = setup().await;
    let (account, _, token) = active_account(&app, &mut events, "+14155553700").await;
    adjust_to(&app, account, 2_050_000, "to-2.05").await;
    put_auto(&app, account, &token, json!({"enabled": true})).await;
    // Stripe charges, but its answer never arrives.
    stripe.set_charge_mode(ChargeMode::AnswerLost);
    assert_eq!(burst(&app, account, "lost", 1).await, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stripe.requests("/v1/payment_intents").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no charge was sent");
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    actix_rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let view = get_auto(&app, account, &token).await;
    assert_eq!(view["attempts"][0]["status"], "charging", "{view}");
    // After the lease the worker asks again, with the same key.
    clock.advance_ms(31_000);
    let view = wait_for_attempts(&app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1);
    let charges = stripe.requests("/v1/payment_intents");
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[0].idempotency_key, charges[1].idempotency_key);
    assert_eq!(stripe.charges_made(), 1);
    assert_eq!(
        app.balance_micros(account).await,
        2_050_000 - US_MESSAGE + 10_000_000
    );
}

on_both_stores!(a_crash_between_charge_and_credit_charges_once_and_credits_once);
async fn a_crash_between_charge_and_credit_charges_once_and_credits_once() {
    use crate::helpers::{process_env, ServerProcess};
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut env = process_env(&twilio.base_url, Some(&stripe.base_url));
    env.push(("SMS_CREDIT_INCLUDED_CREDIT", "2.05"));
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let first = ServerProcess::start(&directory, &env);
    let app = TestApp::attach(&first, &directory);
    let mut events = EventFactory::new();
    let (account, order, session, customer) =
        crate::stripe::start_access(&app, "+14155553800", None).await;
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_crash_access");
    assert_eq!(
        app.deliver_at(&completed, unix_now()).await.0,
        StatusCode::OK
    );
    let token = app.issue_token(account).await;
    let (status, body) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The charge reaches Stripe, which charges; its answer is held while
    // the server dies.
    stripe.set_charge_mode(ChargeMode::Held);
    assert_eq!(burst(&app, account, "crash", 1).await, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stripe.requests("/v1/payment_intents").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no charge was sent");
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    first.kill();
    stripe.release();

    let second = ServerProcess::start(&directory, &env);
    let app = TestApp::attach(&second, &directory);
    let view = wait_for_attempts(&app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    let charges = stripe.requests("/v1/payment_intents");
    assert_eq!(charges.len(), 2, "asked again after the crash");
    assert_eq!(charges[0].idempotency_key, charges[1].idempotency_key);
    assert_eq!(stripe.charges_made(), 1, "charged once");
    // Stripe's own event for the same payment credits nothing more.
    let orders = app.get_orders(account).await;
    let auto = orders
        .iter()
        .find(|order| order["order_type"] == "auto_top_up")
        .unwrap();
    let payment_intent = auto["stripe_payment_intent_id"].as_str().unwrap();
    let succeeded = events.payment_intent_succeeded(
        payment_intent,
        1000,
        &customer,
        json!({"sms_credit_purpose": "off_session_top_up", "sms_credit_order_id": auto["id"].to_string()}),
    );
    assert_eq!(
        app.deliver_at(&succeeded, unix_now()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.balance_micros(account).await,
        2_050_000 - US_MESSAGE + 10_000_000,
        "credited once"
    );
    let (_, verify) = app
        .request("GET", "/v1/admin/verify", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(verify["clean"], true, "{verify}");
}

on_both_stores!(a_setting_changed_by_the_cli_reaches_the_running_servers_actors_at_once);
/// The CLI (another process) turns auto top-up on while the server runs:
/// the server's actors follow the change note within a second. The test's
/// clock never moves, so the 30 s sweep cannot be what found it.
async fn a_setting_changed_by_the_cli_reaches_the_running_servers_actors_at_once() {
    let Setup {
        app,
        stripe,
        twilio: _twilio,
        mut events,
        clock: _clock,
    } = setup().await;
    let (account, _, token) = active_account(&app, &mut events, "+14155553150").await;
    adjust_to(&app, account, 2_100_000, "near-the-threshold").await;
    let id = account.to_string();
    let turned_on = run_cli(&app.directory, &["accounts", "auto-top-up", &id, "--on"]);
    assert!(turned_on.status.success(), "{turned_on:?}");

    // Each message is a debit below the $2.00 threshold, after which the
    // actor asks for a top-up if it knows the setting is on.
    let started = std::time::Instant::now();
    let mut sent = 0;
    let view = loop {
        let (status, body) = app
            .post_message(json!({
                "account_id": account,
                "body": "Storm at 3pm",
                "idempotency_key": format!("after-cli-{sent}")
            }))
            .await;
        assert!(status.is_success(), "{status} {body}");
        sent += 1;
        let view = get_auto(&app, account, &token).await;
        if !view["attempts"].as_array().unwrap().is_empty() {
            break view;
        }
        // The note is read within a second; the bound leaves room for a
        // loaded machine (and the balance, for a message every 500 ms).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no attempt 10 s after the CLI turned auto top-up on: {view}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(view["attempts"][0]["amount_micros"], 10_000_000, "{view}");
    wait_for_attempts(&app, account, &token, |attempts| {
        attempts[0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(stripe.charges_made(), 1);
}

const HOUR_MS: i64 = 3_600 * 1_000;

/// Waits (up to 20 s) until the fake Stripe has had `count` requests to `path`.
async fn wait_for_requests(stripe: &FakeStripe, path: &str, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stripe.requests(path).len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{path}: fewer than {count} requests"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Starts an account's auto top-up with Stripe in `mode`, and waits until
/// the charge was sent once: (account, token).
async fn auto_top_up_sent_once(setup: &mut Setup, phone: &str, mode: ChargeMode) -> (i64, String) {
    let (account, _, token) = active_account(&setup.app, &mut setup.events, phone).await;
    adjust_to(&setup.app, account, 2_050_000, "to-2.05").await;
    put_auto(&setup.app, account, &token, json!({"enabled": true})).await;
    setup.stripe.set_charge_mode(mode);
    assert_eq!(burst(&setup.app, account, "first", 1).await, 1);
    wait_for_requests(&setup.stripe, "/v1/payment_intents", 1).await;
    actix_rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let view = get_auto(&setup.app, account, &token).await;
    assert_eq!(view["attempts"][0]["status"], "charging", "{view}");
    (account, token)
}

on_both_stores!(a_lost_answer_is_never_sent_again_after_stripe_forgets_its_key);
/// Stripe charges but its answer is lost; then Stripe cannot be reached
/// for 25 hours and, back, has forgotten the key. The charge is not sent
/// again (a forgotten key would charge a second time): Stripe is asked
/// what became of it, and it is credited once.
async fn a_lost_answer_is_never_sent_again_after_stripe_forgets_its_key() {
    let mut setup = setup().await;
    let (account, token) =
        auto_top_up_sent_once(&mut setup, "+14155553720", ChargeMode::AnswerLost).await;
    let Setup {
        app, stripe, clock, ..
    } = &setup;
    stripe.set_unreachable(true);
    // Within the day it is asked again with the same key (and fails).
    clock.advance_ms(31_000);
    wait_for_requests(stripe, "/v1/payment_intents", 2).await;
    // A day later Stripe is back, without the key.
    clock.advance_ms(25 * HOUR_MS);
    stripe.prune_keys();
    stripe.set_charge_mode(ChargeMode::Succeed);
    stripe.set_unreachable(false);
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(stripe.charges_made(), 1, "charged once");
    assert_eq!(
        stripe.requests("/v1/payment_intents").len(),
        2,
        "never sent after the day"
    );
    assert!(!stripe.requests("/v1/payment_intents/search").is_empty());
    assert_eq!(
        app.balance_micros(account).await,
        2_050_000 - US_MESSAGE + 10_000_000,
        "credited once"
    );
}

on_both_stores!(a_charge_that_never_reached_stripe_is_closed_and_charged_once_after_recovery);
/// The first request never reached Stripe; a day later Stripe, asked, has
/// no charge for it: the attempt is closed as not charged, and the next
/// attempt (a new key, after the usual wait) charges once.
async fn a_charge_that_never_reached_stripe_is_closed_and_charged_once_after_recovery() {
    let mut setup = setup().await;
    let (account, token) =
        auto_top_up_sent_once(&mut setup, "+14155553730", ChargeMode::ServerError).await;
    let Setup {
        app, stripe, clock, ..
    } = &setup;
    clock.advance_ms(25 * HOUR_MS);
    stripe.prune_keys();
    stripe.set_charge_mode(ChargeMode::Succeed);
    wait_for_attempts(app, account, &token, |attempts| {
        attempts
            .first()
            .is_some_and(|a| a["status"] == "not_charged")
    })
    .await;
    assert_eq!(stripe.charges_made(), 0);
    assert_eq!(stripe.requests("/v1/payment_intents").len(), 1);
    // After the wait a failure brings (1 h), the next debit starts attempt 2.
    clock.advance_ms(HOUR_MS + 1_000);
    assert_eq!(burst(app, account, "after", 1).await, 1);
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(stripe.charges_made(), 1);
    assert_eq!(
        app.balance_micros(account).await,
        2_050_000 - 2 * US_MESSAGE + 10_000_000
    );
}

on_both_stores!(a_charge_stripe_cannot_be_asked_about_for_days_is_unknown_and_never_sent_blind);
/// Stripe cannot be reached for four days: after the first day the charge
/// is only asked about, never sent; after three it is `unknown`, auto
/// top-up is off with the reason the operator reads, and the reconciliation
/// report lists it. Nothing is charged.
async fn a_charge_stripe_cannot_be_asked_about_for_days_is_unknown_and_never_sent_blind() {
    let mut setup = setup().await;
    let (account, token) =
        auto_top_up_sent_once(&mut setup, "+14155553740", ChargeMode::ServerError).await;
    let Setup {
        app, stripe, clock, ..
    } = &setup;
    stripe.set_unreachable(true);
    clock.advance_ms(25 * HOUR_MS);
    wait_for_requests(stripe, "/v1/payment_intents/search", 1).await;
    assert_eq!(
        stripe.requests("/v1/payment_intents").len(),
        1,
        "not sent again"
    );
    clock.advance_ms(3 * 24 * HOUR_MS);
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "unknown")
    })
    .await;
    assert_eq!(stripe.charges_made(), 0);
    assert_eq!(
        stripe.requests("/v1/payment_intents").len(),
        1,
        "never sent blind"
    );
    assert_eq!(view["enabled"], false, "{view}");
    assert!(
        view["paused_reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("could not be confirmed with Stripe")),
        "{view}"
    );
    // The attempt says why in the server's words: it is not asked again.
    assert_eq!(
        view["attempts"][0]["reason"],
        "undecided: Stripe neither answered nor could be asked what became of the charge",
        "{view}"
    );
    let (status, report) = app
        .request("GET", "/v1/admin/reconciliation", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["auto_top_ups"]["unknown"]["attempts"], 1, "{report}");
}

on_both_stores!(a_search_stripe_refuses_is_not_an_answer);
/// After Stripe may have forgotten the key, its Search API is asked what
/// happened; a 429 (its rate limit) says nothing of the charge: the attempt
/// is not failed but asked about again, and after three days is unknown,
/// as when Stripe cannot be reached.
async fn a_search_stripe_refuses_is_not_an_answer() {
    let mut setup = setup().await;
    let (account, token) =
        auto_top_up_sent_once(&mut setup, "+14155553741", ChargeMode::ServerError).await;
    let Setup {
        app, stripe, clock, ..
    } = &setup;
    stripe.set_search_limited(true);
    clock.advance_ms(25 * HOUR_MS);
    wait_for_requests(stripe, "/v1/payment_intents/search", 1).await;
    // Asked about again later: the refused search decided nothing.
    clock.advance_ms(HOUR_MS);
    wait_for_requests(stripe, "/v1/payment_intents/search", 2).await;
    clock.advance_ms(3 * 24 * HOUR_MS);
    wait_for_attempts(app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "unknown")
    })
    .await;
    assert_eq!(stripe.charges_made(), 0);
    assert_eq!(
        stripe.requests("/v1/payment_intents").len(),
        1,
        "never sent blind"
    );
}

on_both_stores!(a_charge_stripe_rate_limited_is_asked_again_not_failed);
/// The charge is made and its answer lost; Stripe then answers the retry
/// 429 (its rate limit): that says nothing of the charge, so the attempt is
/// not failed (no failure SMS, counted in the month) and, asked again with
/// the same key, is credited once.
async fn a_charge_stripe_rate_limited_is_asked_again_not_failed() {
    let mut setup = setup().await;
    let (account, token) =
        auto_top_up_sent_once(&mut setup, "+14155553742", ChargeMode::AnswerLost).await;
    let Setup {
        app, stripe, clock, ..
    } = &setup;
    stripe.set_rate_limited(true);
    clock.advance_ms(31_000);
    wait_for_requests(stripe, "/v1/payment_intents", 2).await;
    // What the holder reads of it is in the server's words.
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("asked again with the same key"))
    })
    .await;
    assert!(
        !view.to_string().contains("Too many requests"),
        "Stripe's words reach the holder: {view}"
    );
    stripe.set_rate_limited(false);
    clock.advance_ms(31_000);
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(stripe.charges_made(), 1, "charged once");
}

on_both_stores!(a_key_stripe_refuses_is_not_the_holders_failure);
/// Stripe refuses the service's API key (a 401) when an auto top-up is
/// charged: that is the operator's to mend, not the holder's failure — no
/// text to the holder, no failure counted, auto top-up stays on, and the
/// host is never handed Stripe's words —; the charge is sent again, with
/// the same key, once the key works, and charges once.
async fn a_key_stripe_refuses_is_not_the_holders_failure() {
    let mut setup = setup().await;
    let phone = "+14155553743";
    let (account, token) = auto_top_up_sent_once(&mut setup, phone, ChargeMode::KeyRefused).await;
    let Setup {
        app,
        stripe,
        twilio,
        clock,
        ..
    } = &setup;
    let view = get_auto(app, account, &token).await;
    assert_eq!(view["enabled"], true, "{view}");
    assert_eq!(view["consecutive_failures"], 0, "{view}");
    let reason = view["attempts"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refused this service's credentials") && !reason.contains("API Key"),
        "the holder reads: {reason}"
    );
    app.settle_notices(account).await;
    let told: Vec<String> = twilio
        .sent()
        .into_iter()
        .filter(|sms| sms.to == phone && sms.body.to_lowercase().contains("auto top-up"))
        .map(|sms| sms.body)
        .collect();
    assert!(told.is_empty(), "the holder was told: {told:?}");
    let stripes_words = app
        .directory
        .number("SELECT COUNT(*) FROM webhook_events WHERE payload LIKE '%Invalid API Key%'");
    assert_eq!(stripes_words, 0, "Stripe's words reached the host");
    assert_eq!(
        app.directory
            .number("SELECT COUNT(*) FROM webhook_events WHERE type = 'auto_top_up.failed'"),
        0,
        "the host was told the top-up failed"
    );
    stripe.set_charge_mode(ChargeMode::Succeed);
    // Put off for the attempt's lease (a minute).
    clock.advance_ms(61_000);
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(stripe.charges_made(), 1, "charged once");
    let sent = stripe.requests_with("POST", "/v1/payment_intents");
    assert_eq!(sent.len(), 2, "sent again once the key worked");
    assert_eq!(
        sent[0].idempotency_key, sent[1].idempotency_key,
        "with the same key"
    );
}

on_both_stores!(a_buy_stripe_refuses_the_key_for_is_refused_in_the_servers_words);
/// `BUY $10` while Stripe refuses the server's API key (a 401): the
/// customer is told top-ups by SMS are not available now and offered the
/// web (nothing was charged by that request: never "could not confirm"),
/// in the server's words; nothing is charged or credited.
async fn a_buy_stripe_refuses_the_key_for_is_refused_in_the_servers_words() {
    let Setup {
        app,
        stripe,
        mut events,
        ..
    } = setup().await;
    let phone = "+14155553751";
    let (account, _, _) = active_account(&app, &mut events, phone).await;
    let before = app.balance_micros(account).await;
    stripe.set_charge_mode(ChargeMode::KeyRefused);
    let (_, twiml) = app.post_twilio_sms("SMbuykey", phone, "BUY $10").await;
    let reply = reply_text(&twiml);
    assert!(
        reply.starts_with("Top-ups by SMS are not available right now. Top up on the web:"),
        "{reply}"
    );
    assert!(!reply.contains("API Key"), "{reply}");
    assert_eq!(stripe.charges_made(), 0);
    assert_eq!(app.balance_micros(account).await, before);
}

on_both_stores!(buy_by_sms_stops_at_the_daily_limit);
/// `BUY $10` charges at most $30 a day (UTC) per account: the fourth is
/// refused with the way to top up on the web, charges nothing, and the
/// next day it works again. Decided in the store, on both.
async fn buy_by_sms_stops_at_the_daily_limit() {
    let Setup {
        app,
        stripe,
        mut events,
        clock,
        ..
    } = setup().await;
    let phone = "+14155553750";
    active_account(&app, &mut events, phone).await;
    for index in 0..3 {
        let (_, twiml) = app
            .post_twilio_sms(&format!("SMbuy{index}"), phone, "BUY $10")
            .await;
        assert!(
            reply_text(&twiml).starts_with("Thanks! $10.00 was added"),
            "{twiml}"
        );
    }
    let (_, twiml) = app.post_twilio_sms("SMbuy3", phone, "BUY $10").await;
    let reply = reply_text(&twiml);
    assert!(
        reply.starts_with(
            "You have bought $30.00 by SMS today, the most in a day. Top up on the web:"
        ),
        "{reply}"
    );
    assert_eq!(stripe.charges_made(), 3);
    clock.advance_ms(24 * HOUR_MS);
    let (_, twiml) = app.post_twilio_sms("SMbuy4", phone, "BUY $10").await;
    assert!(
        reply_text(&twiml).starts_with("Thanks! $10.00 was added"),
        "{twiml}"
    );
    assert_eq!(stripe.charges_made(), 4);
}

/// The auto top-up notices that say a charge failed, sent to `phone`.
fn failure_notices(twilio: &FakeTwilio, phone: &str) -> Vec<String> {
    twilio
        .sent()
        .into_iter()
        .filter(|sms| {
            sms.to == phone
                && (sms.body.contains("could not be charged") || sms.body.contains("was declined"))
        })
        .map(|sms| sms.body)
        .collect()
}

on_both_stores!(a_charge_another_instance_is_still_sending_is_neither_failed_nor_charged_twice);
/// One instance's charge is slow at Stripe, past its lease; the other
/// instance claims the attempt and sends the same key, and Stripe answers
/// 409 (`idempotency_error`: the key's first request is in progress). That
/// is no decline: the attempt stays charging (no failure, no SMS), and when
/// the first answer comes it succeeds, charged and credited once.
async fn a_charge_another_instance_is_still_sending_is_neither_failed_nor_charged_twice() {
    let (mut setup, second) = setup_and_second(true).await;
    let phone = "+14155553760";
    let (account, token) = auto_top_up_sent_once(&mut setup, phone, ChargeMode::Held).await;
    let Setup {
        app,
        stripe,
        twilio,
        clock,
        ..
    } = &setup;
    // The lease runs out while the charge is held: the instance that did
    // not send it claims it, and sends the same key.
    clock.advance_ms(31_000);
    wait_for_requests(stripe, "/v1/payment_intents", 2).await;
    let charges = stripe.requests("/v1/payment_intents");
    assert_eq!(charges[0].idempotency_key, charges[1].idempotency_key);
    assert_eq!(stripe.conflicts(), 1, "Stripe answered the second 409");
    // What the 409 came to is written (a retry later, or an end).
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts[0]["status"] != "charging" || !attempts[0]["reason"].is_null()
    })
    .await;
    assert_eq!(view["attempts"][0]["status"], "charging", "{view}");
    assert_eq!(view["consecutive_failures"], 0, "{view}");
    assert_eq!(stripe.charges_made(), 1);

    // The first request's answer arrives: charged and credited once.
    stripe.release();
    let view = wait_for_attempts(app, account, &token, |attempts| {
        attempts[0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["month_charged_micros"], 10_000_000, "{view}");
    assert_eq!(stripe.charges_made(), 1);
    assert_eq!(
        app.balance_micros(account).await,
        2_050_000 - US_MESSAGE + 10_000_000,
        "credited once"
    );
    app.settle_notices(account).await;
    assert_eq!(failure_notices(twilio, phone), Vec::<String>::new());
    let (_, verify) = app
        .request("GET", "/v1/admin/verify", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(verify["clean"], true, "{verify}");
    second.unwrap().stop().await;
}

/// An account with a saved card, auto top-up on (the defaults: $10 below
/// $2.00) and no credit, made through the store of `core`.
pub(crate) async fn account_due_for_a_top_up(
    core: &sms_credit::startup::Core,
    phone: &str,
) -> AccountId {
    use sms_credit_actors::accounts::Card;
    use sms_credit_actors::billing::auto_charge::change;
    use sms_credit_actors::billing::auto_top_up::{ConsentVia, SettingRequest};
    let account = crate::ledger_actors::new_account(core, phone).await;
    let customer = format!("cus_due_{account}");
    core.store
        .accounts()
        .set_stripe_customer(account, customer.clone())
        .await
        .unwrap();
    let card = Card {
        brand: "visa".into(),
        last4: "4242".into(),
        exp_month: 8,
        exp_year: 2030,
    };
    core.store
        .billing()
        .save_card(customer, SAVED_CARD.to_string(), Some(card))
        .await
        .unwrap();
    let on = SettingRequest {
        enabled: Some(true),
        ..SettingRequest::default()
    };
    change(&core.store, account, on, ConsentVia::Admin, NOW_UNIX * 1000)
        .await
        .unwrap();
    account
}

on_both_stores!(two_instances_charge_each_due_attempt_once_and_fail_none_that_succeeded);
/// Two instances' workers on one database, one clock. The first takes up
/// two due attempts and its first charge is slow at Stripe, past the
/// lease; then the second runs. No key is sent by two instances but the
/// one whose lease ran out (which Stripe answers 409, and which is no
/// failure): each attempt is charged once and succeeds, none ends failed,
/// no failure notice is queued, and what counts toward the monthly cap is
/// what was charged.
async fn two_instances_charge_each_due_attempt_once_and_fail_none_that_succeeded() {
    use sms_credit_actors::billing::auto_top_up::{month_key, AttemptStatus, Begin};
    use std::sync::Arc;
    let stripe = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &stripe.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let first = sms_credit::startup::Core::start(&settings, Arc::new(clock.clone())).unwrap();
    let second = sms_credit::startup::Core::start(&settings, Arc::new(clock.clone())).unwrap();
    let (first_billing, second_billing) = (
        first.billing.clone().unwrap(),
        second.billing.clone().unwrap(),
    );
    let mut accounts = Vec::new();
    for phone in ["+14155553770", "+14155553771"] {
        let account = account_due_for_a_top_up(&first, phone).await;
        let begun = first_billing
            .request_auto_top_up(account, NOW_UNIX * 1000)
            .await
            .unwrap();
        assert!(begun.is_some(), "{begun:?}");
        accounts.push(account);
    }
    let keys: Vec<String> = accounts
        .iter()
        .map(|account| format!("sms-credit-charge-auto-top-up-{account}-1"))
        .collect();
    let sent_with = |key: &str| {
        stripe
            .requests("/v1/payment_intents")
            .iter()
            .filter(|request| request.idempotency_key.as_deref() == Some(key))
            .count()
    };

    // The first instance's round: its first charge is held at Stripe.
    stripe.set_charge_mode(ChargeMode::Held);
    let first_round = actix_rt::spawn(async move { first_billing.run_auto_top_ups().await });
    wait_for_requests(&stripe, "/v1/payment_intents", 1).await;
    // Its lease runs out; the second instance's round takes up what is due.
    clock.advance_ms(31_000);
    let second_round = actix_rt::spawn(async move { second_billing.run_auto_top_ups().await });
    wait_for_requests(&stripe, "/v1/payment_intents", 3).await;
    stripe.release();
    for round in [first_round, second_round] {
        let taken = actix_rt::time::timeout(std::time::Duration::from_secs(20), round)
            .await
            .expect("a round of auto top-ups ends within 20 s")
            .unwrap();
        assert!(taken.is_ok(), "{taken:?}");
    }

    let month = month_key(NOW_UNIX * 1000);
    for account in &accounts {
        let attempts = first
            .store
            .auto_top_up()
            .auto_top_ups_of(*account, 10)
            .await
            .unwrap();
        let statuses: Vec<AttemptStatus> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [AttemptStatus::Succeeded], "{attempts:?}");
        assert_eq!(
            first
                .store
                .auto_top_up()
                .month_charged(*account, month.clone())
                .await
                .unwrap(),
            Money::from_micros(10_000_000),
            "what counts toward the cap is what was charged"
        );
        let notices = first
            .store
            .messages()
            .notices_of(*account, 10)
            .await
            .unwrap();
        assert!(
            notices
                .iter()
                .all(|notice| !matches!(notice.kind, NoticeKind::AutoTopUp { .. })),
            "no failure notice: {notices:?}"
        );
        assert_eq!(
            first
                .store
                .ledger()
                .snapshot(*account)
                .await
                .unwrap()
                .unwrap()
                .balance,
            Money::from_micros(10_000_000),
            "credited once"
        );
        // Asked again now, nothing starts: the balance is above the threshold.
        let again = first
            .billing
            .as_ref()
            .unwrap()
            .store
            .auto_top_up()
            .begin_auto_top_up(*account, month.clone(), NOW_UNIX * 1000 + 31_000)
            .await
            .unwrap();
        assert!(matches!(again, Begin::NotStarted(_)), "{again:?}");
    }
    assert_eq!(stripe.charges_made(), 2, "one charge per attempt");
    assert_eq!(
        (sent_with(&keys[0]), sent_with(&keys[1])),
        (2, 1),
        "the held charge's key again only by the instance that claimed it after its lease \
         (409), the other's by one instance only"
    );
    first.shutdown().await;
    second.shutdown().await;
}

on_both_stores!(an_attempts_claim_number_guards_what_its_worker_writes);
/// Each claim of an attempt is numbered: the worker whose lease ran out
/// and whose attempt another claimed can neither renew the lease (so it
/// does not send the charge) nor put the attempt off; the one holding the
/// last claim can. Claims take one attempt at a time when asked to.
async fn an_attempts_claim_number_guards_what_its_worker_writes() {
    use sms_credit_actors::billing::auto_top_up::{
        month_key, AfterAttempt, AttemptEnd, AttemptStatus, Begin,
    };
    let directory = fresh_directory();
    let core = crate::helpers::start_core(&directory, std::time::Duration::from_secs(3600));
    let now = NOW_UNIX * 1000;
    let auto = core.store.auto_top_up();
    let mut attempts = Vec::new();
    for phone in ["+14155553780", "+14155553781"] {
        let account = account_due_for_a_top_up(&core, phone).await;
        match auto
            .begin_auto_top_up(account, month_key(now), now)
            .await
            .unwrap()
        {
            Begin::Started(attempt) => attempts.push(attempt),
            other => panic!("no attempt started: {other:?}"),
        }
    }
    let claimed = auto.claim_auto_top_ups(now, now + 30_000, 1).await.unwrap();
    assert_eq!(
        claimed.iter().map(|a| (a.id, a.claim)).collect::<Vec<_>>(),
        [(attempts[0].id, 1)],
        "one attempt, the oldest, under claim 1"
    );
    let id = attempts[0].id;
    assert!(auto.renew_auto_top_up(id, 1, now + 40_000).await.unwrap());
    // The lease runs out: another worker claims it (and the other attempt).
    let claimed = auto
        .claim_auto_top_ups(now + 41_000, now + 71_000, 5)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|a| (a.id, a.claim)).collect::<Vec<_>>(),
        [(id, 2), (attempts[1].id, 1)]
    );
    // The first worker's claim is gone: nothing it writes counts.
    assert!(!auto.renew_auto_top_up(id, 1, now + 100_000).await.unwrap());
    auto.auto_top_up_later(id, 1, now, "stale".into())
        .await
        .unwrap();
    assert!(
        auto.claim_auto_top_ups(now + 42_000, now + 72_000, 5)
            .await
            .unwrap()
            .is_empty(),
        "the stale worker did not make it due"
    );
    let stored = auto
        .auto_top_ups_of(attempts[0].account_id, 1)
        .await
        .unwrap();
    assert_eq!(stored[0].reason, None, "{stored:?}");
    // Nor can it end the attempt (a card it found gone, a failure it was
    // answered) while the last claim's holder may be charging it.
    let stale_end = AttemptEnd {
        attempt_id: id,
        status: AttemptStatus::Failed,
        reason: Some("no saved card".into()),
        payment_intent_id: None,
        claim: Some(1),
        after: AfterAttempt::Failure {
            not_before_ms: now + 3_600_000,
            turn_off: None,
        },
        notices: Vec::new(),
        events: Vec::new(),
        now_ms: now + 42_000,
    };
    assert_eq!(auto.end_auto_top_up(stale_end).await.unwrap(), None);
    let stored = auto
        .auto_top_ups_of(attempts[0].account_id, 1)
        .await
        .unwrap();
    assert_eq!(
        (stored[0].status, stored[0].reason.clone()),
        (AttemptStatus::Charging, None),
        "the stale worker ended nothing: {stored:?}"
    );
    let settings = auto
        .auto_settings(attempts[0].account_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.consecutive_failures, 0, "no failure counted");
    // The last claim's holder renews it and puts it off.
    assert!(auto.renew_auto_top_up(id, 2, now + 80_000).await.unwrap());
    auto.auto_top_up_later(id, 2, now + 90_000, "Stripe away".into())
        .await
        .unwrap();
    assert!(auto
        .claim_auto_top_ups(now + 89_999, now + 119_999, 1)
        .await
        .unwrap()
        .iter()
        .all(|a| a.id != id));
    let claimed = auto
        .claim_auto_top_ups(now + 90_000, now + 120_000, 1)
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|a| (a.id, a.claim, a.reason.clone()))
            .collect::<Vec<_>>(),
        [(id, 3, Some("Stripe away".to_string()))]
    );
    core.shutdown().await;
}

on_both_stores!(credit_that_expires_below_the_threshold_warns_and_tops_up_like_a_debit);
/// An expiry is the first drop of a balance nobody asked for: one that
/// leaves the balance below the threshold warns the holder and starts an
/// auto top-up, as a debit would, though no message was sent.
async fn credit_that_expires_below_the_threshold_warns_and_tops_up_like_a_debit() {
    let Setup {
        app,
        stripe,
        twilio,
        mut events,
        clock,
    } = setup().await;
    let phone = "+14155553410";
    let (account, _, token) = active_account(&app, &mut events, phone).await;
    let (status, body) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // $10 promotional, spent last (priority 100), expiring in an hour; the
    // included $5 taken down to a cent.
    let expires_ms = NOW_UNIX * 1000 + 3_600_000;
    for body in [
        json!({"amount_micros": 10_000_000, "reason": "welcome", "idempotency_key": "welcome",
               "category": "promotional", "priority": 100,
               "expires_at": sms_credit_actors::clock::format_rfc3339_ms(expires_ms)}),
        json!({"amount_micros": -4_990_000, "reason": "test", "idempotency_key": "down"}),
    ] {
        let (status, answer) = app
            .request(
                "POST",
                &format!("/v1/admin/accounts/{account}/adjustments"),
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(app.balance_micros(account).await, 10_010_000);
    assert!(app.settle_notices(account).await.is_empty());

    // Past the expiry (and a sweep's round): the $10 expires, the cent is
    // left, the holder is warned and the card charged $10.
    clock.advance_ms(3_600_000 + 31_000);
    let view = wait_for_attempts(&app, account, &token, |attempts| {
        attempts.len() == 1 && attempts[0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(view["attempts"][0]["amount_micros"], 10_000_000, "{view}");
    assert_eq!(stripe.charges_made(), 1);
    assert_eq!(app.balance_micros(account).await, 10_010_000);
    let warnings = app.settle_notices(account).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        twilio
            .sent()
            .iter()
            .any(|sms| sms.to == phone && sms.body.contains("credit is low")),
        "a low-balance warning: {:?}",
        twilio.sent()
    );
}

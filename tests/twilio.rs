//! Twilio: signed inbound SMS and their commands, charged outbound messages,
//! status callbacks, low-balance warnings across a restart, and
//! reconciliation, against a fake Twilio (and a fake Stripe for BUY).

use awc::http::StatusCode;
use serde_json::json;
use sms_credit_actors::clock::ManualClock;

use crate::fake_stripe::{ChargeMode, EventFactory, FakeStripe};
use crate::fake_twilio::{FakeTwilio, SendMode};
use crate::helpers::{
    fresh_directory, run_cli, stripe_settings, test_settings, twilio_sid, twilio_sms_fields,
    with_twilio, TestApp, ADMIN_TOKEN,
};
use crate::ledger_actors::assert_verified;

const START_MS: i64 = 1_795_253_400_000;

pub(crate) async fn app_with_twilio() -> (TestApp, FakeTwilio) {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    (TestApp::spawn_with(directory, settings).await, fake)
}

/// The text of a TwiML reply.
fn reply_text(twiml: &str) -> Option<String> {
    let start = twiml.find("<Message>")? + "<Message>".len();
    let end = twiml.find("</Message>")?;
    Some(
        twiml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

pub(crate) async fn account_with_balance(app: &TestApp, phone: &str, micros: i64) -> i64 {
    let id = app.create_account(phone).await;
    if micros != 0 {
        let (status, body) = app.post_adjustment(id, micros, &format!("seed-{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    id
}

on_both_stores!(without_twilio_the_sms_features_are_not_configured);
async fn without_twilio_the_sms_features_are_not_configured() {
    let app = TestApp::spawn().await;
    for path in ["/webhooks/twilio/sms", "/webhooks/twilio/status"] {
        let (status, body) = app.post_twilio(path, &[("MessageSid", "SM1")], None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("twilio_not_configured"));
    }
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.access.api_key = Some(sms_credit::config::Secret::new(crate::helpers::API_KEY));
    let app = TestApp::spawn_with(directory, settings).await;
    let (status, body) = app
        .post_message(json!({"to": "+14155551234", "body": "hi", "idempotency_key": "k"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("twilio_not_configured")
        )
    );
}

on_both_stores!(inbound_commands_answer_in_twiml);
async fn inbound_commands_answer_in_twiml() {
    let (app, _fake) = app_with_twilio().await;
    account_with_balance(&app, "+14155552000", 2_350_000).await;

    let (status, twiml) = app
        .post_twilio_sms("SMin1", "+14155552000", "  balance ")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        twiml.starts_with("<?xml") && twiml.contains("<Response><Message>"),
        "{twiml}"
    );
    assert_eq!(
        reply_text(&twiml).as_deref(),
        Some("Your balance is $2.35: about 41 SMS segments to US at $0.0565 each.")
    );
    let (_, twiml) = app.post_twilio_sms("SMin2", "+14155552000", "BAL").await;
    assert!(reply_text(&twiml)
        .unwrap()
        .starts_with("Your balance is $2.35"));
    let (_, twiml) = app.post_twilio_sms("SMin3", "+14155552000", "help").await;
    assert!(reply_text(&twiml).unwrap().contains("BUY $10"));
    let (_, twiml) = app
        .post_twilio_sms("SMin4", "+14155552000", "what is the weather")
        .await;
    assert!(reply_text(&twiml).unwrap().contains("Text HELP"));
    let (_, twiml) = app
        .post_twilio_sms("SMin5", "+14155552000", "BUY $25")
        .await;
    assert!(
        reply_text(&twiml).unwrap().contains("only")
            || reply_text(&twiml).unwrap().contains("other amounts"),
        "{twiml}"
    );
    let (_, twiml) = app
        .post_twilio_sms("SMin6", "+14155552000", "BUY $10")
        .await;
    assert!(
        reply_text(&twiml).unwrap().contains("not available"),
        "no Stripe here: {twiml}"
    );

    // An unknown number gets the sign-up link and nothing else happens.
    let (status, twiml) = app
        .post_twilio_sms("SMin7", "+14155552999", "BALANCE")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        reply_text(&twiml)
            .unwrap()
            .contains("https://sms.example.com/account"),
        "{twiml}"
    );
    let (status, _) = app.post_admin_account("+14155552999", None).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "no account was made for the unknown number"
    );
}

on_both_stores!(a_repeated_message_sid_gets_the_same_reply);
async fn a_repeated_message_sid_gets_the_same_reply() {
    let (app, _fake) = app_with_twilio().await;
    let id = account_with_balance(&app, "+14155552100", 1_000_000).await;
    let (first_status, first) = app
        .post_twilio_sms("SMdup", "+14155552100", "BALANCE")
        .await;
    assert_eq!(first_status, StatusCode::OK, "{first}");
    app.post_adjustment(id, 5_000_000, "later").await;
    let (status, again) = app
        .post_twilio_sms("SMdup", "+14155552100", "BALANCE")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again, first,
        "the retry is answered as the first delivery was"
    );
    let (_, fresh) = app
        .post_twilio_sms("SMdup2", "+14155552100", "BALANCE")
        .await;
    assert!(reply_text(&fresh)
        .unwrap()
        .starts_with("Your balance is $6.00"));
}

on_both_stores!(bad_signatures_and_malformed_forms_are_refused);
async fn bad_signatures_and_malformed_forms_are_refused() {
    let (app, _fake) = app_with_twilio().await;
    let id = account_with_balance(&app, "+14155552200", 1_000_000).await;
    let sid = twilio_sid("sig");
    let owned = twilio_sms_fields(&sid, "+14155552200", "BALANCE");
    let fields = borrowed(&owned);
    let (status, _) = app
        .post_twilio("/webhooks/twilio/sms", &fields, Some("not-the-signature"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post_twilio("/webhooks/twilio/sms", &fields, Some(""))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Signed over other values than those sent.
    let forged = sms_credit::twilio::signature::compute(
        crate::fake_twilio::AUTH_TOKEN,
        "https://sms.example.com/webhooks/twilio/sms",
        &twilio_sms_fields(&sid, "+14155552200", "HELP"),
    );
    let (status, _) = app
        .post_twilio("/webhooks/twilio/sms", &fields, Some(&forged))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // No MessageSid: 400 with a reason.
    let (status, body) = app
        .post_twilio(
            "/webhooks/twilio/sms",
            &borrowed(&without(&owned, "MessageSid")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("MessageSid"), "{body}");
    let (status, _) = app
        .post_raw("/webhooks/twilio/sms", "application/json", b"{}".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .post_raw(
            "/webhooks/twilio/sms",
            "application/x-www-form-urlencoded",
            b"%ZZ=%G1&".to_vec(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_form"))
    );
    let (status, body) = app
        .post_raw(
            "/webhooks/twilio/sms",
            "application/x-www-form-urlencoded",
            b"MessageSid=SMx&Body=%FF".to_vec(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_form"))
    );
    let oversized = format!(
        "MessageSid=SMbig&From=%2B14155552200&Body={}",
        "a".repeat(70 * 1024)
    );
    let (status, body) = app
        .post_raw(
            "/webhooks/twilio/sms",
            "application/x-www-form-urlencoded",
            oversized.into_bytes(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    // Nothing was recorded for the sid: a genuine delivery is handled afresh.
    let (status, twiml) = app.post_twilio("/webhooks/twilio/sms", &fields, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(reply_text(&twiml)
        .unwrap()
        .starts_with("Your balance is $1.00"));
    assert_eq!(app.get_admin_account(id).await.1["seq"], 1);
}

on_both_stores!(buy_by_sms_charges_the_saved_card_once_or_says_why_not);
async fn buy_by_sms_charges_the_saved_card_once_or_says_why_not() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();

    // Access bought by Checkout, while Stripe cannot say which card paid.
    stripe.set_retrieve_fails(true);
    let (_, started) = app
        .post_checkout_access("+14155552300", "hiker@example.com", None)
        .await;
    let (account, order) = (
        started["account_id"].as_i64().unwrap(),
        started["order_id"].as_i64().unwrap(),
    );
    let session = app.get_orders(account).await[0]["stripe_session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = app.get_admin_account(account).await.1["stripe_customer_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.deliver(&events.checkout_completed(&session, order, &customer, 2999, "pi_access"))
        .await;
    let (_, twiml) = app
        .post_twilio_sms("SMbuy0", "+14155552300", "BUY $10")
        .await;
    assert!(
        reply_text(&twiml).unwrap().contains("no saved card"),
        "{twiml}"
    );

    // Stripe answers again: the card is asked for at charge time.
    stripe.set_retrieve_fails(false);
    let (_, twiml) = app
        .post_twilio_sms("SMbuy1", "+14155552300", "buy 10")
        .await;
    assert_eq!(
        reply_text(&twiml).as_deref(),
        Some("Thanks! $10.00 was added from your card ending 4242. Your balance is $15.00.")
    );
    app.deliver(&events.payment_intent_succeeded(
        "pi_access",
        2999,
        &customer,
        json!({"sms_credit_purpose": "checkout"}),
    ))
    .await;
    let (_, again) = app
        .post_twilio_sms("SMbuy1", "+14155552300", "buy 10")
        .await;
    assert_eq!(again, twiml);
    assert_eq!(
        stripe.charges_made(),
        1,
        "a retried MessageSid never charges twice"
    );
    let charge = stripe.requests("/v1/payment_intents");
    assert!(charge[0]
        .idempotency_key
        .as_deref()
        .unwrap()
        .contains(&twilio_sid("SMbuy1")));

    stripe.set_charge_mode(ChargeMode::Decline);
    let (_, twiml) = app
        .post_twilio_sms("SMbuy2", "+14155552300", "BUY $10.00")
        .await;
    assert!(
        reply_text(&twiml).unwrap().contains("not charged"),
        "{twiml}"
    );
    stripe.set_charge_mode(ChargeMode::RequireAuthentication);
    let (_, twiml) = app
        .post_twilio_sms("SMbuy3", "+14155552300", "BUY $10")
        .await;
    assert!(
        reply_text(&twiml).unwrap().contains("confirm this payment"),
        "{twiml}"
    );
    assert!(reply_text(&twiml)
        .unwrap()
        .contains("https://sms.example.com/account"));
    // Stripe failed: the card may have been charged, so that is what the
    // reply says (see the tests below).
    stripe.set_charge_mode(ChargeMode::ServerError);
    let (_, twiml) = app
        .post_twilio_sms("SMbuy4", "+14155552300", "BUY $10")
        .await;
    assert!(
        reply_text(&twiml).unwrap().starts_with(UNCONFIRMED),
        "{twiml}"
    );
    let (_, twiml) = app
        .post_twilio_sms("SMbuy5", "+14155552300", "BUY $5")
        .await;
    assert!(
        reply_text(&twiml).unwrap().contains("top up on the web"),
        "{twiml}"
    );
    assert_eq!(app.balance_micros(account).await, 15_000_000);
}

/// How the reply to a `BUY` whose charge Stripe has not answered begins.
const UNCONFIRMED: &str = "We could not confirm your $10.00 payment yet.";

/// The answer stored for the MessageSid of the message labelled `label`
/// (`None`: none yet).
async fn stored_answer(app: &TestApp, label: &str) -> Option<Option<String>> {
    let store = app.store.as_ref().expect("an in-process server");
    store
        .messages()
        .inbound_reply_and_account(twilio_sid(label), None)
        .await
        .unwrap()
        .0
}

/// A server with a fake Stripe and a fake Twilio, and a second one on the
/// same database when `second` says so, on one clock.
async fn app_with_stripe_and_twilio(
    second: bool,
) -> (
    TestApp,
    Option<TestApp>,
    FakeStripe,
    FakeTwilio,
    ManualClock,
) {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let clock = ManualClock::new(START_MS);
    let app = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let other = match second {
        true => Some(TestApp::spawn_with_clock(directory, settings, clock.clone()).await),
        false => None,
    };
    (app, other, stripe, twilio, clock)
}

on_both_stores!(a_buy_stripe_did_not_answer_is_unconfirmed_and_asked_again_never_refused);
/// Stripe answers the `BUY`'s charge with a 500: the card may have been
/// charged, so the reply says the payment is not confirmed yet, and that
/// is never stored as the MessageSid's answer. Twilio's retry asks Stripe
/// again with the same key, and once Stripe has charged (its answer lost
/// on the way, then given to the retry) the account is credited once and
/// the MessageSid answered for good.
async fn a_buy_stripe_did_not_answer_is_unconfirmed_and_asked_again_never_refused() {
    let (app, _, stripe, _twilio, _clock) = app_with_stripe_and_twilio(false).await;
    let mut events = EventFactory::new();
    let phone = "+14155552310";
    let (account, _, _) = crate::stripe::active_account(&app, &mut events, phone).await;
    assert_eq!(app.balance_micros(account).await, 5_000_000);

    stripe.set_charge_mode(ChargeMode::ServerError);
    for attempt in 1..=2 {
        let (status, twiml) = app.post_twilio_sms("SMunsure", phone, "BUY $10").await;
        assert_eq!(status, StatusCode::OK, "{twiml}");
        let reply = reply_text(&twiml).unwrap();
        assert!(
            reply.starts_with(UNCONFIRMED),
            "delivery {attempt}: {reply}"
        );
        assert!(
            !reply.contains("not available"),
            "delivery {attempt}: {reply}"
        );
        assert_eq!(
            stored_answer(&app, "SMunsure").await,
            None,
            "delivery {attempt}: an unknown outcome is no answer"
        );
    }
    let charges = stripe.requests("/v1/payment_intents");
    assert_eq!(charges.len(), 2, "the retry asked Stripe again");
    assert_eq!(charges[0].idempotency_key, charges[1].idempotency_key);

    // Stripe charges, and its answer is lost again: still not confirmed.
    stripe.set_charge_mode(ChargeMode::AnswerLost);
    let (_, twiml) = app.post_twilio_sms("SMunsure", phone, "BUY $10").await;
    assert!(
        reply_text(&twiml).unwrap().starts_with(UNCONFIRMED),
        "{twiml}"
    );
    assert_eq!(stored_answer(&app, "SMunsure").await, None);
    assert_eq!(stripe.charges_made(), 1);

    // The next retry gets Stripe's answer for the key: credited once.
    stripe.set_charge_mode(ChargeMode::Succeed);
    let settled = "Thanks! $10.00 was added from your card ending 4242. Your balance is $15.00.";
    let (_, twiml) = app.post_twilio_sms("SMunsure", phone, "BUY $10").await;
    assert_eq!(reply_text(&twiml).as_deref(), Some(settled));
    assert_eq!(
        stored_answer(&app, "SMunsure").await,
        Some(Some(settled.to_string()))
    );
    let (_, again) = app.post_twilio_sms("SMunsure", phone, "BUY $10").await;
    assert_eq!(again, twiml, "answered from the store");
    assert_eq!(stripe.requests("/v1/payment_intents").len(), 4);
    assert_eq!(stripe.charges_made(), 1, "charged once");
    assert_eq!(
        app.balance_micros(account).await,
        15_000_000,
        "credited once"
    );
}

on_both_stores!(a_buy_stripe_holds_is_answered_in_time_and_credited_once_when_it_lands);
/// Stripe takes the `BUY`'s charge and holds its answer. The webhook is
/// answered within Twilio's 15 s, saying the payment is not confirmed yet;
/// Twilio's retries, to this instance and another at once, are answered
/// alike and never send the charge again while it goes on; a retry after
/// the claim's lease would have run out sends the same key, which Stripe
/// answers 409 — "not confirmed yet" again, never a refusal. When Stripe
/// answers, the charge still going on credits it once and settles the
/// MessageSid, and Stripe's own event of the payment credits nothing more.
async fn a_buy_stripe_holds_is_answered_in_time_and_credited_once_when_it_lands() {
    let (app, other, stripe, _twilio, clock) = app_with_stripe_and_twilio(true).await;
    let other = other.unwrap();
    let mut events = EventFactory::new();
    let phone = "+14155552320";
    let (account, customer, _) = crate::stripe::active_account(&app, &mut events, phone).await;
    let bound = std::time::Duration::from_secs(14);

    stripe.set_charge_mode(ChargeMode::Held);
    let (status, twiml, took) = app
        .post_twilio_sms_waiting("SMheld", phone, "BUY $10")
        .await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert!(took < bound, "answered after {took:?}");
    assert!(
        reply_text(&twiml).unwrap().starts_with(UNCONFIRMED),
        "{twiml}"
    );
    assert_eq!(stored_answer(&app, "SMheld").await, None);
    assert_eq!(stripe.charges_made(), 1);
    assert_eq!(app.balance_micros(account).await, 5_000_000);

    // Twilio's retry, to both instances at once, while the charge is held.
    let (here, there) = futures_util::join!(
        app.post_twilio_sms_waiting("SMheld", phone, "BUY $10"),
        other.post_twilio_sms_waiting("SMheld", phone, "BUY $10"),
    );
    for (status, twiml, took) in [here, there] {
        assert_eq!(status, StatusCode::OK, "{twiml}");
        assert!(took < bound, "answered after {took:?}");
        assert!(
            reply_text(&twiml).unwrap().starts_with(UNCONFIRMED),
            "{twiml}"
        );
    }
    assert_eq!(
        stripe.requests("/v1/payment_intents").len(),
        1,
        "not sent again while it goes on"
    );
    assert_eq!(stripe.conflicts(), 0);

    // Past the lease (as if the first instance had stalled): the other
    // instance may take the claim over and send the same key (Stripe: 409).
    clock.advance_ms(61_000);
    let (status, twiml, took) = other
        .post_twilio_sms_waiting("SMheld", phone, "BUY $10")
        .await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert!(took < bound, "answered after {took:?}");
    assert!(
        reply_text(&twiml).unwrap().starts_with(UNCONFIRMED),
        "{twiml}"
    );
    assert_eq!(stored_answer(&app, "SMheld").await, None);

    // Stripe answers the first request: credited once, the MessageSid
    // answered with the outcome.
    stripe.release();
    let settled = "Thanks! $10.00 was added from your card ending 4242. Your balance is $15.00.";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored_answer(&app, "SMheld").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the held charge never settled its MessageSid (balance {})",
            app.balance_micros(account).await
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        stored_answer(&app, "SMheld").await,
        Some(Some(settled.to_string()))
    );
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    for instance in [&app, &other] {
        let (_, twiml) = instance.post_twilio_sms("SMheld", phone, "BUY $10").await;
        assert_eq!(reply_text(&twiml).as_deref(), Some(settled));
    }
    let orders = app.get_orders(account).await;
    let bought = orders
        .iter()
        .find(|order| order["order_type"] == "top_up")
        .unwrap_or_else(|| panic!("no top-up order: {orders:?}"));
    let payment_intent = bought["stripe_payment_intent_id"].as_str().unwrap();
    let succeeded = events.payment_intent_succeeded(
        payment_intent,
        1000,
        &customer,
        json!({"sms_credit_purpose": "off_session_top_up", "sms_credit_order_id": bought["id"].to_string()}),
    );
    assert_eq!(app.deliver(&succeeded).await.0, StatusCode::OK);
    assert_eq!(
        app.balance_micros(account).await,
        15_000_000,
        "credited once"
    );
    assert_eq!(stripe.charges_made(), 1, "charged once");
    let (_, verify) = app
        .request(
            "GET",
            "/v1/admin/verify",
            Some(crate::helpers::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(verify["clean"], true, "{verify}");
    other.stop().await;
}

on_both_stores!(outbound_messages_reserve_send_and_resolve_once);
async fn outbound_messages_reserve_send_and_resolve_once() {
    let (app, fake) = app_with_twilio().await;
    let account = account_with_balance(&app, "+14155552400", 200_000).await;
    let body = "a".repeat(200); // 2 GSM-7 segments × 5.65¢ = 11.3¢

    let (status, answer) = app
        .request(
            "POST",
            "/v1/messages",
            None,
            Some(json!({"account_id": account, "body": "x", "idempotency_key": "k"})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );

    let (status, sent) = app
        .post_message(json!({"account_id": account, "body": body, "idempotency_key": "forecast-1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(sent["message"]["segments"], 2);
    assert_eq!(sent["message"]["charged_micros"], 113_000);
    assert_eq!(sent["message"]["state"], "sent");
    assert_eq!(sent["balance_after_micros"], 87_000);
    let messages = fake.wait_for(2).await;
    assert_eq!(
        messages.len(),
        2,
        "the message, then the low-balance warning it caused"
    );
    assert_eq!(
        (messages[0].to.as_str(), messages[0].from.as_str()),
        ("+14155552400", crate::fake_twilio::FROM)
    );
    assert_eq!(
        sent["message"]["twilio_sid"].as_str(),
        Some(messages[0].sid.as_str())
    );
    assert_eq!(
        messages[0].status_callback.as_deref(),
        Some("https://sms.example.com/webhooks/twilio/status")
    );
    assert!(
        messages[1]
            .body
            // Exactly: $0.087, not $0.08 (cut short).
            .starts_with("Your SMS credit is low: $0.087 left"),
        "{}",
        messages[1].body
    );

    let (status, again) = app
        .post_message(json!({"to": "+14155552400", "body": body, "idempotency_key": "forecast-1"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (again["replayed"].as_bool(), again["message"]["id"].clone()),
        (Some(true), sent["message"]["id"].clone())
    );
    app.settle_notices(account).await;
    assert_eq!(fake.sent().len(), 2, "the same key is sent once");

    // Not enough credit: 402 and nothing sent.
    let (status, refused) = app
        .post_message(json!({"account_id": account, "body": body, "idempotency_key": "forecast-2"}))
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("insufficient_credit"))
    );
    assert_eq!(fake.sent().len(), 2);

    // Twilio refuses: the reservation is given back.
    app.post_adjustment(account, 1_000_000, "top-up").await;
    fake.set_mode(SendMode::Refuse);
    let (status, failed) = app
        .post_message(json!({"account_id": account, "body": "hi", "idempotency_key": "forecast-3"}))
        .await;
    assert_eq!(
        (status, failed["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("twilio_error"))
    );
    assert_eq!(app.balance_micros(account).await, 1_087_000);
    // The same key again: not the same 502 (which reads as "try again"),
    // but a code of its own saying that the key is spent and a new one is
    // needed; nothing is sent or charged, whatever Twilio would do now.
    fake.set_mode(SendMode::Accept);
    let sent_before = fake.sent().len();
    let (status, spent) = app
        .post_message(json!({"account_id": account, "body": "hi", "idempotency_key": "forecast-3"}))
        .await;
    assert_eq!(
        (status, spent["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_key_spent")),
        "{spent}"
    );
    assert!(
        spent["error"]["message"]
            .as_str()
            .unwrap()
            .contains("new idempotency key"),
        "{spent}"
    );
    assert_eq!(fake.sent().len(), sent_before, "nothing sent");
    assert_eq!(app.balance_micros(account).await, 1_087_000);
    // Listed, the send that was not made does not read as a charge.
    let (_, listed) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/messages"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let voided = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|message| message["idempotency_key"] == "forecast-3")
        .unwrap();
    assert_eq!(
        (voided["state"].as_str(), voided["refunded"].as_bool()),
        (Some("voided"), Some(true)),
        "{voided}"
    );
    // Its debit says one segment, and the first message's two.
    let (_, ledger) = app.get_transactions(account).await;
    let descriptions: Vec<&str> = ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["description"].as_str().unwrap())
        .collect();
    assert!(
        descriptions.contains(&"SMS to US (1 GSM-7 segment)")
            && descriptions.contains(&"SMS to US (2 GSM-7 segments)"),
        "{descriptions:?}"
    );
    // Its time is RFC 3339, as every time over HTTP.
    assert!(
        voided["created_at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z')),
        "{voided}"
    );
    fake.set_mode(SendMode::ServerError);
    let (status, failed) = app
        .post_message(json!({"account_id": account, "body": "hi", "idempotency_key": "forecast-4"}))
        .await;
    assert_eq!(
        (status, failed["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("twilio_error"))
    );
    assert_eq!(
        app.balance_micros(account).await,
        1_087_000,
        "an outage voids the reservation too"
    );
    fake.set_mode(SendMode::Accept);
    let (status, _) = app
        .post_message(json!({"account_id": account, "body": "hi", "idempotency_key": "forecast-2"}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a refused key can be used again once there is credit"
    );

    let (status, bad) = app
        .post_message(json!({"to": "+4915112345678", "body": "hi", "idempotency_key": "k9"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    let (status, bad) = app.post_message(json!({"account_id": account, "to": "+14155559999", "body": "hi", "idempotency_key": "k10"})).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("number_mismatch"))
    );
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(a_message_that_failed_in_twilio_is_refunded_once);
async fn a_message_that_failed_in_twilio_is_refunded_once() {
    let (app, fake) = app_with_twilio().await;
    let account = account_with_balance(&app, "+14155552500", 1_000_000).await;
    let (_, sent) = app
        .post_message(json!({"account_id": account, "body": "storm", "idempotency_key": "s1"}))
        .await;
    let sid = sent["message"]["twilio_sid"].as_str().unwrap().to_string();
    app.settle_notices(account).await;
    assert_eq!(
        fake.sent().len(),
        2,
        "the message and a low-balance warning"
    );
    assert_eq!(app.balance_micros(account).await, 943_500);
    for status in ["sent", "failed", "failed"] {
        let (answered, _) = app
            .post_twilio(
                "/webhooks/twilio/status",
                &[
                    ("MessageSid", &sid),
                    ("MessageStatus", status),
                    ("AccountSid", crate::fake_twilio::ACCOUNT_SID),
                ],
                None,
            )
            .await;
        assert_eq!(answered, StatusCode::OK);
    }
    assert_eq!(
        app.balance_micros(account).await,
        1_000_000,
        "refunded once"
    );
    let (status, _) = app
        .post_twilio(
            "/webhooks/twilio/status",
            &[("MessageSid", &sid), ("MessageStatus", "failed")],
            Some("bad"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Twilio may call back before its answer to the send is recorded: the
    // status waits for the sid, and the failed message is still refunded.
    let early_sid = fake.next_sid();
    for status in ["queued", "failed", "sent"] {
        let (answered, _) = app
            .post_twilio(
                "/webhooks/twilio/status",
                &[
                    ("MessageSid", early_sid.as_str()),
                    ("MessageStatus", status),
                    ("AccountSid", crate::fake_twilio::ACCOUNT_SID),
                ],
                None,
            )
            .await;
        assert_eq!(answered, StatusCode::OK);
    }
    let (_, sent) = app
        .post_message(json!({"account_id": account, "body": "storm", "idempotency_key": "s2"}))
        .await;
    assert_eq!(
        sent["message"]["twilio_sid"].as_str(),
        Some(early_sid.as_str())
    );
    assert_eq!(
        app.balance_micros(account).await,
        1_000_000,
        "the early `failed` refunded it"
    );
    let directory = app.stop().await;
    assert_verified(&directory);
}

/// The low-balance warnings the fake Twilio was asked to send.
fn warnings_sent(fake: &FakeTwilio) -> Vec<String> {
    fake.sent()
        .into_iter()
        .filter(|sms| sms.body.contains("credit is low"))
        .map(|sms| sms.body)
        .collect()
}

/// The states of an account's notices, oldest first.
fn notice_states(notices: &[serde_json::Value]) -> Vec<&str> {
    notices
        .iter()
        .rev()
        .map(|notice| notice["state"].as_str().unwrap())
        .collect()
}

on_both_stores!(a_warning_set_off_by_a_message_that_was_not_sent_is_withdrawn);
/// A message whose debit set off the low-balance warning, then refused by
/// Twilio (its cost given back): the warning is withdrawn with the row that
/// gives the cost back, and the cooldown it spent is given back too, so
/// the real crossing later is announced; when the balance the void leaves
/// is still low, the warning says that balance.
async fn a_warning_set_off_by_a_message_that_was_not_sent_is_withdrawn() {
    let (app, fake) = app_with_twilio().await;
    // Back above the threshold once the cost is given back.
    let account = account_with_balance(&app, "+14155552470", 2_100_000).await;
    fake.refuse(Some("unreachable"));
    let long = format!("unreachable {}", "a".repeat(190));
    let (status, failed) = app
        .post_message(json!({"account_id": account, "body": long, "idempotency_key": "void-1"}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{failed}");
    assert_eq!(app.balance_micros(account).await, 2_100_000);
    let notices = app.settle_notices(account).await;
    assert_eq!(notice_states(&notices), ["withdrawn"], "{notices:?}");
    assert_eq!(
        warnings_sent(&fake),
        Vec::<String>::new(),
        "$2.10 is not low"
    );
    // The real crossing is warned of: the cooldown was given back.
    let (status, sent) = app
        .post_message(
            json!({"account_id": account, "body": "b".repeat(200), "idempotency_key": "real-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let notices = app.settle_notices(account).await;
    assert_eq!(
        notice_states(&notices),
        ["withdrawn", "sent"],
        "{notices:?}"
    );
    let warnings = warnings_sent(&fake);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("$1.98"), "{warnings:?}");

    // Still low once the cost is given back: another message debited in
    // the meantime (within the cooldown, so it warned of nothing).
    let account = account_with_balance(&app, "+14155552471", 2_050_000).await;
    fake.hold("unreachable");
    let held = app.post_message(
        json!({"account_id": account, "body": "unreachable 1", "idempotency_key": "void-2"}),
    );
    let meanwhile = async {
        // The held message's debit (to $1.9935) committed, with its warning.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app.balance_micros(account).await != 1_993_500 {
            assert!(
                std::time::Instant::now() < deadline,
                "the held message's debit within 10 s"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (status, sent) = app
            .post_message(
                json!({"account_id": account, "body": "second", "idempotency_key": "m-2"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        assert_eq!(app.balance_micros(account).await, 1_937_000);
        fake.release();
    };
    let ((status, failed), ()) = futures_util::future::join(held, meanwhile).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{failed}");
    assert_eq!(app.balance_micros(account).await, 1_993_500);
    let notices = app.settle_notices(account).await;
    assert_eq!(
        notice_states(&notices),
        ["withdrawn", "sent"],
        "{notices:?}"
    );
    let warnings = warnings_sent(&fake);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[1].contains("$1.99"),
        "the balance that is, not the one the refused message left: {warnings:?}"
    );
    let directory = app.stop().await;
    assert_verified(&directory);
}

/// The core of a server with Twilio at a fake (no HTTP), and an account
/// holding `micros`.
async fn core_with_twilio(
    phone: &str,
    micros: i64,
) -> (
    FakeTwilio,
    crate::database::TestDatabase,
    sms_credit::startup::Core,
    sms_credit_actors::AccountId,
) {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let core = sms_credit::startup::Core::start(
        &settings,
        std::sync::Arc::new(ManualClock::new(START_MS)),
    )
    .unwrap();
    let account = crate::ledger_actors::new_account(&core, phone).await;
    core.registry
        .send(account, crate::ledger_actors::credit(micros, "seed"))
        .await
        .unwrap();
    (fake, directory, core, account)
}

on_both_stores!(a_void_that_fails_to_commit_withdraws_nothing);
/// The void of a message whose debit set off a warning, failing to commit:
/// nothing of it happened, the warning's withdrawal included (it is in the
/// same transaction), and no other warning is queued.
async fn a_void_that_fails_to_commit_withdraws_nothing() {
    use sms_credit_actors::messaging::OutboundRequest;
    // The database lives as long as the test.
    let (fake, _directory, core, account) = core_with_twilio("+14155552480", 2_050_000).await;
    let messaging = core.messaging.clone().unwrap();
    fake.hold("unreachable");
    fake.refuse(Some("unreachable"));
    let sending = messaging.send_outbound(
        OutboundRequest {
            account_id: Some(account),
            to: None,
            body: "unreachable".into(),
            idempotency_key: "void-fails".into(),
        },
        START_MS,
    );
    let meanwhile = async {
        // The debit (to $1.9935) committed, with its warning.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while core
            .store
            .messages()
            .notices_of(account, 10)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the debit's warning within 10 s"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Another message, within the cooldown, keeps the balance low
        // after the void: the void would withdraw the warning and queue
        // another, and no event goes with it.
        let second = OutboundRequest {
            account_id: Some(account),
            to: None,
            body: "second".into(),
            idempotency_key: "second".into(),
        };
        messaging.send_outbound(second, START_MS).await.unwrap();
        // The void marks the message as being voided (one commit), then
        // gives the cost back: that commit fails.
        core.store.fail_commit_after_for_testing(Some(1));
        fake.release();
    };
    let (sent, ()) = futures_util::future::join(sending, meanwhile).await;
    assert!(sent.is_err(), "the void failed: {sent:?}");
    let notices = core.store.messages().notices_of(account, 10).await.unwrap();
    let states: Vec<&str> = notices.iter().map(|notice| notice.state.as_str()).collect();
    assert_eq!(
        states,
        ["pending"],
        "the first warning only, still waiting: {notices:?}"
    );
    core.shutdown().await;
}

on_both_stores!(a_debit_whose_commit_answer_was_lost_is_looked_up_not_forgotten);
/// The debit of a message commits, and its answer is lost (the connection
/// dropped after the commit was sent): the ledger is asked, the message is
/// sent once and charged once, and the host's retry with the same key is
/// answered from it, never a second message with a second debit.
async fn a_debit_whose_commit_answer_was_lost_is_looked_up_not_forgotten() {
    use sms_credit_actors::messaging::OutboundRequest;
    use sms_credit_actors::Money;
    let (fake, directory, core, account) = core_with_twilio("+14155552490", 5_000_000).await;
    let messaging = core.messaging.clone().unwrap();
    let request = || OutboundRequest {
        account_id: Some(account),
        to: None,
        body: "Storm at 3pm".into(),
        idempotency_key: "lost-answer".into(),
    };
    // The reservation commits; the debit's commit is applied and its
    // answer lost.
    core.store.lose_commit_answer_after_for_testing(1);
    let sent = messaging.send_outbound(request(), START_MS).await;
    assert!(sent.is_ok(), "the debit is found in the ledger: {sent:?}");
    let again = messaging.send_outbound(request(), START_MS).await.unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(fake.sent().len(), 1, "sent once");
    let balance = core
        .registry
        .send(account, sms_credit_actors::GetBalance)
        .await
        .unwrap();
    assert_eq!(
        balance.balance,
        Money::from_micros(5_000_000 - 56_500),
        "charged once"
    );
    let messages = core
        .store
        .messages()
        .messages_of(account, 10)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(low_balance_warnings_come_once_per_cooldown_even_across_a_restart);
async fn low_balance_warnings_come_once_per_cooldown_even_across_a_restart() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let clock = ManualClock::new(START_MS);
    let app = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let account = account_with_balance(&app, "+14155552600", 2_100_000).await;
    let warnings = |fake: &FakeTwilio| {
        fake.sent()
            .iter()
            .filter(|sms| sms.body.contains("credit is low"))
            .count()
    };

    app.post_message(
        json!({"account_id": account, "body": "a".repeat(200), "idempotency_key": "m1"}),
    )
    .await;
    assert_eq!(app.balance_micros(account).await, 1_987_000);
    app.settle_notices(account).await;
    assert_eq!(warnings(&fake), 1, "below $2.00: one warning");
    app.post_message(json!({"account_id": account, "body": "b", "idempotency_key": "m2"}))
        .await;
    app.settle_notices(account).await;
    assert_eq!(warnings(&fake), 1, "not again within 24 h");

    let directory = app.stop().await;
    let app = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    clock.advance_ms(23 * 3600 * 1000);
    app.post_message(json!({"account_id": account, "body": "c", "idempotency_key": "m3"}))
        .await;
    app.settle_notices(account).await;
    assert_eq!(warnings(&fake), 1, "the cooldown survived the restart");
    clock.advance_ms(3600 * 1000);
    app.post_message(json!({"account_id": account, "body": "d", "idempotency_key": "m4"}))
        .await;
    let notices = app.settle_notices(account).await;
    assert_eq!(warnings(&fake), 2, "24 h later, one more");
    assert_eq!(notices.len(), 2);
    assert!(
        notices.iter().all(|notice| notice["state"] == "sent"),
        "{notices:?}"
    );
    let warning = fake
        .sent()
        .into_iter()
        .find(|sms| sms.body.contains("credit is low"))
        .unwrap();
    assert_eq!(warning.to, "+14155552600");
    assert_eq!(
        app.balance_micros(account).await,
        2_100_000 - 113_000 - 3 * 56_500,
        "warnings are not charged"
    );
}

on_both_stores!(reconciliation_compares_charges_with_twilios_prices);
async fn reconciliation_compares_charges_with_twilios_prices() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let clock = ManualClock::new(START_MS);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let us = account_with_balance(&app, "+14155552700", 10_000_000).await;
    let gb = account_with_balance(&app, "+447400123456", 10_000_000).await;
    let (_, first) = app
        .post_message(json!({"account_id": us, "body": "a".repeat(200), "idempotency_key": "r1"}))
        .await;
    let (_, second) = app
        .post_message(json!({"account_id": gb, "body": "hello", "idempotency_key": "r2"}))
        .await;
    // A command reply is a service message: costed, not charged.
    let (_, reply) = app.post_twilio_sms("SMrec1", "+14155552700", "HELP").await;
    assert!(reply_text(&reply).is_some());
    let first_sid = first["message"]["twilio_sid"].as_str().unwrap();
    let second_sid = second["message"]["twilio_sid"].as_str().unwrap();
    // Twilio charged the table's cost for the US message, more for the GB one.
    fake.set_price(first_sid, "-0.02260");
    fake.set_price(second_sid, "-0.06000");

    let (_, checked) = app
        .request(
            "POST",
            "/v1/admin/reconciliation/check-prices",
            Some(crate::helpers::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(checked["prices_found"], 0, "not due before the delay");
    clock.advance_ms(301_000);
    let (_, checked) = app
        .request(
            "POST",
            "/v1/admin/reconciliation/check-prices",
            Some(crate::helpers::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(checked["prices_found"], 2);

    let (status, report) = app
        .request(
            "GET",
            "/v1/admin/reconciliation",
            Some(crate::helpers::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["by_country"]["US"]["charged_micros"], 113_000);
    assert_eq!(
        report["by_country"]["US"]["actual_carrier_cost_micros"],
        22_600
    );
    assert_eq!(report["by_country"]["US"]["margin_basis_points"], 8_000);
    assert_eq!(
        report["by_country"]["GB"]["expected_carrier_cost_micros"],
        52_400
    );
    assert_eq!(
        report["by_country"]["GB"]["actual_carrier_cost_micros"],
        60_000
    );
    assert_eq!(report["overall"]["messages"], 2);
    assert_eq!(report["service"]["messages"], 1, "the HELP reply");
    assert_eq!(report["service"]["charged_micros"], 0);
    assert!(
        report["service"]["expected_carrier_cost_micros"]
            .as_i64()
            .unwrap()
            >= 11_300
    );
    let mismatches = report["mismatches"].as_array().unwrap();
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0]["country"], "GB");
    assert_eq!(mismatches[0]["actual_per_segment_micros"], 60_000);

    let directory = app.stop().await;
    let output = run_cli(&directory, &["reconcile"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("80.00%") && text.contains("MISMATCH") && text.contains("service"),
        "{text}"
    );
}

on_both_stores!(the_low_balance_warning_is_sent_after_the_answer_and_retried_until_it_goes);
async fn the_low_balance_warning_is_sent_after_the_answer_and_retried_until_it_goes() {
    let (app, fake) = app_with_twilio().await;
    let account = account_with_balance(&app, "+14155552700", 2_100_000).await;
    // Twilio holds the warning: if the request waited for it, it would
    // not come back while it is held.
    fake.hold("credit is low");
    let (status, sent) = app
        .post_message(
            json!({"account_id": account, "body": "a".repeat(200), "idempotency_key": "w1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(fake.sent().len(), 1, "the message only, so far");
    fake.release();
    let messages = fake.wait_for(2).await;
    assert!(messages[1]
        .body
        .starts_with("Your SMS credit is low: $1.98"));
    let notices = app.settle_notices(account).await;
    assert_eq!(
        (notices.len(), notices[0]["state"].as_str()),
        (1, Some("sent"))
    );

    // Twilio refuses the warning when the next one is due: the notice
    // waits and goes out once Twilio takes it, once.
    let directory = app.stop().await;
    let clock = ManualClock::new(START_MS + 25 * 3600 * 1000);
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    fake.refuse(Some("credit is low"));
    let (status, _) = app
        .post_message(json!({"account_id": account, "body": "b", "idempotency_key": "w2"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // The warning was tried and refused (the message that set it off went).
    app.notices_once(account, "the warning tried once and waiting", |notices| {
        notices[0]["attempts"] == 1 && notices[0]["state"] == "pending"
    })
    .await;
    fake.refuse(None);
    // The warning's next try is a minute later (and the worker looks every 5 s).
    clock.advance_ms(61_000);
    let notices = app.settle_notices(account).await;
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert_eq!(notices[0]["attempts"], 2, "{notices:?}");
    let warnings = fake
        .sent()
        .iter()
        .filter(|sms| sms.body.contains("credit is low"))
        .count();
    assert_eq!(warnings, 2, "one per cooldown, none twice");
}

on_both_stores!(a_warning_waits_for_the_message_that_caused_it);
/// The low-balance warning a message's debit sets off is not sent while
/// that message is still on its way to Twilio: it goes after the message.
async fn a_warning_waits_for_the_message_that_caused_it() {
    let (app, fake) = app_with_twilio().await;
    let account = account_with_balance(&app, "+14155552460", 200_000).await;
    fake.hold("Storm at 3pm");
    let sending = app.post_message(
        json!({"account_id": account, "body": "Storm at 3pm", "idempotency_key": "held-1"}),
    );
    let watching = async {
        // The debit committed, and with it the warning's notice.
        app.notices_once(account, "the warning's notice", |notices| {
            !notices.is_empty()
        })
        .await;
        // The notice worker is woken by that commit; give it every chance.
        actix_rt::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            fake.sent().is_empty(),
            "the warning went out before its message: {:?}",
            fake.sent()
        );
        fake.release();
    };
    let ((status, sent), ()) = futures_util::future::join(sending, watching).await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let messages = fake.wait_for(2).await;
    assert_eq!(messages[0].body, "Storm at 3pm");
    assert!(
        messages[1].body.starts_with("Your SMS credit is low"),
        "{messages:?}"
    );
    app.settle_notices(account).await;
}

/// A core on `directory` with Twilio at `fake` and the clock `clock`, its
/// workers not started (the test runs their rounds), and accounts each
/// left with a low-balance warning waiting to be sent.
pub(crate) async fn core_with_warnings(
    directory: &crate::database::TestDatabase,
    fake: &FakeTwilio,
    clock: &ManualClock,
    phones: &[&str],
) -> (sms_credit::startup::Core, Vec<sms_credit_actors::AccountId>) {
    use crate::ledger_actors::{credit, debit, new_account};
    let settings = with_twilio(test_settings(directory), &fake.base_url);
    let core =
        sms_credit::startup::Core::start(&settings, std::sync::Arc::new(clock.clone())).unwrap();
    let mut accounts = Vec::new();
    for phone in phones {
        let account = new_account(&core, phone).await;
        core.registry
            .send(account, credit(2_050_000, "seed"))
            .await
            .unwrap();
        // Below $2.00: a warning is queued with the debit.
        core.registry
            .send(account, debit(100_000, "low"))
            .await
            .unwrap();
        accounts.push(account);
    }
    (core, accounts)
}

/// The states of an account's notices, newest first.
async fn states_of(
    core: &sms_credit::startup::Core,
    account: sms_credit_actors::AccountId,
) -> Vec<&'static str> {
    core.store
        .messages()
        .notices_of(account, 10)
        .await
        .unwrap()
        .iter()
        .map(|notice| notice.state.as_str())
        .collect()
}

on_both_stores!(a_notice_whose_read_failed_before_the_send_is_put_back_and_sent_once);
/// The worker claimed a warning, then could not read its account (the
/// store away for a moment): nothing was sent, so the notice is put back
/// (`pending`), not left `sending` to be marked `unknown` and never sent.
/// A later round sends it, once.
async fn a_notice_whose_read_failed_before_the_send_is_put_back_and_sent_once() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    let (core, accounts) = core_with_warnings(&directory, &fake, &clock, &["+14155552700"]).await;
    let messaging = core.messaging.clone().unwrap();
    assert_eq!(states_of(&core, accounts[0]).await, ["pending"]);

    core.store.fail_next_reads_for_testing(1);
    let sent = messaging.deliver_notices().await.unwrap();
    assert_eq!(sent, 0);
    assert_eq!(states_of(&core, accounts[0]).await, ["pending"]);
    let notice = &core
        .store
        .messages()
        .notices_of(accounts[0], 1)
        .await
        .unwrap()[0];
    assert!(
        notice
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("test switch")),
        "{notice:?}"
    );
    assert!(fake.sent().is_empty());

    // Past the lease and the wait before a retry: sent, once.
    clock.advance_ms(61_000);
    assert_eq!(messaging.deliver_notices().await.unwrap(), 1);
    assert_eq!(states_of(&core, accounts[0]).await, ["sent"]);
    clock.advance_ms(3_600_000);
    assert_eq!(messaging.deliver_notices().await.unwrap(), 0);
    let warnings = fake.sent();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].body.contains("credit is low"), "{warnings:?}");
    core.shutdown().await;
}

on_both_stores!(a_slow_twilio_never_leaves_a_notice_unknown_while_its_worker_still_sends_it);
/// Three warnings are due; Twilio takes 25 s to answer each. The worker's
/// round outlasts the 60 s lease a notice is claimed under, and another
/// instance's round runs meanwhile: it marks `unknown` none of the
/// notices the first worker still sends, and each is sent once.
async fn a_slow_twilio_never_leaves_a_notice_unknown_while_its_worker_still_sends_it() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    let phones = ["+14155552710", "+14155552711", "+14155552712"];
    let (first, accounts) = core_with_warnings(&directory, &fake, &clock, &phones).await;
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let second =
        sms_credit::startup::Core::start(&settings, std::sync::Arc::new(clock.clone())).unwrap();
    fake.hold("credit is low");
    let messaging = first.messaging.clone().unwrap();
    let round = actix_rt::spawn(async move { messaging.deliver_notices().await });
    for index in 0..phones.len() {
        fake.wait_for_held(1).await;
        clock.advance_ms(25_000);
        if index + 1 < phones.len() {
            fake.let_one_through();
            fake.wait_for(index + 1).await;
        }
    }
    // 75 s into the round, the last notice's send is still waiting for
    // Twilio. Another instance's round:
    let second_round = second.messaging.clone().unwrap().deliver_notices().await;
    assert_eq!(second_round, Ok(0), "nothing left for it to send");
    for account in &accounts {
        let states = states_of(&first, *account).await;
        assert!(
            states == ["sent"] || states == ["sending"],
            "no notice is unknown while its worker still sends it: {states:?}"
        );
    }
    fake.release();
    let sent = actix_rt::time::timeout(std::time::Duration::from_secs(20), round)
        .await
        .expect("the round ends within 20 s")
        .unwrap();
    assert_eq!(sent, Ok(3));
    for (account, phone) in accounts.iter().zip(phones) {
        assert_eq!(states_of(&first, *account).await, ["sent"]);
        let warnings: Vec<_> = fake
            .sent()
            .into_iter()
            .filter(|sms| sms.to == phone)
            .collect();
        assert_eq!(warnings.len(), 1, "sent once: {warnings:?}");
    }
    first.shutdown().await;
    second.shutdown().await;
}

/// `fields` as `(&str, &str)` pairs, for `post_twilio`.
fn borrowed(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

/// `fields` without `name`.
fn without(fields: &[(String, String)], name: &str) -> Vec<(String, String)> {
    fields
        .iter()
        .filter(|(field, _)| field != name)
        .cloned()
        .collect()
}

/// `fields` with `name` set to `value`.
fn with(fields: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut changed = without(fields, name);
    changed.push((name.to_string(), value.to_string()));
    changed
}

on_both_stores!(a_captured_signed_sms_is_not_taken_for_a_new_one);
/// Twilio's signature is the URL and each field's name and value, sorted,
/// with no separator, and carries no time: a `BUY $10` seen once can be
/// sent again with its fields' boundaries moved (`MessageSid=SM…NumMedia0`
/// and no `NumMedia`) under the same signature. Only Twilio's SID shapes,
/// an `SmsSid` equal to the `MessageSid`, this account's `AccountSid` and
/// the fields Twilio always sends are accepted, so the replay charges
/// nothing.
async fn a_captured_signed_sms_is_not_taken_for_a_new_one() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let phone = "+14155552350";
    let (_, started) = app
        .post_checkout_access(phone, "walker@example.com", None)
        .await;
    let (account, order) = (
        started["account_id"].as_i64().unwrap(),
        started["order_id"].as_i64().unwrap(),
    );
    let session = app.get_orders(account).await[0]["stripe_session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = app.get_admin_account(account).await.1["stripe_customer_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.deliver(&events.checkout_completed(&session, order, &customer, 2999, "pi_walker"))
        .await;

    let sid = twilio_sid("captured-buy");
    let captured = twilio_sms_fields(&sid, phone, "BUY $10");
    let path = "/webhooks/twilio/sms";
    let url = format!("https://sms.example.com{path}");
    let signature =
        sms_credit::twilio::signature::compute(crate::fake_twilio::AUTH_TOKEN, &url, &captured);
    let (status, twiml) = app
        .post_twilio(path, &borrowed(&captured), Some(&signature))
        .await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert!(
        reply_text(&twiml).unwrap().contains("$10.00 was added"),
        "{twiml}"
    );
    assert_eq!(stripe.charges_made(), 1);
    let balance = app.balance_micros(account).await;

    // The same signed text, cut into other fields.
    let merged_media = with(
        &without(&captured, "NumMedia"),
        "MessageSid",
        &format!("{sid}NumMedia0"),
    );
    let merged_more = with(
        &without(
            &without(&without(&captured, "NumMedia"), "NumSegments"),
            "SmsMessageSid",
        ),
        "MessageSid",
        &format!("{sid}NumMedia0NumSegments1SmsMessageSid{sid}"),
    );
    for (name, replay) in [
        ("NumMedia merged", &merged_media),
        ("three merged", &merged_more),
    ] {
        assert_eq!(
            sms_credit::twilio::signature::compute(crate::fake_twilio::AUTH_TOKEN, &url, replay),
            signature,
            "{name}: the signature still holds"
        );
        let (status, body) = app
            .post_twilio(path, &borrowed(replay), Some(&signature))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body.contains("invalid_form"), "{name}: {body}");
    }

    // Each rule alone, in a form signed afresh.
    let fresh = twilio_sms_fields(&twilio_sid("rules"), phone, "BUY $10");
    let other_account = format!("AC{}", "1".repeat(32));
    let refused = [
        (
            "a MessageSid not Twilio's",
            with(&fresh, "MessageSid", "hello"),
        ),
        (
            "a MessageSid too short",
            with(&fresh, "MessageSid", &sid[..33]),
        ),
        (
            "an SMS sid that is not the MessageSid",
            with(&fresh, "SmsSid", &twilio_sid("another")),
        ),
        (
            "another account",
            with(&fresh, "AccountSid", &other_account),
        ),
        ("no AccountSid", without(&fresh, "AccountSid")),
        ("no NumMedia", without(&fresh, "NumMedia")),
        ("no To", without(&fresh, "To")),
        ("no Body", without(&fresh, "Body")),
    ];
    for (name, fields) in &refused {
        let (status, body) = app.post_twilio(path, &borrowed(fields), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body.contains("invalid_form"), "{name}: {body}");
    }
    assert_eq!(stripe.charges_made(), 1, "nothing was charged again");
    assert_eq!(app.balance_micros(account).await, balance);

    // An MMS's sid is Twilio's too; a genuine new message is charged.
    let mms = with(
        &with(
            &with(
                &fresh,
                "MessageSid",
                &format!("MM{}", &twilio_sid("mms")[2..]),
            ),
            "SmsSid",
            &format!("MM{}", &twilio_sid("mms")[2..]),
        ),
        "SmsMessageSid",
        &format!("MM{}", &twilio_sid("mms")[2..]),
    );
    let (status, twiml) = app.post_twilio(path, &borrowed(&mms), None).await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert_eq!(stripe.charges_made(), 2);
}

/// The TwiML reply's text, or `None` for an empty reply.
fn reply_of(twiml: &str) -> Option<String> {
    reply_text(twiml)
}

on_both_stores!(stop_is_honoured_until_start_and_twilios_21610_is_final);
/// STOP (or another opt-out word) is recorded and confirmed; from then on
/// nothing goes to the number — no warning (one waiting to be tried again
/// is ended, not sent), no message of the host application (refused, not
/// charged), no sign-in code (answered `202` all the same), no reply but
/// HELP's — and the account shows it, for the admin and the holder. START
/// opts back in. A number Twilio refuses with 21610 (it opted out where
/// Twilio enforces it) is recorded at once, and never tried again.
async fn stop_is_honoured_until_start_and_twilios_21610_is_final() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let clock = ManualClock::new(START_MS);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let phone = "+14155552800";
    let account = account_with_balance(&app, phone, 2_100_000).await;
    let token = app.issue_token(account).await;

    // A warning Twilio refuses once waits to be tried again.
    fake.refuse(Some("credit is low"));
    let (status, sent) = app
        .post_message(
            json!({"account_id": account, "body": "a".repeat(200), "idempotency_key": "s1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    app.notices_once(account, "the warning tried once and waiting", |notices| {
        notices[0]["attempts"] == 1 && notices[0]["state"] == "pending"
    })
    .await;
    fake.refuse(None);
    let sent_before = fake.sent().len();

    let (status, twiml) = app.post_twilio_sms("stop-1", phone, " Stop ").await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert!(
        reply_of(&twiml).unwrap().contains("no more texts"),
        "the STOP is confirmed: {twiml}"
    );
    for (who, path, token) in [
        (
            "admin",
            format!("/v1/admin/accounts/{account}"),
            crate::helpers::ADMIN_TOKEN,
        ),
        ("holder", "/v1/accounts/me".to_string(), token.as_str()),
    ] {
        let (status, shown) = app.request("GET", &path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{who}: {shown}");
        assert_eq!(shown["opt_out"]["via"], "keyword", "{who}: {shown}");
        assert_eq!(shown["opt_out"]["keyword"], "STOP", "{who}: {shown}");
    }

    // The waiting warning ends unsent when its turn comes.
    clock.advance_ms(61_000);
    let notices = app
        .notices_once(account, "the warning ended", |notices| {
            notices[0]["state"] == "opted_out"
        })
        .await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    // The host's message: refused, not charged, not sent.
    let balance = app.balance_micros(account).await;
    let (status, refused) = app
        .post_message(json!({"account_id": account, "body": "hello", "idempotency_key": "s2"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "recipient_opted_out");
    assert_eq!(app.balance_micros(account).await, balance);
    // The key that was sent before the STOP still answers what it was.
    let (status, replayed) = app
        .post_message(
            json!({"account_id": account, "body": "a".repeat(200), "idempotency_key": "s1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["replayed"], true);
    // A sign-in code: the same 202, and nothing sent.
    let (status, _) = app
        .request(
            "POST",
            "/v1/sign-in/code",
            None,
            Some(json!({"phone": phone})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Commands get no reply, HELP does.
    let (_, twiml) = app.post_twilio_sms("stop-balance", phone, "BALANCE").await;
    assert_eq!(reply_of(&twiml), None, "{twiml}");
    let (_, twiml) = app.post_twilio_sms("stop-help", phone, "HELP").await;
    assert!(reply_of(&twiml).unwrap().contains("STOP"), "{twiml}");
    assert_eq!(
        fake.sent().len(),
        sent_before,
        "nothing was sent after the STOP"
    );

    // START: texts again.
    let (_, twiml) = app.post_twilio_sms("start-1", phone, "start").await;
    assert!(reply_of(&twiml).unwrap().contains("again"), "{twiml}");
    let (status, shown) = app
        .request("GET", "/v1/accounts/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["opt_out"], serde_json::Value::Null, "{shown}");
    let (status, sent) = app
        .post_message(json!({"account_id": account, "body": "hello", "idempotency_key": "s3"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let (_, twiml) = app.post_twilio_sms("start-balance", phone, "BALANCE").await;
    assert!(reply_of(&twiml).is_some(), "{twiml}");

    // Opted out at Twilio only: its 21610 is recorded at once and final.
    let other = "+14155552801";
    let second = account_with_balance(&app, other, 2_100_000).await;
    fake.opt_out(other, true);
    let balance = app.balance_micros(second).await;
    let (status, refused) = app
        .post_message(json!({"account_id": second, "body": "hello", "idempotency_key": "t1"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "recipient_opted_out");
    assert_eq!(app.balance_micros(second).await, balance, "given back");
    let (_, shown) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{second}"),
            Some(crate::helpers::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(shown["opt_out"]["via"], "carrier", "{shown}");
    let (status, _) = app
        .post_message(json!({"account_id": second, "body": "hello", "idempotency_key": "t2"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .request(
            "POST",
            "/v1/sign-in/code",
            None,
            Some(json!({"phone": other})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(fake.refused_opted_out(), 1, "Twilio was asked once");
}

on_both_stores!(a_failed_status_callback_with_21610_records_the_opt_out);
/// A signed status callback `failed` with `ErrorCode=21610` (the number
/// said STOP to the service's number) records the opt-out, as a 21610
/// answer to a send does: nothing more is sent to the number. Another
/// error code records nothing.
async fn a_failed_status_callback_with_21610_records_the_opt_out() {
    let (app, fake) = app_with_twilio().await;
    let stopped = "+14155552901";
    let unreachable = "+14155552902";
    let mut sids = Vec::new();
    for (phone, key) in [(stopped, "opt-1"), (unreachable, "opt-2")] {
        let account = account_with_balance(&app, phone, 2_100_000).await;
        let (status, sent) = app
            .post_message(json!({"account_id": account, "body": "storm", "idempotency_key": key}))
            .await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        sids.push((
            account,
            sent["message"]["twilio_sid"].as_str().unwrap().to_string(),
        ));
    }
    for ((_, sid), error_code) in sids.iter().zip(["21610", "30003"]) {
        let (answered, body) = app
            .post_twilio(
                "/webhooks/twilio/status",
                &[
                    ("MessageSid", sid),
                    ("MessageStatus", "failed"),
                    ("ErrorCode", error_code),
                    ("AccountSid", crate::fake_twilio::ACCOUNT_SID),
                ],
                None,
            )
            .await;
        assert_eq!(answered, StatusCode::OK, "{body}");
    }
    let opt_out_of = |account: i64| {
        let app = &app;
        async move {
            let (status, shown) = app
                .request(
                    "GET",
                    &format!("/v1/admin/accounts/{account}"),
                    Some(crate::helpers::ADMIN_TOKEN),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{shown}");
            shown["opt_out"].clone()
        }
    };
    let shown = opt_out_of(sids[0].0).await;
    assert_eq!(shown["via"], "carrier", "{shown}");
    assert_eq!(
        opt_out_of(sids[1].0).await,
        serde_json::Value::Null,
        "30003 is no opt-out"
    );
    let sent_before = fake.sent().len();
    let (status, refused) = app
        .post_message(json!({"account_id": sids[0].0, "body": "storm", "idempotency_key": "opt-3"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "recipient_opted_out");
    assert_eq!(fake.sent().len(), sent_before, "nothing asked of Twilio");
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(a_21610_callback_replayed_after_start_does_not_opt_the_number_out_again);
/// A signed status callback carries no time, so one seen once can be sent
/// again. After the number texted START, a 21610 callback about a message
/// sent before that START (replayed, or late) records nothing: the number
/// stays opted in. A 21610 about a message not recorded (its callback came
/// before the send's answer) is believed only if it came from the
/// service's own number.
async fn a_21610_callback_replayed_after_start_does_not_opt_the_number_out_again() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let clock = ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let phone = "+14155552911";
    let account = account_with_balance(&app, phone, 2_100_000).await;
    let (status, sent) = app
        .post_message(
            json!({"account_id": account, "body": "storm", "idempotency_key": "replay-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let sid = sent["message"]["twilio_sid"].as_str().unwrap().to_string();
    let callback = |sid: String, from: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app
                .post_twilio(
                    "/webhooks/twilio/status",
                    &[
                        ("AccountSid", crate::fake_twilio::ACCOUNT_SID),
                        ("ErrorCode", "21610"),
                        ("From", from),
                        ("MessageSid", &sid),
                        ("MessageStatus", "failed"),
                        ("To", phone),
                    ],
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let opt_out = || {
        let app = &app;
        async move {
            let (status, shown) = app
                .request(
                    "GET",
                    &format!("/v1/admin/accounts/{account}"),
                    Some(crate::helpers::ADMIN_TOKEN),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{shown}");
            shown["opt_out"].clone()
        }
    };

    callback(sid.clone(), crate::fake_twilio::FROM).await;
    assert_eq!(opt_out().await["via"], "carrier");
    clock.advance_ms(60_000);
    let (status, _) = app.post_twilio_sms("start-2911", phone, "START").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        opt_out().await,
        serde_json::Value::Null,
        "START opted it back in"
    );

    clock.advance_ms(60_000);
    callback(sid.clone(), crate::fake_twilio::FROM).await;
    assert_eq!(
        opt_out().await,
        serde_json::Value::Null,
        "a callback about a message sent before the START records nothing"
    );

    // A message nobody recorded: believed only from the service's number.
    let unknown = crate::helpers::twilio_sid("never-recorded-2911");
    callback(unknown.clone(), "+15005550099").await;
    assert_eq!(
        opt_out().await,
        serde_json::Value::Null,
        "a message of another number of the account"
    );
    callback(unknown, crate::fake_twilio::FROM).await;
    assert_eq!(opt_out().await["via"], "carrier");
}

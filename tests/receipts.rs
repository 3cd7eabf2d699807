//! Stripe's receipts on the account holder's list of payments:
//! `GET /v1/accounts/{id}/payments` asks Stripe for a paid order's receipt
//! once it has been paid, keeps the one Stripe gives, shows none (never a
//! guess, never Stripe's error) until Stripe gives it, and asks for one not
//! given only an hour later, a few at a time, so older payments get their
//! turn.

use awc::http::StatusCode;
use serde_json::Value;
use sms_credit_actors::clock::{Clock, ManualClock};

use crate::fake_stripe::{receipt_url, EventFactory, FakeStripe};
use crate::helpers::{
    fresh_directory, stripe_settings, test_settings, TestApp, ADMIN_TOKEN, NOW_UNIX,
};
use crate::refunds_by_id::eventually;

const HOUR_MS: i64 = 3_600_000;

/// The holder's payments, as the API lists them.
async fn payments(app: &TestApp, account: i64, token: &str) -> Vec<Value> {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/payments"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["payments"].as_array().unwrap().clone()
}

/// How many times Stripe was asked for `intent`.
fn asked_for(fake: &FakeStripe, intent: &str) -> usize {
    fake.requests_with("GET", &format!("/v1/payment_intents/{intent}"))
        .len()
}

/// A server with Stripe (the fake), on a clock the test moves, and an
/// account that paid for access from `phone`: (account, customer, its
/// token).
async fn paying(
    phone: &str,
) -> (
    FakeStripe,
    TestApp,
    ManualClock,
    EventFactory,
    (i64, String, String),
) {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let mut events = EventFactory::new();
    let paid = crate::stripe::active_account(&app, &mut events, phone).await;
    (fake, app, clock, events, paid)
}

/// A $10 top-up paid by Checkout, its PaymentIntent `pi_{label}_{order}`.
async fn top_up(
    app: &TestApp,
    clock: &ManualClock,
    events: &mut EventFactory,
    (account, customer, token): (i64, &str, &str),
    label: &str,
) -> (i64, String) {
    let (order, session) = app.start_top_up(account, token).await;
    let intent = format!("pi_{label}_{order}");
    let completed = events.checkout_completed(&session, order, customer, 1000, &intent);
    let (status, body) = app.deliver_at(&completed, clock.now_ms() / 1000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (order, intent)
}

async fn each_payment_shows_stripes_receipt_asked_for_at_most_hourly_and_kept() {
    let (fake, app, clock, mut events, (account, customer, token)) = paying("+14155550871").await;
    let access_intent = format!("pi_access_{account}");

    // Stripe has no charge for the access payment yet: the payment is
    // listed, without a receipt.
    fake.set_receipts_withheld(true);
    let before = asked_for(&fake, &access_intent);
    let listed = payments(&app, account, &token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["order_type"], "initial_access");
    assert_eq!(listed[0]["amount_micros"], 29_990_000);
    assert_eq!(listed[0]["receipt_url"], Value::Null);
    assert_eq!(asked_for(&fake, &access_intent), before + 1);
    // Listed again at once, Stripe is not asked again.
    fake.set_receipts_withheld(false);
    assert_eq!(payments(&app, account, &token).await, listed);
    assert_eq!(asked_for(&fake, &access_intent), before + 1);

    // An hour later Stripe fails: the same, and never its error's text.
    clock.advance_ms(HOUR_MS);
    fake.set_retrieve_fails(true);
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/payments"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["payments"][0]["receipt_url"], Value::Null);
    assert!(!body.to_string().contains("fake outage"), "{body}");
    assert_eq!(asked_for(&fake, &access_intent), before + 2);
    fake.set_retrieve_fails(false);

    // Another hour, and a top-up paid: newest first, each with its receipt.
    clock.advance_ms(HOUR_MS);
    let (order, top_up_intent) = top_up(
        &app,
        &clock,
        &mut events,
        (account, &customer, &token),
        "receipt",
    )
    .await;
    let listed = payments(&app, account, &token).await;
    let shown: Vec<(i64, &str, Option<&str>)> = listed
        .iter()
        .map(|payment| {
            (
                payment["id"].as_i64().unwrap(),
                payment["order_type"].as_str().unwrap(),
                payment["receipt_url"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        shown[0],
        (order, "top_up", Some(receipt_url(&top_up_intent).as_str()))
    );
    assert_eq!(shown[1].1, "initial_access");
    assert_eq!(shown[1].2, Some(receipt_url(&access_intent).as_str()));

    // Kept: listing again, even hours later, asks Stripe for nothing, and
    // the operator's view of the order carries it too.
    let asked = (
        asked_for(&fake, &access_intent),
        asked_for(&fake, &top_up_intent),
    );
    clock.advance_ms(3 * HOUR_MS);
    assert_eq!(payments(&app, account, &token).await, listed);
    assert_eq!(
        (
            asked_for(&fake, &access_intent),
            asked_for(&fake, &top_up_intent)
        ),
        asked
    );
    let (status, detail) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(
        detail["order"]["receipt_url"],
        receipt_url(&top_up_intent).as_str()
    );

    // Another account's payments are not this token's to read.
    let (status, _) = app
        .request(
            "GET",
            &format!("/v1/accounts/{}/payments", account + 1),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/payments"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Kept across a restart, and shown by a server without payments
    // configured (which asks nobody).
    let directory = app.stop().await;
    let app = TestApp::spawn_with(directory.clone(), test_settings(&directory)).await;
    let token = app.issue_token(account).await;
    assert_eq!(payments(&app, account, &token).await, listed);
}
on_both_stores!(each_payment_shows_stripes_receipt_asked_for_at_most_hourly_and_kept);

async fn a_listing_asks_stripe_for_a_few_receipts_at_a_time_so_older_ones_get_their_turn() {
    let (fake, app, clock, mut events, (account, customer, token)) = paying("+14155550872").await;
    fake.set_receipts_withheld(true);
    for _ in 0..6 {
        top_up(
            &app,
            &clock,
            &mut events,
            (account, &customer, &token),
            "few",
        )
        .await;
    }
    let with = |listed: &[Value]| -> Vec<bool> {
        listed
            .iter()
            .map(|payment| payment["receipt_url"].is_string())
            .collect()
    };
    // Seven payments: the newest five asked for, Stripe gives none.
    let listed = payments(&app, account, &token).await;
    assert_eq!(with(&listed), [false; 7]);
    fake.set_receipts_withheld(false);
    // At once: those five just asked wait their hour; the two older ones
    // have their turn.
    let listed = payments(&app, account, &token).await;
    assert_eq!(
        with(&listed),
        [false, false, false, false, false, true, true],
        "{listed:?}"
    );
    // An hour later, the newest five are asked again.
    clock.advance_ms(HOUR_MS);
    let listed = payments(&app, account, &token).await;
    assert_eq!(with(&listed), [true; 7], "{listed:?}");
}
on_both_stores!(a_listing_asks_stripe_for_a_few_receipts_at_a_time_so_older_ones_get_their_turn);

on_both_stores!(two_listings_at_once_ask_stripe_once_for_a_receipt);
/// Two listings of one account's payments at once (as two instances, or
/// two tabs, would make them): the one that claims the receipt's ask asks
/// Stripe; the other, which finds it claimed while Stripe has not answered
/// yet, shows the payment without its receipt and asks nobody. Stripe is
/// asked once, and the receipt it gave is kept and shown.
async fn two_listings_at_once_ask_stripe_once_for_a_receipt() {
    let (fake, app, _clock, _events, (account, _customer, token)) = paying("+14155550873").await;
    let intent = format!("pi_access_{account}");
    let before = asked_for(&fake, &intent);
    fake.hold_receipts();
    let second_answered = std::cell::Cell::new(false);
    let first = payments(&app, account, &token);
    let then = async {
        eventually(
            "the first listing to ask Stripe for the receipt",
            || async { asked_for(&fake, &intent) > before },
        )
        .await;
        let second = async {
            let listed = payments(&app, account, &token).await;
            second_answered.set(true);
            listed
        };
        // Stripe answers once the second listing has had its chance to ask
        // too: it answered (without waiting for Stripe), or it asked.
        let release = async {
            eventually(
                "the second listing to answer, or to ask Stripe too",
                || async { second_answered.get() || asked_for(&fake, &intent) > before + 1 },
            )
            .await;
            fake.release_receipts();
        };
        futures_util::future::join(second, release).await.0
    };
    let (first, second) = futures_util::future::join(first, then).await;
    assert_eq!(asked_for(&fake, &intent), before + 1, "Stripe asked once");
    assert_eq!(first[0]["receipt_url"], receipt_url(&intent).as_str());
    assert_eq!(second[0]["receipt_url"], Value::Null, "{second:?}");
    assert_eq!(
        payments(&app, account, &token).await[0]["receipt_url"],
        receipt_url(&intent).as_str()
    );
    assert_eq!(asked_for(&fake, &intent), before + 1, "kept");
}

on_both_stores!(a_receipt_that_cannot_be_recorded_is_still_listed_and_asked_for_later);
/// The store cannot record a listing's receipt work: the listing answers
/// all the same. Stripe gave the receipt but it could not be kept: shown
/// in this answer, asked for again an hour later (the ask was claimed).
/// The ask itself could not be claimed: Stripe is not asked, the payment
/// is shown without it, and the next listing asks.
async fn a_receipt_that_cannot_be_recorded_is_still_listed_and_asked_for_later() {
    let (fake, app, clock, mut events, (account, customer, token)) = paying("+14155550874").await;
    let store = app.store.clone().unwrap();
    let intent = format!("pi_access_{account}");
    let before = asked_for(&fake, &intent);

    // Stripe gives the receipt; its recording fails.
    fake.hold_receipts();
    let listing = payments(&app, account, &token);
    let fail_the_record = async {
        eventually("the listing to ask Stripe for the receipt", || async {
            asked_for(&fake, &intent) > before
        })
        .await;
        store.fail_next_commits_for_testing(1_000_000);
        fake.release_receipts();
    };
    let (listed, ()) = futures_util::future::join(listing, fail_the_record).await;
    store.fail_next_commits_for_testing(0);
    assert_eq!(listed[0]["receipt_url"], receipt_url(&intent).as_str());
    let order = listed[0]["id"].as_i64().unwrap();
    let (status, detail) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["order"]["receipt_url"], Value::Null, "not kept");
    // Not asked again at once; an hour later, asked again and kept.
    payments(&app, account, &token).await;
    assert_eq!(asked_for(&fake, &intent), before + 1);
    clock.advance_ms(HOUR_MS);
    assert_eq!(
        payments(&app, account, &token).await[0]["receipt_url"],
        receipt_url(&intent).as_str()
    );
    assert_eq!(asked_for(&fake, &intent), before + 2);

    // A new payment whose ask cannot be claimed: not asked, shown without
    // its receipt; the next listing asks.
    let (order, top_up_intent) = top_up(
        &app,
        &clock,
        &mut events,
        (account, &customer, &token),
        "unclaimed",
    )
    .await;
    let before = asked_for(&fake, &top_up_intent);
    store.fail_next_commits_for_testing(1_000_000);
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/payments"),
            Some(&token),
            None,
        )
        .await;
    store.fail_next_commits_for_testing(0);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["payments"][0]["id"], order);
    assert_eq!(body["payments"][0]["receipt_url"], Value::Null);
    assert_eq!(
        asked_for(&fake, &top_up_intent),
        before,
        "not asked unclaimed"
    );
    assert_eq!(
        payments(&app, account, &token).await[0]["receipt_url"],
        receipt_url(&top_up_intent).as_str()
    );
    assert_eq!(asked_for(&fake, &top_up_intent), before + 1);
}

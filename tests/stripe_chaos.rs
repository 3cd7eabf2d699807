//! Stripe replay chaos: 10 000 signed events for 1 000 orders — the ones
//! that move money and the ones Stripe sends around them — each delivered
//! three times (30 000 deliveries), shuffled, refunds among them (often
//! before the payment they refund), delivered concurrently. Every order is
//! credited once, every refund taken once, and each balance is exactly what
//! it should be.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use futures_util::future::join_all;
use serde_json::json;

use crate::fake_stripe::EventFactory;
use crate::ledger_actors::assert_verified;
use crate::stripe::{app_with_fake_stripe, start_access};

const ACCOUNTS: usize = 100;
const TOP_UPS_PER_ACCOUNT: usize = 9;
const UNIQUE_EVENTS: usize = 10_000;

/// The events Stripe sends around one payment besides the two that count.
fn companions(
    events: &mut EventFactory,
    intent: &str,
    charge: &str,
    customer: &str,
) -> Vec<String> {
    vec![
        events.companion(
            "payment_intent.created",
            "payment_intent",
            &[
                ("id", json!(intent)),
                ("customer", json!(customer)),
                ("status", json!("requires_payment_method")),
            ],
        ),
        events.companion(
            "charge.succeeded",
            "charge",
            &[
                ("id", json!(charge)),
                ("payment_intent", json!(intent)),
                ("customer", json!(customer)),
            ],
        ),
    ]
}

/// Fisher–Yates with a fixed xorshift seed: the same shuffle every run.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for index in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(index, (seed % (index as u64 + 1)) as usize);
    }
}

on_both_stores!(ten_thousand_events_delivered_three_times_shuffled_credit_and_refund_exactly_once);
async fn ten_thousand_events_delivered_three_times_shuffled_credit_and_refund_exactly_once() {
    // 30 000 deliveries: on a busy two-core machine this takes minutes.
    crate::watchdog::watch_longer(3);
    let (app, _fake) = app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let mut unique = Vec::new();
    let mut expected: HashMap<i64, i64> = HashMap::new();
    let mut orders = 0;

    for index in 0..ACCOUNTS {
        let phone = format!("+1415556{index:04}");
        let (account, order, session, customer) = start_access(&app, &phone, None).await;
        orders += 1;
        let access_intent = format!("pi_access_{order}");
        // Activate now so that the account can start top-ups; its events
        // are delivered again, shuffled, below.
        let completed = events.checkout_completed(&session, order, &customer, 2999, &access_intent);
        assert_eq!(app.deliver(&completed).await.0, StatusCode::OK);
        unique.push(completed);
        unique.push(events.payment_intent_succeeded(
            &access_intent,
            2999,
            &customer,
            json!({"sms_credit_purpose": "checkout"}),
        ));
        unique.extend(companions(
            &mut events,
            &access_intent,
            &format!("ch_access_{order}"),
            &customer,
        ));
        *expected.entry(account).or_default() += 5_000_000;

        let token = app.issue_token(account).await;
        for top_up in 0..TOP_UPS_PER_ACCOUNT {
            let (order, session) = app.start_top_up(account, &token).await;
            orders += 1;
            let intent = format!("pi_topup_{order}");
            let charge = format!("ch_topup_{order}");
            unique.push(events.checkout_completed(&session, order, &customer, 1000, &intent));
            unique.push(events.payment_intent_succeeded(
                &intent,
                1000,
                &customer,
                json!({"sms_credit_purpose": "checkout"}),
            ));
            unique.extend(companions(&mut events, &intent, &charge, &customer));
            *expected.entry(account).or_default() += 10_000_000;
            // `refund.created` of the charge's latest refund (the one its
            // last `charge.refunded` made).
            let refund_created = |events: &mut EventFactory| {
                let latest = events.refunds_of_charge(&charge).pop().unwrap();
                events.refund_event("refund.created", latest)
            };
            match top_up % 3 {
                // Two partial refunds: 3.00 then 7.00 cumulative.
                0 => {
                    unique.push(events.charge_refunded(&charge, &intent, 1000, 300));
                    unique.push(refund_created(&mut events));
                    unique.push(events.charge_refunded(&charge, &intent, 1000, 700));
                    unique.push(refund_created(&mut events));
                    *expected.entry(account).or_default() -= 7_000_000;
                }
                // One full refund.
                1 => {
                    unique.push(events.charge_refunded(&charge, &intent, 1000, 1000));
                    unique.push(refund_created(&mut events));
                    *expected.entry(account).or_default() -= 10_000_000;
                }
                _ => {}
            }
        }
    }
    assert_eq!(orders, 1_000);
    // The rest: `customer.created` events, which Stripe sends as well.
    while unique.len() < UNIQUE_EVENTS {
        unique.push(events.other());
    }
    assert_eq!(unique.len(), UNIQUE_EVENTS);
    let mut deliveries: Vec<&String> = unique.iter().chain(&unique).chain(&unique).collect();
    assert_eq!(deliveries.len(), 3 * UNIQUE_EVENTS);
    shuffle(&mut deliveries, 0x00C0_FFEE);

    // Eight deliveries in flight at a time, as Stripe does.
    let lanes: Vec<Vec<&String>> = (0..8)
        .map(|lane| deliveries.iter().skip(lane).step_by(8).copied().collect())
        .collect();
    join_all(lanes.iter().map(|lane| {
        let app = &app;
        async move {
            for payload in lane {
                let (status, answer) = app.deliver(payload).await;
                assert_eq!(status, StatusCode::OK, "{answer}");
            }
        }
    }))
    .await;

    for (account, balance) in &expected {
        assert_eq!(
            app.balance_micros(*account).await,
            *balance,
            "account {account}"
        );
        let (_, ledger) = app.get_transactions(*account).await;
        let rows = ledger["transactions"].as_array().unwrap();
        let credits = rows.iter().filter(|row| row["type"] == "credit").count();
        assert_eq!(
            credits,
            1 + TOP_UPS_PER_ACCOUNT,
            "account {account}: each order credited once"
        );
        let refunded: i64 = rows
            .iter()
            .filter(|row| row["type"] == "refund")
            .map(|row| row["amount_micros"].as_i64().unwrap())
            .sum();
        assert_eq!(
            refunded,
            -3 * 17_000_000,
            "account {account}: refunds taken once"
        );
    }
    let directory = app.stop().await;
    assert_verified(&directory);
}

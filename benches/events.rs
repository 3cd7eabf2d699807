//! Stripe events with a backlog that never applies: the time to apply a
//! checkout completion with no waiting events, and again with 10 000
//! refunds of payments this product did not make waiting beside it.
//!
//! `cargo bench --bench events` (options: `-- --waiting N --completions N`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sms_credit::config::{Secret, Settings, StripeSettings};
use sms_credit::startup::Core;
use sms_credit_actors::accounts::{AccountStatus, NewAccount, PhoneNumber};
use sms_credit_actors::billing::checkout::Billing;
use sms_credit_actors::billing::events::{EventOutcome, StripeEvent};
use sms_credit_actors::billing::orders::{NewOrder, OrderType};
use sms_credit_actors::billing::TOP_UP;
use sms_credit_actors::clock::SystemClock;

struct Options {
    waiting: u64,
    completions: u64,
}

fn options() -> Options {
    let mut options = Options {
        waiting: 10_000,
        completions: 500,
    };
    let arguments: Vec<String> = std::env::args().collect();
    let mut index = 1;
    while index < arguments.len() {
        let value = arguments
            .get(index + 1)
            .and_then(|value| value.parse::<u64>().ok());
        match (arguments[index].as_str(), value) {
            ("--waiting", Some(value)) => options.waiting = value,
            ("--completions", Some(value)) => options.completions = value.max(1),
            _ => {
                index += 1;
                continue;
            }
        }
        index += 2;
    }
    options
}

/// Active accounts, each with a pending $10 top-up order opened on Checkout:
/// (order id, session id).
async fn pending_orders(core: &Core, count: u64, first: u64) -> Vec<(i64, String)> {
    let mut orders = Vec::new();
    for number in first..first + count {
        let account = core
            .store
            .accounts()
            .create(
                NewAccount {
                    phone: PhoneNumber::parse(&format!(
                        "+1415{}{:04}",
                        200 + number / 10_000,
                        number % 10_000
                    ))
                    .unwrap(),
                    email: None,
                    status: AccountStatus::Active,
                },
                0,
            )
            .await
            .unwrap();
        let (_, order) = core
            .store
            .billing()
            .open_order(
                NewOrder {
                    account_id: account.id,
                    order_type: OrderType::TopUp,
                    amount: TOP_UP,
                    list_price: TOP_UP,
                    pricing_mode: None,
                    discount_code_id: None,
                },
                0,
            )
            .await
            .unwrap();
        let session = format!("cs_bench_{number}");
        core.store
            .billing()
            .set_order_session(order.id, session.clone())
            .await
            .unwrap();
        orders.push((order.id, session));
    }
    orders
}

/// Applies one completion per order; answers each one's time.
async fn complete(billing: &Billing, orders: &[(i64, String)]) -> Vec<Duration> {
    let mut times = Vec::new();
    for (order_id, session) in orders {
        let event = StripeEvent::CheckoutCompleted {
            session_id: session.clone(),
            order_id: Some(*order_id),
            paid: true,
            amount_total_cents: Some(1000),
            customer_id: Some(format!("cus_bench_{order_id}")),
            payment_intent_id: Some(format!("pi_bench_{order_id}")),
        };
        let started = Instant::now();
        let outcome = billing
            .handle_event(
                &format!("evt_complete_{order_id}"),
                "checkout.session.completed",
                Ok(event),
                1,
            )
            .await
            .unwrap();
        times.push(started.elapsed());
        assert!(matches!(outcome, EventOutcome::Applied(_)), "{outcome:?}");
    }
    times.sort();
    times
}

fn summary(times: &[Duration]) -> String {
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    let at = |per_mille: usize| times[(times.len() - 1) * per_mille / 1000];
    format!(
        "mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
        mean.as_secs_f64() * 1e3,
        at(500).as_secs_f64() * 1e3,
        at(990).as_secs_f64() * 1e3
    )
}

fn main() {
    let options = options();
    let directory = tempfile::tempdir().unwrap();
    let mut settings = Settings::local(directory.path().join("events.db"));
    settings.server.public_url = Some("https://sms.example.com".into());
    settings.stripe = Some(StripeSettings {
        secret_key: Secret::new("sk_test_bench"),
        webhook_secret: Secret::new("whsec_bench"),
        // Never called: applying events needs no call to Stripe.
        api_base: "http://127.0.0.1:9".into(),
        allow_promotion_codes: false,
        included_credit: sms_credit_actors::Money::ZERO,
        buy_daily_limit: sms_credit_actors::Money::from_micros(30_000_000),
    });
    actix_rt::System::new().block_on(async move {
        let core = Core::start(&settings, Arc::new(SystemClock)).unwrap();
        let billing = core.billing.clone().unwrap();
        let before = pending_orders(&core, options.completions, 0).await;
        let after = pending_orders(&core, options.completions, options.completions).await;

        let without = complete(&billing, &before).await;
        println!(
            "checkout completion, no waiting events: {} ({} events)",
            summary(&without),
            without.len()
        );

        let loading = Instant::now();
        for number in 0..options.waiting {
            let refund = StripeEvent::ChargeRefunded {
                charge_id: format!("ch_foreign_{number}"),
                payment_intent_id: Some(format!("pi_foreign_{number}")),
                amount_refunded_cents: 1000,
                refunds: Vec::new(),
                refunds_complete: false,
            };
            let outcome = billing
                .handle_event(
                    &format!("evt_foreign_{number}"),
                    "charge.refunded",
                    Ok(refund),
                    1,
                )
                .await
                .unwrap();
            assert!(matches!(outcome, EventOutcome::Waiting { .. }));
        }
        println!(
            "{} refunds of foreign payments recorded as waiting in {:.1} s",
            options.waiting,
            loading.elapsed().as_secs_f64()
        );

        let with = complete(&billing, &after).await;
        println!(
            "checkout completion, {} waiting events: {} ({} events)",
            options.waiting,
            summary(&with),
            with.len()
        );
        let mean = |times: &[Duration]| {
            times.iter().sum::<Duration>().as_secs_f64() / times.len().max(1) as f64
        };
        println!(
            "ratio with / without the backlog: {:.2}",
            mean(&with) / mean(&without)
        );
        core.shutdown().await;
    });
}

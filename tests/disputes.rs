//! Disputes of payments and refunds that fail after they were made: a
//! chargeback takes the disputed credit back (the unspent credit, then the
//! balance below zero), once however its events come, also at once on two
//! instances; a dispute won gives it back once, one lost leaves it taken;
//! an inquiry takes nothing; a refund and a dispute of one charge never take
//! back more than it credited; a dispute before its order is completed
//! waits; a refund that fails gives its credit back once. Each is told to
//! the host application and listed for the operator. On both stores.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::auto_top_up::adjust_to;
use crate::fake_stripe::{EventFactory, FakeStripe, Listed};
use crate::helpers::{fresh_directory, stripe_settings, TestApp, ADMIN_TOKEN};
use crate::ledger_actors::assert_verified;
use crate::refunds::paid_top_up;
use crate::webhook_receiver::Receiver;
use crate::webhooks::add_endpoint;

/// A server paid through the fake Stripe, and a receiver of every webhook
/// event on loopback that trusts its endpoint.
async fn app_with_receiver() -> (FakeStripe, TestApp, Receiver) {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let mut settings = stripe_settings(&directory, &fake.base_url);
    settings.webhooks.allow_private = true;
    let app = TestApp::spawn_with(directory, settings).await;
    let receiver = Receiver::start().await;
    let (_, secret) = add_endpoint(&app, &receiver.url, json!(["*"])).await;
    receiver.trust(&secret);
    (fake, app, receiver)
}

/// Delivers a Stripe event; answers what the server says became of it.
pub(crate) async fn deliver(app: &TestApp, payload: &str) -> Value {
    let (status, answer) = app.deliver(payload).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["result"].clone()
}

/// The rows of an order in the account's ledger: (key, amount), oldest first.
pub(crate) async fn rows_of(app: &TestApp, account: i64, order: i64) -> Vec<(String, i64)> {
    let (status, ledger) = app.get_transactions(account).await;
    assert_eq!(status, StatusCode::OK, "{ledger}");
    let mut rows: Vec<(i64, String, i64)> = ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["order_id"] == order && row["type"] == "refund")
        .map(|row| {
            (
                row["seq"].as_i64().unwrap(),
                row["idempotency_key"].as_str().unwrap().to_string(),
                row["amount_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows.into_iter()
        .map(|(_, key, amount)| (key, amount))
        .collect()
}

/// What an order's rows took back in all (negative) or gave back.
pub(crate) async fn net_of(app: &TestApp, account: i64, order: i64) -> i64 {
    rows_of(app, account, order)
        .await
        .iter()
        .map(|(_, amount)| amount)
        .sum()
}

/// The disputes the console lists as needing attention.
async fn open_disputes(app: &TestApp) -> Vec<Value> {
    let (status, attention) = app
        .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{attention}");
    attention["disputes_open"].as_array().unwrap().clone()
}

async fn a_dispute_takes_back_the_unspent_credit_then_the_balance_goes_below_zero() {
    let (_fake, app, receiver) = app_with_receiver().await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550170").await;
    // $15: $5 with access and the $10 top-up; $11 of it spent.
    adjust_to(&app, account, 4_000_000, "spent").await;

    // The cardholder disputes the $10 top-up: its credit comes back, the
    // $4 left and $6 more (the balance goes below zero), once however
    // often and in whatever form Stripe says so.
    let created = events.dispute(
        "charge.dispute.created",
        "dp_unspent",
        "ch_unspent",
        &intent,
        1000,
        "needs_response",
    );
    let withdrawn = events.dispute(
        "charge.dispute.funds_withdrawn",
        "dp_unspent",
        "ch_unspent",
        &intent,
        1000,
        "needs_response",
    );
    let answer = deliver(&app, &created).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    for payload in [&created, &withdrawn, &withdrawn] {
        deliver(&app, payload).await;
    }
    assert_eq!(app.balance_micros(account).await, -6_000_000);
    assert_eq!(
        rows_of(&app, account, order).await,
        vec![(
            "stripe-dispute:dp_unspent:withdrawn".to_string(),
            -10_000_000
        )]
    );
    // The host is told once; the operator sees it until it is decided.
    let disputed = receiver.accepted("payment.disputed", 1).await;
    let data = &disputed[0].body["data"];
    assert_eq!(data["account_id"], account);
    assert_eq!(data["order_id"], order);
    assert_eq!(data["dispute_id"], "dp_unspent");
    assert_eq!(data["amount_micros"], 10_000_000);
    assert_eq!(data["credit_taken_back_micros"], 10_000_000);
    assert_eq!(data["balance_micros"], -6_000_000);
    assert_eq!(data["status"], "needs_response");
    let listed = open_disputes(&app).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["dispute_id"], "dp_unspent");
    assert_eq!(listed[0]["account_id"], account);
    assert_eq!(listed[0]["order_id"], order);
    assert_eq!(listed[0]["amount_micros"], 10_000_000);
    assert_eq!(listed[0]["status"], "needs_response");

    // Lost: the credit stays taken; the host is told how it ended, once;
    // the console no longer lists it.
    let lost = events.dispute(
        "charge.dispute.closed",
        "dp_unspent",
        "ch_unspent",
        &intent,
        1000,
        "lost",
    );
    for _ in 0..2 {
        deliver(&app, &lost).await;
    }
    // An older event arriving late moves nothing back.
    let updated = events.dispute(
        "charge.dispute.updated",
        "dp_unspent",
        "ch_unspent",
        &intent,
        1000,
        "under_review",
    );
    deliver(&app, &updated).await;
    assert_eq!(app.balance_micros(account).await, -6_000_000);
    assert_eq!(net_of(&app, account, order).await, -10_000_000);
    let closed = receiver.accepted("payment.dispute_closed", 1).await;
    assert_eq!(closed[0].body["data"]["status"], "lost");
    assert_eq!(closed[0].body["data"]["credit_given_back_micros"], 0);
    assert!(open_disputes(&app).await.is_empty());
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let kinds: Vec<String> = receiver
        .received()
        .iter()
        .map(|received| received.kind().to_string())
        .filter(|kind| kind.starts_with("payment.dispute"))
        .collect();
    assert_eq!(kinds.len(), 2, "once each: {kinds:?}");
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_dispute_takes_back_the_unspent_credit_then_the_balance_goes_below_zero);

async fn a_dispute_won_gives_the_credit_back_once_and_an_inquiry_takes_nothing() {
    let (_fake, app, receiver) = app_with_receiver().await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550171").await;
    assert_eq!(app.balance_micros(account).await, 15_000_000);

    // An inquiry moves no money: nothing taken back, nothing told to the
    // host, but the operator sees it.
    let inquiry = events.dispute(
        "charge.dispute.created",
        "dp_won",
        "ch_won",
        &intent,
        1000,
        "warning_needs_response",
    );
    let answer = deliver(&app, &inquiry).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    assert!(rows_of(&app, account, order).await.is_empty());
    let listed = open_disputes(&app).await;
    assert_eq!(listed[0]["status"], "warning_needs_response", "{listed:?}");

    // It becomes a chargeback: the funds are withdrawn, the credit taken.
    let withdrawn = events.dispute(
        "charge.dispute.funds_withdrawn",
        "dp_won",
        "ch_won",
        &intent,
        1000,
        "needs_response",
    );
    deliver(&app, &withdrawn).await;
    assert_eq!(app.balance_micros(account).await, 5_000_000);

    // Won: the funds are reinstated and the dispute closed, each said
    // twice: the credit comes back once.
    let reinstated = events.dispute(
        "charge.dispute.funds_reinstated",
        "dp_won",
        "ch_won",
        &intent,
        1000,
        "won",
    );
    let won = events.dispute(
        "charge.dispute.closed",
        "dp_won",
        "ch_won",
        &intent,
        1000,
        "won",
    );
    for payload in [&reinstated, &won, &reinstated, &won, &withdrawn] {
        deliver(&app, payload).await;
    }
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    assert_eq!(
        rows_of(&app, account, order).await,
        vec![
            ("stripe-dispute:dp_won:withdrawn".to_string(), -10_000_000),
            ("stripe-dispute:dp_won:reinstated".to_string(), 10_000_000),
        ]
    );
    let closed = receiver.accepted("payment.dispute_closed", 1).await;
    assert_eq!(closed[0].body["data"]["status"], "won");
    assert_eq!(
        closed[0].body["data"]["credit_given_back_micros"],
        10_000_000
    );
    assert_eq!(closed[0].body["data"]["balance_micros"], 15_000_000);
    assert!(open_disputes(&app).await.is_empty());

    // An inquiry that closes without a chargeback: nothing, ever.
    let (_, other_order, other_intent) = paid_top_up(&app, &mut events, "+14155550172").await;
    for status in ["warning_needs_response", "warning_closed"] {
        let event = events.dispute(
            "charge.dispute.updated",
            "dp_inquiry",
            "ch_inquiry",
            &other_intent,
            1000,
            status,
        );
        deliver(&app, &event).await;
    }
    assert!(open_disputes(&app).await.is_empty());
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let told: Vec<String> = receiver
        .received()
        .iter()
        .filter(|received| received.body["data"]["order_id"] == other_order)
        .map(|received| received.kind().to_string())
        .filter(|kind| kind.starts_with("payment.dispute"))
        .collect();
    assert!(told.is_empty(), "an inquiry is not told: {told:?}");

    // A status this release does not know is never taken for another: the
    // event is recorded failed, for the operator, and nothing moves.
    let unknown = events.dispute(
        "charge.dispute.updated",
        "dp_won",
        "ch_won",
        &intent,
        1000,
        "arbitration",
    );
    let answer = deliver(&app, &unknown).await;
    assert_eq!(answer["outcome"], "failed", "{answer}");
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_dispute_won_gives_the_credit_back_once_and_an_inquiry_takes_nothing);

async fn a_refund_and_a_dispute_of_one_charge_never_take_back_more_than_it_credited() {
    let (_fake, app, _receiver) = app_with_receiver().await;
    let mut events = EventFactory::new();

    // $4 refunded, then the whole $10 disputed: $6 more, $10 in all.
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550173").await;
    deliver(&app, &events.charge_refunded("ch_both", &intent, 1000, 400)).await;
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_both",
        "ch_both",
        &intent,
        1000,
        "needs_response",
    );
    deliver(&app, &disputed).await;
    assert_eq!(net_of(&app, account, order).await, -10_000_000);
    assert_eq!(app.balance_micros(account).await, 5_000_000);
    // Won: what the dispute held comes back; the refund's $4 stays taken.
    let won = events.dispute(
        "charge.dispute.closed",
        "dp_both",
        "ch_both",
        &intent,
        1000,
        "won",
    );
    deliver(&app, &won).await;
    assert_eq!(net_of(&app, account, order).await, -4_000_000);

    // The other way round: the dispute first takes all $10; the refund's
    // event then finds nothing left to take; the dispute won gives back
    // only what the refund does not hold.
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550174").await;
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_first",
        "ch_first",
        &intent,
        1000,
        "needs_response",
    );
    deliver(&app, &disputed).await;
    deliver(
        &app,
        &events.charge_refunded("ch_first", &intent, 1000, 400),
    )
    .await;
    assert_eq!(net_of(&app, account, order).await, -10_000_000);
    let won = events.dispute(
        "charge.dispute.closed",
        "dp_first",
        "ch_first",
        &intent,
        1000,
        "won",
    );
    deliver(&app, &won).await;
    assert_eq!(net_of(&app, account, order).await, -4_000_000);
    assert_eq!(app.balance_micros(account).await, 11_000_000);

    // Access ($29.99, which credited $5) refunded $3 and then disputed in
    // full: $5 taken back in all, what it credited.
    let access_intent = format!("pi_access_{account}");
    deliver(
        &app,
        &events.charge_refunded("ch_access", &access_intent, 2999, 300),
    )
    .await;
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_access",
        "ch_access",
        &access_intent,
        2699,
        "needs_response",
    );
    deliver(&app, &disputed).await;
    let orders = app.get_orders(account).await;
    let access = orders
        .iter()
        .find(|row| row["order_type"] == "initial_access")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(net_of(&app, account, access).await, -5_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_and_a_dispute_of_one_charge_never_take_back_more_than_it_credited);

async fn a_dispute_before_its_order_is_completed_waits_and_applies_after() {
    let (_fake, app, receiver) = app_with_receiver().await;
    let mut events = EventFactory::new();
    let (account, customer, token) =
        crate::stripe::active_account(&app, &mut events, "+14155550175").await;
    let (order, session) = app.start_top_up(account, &token).await;
    let intent = format!("pi_early_{order}");
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_early",
        "ch_early",
        &intent,
        1000,
        "needs_response",
    );
    let answer = deliver(&app, &disputed).await;
    assert_eq!(answer["outcome"], "waiting", "{answer}");
    assert_eq!(answer["waiting_on"], format!("payment_intent:{intent}"));
    assert_eq!(app.balance_micros(account).await, 5_000_000);

    // The payment completes: credited, and the dispute (woken) takes it
    // back; Stripe's retry of the dispute changes nothing.
    let completed = events.checkout_completed(&session, order, &customer, 1000, &intent);
    deliver(&app, &completed).await;
    deliver(&app, &disputed).await;
    assert_eq!(app.balance_micros(account).await, 5_000_000);
    assert_eq!(
        rows_of(&app, account, order).await,
        vec![("stripe-dispute:dp_early:withdrawn".to_string(), -10_000_000)]
    );
    let disputed = receiver.accepted("payment.disputed", 1).await;
    assert_eq!(disputed[0].body["data"]["order_id"], order);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_dispute_before_its_order_is_completed_waits_and_applies_after);

async fn a_dispute_said_on_two_instances_at_once_takes_effect_once() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    let mut events = EventFactory::new();
    let (account, customer, token) =
        crate::stripe::active_account(&first, &mut events, "+14155550176").await;
    assert_eq!(second.balance_micros(account).await, 5_000_000);

    // Six paid $10 top-ups, each refunded $4; each is disputed in full,
    // its `created` and `funds_withdrawn` delivered at the same moment to
    // the two instances, then won, `funds_reinstated` and `closed` at the
    // same moment: $6 taken back and given back once, never more than the
    // $10 each credited.
    let mut top_ups = Vec::new();
    for _ in 0..6 {
        let (order, session) = first.start_top_up(account, &token).await;
        let intent = format!("pi_twice_{order}");
        let completed = events.checkout_completed(&session, order, &customer, 1000, &intent);
        deliver(&first, &completed).await;
        deliver(
            &second,
            &events.charge_refunded(&format!("ch_twice_{order}"), &intent, 1000, 400),
        )
        .await;
        top_ups.push((order, intent));
    }
    assert_eq!(first.balance_micros(account).await, 41_000_000);
    for (index, (order, intent)) in top_ups.iter().enumerate() {
        let (one, other) = if index % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let dispute = format!("dp_twice_{order}");
        let charge = format!("ch_twice_{order}");
        let mut event = |event_type: &str, status: &str| {
            events.dispute(event_type, &dispute, &charge, intent, 1000, status)
        };
        let created = event("charge.dispute.created", "needs_response");
        let withdrawn = event("charge.dispute.funds_withdrawn", "needs_response");
        let (a, b) = futures_util::join!(one.deliver(&created), other.deliver(&withdrawn));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        let (a, b) = futures_util::join!(one.deliver(&created), other.deliver(&created));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        assert_eq!(
            net_of(&first, account, *order).await,
            -10_000_000,
            "order {order}: the refund's $4 and the dispute's $6"
        );
    }
    assert_eq!(first.balance_micros(account).await, 5_000_000);
    for (index, (order, intent)) in top_ups.iter().enumerate() {
        let (one, other) = if index % 2 == 0 {
            (&second, &first)
        } else {
            (&first, &second)
        };
        let dispute = format!("dp_twice_{order}");
        let charge = format!("ch_twice_{order}");
        let reinstated = events.dispute(
            "charge.dispute.funds_reinstated",
            &dispute,
            &charge,
            intent,
            1000,
            "won",
        );
        let won = events.dispute(
            "charge.dispute.closed",
            &dispute,
            &charge,
            intent,
            1000,
            "won",
        );
        let (a, b) = futures_util::join!(one.deliver(&reinstated), other.deliver(&won));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        assert_eq!(
            net_of(&first, account, *order).await,
            -4_000_000,
            "order {order}: the refund's $4 stays taken"
        );
    }
    assert_eq!(first.balance_micros(account).await, 41_000_000);
    assert_eq!(second.balance_micros(account).await, 41_000_000);
    first.stop().await;
    let directory = second.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_dispute_said_on_two_instances_at_once_takes_effect_once);

async fn a_pending_refund_that_fails_gives_its_credit_back_once() {
    let (fake, app, _receiver) = app_with_receiver().await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550177").await;

    // The admin refunds $3; Stripe takes it, pending: the request is
    // succeeded, and Stripe's events about the refund take the credit
    // back, once (its own event first, then the charge's, which lists it).
    fake.set_refund_status("pending");
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            Some(ADMIN_TOKEN),
            Some(
                json!({"amount_micros": 3_000_000, "reason": "pending", "idempotency_key": "p-1"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["refund"]["status"], "succeeded");
    let created = fake.refunds_of(&intent)[0].clone();
    deliver(
        &app,
        &events.refund_event("refund.created", created.clone()),
    )
    .await;
    assert_eq!(app.balance_micros(account).await, 12_000_000);
    deliver(
        &app,
        &fake.charge_refunded(&mut events, "ch_pending", &intent, 1000, Listed::All),
    )
    .await;
    assert_eq!(app.balance_micros(account).await, 12_000_000);

    // The refund fails: the credit comes back, once, however Stripe says
    // it; the request ends failed.
    let failed = fake.fail_refund(created["id"].as_str().unwrap());
    for event_type in [
        "refund.failed",
        "charge.refund.updated",
        "refund.updated",
        "refund.failed",
    ] {
        let answer = deliver(&app, &events.refund_event(event_type, failed.clone())).await;
        assert_eq!(answer["outcome"], "applied", "{event_type}: {answer}");
    }
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    assert_eq!(net_of(&app, account, order).await, 0);
    let (status, listed) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}/refunds"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["refunds"][0]["status"], "failed", "{listed}");

    // A later refund of the charge, $2: it alone is held back (whatever
    // Stripe's running total says of the one that failed).
    fake.refund_in_dashboard(&intent, "ch_pending", 200);
    deliver(
        &app,
        &fake.charge_refunded(&mut events, "ch_pending", &intent, 1000, Listed::All),
    )
    .await;
    assert_eq!(net_of(&app, account, order).await, -2_000_000);
    // What is left to refund counts the failed refund's money as back:
    // $8 of the $10.
    let (status, rest) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            Some(ADMIN_TOKEN),
            Some(json!({"reason": "the rest", "idempotency_key": "p-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(rest["refund"]["amount_micros"], 8_000_000, "{rest}");

    // A refund made in Stripe's dashboard (no metadata) that fails gives
    // its credit back too, before its order's later events or after.
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550178").await;
    let dashboard_refund = fake.refund_in_dashboard(&intent, "ch_dash", 1000);
    let refund_id = dashboard_refund["id"].as_str().unwrap().to_string();
    deliver(
        &app,
        &fake.charge_refunded(&mut events, "ch_dash", &intent, 1000, Listed::All),
    )
    .await;
    assert_eq!(app.balance_micros(account).await, 5_000_000);
    let failed = events.refund_event("refund.failed", fake.fail_refund(&refund_id));
    for _ in 0..2 {
        deliver(&app, &failed).await;
    }
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    assert_eq!(
        rows_of(&app, account, order).await,
        vec![
            (format!("stripe-refund:{refund_id}"), -10_000_000),
            (format!("stripe-refund-failed:{refund_id}"), 10_000_000)
        ]
    );
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_pending_refund_that_fails_gives_its_credit_back_once);

//! The legacy refund sweep under races: a round gives up only the claims
//! still its own; an order is marked settled only if no refund of it was
//! recorded since its settling read them; two instances sweeping at once
//! replace each order once and tell each refund once. On both stores.

use std::time::Duration;

use crate::disputes::{deliver, net_of, rows_of};
use crate::fake_stripe::{EventFactory, FakeStripe};
use crate::helpers::{stripe_settings, TestApp, NOW_UNIX};
use crate::ledger_actors::assert_verified;
use crate::refunds_by_id::{
    eventually, legacy_records, orders_with_an_ignored_refund, refunded_figure, told_refunds,
};
use sms_credit_actors::billing::legacy_refunds::{LEGACY_CLAIM_LEASE_MS, LEGACY_SWEEP_EVERY_MS};
use sms_credit_actors::clock::ManualClock;

/// Orders whose replaced legacy record is marked settled.
fn settled_orders(directory: &crate::database::TestDatabase) -> i64 {
    directory.number(
        "SELECT COUNT(*) FROM stripe_refunds WHERE standing = 'replaced' AND settled_at IS NOT NULL",
    )
}

/// A round (instance A) claims two orders; its lease runs out while it
/// waits on Stripe about the first, and a round of instance B claims both.
/// A's round then ends (Stripe unavailable) and gives up the order it did
/// not reach: B's claim of it stands — no third round takes it while B
/// holds it — and B's own giving up does give it up.
async fn a_round_gives_up_only_the_claims_still_its_own() {
    let fake = FakeStripe::start().await;
    let (directory, _) = orders_with_an_ignored_refund(&fake, &["pi_claim_1", "pi_claim_2"]);
    let settings = stripe_settings(&directory, &fake.base_url);
    // The clock is never moved: neither instance's own sweep runs.
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let a = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let b = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let (a_store, b_store) = (a.store.as_ref().unwrap(), b.store.as_ref().unwrap());
    let claimed_until = |order: i64| {
        directory.number(&format!(
            "SELECT COALESCE(claimed_until, 0) FROM stripe_refunds
              WHERE refund_id = 'legacy-order-{order}'"
        ))
    };
    let order_ids = |orders: Vec<sms_credit_actors::billing::stripe_refunds::LegacyOrder>| {
        orders
            .into_iter()
            .map(|order| order.order_id)
            .collect::<Vec<_>>()
    };

    let start = NOW_UNIX * 1000;
    let a_lease = start + LEGACY_CLAIM_LEASE_MS;
    let claimed = a_store
        .billing()
        .claim_legacy_orders(start, a_lease, 25)
        .await
        .unwrap();
    assert_eq!(order_ids(claimed), [1, 2]);
    let b_lease = a_lease + LEGACY_CLAIM_LEASE_MS;
    let claimed = b_store
        .billing()
        .claim_legacy_orders(a_lease, b_lease, 25)
        .await
        .unwrap();
    assert_eq!(order_ids(claimed), [1, 2], "A's lease ran out");

    a_store
        .billing()
        .release_legacy_claims(vec![2], a_lease)
        .await
        .unwrap();
    assert_eq!(claimed_until(2), b_lease, "B's claim stands");
    let claimed = a_store
        .billing()
        .claim_legacy_orders(a_lease + 1, a_lease + 1 + LEGACY_CLAIM_LEASE_MS, 25)
        .await
        .unwrap();
    assert!(claimed.is_empty(), "claimed while B holds it: {claimed:?}");

    b_store
        .billing()
        .release_legacy_claims(vec![2], b_lease)
        .await
        .unwrap();
    assert_eq!(claimed_until(2), 0, "B gave its own claim up");
    assert_eq!(claimed_until(1), b_lease);
    let claimed = a_store
        .billing()
        .claim_legacy_orders(a_lease + 2, a_lease + 2 + LEGACY_CLAIM_LEASE_MS, 25)
        .await
        .unwrap();
    assert_eq!(order_ids(claimed), [2]);
    a.stop().await;
    b.stop().await;
}
on_both_stores!(a_round_gives_up_only_the_claims_still_its_own);

/// Instance X settles an order whose legacy record its event replaced (its
/// $2 refund taken back) and stops just before marking it settled; then a
/// new $1 refund of the order is recorded by instance Y's event, which
/// fails at that refund's row and is never retried (as a sweep round that
/// stopped, or an event Stripe gave up on). X's mark then finds a refund
/// recorded since it read them, and does not mark the order settled: the
/// sweep takes it up, takes the $1 back and tells the host, once.
async fn a_settled_mark_is_not_set_over_a_refund_recorded_since() {
    use sms_credit_actors::store::WritePart;
    let fake = FakeStripe::start().await;
    let (directory, ignored) = orders_with_an_ignored_refund(&fake, &["pi_settle_race"]);
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let x = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let y = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let mut events = EventFactory::new();
    let ignored_refund = fake
        .refunds_of("pi_settle_race")
        .into_iter()
        .find(|refund| refund["id"] == ignored[0].as_str())
        .unwrap();
    let replacing = events.refund_event("refund.updated", ignored_refund);

    let hold = x
        .store
        .as_ref()
        .unwrap()
        .hold_next_settled_mark_for_testing();
    let y_store = y.store.as_ref().unwrap();
    // The $1 refund is made once X has listed the payment's refunds.
    let meanwhile = async {
        actix_rt::time::timeout(Duration::from_secs(10), hold.reached())
            .await
            .expect("instance X never came to mark the order settled");
        let new = fake.refund_in_dashboard("pi_settle_race", "ch_pi_settle_race", 100);
        let new_id = new["id"].as_str().unwrap().to_string();
        let created = events.refund_event("refund.created", new);
        y_store.fail_ledger_write_for_testing(&format!("stripe-refund:{new_id}"), WritePart::Row);
        let answered = y.deliver(&created).await;
        hold.release();
        (new_id, answered)
    };
    let (x_answer, (new_id, (y_status, y_answer))) =
        futures_util::join!(deliver(&x, &replacing), meanwhile);
    assert_eq!(x_answer["outcome"], "applied", "{x_answer}");
    assert!(y_status.is_server_error(), "{y_status}: {y_answer}");
    assert_eq!(legacy_records(&directory), 0);
    assert_eq!(
        rows_of(&x, 1, 1).await[2..],
        [(format!("stripe-refund:{}", ignored[0]), -2_000_000)],
        "X took the $2 back; Y's $1 row failed"
    );
    assert_eq!(
        settled_orders(&directory),
        0,
        "X did not mark the order settled over the $1 recorded since"
    );

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the sweep took the $1 back and marked the order settled",
        || async { net_of(&x, 1, 1).await == -3_000_000 && settled_orders(&directory) == 1 },
    )
    .await;
    assert_eq!(
        rows_of(&x, 1, 1).await[2..],
        [
            (format!("stripe-refund:{}", ignored[0]), -2_000_000),
            (format!("stripe-refund:{new_id}"), -1_000_000)
        ]
    );
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
    let mut expected = vec![(ignored[0].clone(), 2_000_000), (new_id, 1_000_000)];
    expected.sort();
    assert_eq!(told, expected, "each refund told once");
    assert_eq!(refunded_figure(&x, 1, 1).await, 3_000_000);
    assert_eq!(x.balance_micros(1).await, 7_000_000);
    y.stop().await;
    let directory = x.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_settled_mark_is_not_set_over_a_refund_recorded_since);

/// Two instances sweep at once, thirty orders (more than a round takes):
/// each order's record is replaced once, its $2 refund taken back by one
/// row and told to the host once, and every order ends settled.
async fn two_instances_sweeping_at_once_replace_each_order_once() {
    let fake = FakeStripe::start().await;
    let intents: Vec<String> = (1..=30).map(|n| format!("pi_both_{n}")).collect();
    let intents: Vec<&str> = intents.iter().map(String::as_str).collect();
    let (directory, ignored) = orders_with_an_ignored_refund(&fake, &intents);
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let first = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let second = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(first.balance_micros(1).await, 300_000_000);

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while settled_orders(&directory) < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "after 60 s, {} of 30 orders settled",
            settled_orders(&directory)
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(legacy_records(&directory), 0);
    for (index, refund_id) in ignored.iter().enumerate() {
        let order = index as i64 + 1;
        assert_eq!(
            rows_of(&first, 1, order).await[2..],
            [(format!("stripe-refund:{refund_id}"), -2_000_000)],
            "order {order}: its $2 taken back by one row"
        );
    }
    let mut told: Vec<String> = told_refunds(&directory)
        .iter()
        .map(|event| event["data"]["refund_id"].as_str().unwrap().to_string())
        .collect();
    told.sort();
    let mut expected = ignored.clone();
    expected.sort();
    assert_eq!(told, expected, "each refund told once");
    assert_eq!(first.balance_micros(1).await, 240_000_000);
    assert_eq!(second.balance_micros(1).await, 240_000_000);
    first.stop().await;
    let directory = second.stop().await;
    assert_verified(&directory);
}
on_both_stores!(two_instances_sweeping_at_once_replace_each_order_once);

/// An order the sweep settled (its $2 taken back) is the sweep's again once
/// a refund of it is recorded: a new $1 refund's event fails at the
/// refund's row and is never retried, and the order is no longer marked
/// settled; the sweep of the server started next takes the $1 back, tells
/// the host once, and marks the order settled again.
async fn a_refund_recorded_after_an_order_was_settled_makes_it_the_sweeps_again() {
    use sms_credit_actors::store::WritePart;
    let fake = FakeStripe::start().await;
    let (directory, ignored) = orders_with_an_ignored_refund(&fake, &["pi_settled_then"]);
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep settled the order", || async {
        settled_orders(&directory) == 1
    })
    .await;
    assert_eq!(net_of(&app, 1, 1).await, -2_000_000);

    let new = fake.refund_in_dashboard("pi_settled_then", "ch_pi_settled_then", 100);
    let new_id = new["id"].as_str().unwrap().to_string();
    let created = EventFactory::new().refund_event("refund.created", new);
    let store = app.store.as_ref().unwrap();
    store.fail_ledger_write_for_testing(&format!("stripe-refund:{new_id}"), WritePart::Row);
    let (status, answer) = app.deliver(&created).await;
    assert!(status.is_server_error(), "{status}: {answer}");
    assert_eq!(
        settled_orders(&directory),
        0,
        "the order is the sweep's again"
    );
    let directory = app.stop().await;

    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the next server's sweep took the $1 back and settled the order",
        || async { net_of(&app, 1, 1).await == -3_000_000 && settled_orders(&directory) == 1 },
    )
    .await;
    assert_eq!(
        rows_of(&app, 1, 1).await[2..],
        [
            (format!("stripe-refund:{}", ignored[0]), -2_000_000),
            (format!("stripe-refund:{new_id}"), -1_000_000)
        ]
    );
    let mut told: Vec<String> = told_refunds(&directory)
        .iter()
        .map(|event| event["data"]["refund_id"].as_str().unwrap().to_string())
        .collect();
    told.sort();
    let mut expected = vec![ignored[0].clone(), new_id];
    expected.sort();
    assert_eq!(told, expected, "each refund told once");
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_recorded_after_an_order_was_settled_makes_it_the_sweeps_again);

/// Adds to a database of [`orders_with_an_ignored_refund`]'s, after its
/// `orders` orders, a newer $10 top-up paid by `payment_intent`, never
/// refunded (it holds no legacy record).
fn add_a_newer_order(directory: &crate::database::TestDatabase, orders: i64, payment_intent: &str) {
    let order = orders + 1;
    let seq = orders * 3 + 1;
    let balance = order * 10_000_000;
    directory.execute(&format!(
        "INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                             amount_refunded, status, created_at, completed_at)
              VALUES ({order}, 1, 'top_up', 10000000, 10000000, '{payment_intent}', 0, 'completed', 0, 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                   order_id, description, created_at)
              VALUES (1, {seq}, 'credit', 10000000, {balance}, 'stripe-order:{order}', {order}, 'top-up', 0);
         UPDATE account_balances SET balance = {balance}, seq = {seq} WHERE account_id = 1;"
    ));
}

/// Why the sweep left an order's legacy record ('' if it did not).
fn left_because(directory: &crate::database::TestDatabase, order: i64) -> String {
    directory.text(&format!(
        "SELECT COALESCE(sweep_left_because, '') FROM stripe_refunds
          WHERE refund_id = 'legacy-order-{order}'"
    ))
}

/// A round replaced an order's legacy record and failed before the $2
/// refund's row; by the next round Stripe answers `resource_missing` about
/// the payment (the key was changed, the payment is in another account):
/// the order is settled from what was recorded — the $2 taken back, the
/// host told once — without asking Stripe again, never left with its
/// recorded refund never taken back.
async fn a_replaced_record_is_settled_from_what_was_recorded_without_asking_stripe_again() {
    use sms_credit_actors::store::WritePart;
    let fake = FakeStripe::start().await;
    let (directory, ignored) = orders_with_an_ignored_refund(&fake, &["pi_replaced_gone"]);
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let store = app.store.as_ref().unwrap();
    let key = format!("stripe-refund:{}", ignored[0]);
    store.fail_ledger_write_for_testing(&key, WritePart::Row);
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "a round replaced the legacy record and failed at the $2 refund's row",
        || async {
            legacy_records(&directory) == 0 && !store.ledger_write_failure_armed_for_testing()
        },
    )
    .await;
    assert_eq!(fake.requests_with("GET", "/v1/refunds").len(), 1);

    fake.set_refund_lists_refused_for(Some("pi_replaced_gone"));
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually(
        "a later round took the $2 back, told the host and settled the order",
        || async {
            rows_of(&app, 1, 1).await[2..] == [(key.clone(), -2_000_000)]
                && told_refunds(&directory).len() == 1
                && settled_orders(&directory) == 1
        },
    )
    .await;
    assert_eq!(left_because(&directory, 1), "");
    assert_eq!(
        fake.refund_lists_refused_of("pi_replaced_gone"),
        0,
        "Stripe is not asked again about a replaced record"
    );
    assert_eq!(app.balance_micros(1).await, 8_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_replaced_record_is_settled_from_what_was_recorded_without_asking_stripe_again);

/// Stripe answers `resource_missing` about every payment the sweep asks
/// about, and about the newest payment too (the key is a test-mode key in
/// production, or another account's: it cannot see this service's
/// payments). No order is left for good: each round ends as the key's
/// refusal would, its orders asked about again once their claims run out;
/// once the key sees them, their records are replaced and the $2 of each
/// taken back.
async fn orders_are_not_left_while_the_key_cannot_see_the_newest_payment() {
    let fake = FakeStripe::start().await;
    let (directory, ignored) =
        orders_with_an_ignored_refund(&fake, &["pi_unseen_1", "pi_unseen_2"]);
    add_a_newer_order(&directory, 2, "pi_unseen_newest");
    for intent in ["pi_unseen_1", "pi_unseen_2", "pi_unseen_newest"] {
        fake.set_refund_lists_refused_for(Some(intent));
    }
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 30_000_000);

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the first round asked about both orders and the newest payment",
        || async {
            fake.refund_lists_refused_of("pi_unseen_1") == 1
                && fake.refund_lists_refused_of("pi_unseen_2") == 1
                && fake.refund_lists_refused_of("pi_unseen_newest") == 1
        },
    )
    .await;
    // A round later (claims still held), nothing more is asked (the
    // sweep looks at the clock every second of real time).
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    actix_rt::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(fake.refund_lists_refused_of("pi_unseen_1"), 1);
    assert_eq!(
        (left_because(&directory, 1), left_because(&directory, 2)),
        (String::new(), String::new()),
        "nothing left for good"
    );
    assert_eq!(legacy_records(&directory), 2);

    // Once the claims run out, the orders are asked about again.
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS);
    // The round ends with the newest payment's list (waited for, so that
    // the key is mended only between rounds, as it is by a restart).
    eventually("a later round asked about the orders again", || async {
        fake.refund_lists_refused_of("pi_unseen_1") == 2
            && fake.refund_lists_refused_of("pi_unseen_2") == 2
            && fake.refund_lists_refused_of("pi_unseen_newest") == 2
    })
    .await;
    assert_eq!(left_because(&directory, 1), "");

    // The key sees the payments: the records are replaced.
    fake.set_refund_lists_refused_for(None);
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually("both orders settled, their $2 taken back", || async {
        settled_orders(&directory) == 2
    })
    .await;
    for (index, refund_id) in ignored.iter().enumerate() {
        let order = index as i64 + 1;
        assert_eq!(
            rows_of(&app, 1, order).await[2..],
            [(format!("stripe-refund:{refund_id}"), -2_000_000)]
        );
    }
    assert_eq!(app.balance_micros(1).await, 26_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(orders_are_not_left_while_the_key_cannot_see_the_newest_payment);

/// Stripe answers `resource_missing` about the only order the sweep has
/// left, and no other payment can prove the key (there is none): the order
/// is not left for good; it is asked about again once its claim runs out.
async fn an_order_stripe_does_not_know_is_not_left_while_nothing_proves_the_key() {
    let fake = FakeStripe::start().await;
    let (directory, _) = orders_with_an_ignored_refund(&fake, &["pi_alone_gone"]);
    fake.set_refund_lists_refused_for(Some("pi_alone_gone"));
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the first round asked about the order", || async {
        fake.refund_lists_refused_of("pi_alone_gone") == 1
    })
    .await;
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually("a later round asked about it again", || async {
        fake.refund_lists_refused_of("pi_alone_gone") == 2
    })
    .await;
    assert_eq!(left_because(&directory, 1), "");
    assert_eq!(legacy_records(&directory), 1);
    assert_eq!(fake.requests_with("GET", "/v1/refunds").len(), 2);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(an_order_stripe_does_not_know_is_not_left_while_nothing_proves_the_key);

/// Stripe answers `resource_missing` about the only order the sweep has
/// left, and lists the refunds of the newest payment (the key sees this
/// service's payments): that proves the order's payment is not the key's
/// blind spot, and the order is left for good, asked about once.
async fn an_order_stripe_does_not_know_is_left_once_the_newest_payment_proves_the_key() {
    let fake = FakeStripe::start().await;
    let (directory, _) = orders_with_an_ignored_refund(&fake, &["pi_proved_gone"]);
    add_a_newer_order(&directory, 1, "pi_proved_newest");
    fake.set_refund_lists_refused_for(Some("pi_proved_gone"));
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep left the order", || async {
        left_because(&directory, 1).contains("resource_missing")
    })
    .await;
    assert_eq!(
        fake.requests_with("GET", "/v1/refunds").len(),
        2,
        "the order's list, then the newest payment's"
    );
    assert_eq!(fake.refund_lists_refused_of("pi_proved_gone"), 1);
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    actix_rt::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        fake.refund_lists_refused_of("pi_proved_gone"),
        1,
        "asked once"
    );
    assert_eq!(app.balance_micros(1).await, 20_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(an_order_stripe_does_not_know_is_left_once_the_newest_payment_proves_the_key);

/// The sweep has settled every order and found none left (its work done);
/// then a new $1 refund's event fails at the refund's row and is never
/// retried, making the order the sweep's again: the same server, without
/// a restart, takes the $1 back within the sweep's slower watch (five
/// minutes of the clock), tells the host once and marks it settled again.
async fn an_order_made_the_sweeps_again_after_its_work_was_done_is_settled_without_a_restart() {
    use sms_credit_actors::store::WritePart;
    let fake = FakeStripe::start().await;
    let (directory, ignored) = orders_with_an_ignored_refund(&fake, &["pi_done_then"]);
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep settled the order", || async {
        settled_orders(&directory) == 1
    })
    .await;
    // A round that finds nothing left: the sweep's work is done (its task
    // looks at the clock every second of real time: two and a half let
    // it).
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    actix_rt::time::sleep(Duration::from_millis(2_500)).await;

    let new = fake.refund_in_dashboard("pi_done_then", "ch_pi_done_then", 100);
    let new_id = new["id"].as_str().unwrap().to_string();
    let created = EventFactory::new().refund_event("refund.created", new);
    let store = app.store.as_ref().unwrap();
    store.fail_ledger_write_for_testing(&format!("stripe-refund:{new_id}"), WritePart::Row);
    let (status, answer) = app.deliver(&created).await;
    assert!(status.is_server_error(), "{status}: {answer}");
    assert_eq!(
        settled_orders(&directory),
        0,
        "the order is the sweep's again"
    );

    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the same server took the $1 back and settled the order",
        || async { net_of(&app, 1, 1).await == -3_000_000 && settled_orders(&directory) == 1 },
    )
    .await;
    assert_eq!(
        rows_of(&app, 1, 1).await[2..],
        [
            (format!("stripe-refund:{}", ignored[0]), -2_000_000),
            (format!("stripe-refund:{new_id}"), -1_000_000)
        ]
    );
    assert_eq!(told_refunds(&directory).len(), 2, "each refund told once");
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(
    an_order_made_the_sweeps_again_after_its_work_was_done_is_settled_without_a_restart
);

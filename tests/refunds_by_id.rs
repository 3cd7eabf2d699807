//! Refunds counted one by one, by Stripe's refund id: what an order's
//! refunds hold back of its credit is what those that stand come to,
//! whatever Stripe's running total of the charge does when one of them
//! fails, however the charge lists them (all, none, the newest), on two
//! instances at once, with Stripe unable to list them for a while, and for
//! orders refunded before refunds were kept one by one. On both stores.

use awc::http::StatusCode;
use serde_json::json;

use crate::database::{StoreKind, TestDatabase};
use crate::disputes::{deliver, net_of, rows_of};
use crate::fake_stripe::{EventFactory, FailedRefunds, FakeStripe, Listed};
use crate::helpers::{fresh_directory, stripe_settings, TestApp, ADMIN_TOKEN, NOW_UNIX};
use crate::ledger_actors::assert_verified;
use crate::refunds::paid_top_up;
use sms_credit_actors::billing::legacy_refunds::{LEGACY_CLAIM_LEASE_MS, LEGACY_SWEEP_EVERY_MS};
use sms_credit_actors::clock::ManualClock;

async fn app_with_fake() -> (FakeStripe, TestApp) {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    (fake, TestApp::spawn_with(directory, settings).await)
}

/// An order's refunded figure, as the admin API shows it.
pub(crate) async fn refunded_figure(app: &TestApp, account: i64, order: i64) -> i64 {
    let orders = app.get_orders(account).await;
    let row = orders.iter().find(|row| row["id"] == order).unwrap();
    row["amount_refunded_micros"].as_i64().unwrap()
}

/// The statuses of an order's refund requests, oldest first.
async fn request_statuses(app: &TestApp, order: i64) -> Vec<String> {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}/refunds"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|refund| refund["status"].as_str().unwrap().to_string())
        .collect()
}

/// An order as `GET /v1/admin/orders/{id}` shows it.
pub(crate) async fn order_detail(app: &TestApp, order: i64) -> serde_json::Value {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A $10 top-up is refunded $3 (taken back); the refund fails (the $3 comes
/// back); a new $2 refund is made: $2 taken back, once. With Stripe's
/// running total as `behaviour` has it, the charge listing its refunds each
/// way, and the failure told by its own event first, or only by the
/// charge's later list (its own event coming last).
async fn a_new_refund_after_a_failed_one_is_taken_back_once(behaviour: FailedRefunds) {
    let (fake, app) = app_with_fake().await;
    fake.set_failed_refunds(behaviour);
    let mut events = EventFactory::new();
    let mut phone = 14_155_550_600_i64;
    for listed in [Listed::All, Listed::Absent, Listed::Newest(1)] {
        for failure_told_first in [true, false] {
            phone += 1;
            let case = format!(
                "{behaviour:?}, listed {listed:?}, failure told first {failure_told_first}"
            );
            let (account, order, intent) =
                paid_top_up(&app, &mut events, &format!("+{phone}")).await;
            let charge = format!("ch_{order}");

            let three = fake.refund_in_dashboard(&intent, &charge, 300);
            let refunded = fake.charge_refunded(&mut events, &charge, &intent, 1000, listed);
            let answer = deliver(&app, &refunded).await;
            assert_eq!(answer["outcome"], "applied", "{case}: {answer}");
            deliver(&app, &refunded).await;
            assert_eq!(net_of(&app, account, order).await, -3_000_000, "{case}");

            let failed = fake.fail_refund(three["id"].as_str().unwrap());
            let failure = events.refund_event("charge.refund.updated", failed);
            if failure_told_first {
                for _ in 0..2 {
                    deliver(&app, &failure).await;
                }
                assert_eq!(
                    net_of(&app, account, order).await,
                    0,
                    "{case}: the failed $3 comes back"
                );
            }

            let two = fake.refund_in_dashboard(&intent, &charge, 200);
            let total = match behaviour {
                FailedRefunds::StayInTotal => 500,
                FailedRefunds::LeaveTheTotal => 200,
            };
            assert_eq!(fake.amount_refunded(&intent), total, "{case}");
            let refunded = fake.charge_refunded(&mut events, &charge, &intent, 1000, listed);
            deliver(&app, &refunded).await;
            assert_eq!(
                net_of(&app, account, order).await,
                -2_000_000,
                "{case}: the new $2 is taken back, the failed $3 is not"
            );
            // Every event again, the failure's own last: nothing moves.
            let created = events.refund_event("refund.created", two);
            for payload in [&created, &refunded, &failure, &created, &failure] {
                deliver(&app, payload).await;
            }
            assert_eq!(net_of(&app, account, order).await, -2_000_000, "{case}");
            assert_eq!(app.balance_micros(account).await, 13_000_000, "{case}");
            assert_eq!(
                refunded_figure(&app, account, order).await,
                2_000_000,
                "{case}: what stands refunded"
            );
        }
    }
    let directory = app.stop().await;
    assert_verified(&directory);
}

async fn a_new_refund_after_a_failed_one_is_taken_back_once_when_stripe_lowers_its_total() {
    a_new_refund_after_a_failed_one_is_taken_back_once(FailedRefunds::LeaveTheTotal).await;
}
on_both_stores!(a_new_refund_after_a_failed_one_is_taken_back_once_when_stripe_lowers_its_total);

async fn a_new_refund_after_a_failed_one_is_taken_back_once_when_stripe_keeps_it_in_its_total() {
    a_new_refund_after_a_failed_one_is_taken_back_once(FailedRefunds::StayInTotal).await;
}
on_both_stores!(
    a_new_refund_after_a_failed_one_is_taken_back_once_when_stripe_keeps_it_in_its_total
);

async fn refund_events_of_one_charge_on_two_instances_at_once_take_each_refund_once() {
    let fake = FakeStripe::start().await;
    fake.set_failed_refunds(FailedRefunds::LeaveTheTotal);
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    let mut events = EventFactory::new();
    let (account, customer, token) =
        crate::stripe::active_account(&first, &mut events, "+14155550650").await;
    // Both instances' actors for the account are live.
    assert_eq!(second.balance_micros(account).await, 5_000_000);

    let mut top_ups = Vec::new();
    for _ in 0..6 {
        let (order, session) = first.start_top_up(account, &token).await;
        let intent = format!("pi_ids_{order}");
        let completed = events.checkout_completed(&session, order, &customer, 1000, &intent);
        deliver(&first, &completed).await;
        top_ups.push((order, intent, format!("ch_ids_{order}")));
    }
    for (index, (order, intent, charge)) in top_ups.iter().enumerate() {
        let (one, other) = if index % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        // $3 refunded, then failed; $2 refunded (Stripe's total: 200¢).
        // The failure and the new refund's charge.refunded (which lists
        // its refunds or not: then Stripe is asked for them) come at the
        // same moment to the two instances, then the new refund's own
        // event to both at once.
        let three = fake.refund_in_dashboard(intent, charge, 300);
        let refunded = fake.charge_refunded(&mut events, charge, intent, 1000, Listed::All);
        deliver(one, &refunded).await;
        let failure = events.refund_event(
            "charge.refund.updated",
            fake.fail_refund(three["id"].as_str().unwrap()),
        );
        let two = fake.refund_in_dashboard(intent, charge, 200);
        let listed = if index % 2 == 0 {
            Listed::Absent
        } else {
            Listed::All
        };
        let refunded = fake.charge_refunded(&mut events, charge, intent, 1000, listed);
        let (a, b) = futures_util::join!(one.deliver(&failure), other.deliver(&refunded));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        let created = events.refund_event("refund.created", two);
        let (a, b) = futures_util::join!(one.deliver(&created), other.deliver(&created));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        assert_eq!(
            net_of(&first, account, *order).await,
            -2_000_000,
            "order {order}: the $2 that stands"
        );

        // Two more refunds at once, $1 and $1.50, each told by its own
        // event to one instance: each taken back once.
        let one_dollar = fake.refund_in_dashboard(intent, charge, 100);
        let and_a_half = fake.refund_in_dashboard(intent, charge, 150);
        let one_dollar = events.refund_event("refund.created", one_dollar);
        let and_a_half = events.refund_event("refund.created", and_a_half);
        let (a, b) = futures_util::join!(one.deliver(&one_dollar), other.deliver(&and_a_half));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        let refunded = fake.charge_refunded(&mut events, charge, intent, 1000, Listed::All);
        let (a, b) = futures_util::join!(one.deliver(&refunded), other.deliver(&refunded));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
    }
    for (order, _, _) in &top_ups {
        assert_eq!(
            net_of(&first, account, *order).await,
            -4_500_000,
            "order {order}: $2, $1 and $1.50 taken back, once each"
        );
        assert_eq!(refunded_figure(&first, account, *order).await, 4_500_000);
    }
    // $5 included + $60 of top-ups − 6 × $4.50.
    assert_eq!(first.balance_micros(account).await, 38_000_000);
    assert_eq!(second.balance_micros(account).await, 38_000_000);
    first.stop().await;
    let directory = second.stop().await;
    assert_verified(&directory);
}
on_both_stores!(refund_events_of_one_charge_on_two_instances_at_once_take_each_refund_once);

/// Two instances on one database, an order of a $10 top-up refunded $3
/// (taken back) and that refund failed since; the failure's event, and
/// the `refund.created` of a new $2 refund made since.
struct FailedThenNew {
    y: TestApp,
    x: TestApp,
    account: i64,
    order: i64,
    failed_key: String,
    failure: String,
    created: String,
    /// The failed $3 refund's id, and the new $2 one's.
    three_id: String,
    two_id: String,
}

async fn failed_then_new(phone: &str) -> (FakeStripe, FailedThenNew) {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let y = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let x = TestApp::spawn_with(directory.clone(), settings).await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&y, &mut events, phone).await;
    let charge = format!("ch_{order}");
    let three = fake.refund_in_dashboard(&intent, &charge, 300);
    let refunded = fake.charge_refunded(&mut events, &charge, &intent, 1000, Listed::All);
    deliver(&y, &refunded).await;
    assert_eq!(net_of(&y, account, order).await, -3_000_000);
    let three_id = three["id"].as_str().unwrap().to_string();
    let failure = events.refund_event("refund.failed", fake.fail_refund(&three_id));
    let two = fake.refund_in_dashboard(&intent, &charge, 200);
    let two_id = two["id"].as_str().unwrap().to_string();
    let created = events.refund_event("refund.created", two);
    let case = FailedThenNew {
        y,
        x,
        account,
        order,
        failed_key: format!("stripe-refund-failed:{three_id}"),
        failure,
        created,
        three_id,
        two_id,
    };
    (fake, case)
}

impl FailedThenNew {
    /// Y's first try failed: Stripe's retry of its event; then $2 stand
    /// taken back, on both instances' view. The host is told of each
    /// refund once, with what its own row took back: the $3 its row took,
    /// and nothing for the $2, whose row found the $3 still taken (the
    /// check of the order took the $2, as the balance shows).
    async fn retried_and_settled(self) {
        let FailedThenNew {
            y,
            x,
            account,
            order,
            failure,
            three_id,
            two_id,
            ..
        } = self;
        deliver(&y, &failure).await;
        assert_eq!(
            net_of(&y, account, order).await,
            -2_000_000,
            "the $2 that stand are taken back, the failed $3 are not"
        );
        assert_eq!(y.balance_micros(account).await, 13_000_000);
        assert_eq!(x.balance_micros(account).await, 13_000_000);
        let told = told_refunds(&y.directory);
        assert_eq!(told.len(), 2, "{told:?}");
        let told_of = |refund_id: &str| {
            let event = told
                .iter()
                .find(|event| event["data"]["refund_id"] == refund_id)
                .unwrap_or_else(|| panic!("the host is not told of {refund_id}: {told:?}"));
            (
                event["data"]["refunded_micros"].as_i64().unwrap(),
                event["data"]["credit_taken_back_micros"].as_i64().unwrap(),
            )
        };
        assert_eq!(told_of(&three_id), (3_000_000, 3_000_000));
        assert_eq!(told_of(&two_id), (2_000_000, 0));
        x.stop().await;
        let directory = y.stop().await;
        assert_verified(&directory);
    }
}

/// A failed refund's credit given back on one instance (Y) while a new
/// refund is recorded on another (X): Y decides its row ($3 back) before
/// X records the new $2 refund, X reads before Y's row is written (its
/// refund's row takes nothing: the $3 are still taken), Y's row is written
/// after, and Y's check of the order then fails (a read error). Stripe's
/// retry of Y's event finds its rows there and checks the order again:
/// the $2 that stand are taken back.
async fn a_settle_check_that_failed_is_run_again_by_the_events_retry() {
    let (_fake, case) = failed_then_new("+14155550680").await;
    let y_store = case.y.store.as_ref().unwrap();
    let hold = y_store.hold_take_back_for_testing(&case.failed_key);
    let meanwhile = async {
        actix_rt::time::timeout(std::time::Duration::from_secs(10), hold.reached())
            .await
            .expect("instance Y never decided what the failed refund gives back");
        let answered = case.x.deliver(&case.created).await;
        y_store.fail_next_reads_for_testing(3);
        hold.release();
        answered
    };
    let ((y_status, y_answer), (x_status, x_answer)) =
        futures_util::join!(case.y.deliver(&case.failure), meanwhile);
    y_store.fail_next_reads_for_testing(0);
    assert_eq!(x_status, StatusCode::OK, "{x_answer}");
    assert!(y_status.is_server_error(), "{y_status}: {y_answer}");
    case.retried_and_settled().await;
}
on_both_stores!(a_settle_check_that_failed_is_run_again_by_the_events_retry);

/// A refund event about an order whose account has lost its balance row
/// (a database not as this release left it), its refund settled already:
/// the check of the order that ends the event cannot know where the
/// account's ledger stands, so the event fails and changes nothing — it is
/// never checked as if the ledger were at its start. With the row back,
/// Stripe's retry is applied, and moves nothing.
async fn a_refund_event_about_an_account_without_its_balance_row_fails_changing_nothing() {
    let (fake, app) = app_with_fake().await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550699").await;
    let refund = fake.refund_in_dashboard(&intent, &format!("ch_{order}"), 300);
    deliver(&app, &events.refund_event("refund.created", refund.clone())).await;
    assert_eq!(net_of(&app, account, order).await, -3_000_000);
    let balance_row = |what: &str| {
        app.directory.number(&format!(
            "SELECT {what} FROM account_balances WHERE account_id = {account}"
        ))
    };
    let (balance, seq) = (balance_row("balance"), balance_row("seq"));
    let grants = app.directory.text(&format!(
        "SELECT grants FROM account_balances WHERE account_id = {account}"
    ));
    let rows_before = app.directory.number("SELECT COUNT(*) FROM transactions");

    app.directory.execute(&format!(
        "DELETE FROM account_balances WHERE account_id = {account}"
    ));
    let updated = events.refund_event("refund.updated", refund);
    let (status, answer) = app.deliver(&updated).await;
    assert!(status.is_server_error(), "{status}: {answer}");
    assert_eq!(
        app.directory.number("SELECT COUNT(*) FROM transactions"),
        rows_before
    );

    app.directory.execute(&format!(
        "INSERT INTO account_balances (account_id, balance, seq, updated_at, grants)
              VALUES ({account}, {balance}, {seq}, 0, '{grants}')"
    ));
    let answer = deliver(&app, &updated).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    assert_eq!(net_of(&app, account, order).await, -3_000_000);
    assert_eq!(
        app.directory.number("SELECT COUNT(*) FROM transactions"),
        rows_before
    );
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_event_about_an_account_without_its_balance_row_fails_changing_nothing);

/// The same on Postgres, Y's row held by the database: a connection of
/// the test's holds the account's balance row locked, so Y's row waits
/// for it while X answers (or, checking the order, waits behind it).
async fn a_settle_check_that_failed_is_run_again_after_a_row_lock() {
    let (_fake, case) = failed_then_new("+14155550681").await;
    let directory = case.y.directory.clone();
    let waiters_become = |count: i64, what: &str| {
        let directory = directory.clone();
        let what = what.to_string();
        async move {
            for _ in 0..200 {
                if directory.lock_waiters() >= count {
                    return;
                }
                actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("after 10 s, {what} does not wait for the balance row");
        }
    };
    let lock = directory.hold_transaction(&format!(
        "SELECT 1 FROM account_balances WHERE account_id = {} FOR UPDATE",
        case.account
    ));
    let y_store = case.y.store.as_ref().unwrap();
    let x_delivery = std::cell::RefCell::new(None);
    let meanwhile = async {
        waiters_become(1, "instance Y's row").await;
        // X answers (writing nothing), or checks the order and waits too.
        let x_answered = async {
            let answered = case.x.deliver(&case.created).await;
            *x_delivery.borrow_mut() = Some(answered);
        };
        let x_waits = async {
            loop {
                if x_delivery.borrow().is_some() || directory.lock_waiters() >= 2 {
                    return;
                }
                actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let answered_or_waiting = async {
            actix_rt::time::timeout(std::time::Duration::from_secs(10), x_waits)
                .await
                .expect("instance X neither answered nor waited for the balance row");
            y_store.fail_next_reads_for_testing(3);
            lock.end();
        };
        futures_util::join!(x_answered, answered_or_waiting);
    };
    let ((y_status, y_answer), ()) = futures_util::join!(case.y.deliver(&case.failure), meanwhile);
    y_store.fail_next_reads_for_testing(0);
    let (x_status, x_answer) = x_delivery.into_inner().unwrap();
    assert_eq!(x_status, StatusCode::OK, "{x_answer}");
    assert!(y_status.is_server_error(), "{y_status}: {y_answer}");
    case.retried_and_settled().await;
}
mod a_settle_check_that_failed_is_run_again_after_a_row_lock {
    // Postgres alone: SQLite has no row locks.
    #[actix_rt::test]
    async fn postgres() {
        crate::database::use_store(crate::database::StoreKind::Postgres);
        super::a_settle_check_that_failed_is_run_again_after_a_row_lock().await
    }
}

async fn a_refund_event_whose_refunds_stripe_cannot_list_is_refused_until_it_can() {
    let (fake, app) = app_with_fake().await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550660").await;
    let charge = format!("ch_{order}");

    // The admin refunds $3: Stripe makes it, its answer is lost (the
    // request is left requested).
    fake.set_refund_answer_lost(true);
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": 3_000_000, "reason": "lost", "idempotency_key": "l-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    fake.set_refund_answer_lost(false);

    // Its charge.refunded lists no refunds (as current API versions send
    // it) and Stripe cannot list them: answered with an error, so that
    // Stripe retries, and nothing is changed, however often it comes.
    let refunded = fake.charge_refunded(&mut events, &charge, &intent, 1000, Listed::Absent);
    fake.set_refund_lists_fail(true);
    for _ in 0..3 {
        let (status, answer) = app.deliver(&refunded).await;
        assert!(status.is_server_error(), "{status}: {answer}");
    }
    assert_eq!(app.balance_micros(account).await, 15_000_000);
    assert_eq!(net_of(&app, account, order).await, 0);
    assert_eq!(refunded_figure(&app, account, order).await, 0);
    assert_eq!(request_statuses(&app, order).await, ["requested"]);

    // Stripe lists them again: Stripe's retry applies, once.
    fake.set_refund_lists_fail(false);
    let answer = deliver(&app, &refunded).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    let answer = deliver(&app, &refunded).await;
    assert_eq!(answer["outcome"], "duplicate", "{answer}");
    assert_eq!(net_of(&app, account, order).await, -3_000_000);
    assert_eq!(request_statuses(&app, order).await, ["succeeded"]);

    // A charge that lists only its newest refund (it has more): the same.
    fake.refund_in_dashboard(&intent, &charge, 200);
    let refunded = fake.charge_refunded(&mut events, &charge, &intent, 1000, Listed::Newest(1));
    fake.set_refund_lists_fail(true);
    let (status, answer) = app.deliver(&refunded).await;
    assert!(status.is_server_error(), "{status}: {answer}");
    assert_eq!(net_of(&app, account, order).await, -3_000_000);
    fake.set_refund_lists_fail(false);
    deliver(&app, &refunded).await;
    deliver(&app, &refunded).await;
    assert_eq!(net_of(&app, account, order).await, -5_000_000);
    assert_eq!(refunded_figure(&app, account, order).await, 5_000_000);
    assert_eq!(app.balance_micros(account).await, 10_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(a_refund_event_whose_refunds_stripe_cannot_list_is_refused_until_it_can);

/// Waits (10 s at most) until `done` says so, failing with `what`.
pub(crate) async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if done().await {
            return;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("after 10 s, still not: {what}");
}

/// The `payment.refunded` events told to the host, oldest first.
pub(crate) fn told_refunds(directory: &TestDatabase) -> Vec<serde_json::Value> {
    let count =
        directory.number("SELECT COUNT(*) FROM webhook_events WHERE type = 'payment.refunded'");
    (0..count)
        .map(|index| {
            let payload = directory.text(&format!(
                "SELECT payload FROM webhook_events WHERE type = 'payment.refunded'
                  ORDER BY created_at, id LIMIT 1 OFFSET {index}"
            ));
            serde_json::from_str(&payload).unwrap()
        })
        .collect()
}

/// The last migration before refunds were kept one by one.
fn last_migration_before(kind: StoreKind) -> u32 {
    match kind {
        StoreKind::Sqlite => 26,
        StoreKind::Postgres => 17,
    }
}

/// A database made by a release before refunds were kept one by one: the
/// store's migrations up to `last_migration_before`.
pub(crate) fn database_before_refund_ids() -> TestDatabase {
    TestDatabase::at_migration(last_migration_before(crate::database::current_store()))
}

async fn orders_refunded_before_refunds_were_kept_by_id_hold_back_what_they_held() {
    let fake = FakeStripe::start().await;
    fake.set_failed_refunds(FailedRefunds::LeaveTheTotal);
    // Stripe's refunds of the three orders: the first's $3; the second's
    // $3 that failed and $2; the third's $3 that failed, and $2 made after
    // that failure lowered Stripe's total to nothing (the earlier release,
    // which had seen $3, took the $2 total for no new refund).
    let first_refund = fake.refund_in_dashboard("pi_legacy_1", "ch_legacy_1", 300);
    let failed = fake.refund_in_dashboard("pi_legacy_2", "ch_legacy_2", 300);
    let failed = fake.fail_refund(failed["id"].as_str().unwrap());
    fake.refund_in_dashboard("pi_legacy_2", "ch_legacy_2", 200);
    let third_failed = fake.refund_in_dashboard("pi_legacy_3", "ch_legacy_3", 300);
    let third_failed = fake.fail_refund(third_failed["id"].as_str().unwrap());
    fake.refund_in_dashboard("pi_legacy_3", "ch_legacy_3", 200);

    // The database as the release before left them: each order's running
    // total (as Stripe said it then), the refunds that failed, and the
    // rows that took back and gave back: $3, $2 and nothing held back.
    let directory = database_before_refund_ids();
    directory.execute(&format!(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550670', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                             amount_refunded, status, created_at, completed_at)
              VALUES (1, 1, 'top_up', 10000000, 10000000, 'pi_legacy_1', 3000000, 'completed', 0, 0),
                     (2, 1, 'top_up', 10000000, 10000000, 'pi_legacy_2', 5000000, 'completed', 0, 0),
                     (3, 1, 'top_up', 10000000, 10000000, 'pi_legacy_3', 3000000, 'completed', 0, 0);
         INSERT INTO failed_refunds (refund_id, order_id, amount, failed_at)
              VALUES ('{failed_id}', 2, 3000000, 0), ('{third_failed_id}', 3, 3000000, 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                   order_id, description, created_at)
              VALUES (1, 1, 'credit', 10000000, 10000000, 'stripe-order:1', 1, 'top-up', 0),
                     (1, 2, 'credit', 10000000, 20000000, 'stripe-order:2', 2, 'top-up', 0),
                     (1, 3, 'refund', -3000000, 17000000, 'stripe-refund:ch_legacy_1:300', 1, 'refund', 0),
                     (1, 4, 'refund', -3000000, 14000000, 'stripe-refund:ch_legacy_2:300', 2, 'refund', 0),
                     (1, 5, 'refund', 3000000, 17000000, 'stripe-refund-failed:{failed_id}', 2, 'failed', 0),
                     (1, 6, 'refund', -2000000, 15000000, 'stripe-refund:ch_legacy_2:500', 2, 'refund', 0),
                     (1, 7, 'credit', 10000000, 25000000, 'stripe-order:3', 3, 'top-up', 0),
                     (1, 8, 'refund', -3000000, 22000000, 'stripe-refund:ch_legacy_3:300', 3, 'refund', 0),
                     (1, 9, 'refund', 3000000, 25000000, 'stripe-refund-failed:{third_failed_id}', 3, 'failed', 0);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 25000000, 9, 0);",
        failed_id = failed["id"].as_str().unwrap(),
        third_failed_id = third_failed["id"].as_str().unwrap()
    ));

    // This release migrates it: the balance, what each order holds back
    // and its refunded figure are as they were.
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 25_000_000);
    let held_back = |order: i64| {
        directory.number(&format!(
            "SELECT COALESCE(SUM(amount), 0) FROM stripe_refunds
              WHERE order_id = {order} AND standing IN ('counted', 'legacy')"
        ))
    };
    assert_eq!(
        (held_back(1), held_back(2), held_back(3)),
        (3_000_000, 2_000_000, 0)
    );
    assert_eq!(refunded_figure(&app, 1, 1).await, 3_000_000);
    assert_eq!(refunded_figure(&app, 1, 2).await, 2_000_000);
    assert_eq!(refunded_figure(&app, 1, 3).await, 0);

    // An event about the first order's old refund (its metadata edited):
    // Stripe's list of the payment's refunds replaces the order's record
    // of their total, and what it holds back does not move.
    let mut events = EventFactory::new();
    let updated = events.refund_event("refund.updated", first_refund.clone());
    deliver(&app, &updated).await;
    assert_eq!(net_of(&app, 1, 1).await, -3_000_000);
    // That refund fails: its $3 comes back.
    let first_failed = fake.fail_refund(first_refund["id"].as_str().unwrap());
    deliver(
        &app,
        &events.refund_event("charge.refund.updated", first_failed),
    )
    .await;
    assert_eq!(net_of(&app, 1, 1).await, 0);
    assert_eq!(refunded_figure(&app, 1, 1).await, 0);

    // A new $4 refund of the second order, Stripe's total leaving out the
    // refund that failed (600¢: the $2 and the $4): $4 more taken back, $6
    // in all.
    fake.refund_in_dashboard("pi_legacy_2", "ch_legacy_2", 400);
    let refunded =
        fake.charge_refunded(&mut events, "ch_legacy_2", "pi_legacy_2", 1000, Listed::All);
    deliver(&app, &refunded).await;
    deliver(&app, &refunded).await;
    assert_eq!(net_of(&app, 1, 2).await, -6_000_000);
    assert_eq!(refunded_figure(&app, 1, 2).await, 6_000_000);
    assert_eq!(app.balance_micros(1).await, 24_000_000);
    // The host is told of the new refund alone: those the orders held
    // back before were told then.
    let told = |what: &str| {
        directory.text(&format!(
            "SELECT {what} FROM webhook_events WHERE type = 'payment.refunded'"
        ))
    };
    assert_eq!(told("CAST(COUNT(*) AS TEXT)"), "1");
    let told: serde_json::Value = serde_json::from_str(&told("payload")).unwrap();
    assert_eq!(told["data"]["order_id"], 2);
    assert_eq!(told["data"]["refunded_micros"], 4_000_000);
    assert_eq!(told["data"]["credit_taken_back_micros"], 4_000_000);

    // No event comes for the third order. The background sweep asks Stripe
    // for its refunds a sweep's time after the start; Stripe's rate limit
    // meets it (nothing changes), and once its claim on the order runs
    // out, a later round replaces the record: the $2 is taken back, and
    // the host told of it.
    let lists = || fake.requests_with("GET", "/v1/refunds").len();
    let lists_before = lists();
    fake.set_rate_limited(true);
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the sweep asked Stripe for the third order's refunds",
        || async { lists() > lists_before },
    )
    .await;
    fake.set_rate_limited(false);
    assert_eq!(net_of(&app, 1, 3).await, 0);
    assert_eq!(
        directory.number("SELECT COUNT(*) FROM stripe_refunds WHERE standing = 'legacy'"),
        1
    );
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS);
    eventually(
        "the sweep replaced the third order's legacy record and took its $2 back",
        || async {
            directory.number("SELECT COUNT(*) FROM stripe_refunds WHERE standing = 'legacy'") == 0
                && net_of(&app, 1, 3).await == -2_000_000
                && told_refunds(&directory).len() == 2
        },
    )
    .await;
    assert_eq!(refunded_figure(&app, 1, 3).await, 2_000_000);
    assert_eq!(app.balance_micros(1).await, 22_000_000);
    let told = told_refunds(&directory);
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!(told[1]["data"]["order_id"], 3);
    assert_eq!(told[1]["data"]["refunded_micros"], 2_000_000);
    assert_eq!(told[1]["data"]["credit_taken_back_micros"], 2_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(orders_refunded_before_refunds_were_kept_by_id_hold_back_what_they_held);

/// What the host is told of the refunds found when an order's legacy
/// record is replaced: those the legacy record held back (Stripe's
/// refunds that stand, oldest first, as far as its amount goes) were told
/// by the earlier release and are not told again, even when their own row
/// takes credit now; any other — one made after the upgrade — is told
/// once, also when its row takes nothing.
async fn refunds_found_when_a_legacy_record_is_replaced_are_told_once() {
    let fake = FakeStripe::start().await;
    // The first order, a $10 top-up: $3 refunded, which the earlier
    // release recorded (its running total) and told, but whose row it never
    // wrote (it stopped in between). The second, access paid $29.99 with $5
    // of credit: $10 refunded before the upgrade (the $5 taken back), $3
    // after.
    let told_before = fake.refund_in_dashboard("pi_told_1", "ch_told_1", 300);
    fake.refund_in_dashboard("pi_told_2", "ch_told_2", 1000);
    let directory = database_before_refund_ids();
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550690', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                             amount_refunded, status, created_at, completed_at)
              VALUES (1, 1, 'top_up', 10000000, 10000000, 'pi_told_1', 3000000, 'completed', 0, 0),
                     (2, 1, 'initial_access', 29990000, 29990000, 'pi_told_2', 10000000, 'completed', 0, 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                   order_id, description, created_at)
              VALUES (1, 1, 'credit', 10000000, 10000000, 'stripe-order:1', 1, 'top-up', 0),
                     (1, 2, 'credit', 5000000, 15000000, 'stripe-order:2', 2, 'access', 0),
                     (1, 3, 'refund', -5000000, 10000000, 'stripe-refund:ch_told_2:1000', 2, 'refund', 0);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 10000000, 3, 0);",
    );
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory.clone(), settings).await;
    let mut events = EventFactory::new();

    // An event about the first order's refund: Stripe's list replaces the
    // record, the refund's row takes its $3 now, and the host, told of it
    // before, is not told again.
    let updated = events.refund_event("refund.updated", told_before);
    deliver(&app, &updated).await;
    deliver(&app, &updated).await;
    assert_eq!(net_of(&app, 1, 1).await, -3_000_000);

    // The second order's new $3 refund: all its credit is taken back
    // already, so its row takes nothing; the host is told of it, once.
    let after = fake.refund_in_dashboard("pi_told_2", "ch_told_2", 300);
    let after_id = after["id"].as_str().unwrap().to_string();
    let created = events.refund_event("refund.created", after);
    deliver(&app, &created).await;
    deliver(&app, &created).await;
    assert_eq!(net_of(&app, 1, 2).await, -5_000_000);
    assert_eq!(app.balance_micros(1).await, 7_000_000);

    let told = told_refunds(&directory);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["data"]["order_id"], 2);
    assert_eq!(told[0]["data"]["refund_id"], after_id.as_str());
    assert_eq!(told[0]["data"]["refunded_micros"], 3_000_000);
    assert_eq!(told[0]["data"]["credit_taken_back_micros"], 0);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(refunds_found_when_a_legacy_record_is_replaced_are_told_once);

/// An event that replaces an order's legacy record (Stripe asked for the
/// payment's refunds, all recorded) fails after the recording, before or
/// between the refunds' rows: Stripe's retry, which need not ask Stripe
/// again (the record is replaced), settles every refund the first try
/// recorded — each by its own row, told to the host once — and the order
/// holds back what they come to.
async fn an_event_that_failed_after_replacing_a_legacy_record_settles_its_refunds_when_retried() {
    use sms_credit_actors::store::WritePart;
    for fails_at in ["the new refund's row", "the ignored refund's row"] {
        let fake = FakeStripe::start().await;
        fake.set_failed_refunds(FailedRefunds::LeaveTheTotal);
        // Before the upgrade: $3 refunded and failed (given back), then $2
        // refunded, which the earlier release took for no new refund (the
        // failure had lowered Stripe's total below the $3 it had seen).
        let failed = fake.refund_in_dashboard("pi_crash", "ch_crash", 300);
        let failed = fake.fail_refund(failed["id"].as_str().unwrap());
        let ignored = fake.refund_in_dashboard("pi_crash", "ch_crash", 200);
        let ignored_id = ignored["id"].as_str().unwrap().to_string();
        let directory = database_before_refund_ids();
        directory.execute(&format!(
            "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550695', 'active', 0);
             INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                                 amount_refunded, status, created_at, completed_at)
                  VALUES (1, 1, 'top_up', 10000000, 10000000, 'pi_crash', 3000000, 'completed', 0, 0);
             INSERT INTO failed_refunds (refund_id, order_id, amount, failed_at)
                  VALUES ('{failed_id}', 1, 3000000, 0);
             INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                       order_id, description, created_at)
                  VALUES (1, 1, 'credit', 10000000, 10000000, 'stripe-order:1', 1, 'top-up', 0),
                         (1, 2, 'refund', -3000000, 7000000, 'stripe-refund:ch_crash:300', 1, 'refund', 0),
                         (1, 3, 'refund', 3000000, 10000000, 'stripe-refund-failed:{failed_id}', 1, 'failed', 0);
             INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 10000000, 3, 0);",
            failed_id = failed["id"].as_str().unwrap()
        ));
        let settings = stripe_settings(&directory, &fake.base_url);
        let app = TestApp::spawn_with(directory.clone(), settings).await;
        let store = app.store.as_ref().unwrap();

        // After the upgrade, $1 more; its event replaces the legacy record,
        // and fails at one of the refunds' rows.
        let new = fake.refund_in_dashboard("pi_crash", "ch_crash", 100);
        let new_id = new["id"].as_str().unwrap().to_string();
        let created = EventFactory::new().refund_event("refund.created", new);
        let failing = match fails_at {
            "the new refund's row" => &new_id,
            _ => &ignored_id,
        };
        store.fail_ledger_write_for_testing(&format!("stripe-refund:{failing}"), WritePart::Row);
        let (status, answer) = app.deliver(&created).await;
        assert!(status.is_server_error(), "{fails_at}: {status} {answer}");
        assert_eq!(
            directory.number("SELECT COUNT(*) FROM stripe_refunds WHERE standing = 'legacy'"),
            0,
            "{fails_at}: the legacy record was replaced before the failure"
        );
        // The injected failure fired where it was put: the new refund's
        // row comes first, so failing it leaves no row of either refund;
        // failing the ignored refund's row leaves the new one's (and its
        // event) in, the failure between the two.
        let (rows_before, told_before) = match fails_at {
            "the new refund's row" => (vec![], vec![]),
            _ => (
                vec![(format!("stripe-refund:{new_id}"), -1_000_000)],
                vec![new_id.clone()],
            ),
        };
        assert_eq!(
            rows_of(&app, 1, 1).await[2..],
            rows_before,
            "{fails_at}: the rows the first try left"
        );
        let told_first: Vec<String> = told_refunds(&directory)
            .iter()
            .map(|event| event["data"]["refund_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(told_first, told_before, "{fails_at}: told by the first try");
        let lists = || fake.requests_with("GET", "/v1/refunds").len();
        assert_eq!(
            lists(),
            1,
            "{fails_at}: Stripe asked for the payment's refunds"
        );

        // Stripe's retry, and another.
        let answer = deliver(&app, &created).await;
        assert_eq!(answer["outcome"], "applied", "{fails_at}: {answer}");
        let answer = deliver(&app, &created).await;
        assert_eq!(answer["outcome"], "duplicate", "{fails_at}: {answer}");
        assert_eq!(
            lists(),
            1,
            "{fails_at}: the retries did not ask Stripe again"
        );
        assert_eq!(
            rows_of(&app, 1, 1).await[2..],
            [
                (format!("stripe-refund:{new_id}"), -1_000_000),
                (format!("stripe-refund:{ignored_id}"), -2_000_000)
            ],
            "{fails_at}: each refund taken back by its own row"
        );
        assert_eq!(refunded_figure(&app, 1, 1).await, 3_000_000);
        assert_eq!(app.balance_micros(1).await, 7_000_000);
        let told = told_refunds(&directory);
        let mut told: Vec<(String, i64, i64)> = told
            .iter()
            .map(|event| {
                (
                    event["data"]["refund_id"].as_str().unwrap().to_string(),
                    event["data"]["refunded_micros"].as_i64().unwrap(),
                    event["data"]["credit_taken_back_micros"].as_i64().unwrap(),
                )
            })
            .collect();
        told.sort();
        let mut expected = vec![
            (new_id.clone(), 1_000_000, 1_000_000),
            (ignored_id.clone(), 2_000_000, 2_000_000),
        ];
        expected.sort();
        assert_eq!(told, expected, "{fails_at}: each refund told once");
        let directory = app.stop().await;
        assert_verified(&directory);
    }
}
on_both_stores!(
    an_event_that_failed_after_replacing_a_legacy_record_settles_its_refunds_when_retried
);

/// How many orders hold a legacy record.
pub(crate) fn legacy_records(directory: &TestDatabase) -> i64 {
    directory.number("SELECT COUNT(*) FROM stripe_refunds WHERE standing = 'legacy'")
}

/// A database made before refunds were kept one by one, holding account
/// 1's orders 1, 2, … — one per PaymentIntent of `payment_intents`, each a
/// $10 top-up whose $3 refund failed (given back) and whose $2 refund the
/// earlier release took for no new refund (the failure had lowered
/// Stripe's total below the $3 it had seen): each holds a legacy record of
/// nothing. Answers it, and the id of each order's $2 refund.
pub(crate) fn orders_with_an_ignored_refund(
    fake: &FakeStripe,
    payment_intents: &[&str],
) -> (TestDatabase, Vec<String>) {
    fake.set_failed_refunds(FailedRefunds::LeaveTheTotal);
    let directory = database_before_refund_ids();
    let mut sql = String::from(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550697', 'active', 0);",
    );
    let mut ignored = Vec::new();
    for (index, intent) in payment_intents.iter().enumerate() {
        let order = index as i64 + 1;
        let charge = format!("ch_{intent}");
        let failed = fake.refund_in_dashboard(intent, &charge, 300);
        let failed = fake.fail_refund(failed["id"].as_str().unwrap());
        let failed_id = failed["id"].as_str().unwrap();
        let refund = fake.refund_in_dashboard(intent, &charge, 200);
        ignored.push(refund["id"].as_str().unwrap().to_string());
        let seq = index as i64 * 3;
        let balance = order * 10_000_000;
        sql.push_str(&format!(
            "INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                                 amount_refunded, status, created_at, completed_at)
                  VALUES ({order}, 1, 'top_up', 10000000, 10000000, '{intent}', 3000000, 'completed', 0, 0);
             INSERT INTO failed_refunds (refund_id, order_id, amount, failed_at)
                  VALUES ('{failed_id}', {order}, 3000000, 0);
             INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                       order_id, description, created_at)
                  VALUES (1, {credit}, 'credit', 10000000, {balance}, 'stripe-order:{order}', {order}, 'top-up', 0),
                         (1, {taken}, 'refund', -3000000, {after}, 'stripe-refund:{charge}:300', {order}, 'refund', 0),
                         (1, {given}, 'refund', 3000000, {balance}, 'stripe-refund-failed:{failed_id}', {order}, 'failed', 0);",
            credit = seq + 1,
            taken = seq + 2,
            given = seq + 3,
            after = balance - 3_000_000,
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO account_balances (account_id, balance, seq, updated_at)
              VALUES (1, {}, {}, 0);",
        payment_intents.len() as i64 * 10_000_000,
        payment_intents.len() as i64 * 3
    ));
    directory.execute(&sql);
    (directory, ignored)
}

/// A round of the background sweep replaces an order's legacy record (its
/// $2 refund, which the earlier release ignored, recorded) and fails
/// before that refund's row, with no event ever to come about the order:
/// the order stays the sweep's until it is settled, and a later round
/// takes the $2 back and tells the host, once.
async fn a_sweep_round_that_failed_after_replacing_a_legacy_record_is_settled_by_a_later_round() {
    use sms_credit_actors::store::WritePart;
    let fake = FakeStripe::start().await;
    let (directory, ignored) = orders_with_an_ignored_refund(&fake, &["pi_sweep_fails"]);
    let ignored_id = ignored[0].clone();
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 10_000_000);
    let store = app.store.as_ref().unwrap();
    let key = format!("stripe-refund:{ignored_id}");
    store.fail_ledger_write_for_testing(&key, WritePart::Row);

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "a sweep round replaced the legacy record and failed at the $2 refund's row",
        || async {
            legacy_records(&directory) == 0 && !store.ledger_write_failure_armed_for_testing()
        },
    )
    .await;
    assert_eq!(
        directory.text(&format!(
            "SELECT standing FROM stripe_refunds WHERE refund_id = '{ignored_id}'"
        )),
        "counted"
    );
    assert!(rows_of(&app, 1, 1).await[2..].is_empty());
    assert!(told_refunds(&directory).is_empty());

    // Once the failed round's claim runs out, a later round settles it.
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually(
        "a later sweep round took the $2 back and told the host",
        || async {
            rows_of(&app, 1, 1).await[2..] == [(key.clone(), -2_000_000)]
                && told_refunds(&directory).len() == 1
        },
    )
    .await;
    assert_eq!(app.balance_micros(1).await, 8_000_000);
    assert_eq!(refunded_figure(&app, 1, 1).await, 2_000_000);
    let told = told_refunds(&directory);
    assert_eq!(told[0]["data"]["refund_id"], ignored_id.as_str());
    assert_eq!(told[0]["data"]["refunded_micros"], 2_000_000);
    assert_eq!(told[0]["data"]["credit_taken_back_micros"], 2_000_000);
    // The replaced record is marked settled: the order is the sweep's no
    // more.
    eventually("the replaced legacy record is marked settled", || async {
        directory.number(
            "SELECT COUNT(*) FROM stripe_refunds WHERE standing = 'replaced' AND settled_at IS NOT NULL",
        ) == 1
    })
    .await;
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(
    a_sweep_round_that_failed_after_replacing_a_legacy_record_is_settled_by_a_later_round
);

/// Stripe refuses to list one order's refunds (a 400, for no reason this
/// service acts on) every time it is asked: the sweep carries on with the
/// next order in the same round — its record is replaced and its $2 taken
/// back —, and asks about the first again only after its own back-off.
async fn an_order_the_sweep_always_fails_at_does_not_hold_up_the_others() {
    let fake = FakeStripe::start().await;
    let (directory, ignored) =
        orders_with_an_ignored_refund(&fake, &["pi_sweep_unknown", "pi_sweep_next"]);
    fake.set_refund_lists_answer_for("pi_sweep_unknown", 400);
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 20_000_000);

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the sweep replaced the second order's record and took its $2 back",
        || async { net_of(&app, 1, 2).await == -2_000_000 },
    )
    .await;
    assert_eq!(fake.refund_lists_refused(), 1);
    assert_eq!(
        rows_of(&app, 1, 2).await[2..],
        [(format!("stripe-refund:{}", ignored[1]), -2_000_000)]
    );
    assert_eq!(legacy_records(&directory), 1);
    assert_eq!(net_of(&app, 1, 1).await, 0);
    assert_eq!(app.balance_micros(1).await, 18_000_000);

    // The first order is asked about again once its back-off is over.
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep asked about the first order again", || async {
        fake.refund_lists_refused() == 2
    })
    .await;
    assert_eq!(legacy_records(&directory), 1);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(an_order_the_sweep_always_fails_at_does_not_hold_up_the_others);

/// Stripe fails (a 500) every time it is asked for one order's refunds:
/// that ends the round, but the orders the round did not reach are the
/// next round's — the second order's record is replaced and its $2 taken
/// back half a minute later, not held up until the first's claim runs
/// out (and then again behind it).
async fn an_order_stripe_never_answers_about_does_not_hold_up_the_others() {
    let fake = FakeStripe::start().await;
    let (directory, ignored) =
        orders_with_an_ignored_refund(&fake, &["pi_sweep_silent", "pi_sweep_after"]);
    fake.set_refund_lists_failing_for("pi_sweep_silent");
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 20_000_000);

    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually("the sweep asked Stripe about the first order", || async {
        fake.refund_lists_refused() == 1
    })
    .await;
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the next round replaced the second order's record and took its $2 back",
        || async { net_of(&app, 1, 2).await == -2_000_000 },
    )
    .await;
    assert_eq!(
        rows_of(&app, 1, 2).await[2..],
        [(format!("stripe-refund:{}", ignored[1]), -2_000_000)]
    );
    assert_eq!(
        fake.refund_lists_refused(),
        1,
        "the first order waits its claim out"
    );
    assert_eq!(legacy_records(&directory), 1);
    assert_eq!(app.balance_micros(1).await, 18_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(an_order_stripe_never_answers_about_does_not_hold_up_the_others);

/// Orders whose legacy record the sweep can never replace — one without a
/// PaymentIntent, one whose refund Stripe lists with another amount than
/// recorded, one whose PaymentIntent Stripe does not know (a 404
/// `resource_missing`) — are left by the first round that takes them, with
/// why in this service's words (never Stripe's), which the order's view
/// shows; no later round claims them (Stripe is asked about each once), and
/// their records hold back what they held. A fourth order's refunds Stripe
/// will not list to the API key (401, then 403: the key is wrong, or may
/// not list refunds): that says nothing of the order, which is never left;
/// it ends its round, the order is asked about again each round once its
/// claim runs out, and when the key may list them its record is replaced.
async fn orders_the_sweep_can_never_replace_are_left_for_good() {
    let fake = FakeStripe::start().await;
    fake.set_failed_refunds(FailedRefunds::LeaveTheTotal);
    // The second order's $3 refund was recorded failed at $1 before the
    // upgrade; Stripe lists it made, at $3.
    let odd = fake.refund_in_dashboard("pi_sweep_odd", "ch_sweep_odd", 300);
    let odd_id = odd["id"].as_str().unwrap();
    fake.set_refund_lists_refused_for(Some("pi_sweep_gone"));
    // The fourth's $3 refund failed (given back); its $2 refund the earlier
    // release took for no new refund.
    let key_failed = fake.refund_in_dashboard("pi_sweep_key", "ch_sweep_key", 300);
    let key_failed = fake.fail_refund(key_failed["id"].as_str().unwrap());
    let key_failed_id = key_failed["id"].as_str().unwrap();
    let key_ignored = fake.refund_in_dashboard("pi_sweep_key", "ch_sweep_key", 200);
    let key_ignored_id = key_ignored["id"].as_str().unwrap();
    fake.set_refund_lists_answer_for("pi_sweep_key", 401);
    let directory = database_before_refund_ids();
    directory.execute(&format!(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES (1, '+14155550698', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, stripe_payment_intent_id,
                             amount_refunded, status, created_at, completed_at)
              VALUES (1, 1, 'top_up', 10000000, 10000000, NULL, 3000000, 'completed', 0, 0),
                     (2, 1, 'top_up', 10000000, 10000000, 'pi_sweep_odd', 3000000, 'completed', 0, 0),
                     (3, 1, 'top_up', 10000000, 10000000, 'pi_sweep_gone', 3000000, 'completed', 0, 0),
                     (4, 1, 'top_up', 10000000, 10000000, 'pi_sweep_key', 3000000, 'completed', 0, 0);
         INSERT INTO failed_refunds (refund_id, order_id, amount, failed_at)
              VALUES ('{odd_id}', 2, 1000000, 0), ('{key_failed_id}', 4, 3000000, 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key,
                                   order_id, description, created_at)
              VALUES (1, 1, 'credit', 10000000, 10000000, 'stripe-order:1', 1, 'top-up', 0),
                     (1, 2, 'refund', -3000000, 7000000, 'stripe-refund:ch_none:300', 1, 'refund', 0),
                     (1, 3, 'credit', 10000000, 17000000, 'stripe-order:2', 2, 'top-up', 0),
                     (1, 4, 'refund', -3000000, 14000000, 'stripe-refund:ch_sweep_odd:300', 2, 'refund', 0),
                     (1, 5, 'refund', 1000000, 15000000, 'stripe-refund-failed:{odd_id}', 2, 'failed', 0),
                     (1, 6, 'credit', 10000000, 25000000, 'stripe-order:3', 3, 'top-up', 0),
                     (1, 7, 'refund', -3000000, 22000000, 'stripe-refund:ch_sweep_gone:300', 3, 'refund', 0),
                     (1, 8, 'credit', 10000000, 32000000, 'stripe-order:4', 4, 'top-up', 0),
                     (1, 9, 'refund', -3000000, 29000000, 'stripe-refund:ch_sweep_key:300', 4, 'refund', 0),
                     (1, 10, 'refund', 3000000, 32000000, 'stripe-refund-failed:{key_failed_id}', 4, 'failed', 0);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES (1, 32000000, 10, 0);"
    ));
    let settings = stripe_settings(&directory, &fake.base_url);
    let clock = ManualClock::new(NOW_UNIX * 1000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    assert_eq!(app.balance_micros(1).await, 32_000_000);
    // The lists Stripe gave: every list asked for, less those refused.
    let lists_given =
        || fake.requests_with("GET", "/v1/refunds").len() as u64 - fake.refund_lists_refused();
    let asked_about_the_fourth = || fake.refund_lists_refused_of("pi_sweep_key");

    // The first round, then three after the claims would have run out (the
    // key refused with a 401 in the first three, a 403 in the last): the
    // fourth order, last in each, is asked about in each.
    clock.advance_ms(LEGACY_SWEEP_EVERY_MS);
    for round in 1..=4 {
        if round > 1 {
            clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
        }
        if round == 4 {
            fake.set_refund_lists_answer_for("pi_sweep_key", 403);
        }
        eventually(
            &format!("sweep round {round} asked about the fourth order"),
            || async { asked_about_the_fourth() == round },
        )
        .await;
        assert_eq!(
            lists_given(),
            1,
            "round {round}: Stripe listed the second order's refunds once only"
        );
        assert_eq!(
            fake.refund_lists_refused_of("pi_sweep_gone"),
            1,
            "round {round}: Stripe asked about the third order once only"
        );
    }
    let why = |order: i64| {
        directory.text(&format!(
            "SELECT COALESCE(sweep_left_because, '') FROM stripe_refunds
              WHERE refund_id = 'legacy-order-{order}'"
        ))
    };
    assert!(why(1).contains("PaymentIntent"), "{}", why(1));
    assert!(why(2).contains(odd_id), "{}", why(2));
    assert!(
        why(3).contains("pi_sweep_gone") && why(3).contains("resource_missing"),
        "{}",
        why(3)
    );
    assert!(
        !why(3).contains("No such"),
        "Stripe's own words: {}",
        why(3)
    );
    assert_eq!(why(4), "", "the key's refusal leaves nothing");
    assert_eq!(legacy_records(&directory), 4);
    let sweep_of = |detail: &serde_json::Value, order: i64| {
        detail["stripe_refunds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|refund| refund["refund_id"] == format!("legacy-order-{order}"))
            .unwrap_or_else(|| panic!("order {order}'s legacy record is not shown: {detail}"))
            ["sweep"]
            .clone()
    };
    let third = order_detail(&app, 3).await;
    assert_eq!(sweep_of(&third, 3)["state"], "left", "{third}");
    assert_eq!(
        sweep_of(&third, 3)["left_because"],
        why(3).as_str(),
        "{third}"
    );
    assert_eq!(refunded_figure(&app, 1, 1).await, 3_000_000);
    assert_eq!(refunded_figure(&app, 1, 2).await, 2_000_000);
    assert_eq!(refunded_figure(&app, 1, 3).await, 3_000_000);
    assert_eq!(app.balance_micros(1).await, 32_000_000);

    // The key may list refunds again: the next round replaces the fourth
    // order's record and takes its $2 back; the order is settled.
    fake.set_refund_lists_answer_for("pi_sweep_key", 200);
    clock.advance_ms(LEGACY_CLAIM_LEASE_MS + LEGACY_SWEEP_EVERY_MS);
    eventually(
        "the sweep replaced the fourth order's record and took its $2 back",
        || async { net_of(&app, 1, 4).await == -2_000_000 },
    )
    .await;
    assert_eq!(
        rows_of(&app, 1, 4).await[2..],
        [(format!("stripe-refund:{key_ignored_id}"), -2_000_000)]
    );
    eventually("the fourth order is settled", || async {
        sweep_of(&order_detail(&app, 4).await, 4)["state"] == "settled"
    })
    .await;
    assert_eq!(legacy_records(&directory), 3);
    assert_eq!(asked_about_the_fourth(), 4);
    assert_eq!(app.balance_micros(1).await, 30_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}
on_both_stores!(orders_the_sweep_can_never_replace_are_left_for_good);

//! Credit grants (#36): every credit is a grant; a debit draws on them by
//! priority, then promotional before paid, then the soonest expiry, then the
//! oldest, split across grants; an expired grant is taken by its expiry row
//! before anything draws on it; a take-back of an order takes its unspent
//! credit first, then other paid credit, then leaves the account owing,
//! never promotional credit; credit given back (a void, a dispute won)
//! reverses what was taken, what is owed first; `verify` names a grant whose
//! remaining is wrong; an unknown stored letter is an error; and a database
//! of the release before grants gets them from its ledger. On both stores.

use std::sync::Arc;
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit::startup::Core;
use sms_credit_actors::clock::ManualClock;
use sms_credit_actors::grants::{self, Category, GrantSource, GrantStatus, Priority};
use sms_credit_actors::{
    AccountId, Adjust, Credit, Debit, IdempotencyKey, LedgerEntry, LedgerError, Money, Refund,
    TransactionKind,
};

use crate::database::TestDatabase;
use crate::fake_stripe::{EventFactory, FakeStripe};
use crate::helpers::{
    fresh_directory, run_cli, stripe_settings, test_settings, TestApp, ADMIN_TOKEN,
};
use crate::ledger_actors::{assert_verified, key, new_account};
use crate::refunds::paid_top_up;

pub(crate) const NOW_MS: i64 = 1_795_253_400_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// A core on a clock the test moves. The debits are messages' (`msg:N`)
/// with no message behind them: no low-balance warning, which would wait
/// for its message.
pub(crate) fn core_at(directory: &TestDatabase, clock: &ManualClock) -> Core {
    let mut settings = test_settings(directory);
    settings.server.passivate_after = Duration::from_secs(3600);
    settings.messages.low_balance_threshold = Money::ZERO;
    Core::start(&settings, Arc::new(clock.clone())).unwrap()
}

pub(crate) fn adjust(
    micros: i64,
    idempotency_key: &str,
    category: Option<Category>,
    priority: Option<i64>,
    expires_at_ms: Option<i64>,
) -> Adjust {
    Adjust {
        amount: Money::from_micros(micros),
        idempotency_key: key(idempotency_key),
        reason: "test".into(),
        description: None,
        category,
        priority: priority.map(|value| Priority::new(value).unwrap()),
        expires_at_ms,
    }
}

pub(crate) fn paid_credit(micros: i64, idempotency_key: &str) -> Credit {
    Credit {
        amount: Money::from_micros(micros),
        idempotency_key: key(idempotency_key),
        description: "top-up".into(),
        order_id: None,
        source: GrantSource::TopUp,
        event: None,
    }
}

pub(crate) fn message_debit(micros: i64, message_id: i64) -> Debit {
    Debit {
        amount: Money::from_micros(micros),
        idempotency_key: IdempotencyKey::message(message_id),
        description: "SMS".into(),
        one_segment: None,
    }
}

/// A row's funding as (grant, category, micro-dollars).
pub(crate) fn draws(entry: &LedgerEntry) -> Vec<(i64, &'static str, i64)> {
    entry
        .funded_by
        .draws()
        .iter()
        .map(|draw| (draw.grant_id, draw.category.as_str(), draw.amount.micros()))
        .collect()
}

/// An account's grants as the listings show them: (id, status, left).
async fn listed(core: &Core, account: AccountId, now_ms: i64) -> Vec<(i64, GrantStatus, i64)> {
    let found = core
        .store
        .ledger()
        .account_grants(account)
        .await
        .unwrap()
        .unwrap();
    grants::lines(&found.grants, &found.remaining.unwrap(), now_ms)
        .iter()
        .map(|line| (line.grant.id, line.status, line.remaining.micros()))
        .collect()
}

on_both_stores!(a_debit_draws_by_priority_then_category_then_expiry_then_age);
async fn a_debit_draws_by_priority_then_category_then_expiry_then_age() {
    use Category::{Paid, Promotional};
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550401").await;
    let send = |message: Adjust| {
        let registry = core.registry.clone();
        async move { registry.send(account, message).await.unwrap().entry.seq }
    };
    // Each grant is named by its row's position.
    assert_eq!(
        send(adjust(1_000_000, "paid-old", Some(Paid), None, None)).await,
        1
    );
    assert_eq!(send(adjust(1_000_000, "promo", None, None, None)).await, 2);
    let expiring = Some(NOW_MS + 10 * DAY_MS);
    assert_eq!(
        send(adjust(
            1_000_000,
            "promo-expiring",
            Some(Promotional),
            None,
            expiring
        ))
        .await,
        3
    );
    assert_eq!(
        send(adjust(1_000_000, "first", Some(Paid), Some(10), None)).await,
        4
    );
    let sooner = Some(NOW_MS + 5 * DAY_MS);
    assert_eq!(
        send(adjust(1_000_000, "paid-expiring", Some(Paid), None, sooner)).await,
        5
    );
    assert_eq!(
        send(adjust(1_000_000, "promo-young", None, None, None)).await,
        6
    );
    let credit = core
        .registry
        .send(account, paid_credit(1_000_000, "top-up"))
        .await
        .unwrap();
    assert_eq!(credit.entry.seq, 7);
    assert!(
        credit.entry.funded_by.is_empty(),
        "nothing owed to pay down"
    );

    // Priority first; then promotional before paid; among those the
    // soonest expiry, none last; then the oldest. One debit, five grants.
    let debit = core
        .registry
        .send(account, message_debit(4_500_000, 1))
        .await
        .unwrap();
    assert_eq!(
        draws(&debit.entry),
        vec![
            (4, "paid", 1_000_000),
            (3, "promotional", 1_000_000),
            (2, "promotional", 1_000_000),
            (6, "promotional", 1_000_000),
            (5, "paid", 500_000),
        ]
    );
    // The next goes on where it stopped, the oldest paid before the newest.
    let next = core
        .registry
        .send(account, message_debit(1_000_000, 2))
        .await
        .unwrap();
    assert_eq!(
        draws(&next.entry),
        vec![(5, "paid", 500_000), (1, "paid", 500_000)]
    );
    // What the store kept is what was answered.
    let stored = core
        .store
        .ledger()
        .entry_by_key(account, IdempotencyKey::message(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.funded_by, debit.entry.funded_by);
    assert_eq!(
        listed(&core, account, NOW_MS).await,
        vec![
            (7, GrantStatus::Active, 1_000_000),
            (6, GrantStatus::Used, 0),
            (5, GrantStatus::Used, 0),
            (4, GrantStatus::Used, 0),
            (3, GrantStatus::Used, 0),
            (2, GrantStatus::Used, 0),
            (1, GrantStatus::Active, 500_000),
        ]
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(an_expired_grant_is_taken_by_its_expiry_row_before_anything_draws_on_it);
async fn an_expired_grant_is_taken_by_its_expiry_row_before_anything_draws_on_it() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550402").await;
    let expires_at = NOW_MS + 1_000;
    core.registry
        .send(
            account,
            adjust(2_000_000, "welcome", None, None, Some(expires_at)),
        )
        .await
        .unwrap();
    core.registry
        .send(account, paid_credit(1_000_000, "top-up"))
        .await
        .unwrap();
    // A moment before its expiry, the promotional credit is spent first.
    clock.set_ms(expires_at - 1);
    let before = core
        .registry
        .send(account, message_debit(100_000, 1))
        .await
        .unwrap();
    assert_eq!(draws(&before.entry), vec![(1, "promotional", 100_000)]);

    // At its expiry, the next change writes the expiry row first: the
    // debit never draws on the expired grant.
    clock.set_ms(expires_at);
    let debit = core
        .registry
        .send(account, message_debit(500_000, 2))
        .await
        .unwrap();
    assert_eq!(debit.entry.seq, 5, "the expiry is row 4");
    assert_eq!(draws(&debit.entry), vec![(2, "paid", 500_000)]);
    assert_eq!(debit.entry.balance_after, Money::from_micros(500_000));
    let expiry = core
        .store
        .ledger()
        .entries_after(account, 3, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(expiry.kind, TransactionKind::Expiry);
    assert_eq!(expiry.amount, Money::from_micros(-1_900_000));
    assert_eq!(expiry.idempotency_key, "grant-expiry:1:4");
    assert_eq!(draws(&expiry), vec![(1, "promotional", 1_900_000)]);
    // Only the paid credit is left to spend.
    let refused = core.registry.send(account, message_debit(600_000, 3)).await;
    assert!(
        matches!(refused, Err(LedgerError::InsufficientCredit { .. })),
        "{refused:?}"
    );
    assert_eq!(
        listed(&core, account, expires_at).await,
        vec![
            (2, GrantStatus::Active, 500_000),
            (1, GrantStatus::Expired, 0)
        ]
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_void_gives_back_exactly_what_its_debit_drew_paying_down_what_is_owed_first);
async fn a_void_gives_back_exactly_what_its_debit_drew_paying_down_what_is_owed_first() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550403").await;
    core.registry
        .send(account, adjust(1_000_000, "welcome", None, None, None))
        .await
        .unwrap();
    core.registry
        .send(account, paid_credit(2_000_000, "top-up"))
        .await
        .unwrap();
    let debit = core
        .registry
        .send(account, message_debit(2_000_000, 41))
        .await
        .unwrap();
    assert_eq!(
        draws(&debit.entry),
        vec![(1, "promotional", 1_000_000), (2, "paid", 1_000_000)]
    );
    // Not sent: its cost goes back to exactly the grants it came from,
    // one of them (1) spent to nothing meanwhile.
    let void = Refund {
        amount: Money::from_micros(2_000_000),
        idempotency_key: IdempotencyKey::message_void(41),
        description: "SMS not sent".into(),
        order_id: None,
        event: None,
    };
    let voided = core.registry.send(account, void).await.unwrap();
    assert_eq!(
        draws(&voided.entry),
        vec![(2, "paid", -1_000_000), (1, "promotional", -1_000_000)]
    );

    // Spent again, then the account made to owe $1.00: the refund of that
    // message's cost pays down what is owed with its paid part first.
    let again = core
        .registry
        .send(account, message_debit(2_000_000, 42))
        .await
        .unwrap();
    assert_eq!(
        draws(&again.entry),
        vec![(1, "promotional", 1_000_000), (2, "paid", 1_000_000)]
    );
    let owing = core
        .registry
        .send(account, adjust(-2_000_000, "correction", None, None, None))
        .await
        .unwrap();
    assert_eq!(
        draws(&owing.entry),
        vec![(2, "paid", 1_000_000), (0, "paid", 1_000_000)]
    );
    let refund = Refund {
        amount: Money::from_micros(2_000_000),
        idempotency_key: IdempotencyKey::message_refund(42),
        description: "SMS failed".into(),
        order_id: None,
        event: None,
    };
    let refunded = core.registry.send(account, refund).await.unwrap();
    assert_eq!(
        draws(&refunded.entry),
        vec![(0, "paid", -1_000_000), (1, "promotional", -1_000_000)]
    );
    assert_eq!(refunded.entry.balance_after, Money::from_micros(1_000_000));
    assert_eq!(
        listed(&core, account, NOW_MS).await,
        vec![
            (2, GrantStatus::Used, 0),
            (1, GrantStatus::Active, 1_000_000)
        ]
    );
    core.shutdown().await;
    assert_verified(&directory);
}

/// The account's ledger rows, as the admin API shows them.
async fn rows(app: &TestApp, account: i64) -> Vec<Value> {
    let (status, body) = app.get_transactions(account).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["transactions"].as_array().unwrap().clone()
}

/// The grant made by the credit row of `order` (its ledger position).
async fn grant_of_order(app: &TestApp, account: i64, order: i64) -> i64 {
    rows(app, account)
        .await
        .iter()
        .find(|row| row["type"] == "credit" && row["order_id"] == order)
        .unwrap()["seq"]
        .as_i64()
        .unwrap()
}

/// (grant, category, micro-dollars) of a row as the API shows it.
fn api_draws(row: &Value) -> Vec<(i64, String, i64)> {
    row["funded_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|draw| {
            (
                draw["grant_id"].as_i64().unwrap(),
                draw["category"].as_str().unwrap().to_string(),
                draw["amount_micros"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// What `GET /v1/admin/orders/{id}` says is unspent of the order's credit.
async fn unspent_of_order(app: &TestApp, order: i64) -> i64 {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order"]["id"], order, "{body}");
    let unspent = body["unspent_credit_micros"].as_i64().unwrap();
    // The account's list of orders (the console's table) says the same.
    let account = body["order"]["account_id"].as_i64().unwrap();
    let (status, list) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/orders"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["id"] == order)
        .unwrap_or_else(|| panic!("order {order} is in its account's list: {list}"));
    assert_eq!(listed["unspent_credit_micros"], unspent, "{list}");
    unspent
}

async fn credit_grants(app: &TestApp, path: &str, token: &str) -> Vec<Value> {
    let (status, body) = app.request("GET", path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["credit_grants"].as_array().unwrap().clone()
}

on_both_stores!(
    a_refund_takes_its_orders_unspent_credit_first_then_paid_then_leaves_the_account_owing
);
async fn a_refund_takes_its_orders_unspent_credit_first_then_paid_then_leaves_the_account_owing() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    // $5 with access, then a $10 top-up: two paid grants.
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550404").await;
    let order_grant = grant_of_order(&app, account, order).await;
    // $6 spent: the older access credit, then $1 of the top-up.
    let (status, body) = app.post_adjustment(account, -6_000_000, "spent").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        api_draws(&body["transaction"]),
        vec![
            (order_grant - 1, "paid".to_string(), 5_000_000),
            (order_grant, "paid".to_string(), 1_000_000)
        ]
    );
    // $2 of promotional credit after.
    let (status, body) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(
                json!({"amount_micros": 2_000_000, "reason": "sorry", "idempotency_key": "promo",
                        "category": "promotional", "priority": 40}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let promotional = body["transaction"]["seq"].as_i64().unwrap();
    // The order's unspent credit, as the operator sees it before refunding.
    assert_eq!(unspent_of_order(&app, order).await, 9_000_000);

    // The whole top-up refunded: its $9 unspent first, then what no paid
    // credit covers is owed; the promotional $2 stays.
    let refunded = events.charge_refunded("ch_grants", &intent, 1000, 1000);
    assert_eq!(app.deliver(&refunded).await.0, StatusCode::OK);
    let all = rows(&app, account).await;
    let last = all.last().unwrap();
    assert_eq!(last["type"], "refund", "{last}");
    assert_eq!(last["amount_micros"], -10_000_000);
    assert_eq!(
        api_draws(last),
        vec![
            (order_grant, "paid".to_string(), 9_000_000),
            (0, "paid".to_string(), 1_000_000)
        ]
    );
    assert_eq!(app.balance_micros(account).await, 1_000_000);
    assert_eq!(unspent_of_order(&app, order).await, 0);
    let (status, _) = app
        .request("GET", "/v1/admin/orders/999999", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The operator's list and the holder's own say the same.
    let admin = credit_grants(
        &app,
        &format!("/v1/admin/accounts/{account}/credit-grants"),
        ADMIN_TOKEN,
    )
    .await;
    let token = app.issue_token(account).await;
    let holder = credit_grants(
        &app,
        &format!("/v1/accounts/{account}/credit-grants"),
        &token,
    )
    .await;
    assert_eq!(admin, holder);
    let summary: Vec<(i64, String, String, i64, String)> = admin
        .iter()
        .map(|grant| {
            (
                grant["id"].as_i64().unwrap(),
                grant["category"].as_str().unwrap().to_string(),
                grant["source"].as_str().unwrap().to_string(),
                grant["remaining_micros"].as_i64().unwrap(),
                grant["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let text = |value: &str| value.to_string();
    assert_eq!(
        summary,
        vec![
            (
                promotional,
                text("promotional"),
                text("adjustment"),
                2_000_000,
                text("active")
            ),
            (order_grant, text("paid"), text("top_up"), 0, text("used")),
            (
                order_grant - 1,
                text("paid"),
                text("access"),
                0,
                text("used")
            ),
            (0, text("paid"), text("shortfall"), -1_000_000, text("owed")),
        ]
    );
    assert_eq!(admin[0]["priority"], 40);
    assert_eq!(admin[1]["order_id"], order);
    assert_eq!(admin[1]["amount_micros"], 10_000_000);
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(a_dispute_won_gives_back_what_its_chargeback_took_what_is_owed_first);
async fn a_dispute_won_gives_back_what_its_chargeback_took_what_is_owed_first() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550405").await;
    let order_grant = grant_of_order(&app, account, order).await;
    // $12 spent: the access credit's $5, then $7 of the top-up.
    let (status, _) = app.post_adjustment(account, -12_000_000, "spent").await;
    assert_eq!(status, StatusCode::OK);

    let withdrawn = events.dispute(
        "charge.dispute.funds_withdrawn",
        "dp_grants",
        "ch_grants",
        &intent,
        1000,
        "needs_response",
    );
    assert_eq!(app.deliver(&withdrawn).await.0, StatusCode::OK);
    let taken = rows(&app, account).await.pop().unwrap();
    assert_eq!(
        taken["idempotency_key"],
        "stripe-dispute:dp_grants:withdrawn"
    );
    assert_eq!(
        api_draws(&taken),
        vec![
            (order_grant, "paid".to_string(), 3_000_000),
            (0, "paid".to_string(), 7_000_000)
        ]
    );
    assert_eq!(app.balance_micros(account).await, -7_000_000);

    // Won: what was owed is paid down first, then the order's grant gets
    // back what was taken of it.
    let reinstated = events.dispute(
        "charge.dispute.funds_reinstated",
        "dp_grants",
        "ch_grants",
        &intent,
        1000,
        "won",
    );
    assert_eq!(app.deliver(&reinstated).await.0, StatusCode::OK);
    let given = rows(&app, account).await.pop().unwrap();
    assert_eq!(
        given["idempotency_key"],
        "stripe-dispute:dp_grants:reinstated"
    );
    assert_eq!(
        api_draws(&given),
        vec![
            (0, "paid".to_string(), -7_000_000),
            (order_grant, "paid".to_string(), -3_000_000)
        ]
    );
    assert_eq!(app.balance_micros(account).await, 3_000_000);
    let grants = credit_grants(
        &app,
        &format!("/v1/admin/accounts/{account}/credit-grants"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(grants[0]["id"], order_grant);
    assert_eq!(grants[0]["remaining_micros"], 3_000_000);
    assert!(grants.iter().all(|grant| grant["status"] != "owed"));
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(an_adjustments_key_again_with_other_grant_terms_is_a_conflict);
/// The grant terms are part of an adjustment's request: its key again with
/// another category, priority or expiry is a conflict, never the first
/// grant answered as if it were the one asked for — when the first is in
/// the ledger, and while it is still being written.
async fn an_adjustments_key_again_with_other_grant_terms_is_a_conflict() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550411").await;
    let other = new_account(&core, "+14155550412").await;
    let expires = Some(NOW_MS + DAY_MS);
    let first = core
        .registry
        .send(account, adjust(5_000_000, "given", None, None, None))
        .await
        .unwrap();
    for (category, priority, expires_at) in [
        (Some(Category::Paid), None, None),
        (None, Some(10), None),
        (None, None, expires),
    ] {
        let again = core
            .registry
            .send(
                account,
                adjust(5_000_000, "given", category, priority, expires_at),
            )
            .await;
        assert!(
            matches!(again, Err(LedgerError::IdempotencyConflict { .. })),
            "{category:?} {priority:?} {expires_at:?}: {again:?}"
        );
    }
    // The same terms, said or left to their defaults: the first row.
    let same = core
        .registry
        .send(
            account,
            adjust(
                5_000_000,
                "given",
                Some(Category::Promotional),
                Some(50),
                None,
            ),
        )
        .await
        .unwrap();
    assert!(same.replayed);
    assert_eq!(same.entry.seq, first.entry.seq);

    // While the first is still being written (the writer holds it until a
    // second write comes): the second, with other terms, is not joined to it.
    core.store.gather_next_batch_for_testing(2);
    let registry = core.registry.clone();
    let written = tokio::spawn(async move {
        registry
            .send(
                account,
                adjust(1_000_000, "held", Some(Category::Paid), None, None),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let registry = core.registry.clone();
    let conflicting = tokio::spawn(async move {
        registry
            .send(
                account,
                adjust(
                    1_000_000,
                    "held",
                    Some(Category::Promotional),
                    None,
                    expires,
                ),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    core.registry
        .send(
            other,
            adjust(1_000_000, "completes-the-batch", None, None, None),
        )
        .await
        .unwrap();
    let written = tokio::time::timeout(Duration::from_secs(10), written)
        .await
        .expect("the held adjustment answered within 10 s")
        .unwrap()
        .unwrap();
    assert!(!written.replayed);
    let conflicting = tokio::time::timeout(Duration::from_secs(10), conflicting)
        .await
        .expect("the second adjustment answered within 10 s")
        .unwrap();
    assert!(
        matches!(conflicting, Err(LedgerError::IdempotencyConflict { .. })),
        "{conflicting:?}"
    );
    let found = listed(&core, account, NOW_MS).await;
    assert_eq!(found.len(), 2, "{found:?}");
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_retried_adjustment_whose_expiry_has_passed_since_is_answered_from_its_key);
/// An adjustment's expiry is judged when it is first asked: a retry of it
/// (the same key, the same terms) after that expiry has passed is answered
/// from its key with the first row, never refused for an expiry in the
/// past. A new key with that expiry is refused (400, nothing changed), and
/// the key again with other terms is still a conflict.
async fn a_retried_adjustment_whose_expiry_has_passed_since_is_answered_from_its_key() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = test_settings(&directory);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let account = app.create_account("+14155550414").await;
    let expires_at = sms_credit_actors::clock::format_rfc3339_ms(NOW_MS + 60_000);
    let asked = |key: &str, micros: i64, expires_at: &str| {
        json!({"amount_micros": micros, "reason": "welcome", "idempotency_key": key,
               "expires_at": expires_at})
    };
    let post = |body: Value| {
        let app = &app;
        async move {
            app.request(
                "POST",
                &format!("/v1/admin/accounts/{account}/adjustments"),
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await
        }
    };
    let (status, first) = post(asked("welcome", 2_000_000, &expires_at)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["replayed"], false);

    // Two minutes on, the grant has expired (and its expiry row may be
    // written); the caller, who never heard the first answer, retries.
    clock.set_ms(NOW_MS + 120_000);
    let (status, again) = post(asked("welcome", 2_000_000, &expires_at)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["transaction"], first["transaction"], "{again}");

    // The key again with other terms: a conflict, whether the expiry it
    // asks is in the past or the amount differs.
    let earlier = sms_credit_actors::clock::format_rfc3339_ms(NOW_MS + 30_000);
    for body in [
        asked("welcome", 2_000_000, &earlier),
        asked("welcome", 3_000_000, &expires_at),
    ] {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "idempotency_conflict", "{answer}");
    }

    // A new key with that expiry, now past: refused, and nothing changed.
    let balance = app.balance_micros(account).await;
    let (status, answer) = post(asked("welcome-late", 2_000_000, &expires_at)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_expires_at", "{answer}");
    assert_eq!(
        answer["error"]["message"], "an expiry must be in the future",
        "{answer}"
    );
    assert_eq!(app.balance_micros(account).await, balance);
    let directory = app.stop().await;
    assert_eq!(
        directory.number(&format!(
            "SELECT COUNT(*) FROM transactions WHERE idempotency_key = 'welcome-late' AND account_id = {account}"
        )),
        0
    );
}

on_both_stores!(an_account_whose_grants_cannot_be_used_says_an_operator_must_repair_it);
/// An account whose grants cannot be used (its balance row's grants do not
/// sum to its balance) refuses every change, and a retry never succeeds
/// until an operator repairs it: the answer says so (`500
/// grants_unusable`), not "retry" (`503 not_applied`), whichever door the
/// change came through (an adjustment, a message), and names no setting.
/// Its balance can still be read, and nothing was written or sent.
async fn an_account_whose_grants_cannot_be_used_says_an_operator_must_repair_it() {
    let twilio = crate::fake_twilio::FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings_of = |directory: &TestDatabase| {
        crate::helpers::with_twilio(test_settings(directory), &twilio.base_url)
    };
    let app = TestApp::spawn_with(directory.clone(), settings_of(&directory)).await;
    let account = app.create_account("+14155550416").await;
    let (status, body) = app.post_adjustment(account, 1_000_000, "welcome").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let directory = app.stop().await;
    directory.execute(&format!(
        "UPDATE account_balances SET grants = '1:400000' WHERE account_id = {account}"
    ));
    let app = TestApp::spawn_with(directory.clone(), settings_of(&directory)).await;

    for attempt in 0..2 {
        for (door, (status, answer)) in [
            (
                "adjustment",
                app.post_adjustment(account, 500_000, "more").await,
            ),
            (
                "message",
                app.post_message(
                    json!({"account_id": account, "body": "hi", "idempotency_key": "hi-1"}),
                )
                .await,
            ),
        ] {
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{door}, attempt {attempt}: {answer}"
            );
            assert_eq!(
                answer["error"]["code"], "grants_unusable",
                "{door}: {answer}"
            );
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("an operator must repair")
                    && !message.contains("SMS_CREDIT")
                    && !message.to_lowercase().contains("retry it"),
                "{door}: {message}"
            );
        }
    }
    assert_eq!(app.balance_micros(account).await, 1_000_000);
    assert!(twilio.sent().is_empty(), "{:?}", twilio.sent());
    let directory = app.stop().await;
    assert_eq!(
        directory.number(&format!(
            "SELECT COUNT(*) FROM transactions WHERE account_id = {account}"
        )),
        1,
        "nothing was written"
    );
}

on_both_stores!(adjustments_refuse_grant_terms_that_cannot_be);
async fn adjustments_refuse_grant_terms_that_cannot_be() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550406").await;
    for (body, code) in [
        (
            json!({"amount_micros": -1_000_000, "category": "paid"}),
            "invalid_category",
        ),
        (
            json!({"amount_micros": -1_000_000, "expires_at": "2099-01-01T00:00:00Z"}),
            "invalid_expires_at",
        ),
        (
            json!({"amount_micros": 1_000_000, "category": "gift"}),
            "invalid_category",
        ),
        (
            json!({"amount_micros": 1_000_000, "priority": 101}),
            "invalid_priority",
        ),
        (
            json!({"amount_micros": 1_000_000, "priority": -1}),
            "invalid_priority",
        ),
        (
            json!({"amount_micros": 1_000_000, "expires_at": "2001-01-01T00:00:00Z"}),
            "invalid_expires_at",
        ),
        (
            json!({"amount_micros": 1_000_000, "expires_at": "next week"}),
            "invalid_expires_at",
        ),
    ] {
        let mut request = body.clone();
        request["reason"] = json!("test");
        request["idempotency_key"] = json!("terms");
        let (status, answer) = app
            .request(
                "POST",
                &format!("/v1/admin/accounts/{account}/adjustments"),
                Some(ADMIN_TOKEN),
                Some(request),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    assert_eq!(app.balance_micros(account).await, 0, "nothing was applied");
    // Paid credit received outside Stripe, with an expiry: as asked.
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(
                json!({"amount_micros": 1_000_000, "reason": "bank transfer",
                        "idempotency_key": "transfer", "category": "paid",
                        "expires_at": "2099-01-01T00:00:00Z"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let grants = credit_grants(
        &app,
        &format!("/v1/admin/accounts/{account}/credit-grants"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["category"], "paid");
    assert_eq!(grants[0]["priority"], 50);
    assert_eq!(grants[0]["expires_at"], "2099-01-01T00:00:00.000Z");
    app.stop().await;
}

on_both_stores!(sync verify_names_a_grant_whose_remaining_is_wrong);
fn verify_names_a_grant_whose_remaining_is_wrong() {
    let directory = fresh_directory();
    actix_rt::System::new().block_on(async {
        let clock = ManualClock::new(NOW_MS);
        let core = core_at(&directory, &clock);
        let account = new_account(&core, "+14155550407").await;
        core.registry
            .send(account, paid_credit(1_000_000, "top-up"))
            .await
            .unwrap();
        core.registry
            .send(account, message_debit(250_000, 1))
            .await
            .unwrap();
        core.shutdown().await;
    });
    assert!(run_cli(&directory, &["verify"]).status.success());
    // The snapshot says more is left of grant 1 than its rows leave.
    directory.execute("UPDATE account_balances SET grants = '1:800000' WHERE account_id = 1");
    let verified = run_cli(&directory, &["verify"]);
    assert!(!verified.status.success(), "{verified:?}");
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(
        said.contains(
            "problem: account 1: grant 1 has $0.75 left by its ledger, but its balance row says $0.80"
        ) && said.contains("problem: account 1: its grants hold $0.80 in all, but its balance says $0.75"),
        "{said}"
    );
}

on_both_stores!(sync verify_names_a_row_whose_funding_breaks_the_rules_though_it_adds_up);
/// Rows whose amounts add up but whose funding the rules never decide:
/// each is named by `verify`, in a sentence.
fn verify_names_a_row_whose_funding_breaks_the_rules_though_it_adds_up() {
    let directory = fresh_directory();
    let expires = NOW_MS + 3_600_000;
    actix_rt::System::new().block_on(async {
        let clock = ManualClock::new(NOW_MS);
        let core = core_at(&directory, &clock);
        let account = new_account(&core, "+14155550413").await;
        core.registry
            .send(
                account,
                adjust(
                    1_000_000,
                    "given",
                    Some(Category::Promotional),
                    None,
                    Some(expires),
                ),
            )
            .await
            .unwrap();
        core.registry
            .send(account, message_debit(250_000, 1))
            .await
            .unwrap();
        core.shutdown().await;
    });
    assert!(run_cli(&directory, &["verify"]).status.success());
    for (change, said) in [
        (
            format!("UPDATE transactions SET created_at = {expires} WHERE account_id = 1 AND seq = 2"),
            "problem: account 1: row #2 is a debit that took from grant 1 at or after its expiry",
        ),
        (
            "UPDATE transactions SET type = 'refund' WHERE account_id = 1 AND seq = 2".to_string(),
            "problem: account 1: row #2 takes credit back for a payment from promotional grant 1, which never turns into cash",
        ),
        (
            "UPDATE transactions SET type = 'expiry' WHERE account_id = 1 AND seq = 2".to_string(),
            "problem: account 1: row #2 expires grant 1 before its expiry",
        ),
    ] {
        directory.execute(&change);
        let verified = run_cli(&directory, &["verify"]);
        assert!(!verified.status.success(), "{change}: {verified:?}");
        let told = String::from_utf8_lossy(&verified.stdout);
        assert!(told.contains(said), "{change}: {told}");
        directory.execute(&format!(
            "UPDATE transactions SET type = 'debit', created_at = {NOW_MS} WHERE account_id = 1 AND seq = 2"
        ));
        assert!(run_cli(&directory, &["verify"]).status.success(), "{change}: put back");
    }
}

on_both_stores!(an_unknown_letter_in_a_rows_funding_is_an_error_not_a_default);
async fn an_unknown_letter_in_a_rows_funding_is_an_error_not_a_default() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550408").await;
    let (status, _) = app.post_adjustment(account, 1_000_000, "welcome").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post_adjustment(account, -250_000, "spent").await;
    assert_eq!(status, StatusCode::OK);
    app.directory.execute(&format!(
        "UPDATE transactions SET funded_by = '1:x:250000' WHERE account_id = {account} AND seq = 2"
    ));
    let (status, answer) = app.get_transactions(account).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["error"]["code"], "unknown_stored_value", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "account {account} seq 2: unknown funded_by '1:x:250000'"
        )),
        "{message}"
    );
    // A grant of a category this release does not know is not paid credit.
    app.directory.tamper(
        "credit_grants",
        &format!("UPDATE credit_grants SET category = 'gift' WHERE account_id = {account}"),
    );
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/credit-grants"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown category 'gift'"),
        "{answer}"
    );
    app.stop().await;
}

on_both_stores!(sync a_database_of_the_release_before_grants_gets_them_from_its_ledger);
/// The release just before grants (SQLite V34, Postgres V25), and an older
/// one, before refunds were kept by Stripe's id (V26, V17).
fn a_database_of_the_release_before_grants_gets_them_from_its_ledger() {
    for (sqlite_last, postgres_last) in [(34, 25), (26, 17)] {
        upgraded_from(sqlite_last, postgres_last);
    }
}

/// A database migrated up to the given versions, with rows of every kind as
/// that release wrote them, upgraded by `migrate`.
fn upgraded_from(sqlite_last: i32, postgres_last: i32) {
    let directory = fresh_directory();
    sms_credit_actors::adapters::migrate_until_for_testing(
        &directory.location(),
        sqlite_last,
        postgres_last,
    )
    .unwrap();
    // Rows of every kind, as that release wrote them.
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES
             (1, '+14155550410', 'active', 0), (2, '+14155550411', 'active', 0),
             (3, '+14155550412', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, status, created_at) VALUES
             (7, 1, 'initial_access', 2999000, 2999000, 'completed', 0),
             (8, 1, 'top_up', 10000000, 10000000, 'refunded', 0),
             (9, 1, 'top_up', 10000000, 10000000, 'completed', 0),
             (10, 3, 'top_up', 3000000, 3000000, 'refunded', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at, reason) VALUES
             (1, 1, 'credit', 5000000, 5000000, 'stripe-order:7', 7, 'credit included with access', 1, NULL),
             (1, 2, 'credit', 10000000, 15000000, 'stripe-order:8', 8, 'top-up by Checkout', 2, NULL),
             (1, 3, 'adjustment', 1000000, 16000000, 'goodwill', NULL, 'Balance adjustment', 3, 'sorry'),
             (1, 4, 'debit', -56500, 15943500, 'msg:1', NULL, 'SMS', 4, NULL),
             (1, 5, 'refund', 56500, 16000000, 'msg-void:1', NULL, 'SMS not sent', 5, NULL),
             (1, 6, 'debit', -2000000, 14000000, 'msg:2', NULL, 'SMS', 6, NULL),
             (1, 7, 'refund', -10000000, 4000000, 'stripe-refund:ch_8:1000', 8, 'refund', 7, NULL),
             (1, 8, 'credit', 10000000, 14000000, 'stripe-payment:pi_9', 9, 'top-up by saved card', 8, NULL),
             (1, 9, 'adjustment', -500000, 13500000, 'fix', NULL, 'Balance adjustment', 9, 'fix'),
             (3, 1, 'credit', 1000000, 1000000, 'opening', NULL, 'opening', 1, NULL),
             (3, 2, 'refund', -3000000, -2000000, 'stripe-refund:ch_10:300', 10, 'refund', 2, NULL);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES
             (1, 13500000, 9, 0), (2, 0, 0, 0), (3, -2000000, 2, 0);",
    );
    let migrated = run_cli(&directory, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    let verified = run_cli(&directory, &["verify"]);
    assert!(
        verified.status.success(),
        "every row's funding and every grant agree: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // Balances unchanged; the grants sum to them.
    assert_eq!(
        directory.texts("SELECT grants FROM account_balances ORDER BY account_id"),
        vec![
            Some("1:3500000,8:10000000".to_string()),
            Some(String::new()),
            Some("0:-2000000".to_string()),
        ]
    );
    assert_eq!(
        directory.number("SELECT SUM(balance) FROM account_balances"),
        13_500_000 - 2_000_000
    );
    assert_eq!(
        directory.texts("SELECT funded_by FROM transactions WHERE account_id = 1 ORDER BY seq"),
        vec![
            None,
            None,
            None,
            // The promotional adjustment is spent first...
            Some("3:r:56500".to_string()),
            // ...and given back to, exactly, by the void.
            Some("3:r:-56500".to_string()),
            Some("3:r:1000000;1:p:1000000".to_string()),
            // The refund takes its own order's credit.
            Some("2:p:10000000".to_string()),
            None,
            Some("1:p:500000".to_string()),
        ]
    );
    assert_eq!(
        directory.texts(
            "SELECT id || ':' || category || ':' || source FROM credit_grants ORDER BY account_id, id"
        ),
        vec![
            Some("1:paid:access".to_string()),
            Some("2:paid:top_up".to_string()),
            Some("3:promotional:adjustment".to_string()),
            Some("8:paid:buy".to_string()),
            Some("1:paid:migration".to_string()),
        ]
    );
    // Again: nothing more to make.
    let again = run_cli(&directory, &["migrate"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("up to date"),
        "{again:?}"
    );
    let shown = run_cli(&directory, &["accounts", "show", "3"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("grant 0") && shown.contains("owed"),
        "what account 3 owes is listed: {shown}"
    );
}

on_both_stores!(a_write_refused_for_anothers_grant_at_its_place_takes_that_grants_terms);
/// Another process's credit takes the ledger position the actor's own
/// paid credit was written at: the guard refuses the actor's write and says
/// what is left of each grant. The grant at that position is the other
/// process's (promotional), not the one the refused write would have made:
/// the actor must not take its own speculative terms for it. A debit after
/// draws on it as promotional credit, first.
async fn a_write_refused_for_anothers_grant_at_its_place_takes_that_grants_terms() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550409").await;
    let seed = core
        .registry
        .send(account, paid_credit(100_000, "seed"))
        .await
        .unwrap();
    assert_eq!(seed.entry.seq, 1);

    // Another process's promotional $1 at row 2, straight to the store:
    // this process's actor is not told.
    write_elsewhere(
        &core,
        &seed.entry,
        1_000_000,
        Category::Promotional,
        ("1:100000", "1:100000,2:1000000"),
    )
    .await;

    // The actor's paid $0.50, computed at row 2, is refused and written at
    // row 3.
    let paid = core
        .registry
        .send(
            account,
            adjust(500_000, "paid-here", Some(Category::Paid), None, None),
        )
        .await
        .unwrap();
    assert_eq!(paid.entry.seq, 3);
    // Promotional first, then the oldest paid.
    let spent = core
        .registry
        .send(account, message_debit(1_200_000, 1))
        .await
        .unwrap();
    assert_eq!(
        draws(&spent.entry),
        vec![
            (2, "promotional", 1_000_000),
            (1, "paid", 100_000),
            (3, "paid", 100_000)
        ]
    );
    core.shutdown().await;
    assert_verified(&directory);
}

/// Another process's credit of `micros` in `category`, written straight to
/// the store at the row after `last` (this process's actors are not told),
/// the balance row's grants going from `grants.0` to `grants.1`.
async fn write_elsewhere(
    core: &Core,
    last: &LedgerEntry,
    micros: i64,
    category: Category,
    grants: (&str, &str),
) {
    write_elsewhere_expiring(core, last, micros, category, grants, None).await;
}

/// As [`write_elsewhere`], the grant expiring at `expires_at_ms`.
async fn write_elsewhere_expiring(
    core: &Core,
    last: &LedgerEntry,
    micros: i64,
    category: Category,
    grants: (&str, &str),
    expires_at_ms: Option<i64>,
) {
    let account = last.account_id;
    let before = core
        .store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .unwrap();
    let mut next = before;
    next.seq = before.seq + 1;
    next.balance = Money::from_micros(before.balance.micros() + micros);
    let mut entry = last.clone();
    entry.seq = next.seq;
    entry.kind = TransactionKind::Adjustment;
    entry.amount = Money::from_micros(micros);
    entry.balance_after = next.balance;
    entry.idempotency_key = format!("elsewhere-{}", next.seq).as_str().into();
    entry.description = "Balance adjustment".into();
    entry.reason = Some(Box::new("given elsewhere".into()));
    entry.funded_by = grants::Funding::NONE;
    let (done, answer) = tokio::sync::oneshot::channel();
    core.store
        .ledger()
        .submit(sms_credit_actors::store::LedgerWrite {
            funded_by: None,
            entry,
            previous: before,
            next,
            grants: Arc::from(grants.1),
            previous_grants: Arc::from(grants.0),
            generation: core.store.next_generation(),
            done,
            submitted_at: std::time::Instant::now(),
            outbox: Some(Box::new(sms_credit_actors::store::Outbox {
                grant: Some(grants::CreditGrant {
                    id: next.seq,
                    category,
                    source: GrantSource::Adjustment,
                    order_id: None,
                    amount: Money::from_micros(micros),
                    priority: Priority::new(50).unwrap(),
                    granted_at_ms: NOW_MS,
                    expires_at_ms,
                }),
                ..Default::default()
            })),
        })
        .unwrap();
    answer.await.unwrap().unwrap();
}

on_both_stores!(
    an_actor_that_missed_anothers_grant_reads_the_account_before_saying_nothing_expired
);
/// The sweep's question to an actor that missed another process's write
/// (a note dropped, or ignored while a write of its own was in flight): the
/// grant that write made has expired, and the actor, which remembers none,
/// reads the account before it answers, so the expiry row is written.
async fn an_actor_that_missed_anothers_grant_reads_the_account_before_saying_nothing_expired() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550414").await;
    let seed = core
        .registry
        .send(account, paid_credit(100_000, "seed"))
        .await
        .unwrap();
    write_elsewhere_expiring(
        &core,
        &seed.entry,
        1_000_000,
        Category::Promotional,
        ("1:100000", "1:100000,2:1000000"),
        Some(NOW_MS + 60_000),
    )
    .await;
    clock.advance_ms(120_000);
    core.registry
        .send(account, sms_credit_actors::ExpireDue)
        .await
        .unwrap();
    let read = core
        .store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (read.seq, read.balance.micros()),
        (3, 100_000),
        "grant 2 expired"
    );
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(expiry_rows_a_store_keeps_refusing_are_answered_as_failed_not_tried_for_ever);
/// A store that refuses every write: the sweep's question is answered as
/// failed after a few tries (never retried for ever), so are the messages
/// behind it, and once the store takes writes again the expiry is written.
async fn expiry_rows_a_store_keeps_refusing_are_answered_as_failed_not_tried_for_ever() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550415").await;
    core.registry
        .send(account, paid_credit(100_000, "seed"))
        .await
        .unwrap();
    core.registry
        .send(
            account,
            adjust(
                1_000_000,
                "expiring",
                Some(Category::Promotional),
                None,
                Some(NOW_MS + 60_000),
            ),
        )
        .await
        .unwrap();
    clock.advance_ms(120_000);
    core.store.fail_next_commits_for_testing(1_000_000);
    let asked = tokio::time::timeout(
        Duration::from_secs(20),
        core.registry.send(account, sms_credit_actors::ExpireDue),
    )
    .await
    .expect("ExpireDue answered within 20 s while every commit fails");
    assert!(asked.is_err(), "{asked:?}");
    let spent = tokio::time::timeout(
        Duration::from_secs(20),
        core.registry.send(account, message_debit(1_000, 1)),
    )
    .await
    .expect("a debit answered within 20 s while every commit fails");
    assert!(spent.is_err(), "{spent:?}");
    core.store.fail_next_commits_for_testing(0);
    core.registry
        .send(account, sms_credit_actors::ExpireDue)
        .await
        .unwrap();
    let read = core
        .store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.balance.micros(), 100_000, "the promotional $1 expired");
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_balance_read_after_a_failed_write_never_keeps_that_writes_grants);
/// A write that failed, and its reload too, leaves the actor with the
/// grants it computed for a row that never was; another process then
/// writes its own grant at that row. A balance read (the snapshot alone)
/// must not take the failed write's grants for the other's: the expiry
/// the failed write's grant had is not the other grant's.
async fn a_balance_read_after_a_failed_write_never_keeps_that_writes_grants() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550410").await;
    let seed = core
        .registry
        .send(account, paid_credit(100_000, "seed"))
        .await
        .unwrap();
    core.store.fail_next_commits_for_testing(1);
    core.store.fail_next_reads_for_testing(1);
    let failed = core
        .registry
        .send(
            account,
            adjust(
                5_000_000,
                "lost",
                Some(Category::Promotional),
                None,
                Some(NOW_MS + 3_600_000),
            ),
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    write_elsewhere(
        &core,
        &seed.entry,
        5_000_000,
        Category::Paid,
        ("1:100000", "1:100000,2:5000000"),
    )
    .await;
    let read = core
        .registry
        .send(account, sms_credit_actors::GetBalance)
        .await
        .unwrap();
    assert_eq!((read.seq, read.balance.micros()), (2, 5_100_000));

    // Past the failed write's expiry: nothing expires (grant 2 is paid and
    // never expires), and the debit draws on the paid credit.
    clock.advance_ms(2 * 3_600_000);
    let spent = core
        .registry
        .send(account, message_debit(1_000, 1))
        .await
        .unwrap();
    assert_eq!(spent.entry.seq, 3, "no expiry row before it");
    assert_eq!(draws(&spent.entry), vec![(1, "paid", 1_000)]);
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(
    an_expiry_is_written_once_across_two_instances_and_neither_draws_on_the_expired_grant
);
/// Two instances on one database and one clock. A moment before its
/// expiry, the first spends the promotional grant; at the moment, the
/// second's debit writes the expiry row and draws on the paid credit; the
/// first, whatever it has heard of the second's rows by then, never draws
/// on the expired grant nor expires it again.
async fn an_expiry_is_written_once_across_two_instances_and_neither_draws_on_the_expired_grant() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let first = core_at(&directory, &clock);
    let second = core_at(&directory, &clock);
    let account = new_account(&first, "+14155550413").await;
    let expires_at = NOW_MS + 1_000;
    first
        .registry
        .send(
            account,
            adjust(2_000_000, "welcome", None, None, Some(expires_at)),
        )
        .await
        .unwrap();
    first
        .registry
        .send(account, paid_credit(1_000_000, "top-up"))
        .await
        .unwrap();
    clock.set_ms(expires_at - 1);
    let before = first
        .registry
        .send(account, message_debit(100_000, 1))
        .await
        .unwrap();
    assert_eq!(draws(&before.entry), vec![(1, "promotional", 100_000)]);

    clock.set_ms(expires_at);
    let on_second = second
        .registry
        .send(account, message_debit(500_000, 2))
        .await
        .unwrap();
    assert_eq!(on_second.entry.seq, 5, "the expiry is row 4");
    assert_eq!(draws(&on_second.entry), vec![(2, "paid", 500_000)]);
    let on_first = first
        .registry
        .send(account, message_debit(200_000, 3))
        .await
        .unwrap();
    assert_eq!(on_first.entry.seq, 6);
    assert_eq!(draws(&on_first.entry), vec![(2, "paid", 200_000)]);
    assert_eq!(on_first.entry.balance_after, Money::from_micros(300_000));
    // What is left is the paid credit's, on either instance.
    for core in [&first, &second] {
        let refused = core.registry.send(account, message_debit(400_000, 4)).await;
        assert!(
            matches!(refused, Err(LedgerError::InsufficientCredit { .. })),
            "{refused:?}"
        );
    }
    first.shutdown().await;
    second.shutdown().await;
    assert_eq!(
        directory.texts(&format!(
            "SELECT seq || ':' || idempotency_key || ':' || amount FROM transactions
              WHERE account_id = {account} AND type = 'expiry'",
            account = account.0
        )),
        vec![Some("4:grant-expiry:1:4:-1900000".to_string())],
        "one expiry row"
    );
    assert_verified(&directory);
}

on_both_stores!(a_grant_made_and_a_grant_expired_are_told_to_the_hosts_webhooks);
/// `credit.granted` for each grant a row makes, on its terms;
/// `credit.expired` for each expiry row, with what expired.
async fn a_grant_made_and_a_grant_expired_are_told_to_the_hosts_webhooks() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = crate::webhooks::webhook_settings(&directory);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let receiver = crate::webhook_receiver::Receiver::start().await;
    let (_, secret) = crate::webhooks::add_endpoint(
        &app,
        &receiver.url,
        json!(["credit.granted", "credit.expired"]),
    )
    .await;
    receiver.trust(&secret);
    let account = app.create_account("+14155550414").await;
    let expires_at = NOW_MS + DAY_MS;
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": 2_000_000, "reason": "welcome",
                        "idempotency_key": "welcome", "priority": 10,
                        "expires_at": sms_credit_actors::clock::format_rfc3339_ms(expires_at)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let granted = receiver.accepted("credit.granted", 1).await;
    assert_eq!(
        granted[0].body["data"],
        json!({"account_id": account, "seq": 1, "balance_micros": 2_000_000,
               "grant_id": 1, "category": "promotional", "source": "adjustment",
               "order_id": null, "amount_micros": 2_000_000, "priority": 10,
               "expires_at": sms_credit_actors::clock::format_rfc3339_ms(expires_at)})
    );

    // At its expiry, the sweep or the next change, whichever comes first,
    // writes the expiry row (before that change's own).
    clock.set_ms(expires_at);
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": 1_000_000, "reason": "transfer",
                        "idempotency_key": "transfer", "category": "paid"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["transaction"]["seq"], 3, "{answer}");
    let expired = receiver.accepted("credit.expired", 1).await;
    assert_eq!(
        expired[0].body["data"],
        json!({"account_id": account, "seq": 2, "balance_micros": 0,
               "grant_id": 1, "expired_micros": 2_000_000,
               "expired_at": sms_credit_actors::clock::format_rfc3339_ms(expires_at)})
    );
    let granted = receiver.accepted("credit.granted", 2).await;
    let paid = granted
        .iter()
        .find(|received| received.body["data"]["grant_id"] == 3)
        .unwrap();
    assert_eq!(paid.body["data"]["category"], "paid");
    assert_eq!(paid.body["data"]["expires_at"], Value::Null);
    app.stop().await;
}

on_both_stores!(a_partly_spent_order_refunded_from_the_console_takes_back_its_unspent_credit_once);
/// The console's default: refund what is unspent of a partly spent order.
/// The credit comes off with Stripe's `charge.refunded`, from that order's
/// grant alone, in one row however often the event comes; the account
/// keeps its promotional credit and owes nothing.
async fn a_partly_spent_order_refunded_from_the_console_takes_back_its_unspent_credit_once() {
    let fake = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, order, intent) = paid_top_up(&app, &mut events, "+14155550415").await;
    let order_grant = grant_of_order(&app, account, order).await;
    let (status, body) = app.post_adjustment(account, -6_000_000, "spent").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post_adjustment(account, 2_000_000, "promo").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let unspent = unspent_of_order(&app, order).await;
    assert_eq!(unspent, 9_000_000);

    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": unspent, "reason": "unspent credit",
                        "idempotency_key": "console-unspent"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let refunded = fake.charge_refunded(
        &mut events,
        "ch_partly",
        &intent,
        1000,
        crate::fake_stripe::Listed::All,
    );
    for _ in 0..2 {
        assert_eq!(app.deliver(&refunded).await.0, StatusCode::OK);
    }
    let refunds: Vec<Value> = rows(&app, account)
        .await
        .into_iter()
        .filter(|row| row["type"] == "refund")
        .collect();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["amount_micros"], -9_000_000);
    assert_eq!(
        api_draws(&refunds[0]),
        vec![(order_grant, "paid".to_string(), 9_000_000)]
    );
    assert_eq!(app.balance_micros(account).await, 2_000_000);
    assert_eq!(unspent_of_order(&app, order).await, 0);
    let directory = app.stop().await;
    assert_verified(&directory);
}

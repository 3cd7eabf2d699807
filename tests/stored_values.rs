//! A value read back from the database that this release does not know is
//! an error that names its row, never read as some default: an unknown
//! order type is not "access" (which would credit the included credit), an
//! unknown discount type is not "fixed", an unknown message state or kind
//! is not "in progress" or "service message".

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::fake_stripe::EventFactory;
use crate::helpers::{TestApp, ADMIN_TOKEN};
use crate::stripe::{app_with_fake_stripe, create_code, start_access};
use crate::twilio::{account_with_balance, app_with_twilio};

fn assert_unknown_value(status: StatusCode, answer: &Value, names: &str) {
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["error"]["code"], "unknown_stored_value", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(names), "{message} should name {names}");
}

on_both_stores!(an_order_of_an_unknown_type_is_an_error_not_access);
async fn an_order_of_an_unknown_type_is_an_error_not_access() {
    let (app, _fake) = app_with_fake_stripe().await;
    let (account, order, session, customer) = start_access(&app, "+14155550900", None).await;
    app.directory.tamper(
        "orders",
        &format!("UPDATE orders SET order_type = 'gift' WHERE id = {order}"),
    );
    let mut events = EventFactory::new();
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_gift");
    let (status, answer) = app.deliver(&completed).await;
    assert_unknown_value(
        status,
        &answer,
        &format!("orders row {order}: unknown order_type 'gift'"),
    );
    let (_, view) = app.get_admin_account(account).await;
    assert_eq!(view["status"], "pending", "not activated");
    assert_eq!(view["balance_micros"], 0, "no included credit");
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/orders"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_unknown_value(status, &answer, "order_type 'gift'");
}

on_both_stores!(a_discount_code_of_an_unknown_type_is_an_error_not_a_fixed_discount);
async fn a_discount_code_of_an_unknown_type_is_an_error_not_a_fixed_discount() {
    let (app, fake) = app_with_fake_stripe().await;
    create_code(
        &app,
        json!({"code": "HALF", "type": "percent", "percent": 50, "max_uses": 3}),
    )
    .await;
    app.directory.tamper(
        "discount_codes",
        "UPDATE discount_codes SET discount_type = 'bogof' WHERE code = 'HALF'",
    );
    let (status, answer) = app
        .post_checkout_access("+14155550901", "hiker@example.com", Some("HALF"))
        .await;
    assert_unknown_value(status, &answer, "discount_type 'bogof'");
    assert!(fake.requests("/v1/checkout/sessions").is_empty());
    app.directory.tamper(
        "discount_codes",
        "UPDATE discount_codes SET discount_type = 'percent' WHERE code = 'HALF'",
    );
    let (_, codes) = app
        .request("GET", "/v1/admin/discount-codes", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        codes["discount_codes"][0]["current_uses"], 0,
        "the refused checkout took no use"
    );
}

on_both_stores!(a_message_of_an_unknown_state_or_kind_is_an_error);
async fn a_message_of_an_unknown_state_or_kind_is_an_error() {
    let (app, fake) = app_with_twilio().await;
    let account = account_with_balance(&app, "+14155550902", 5_000_000).await;
    let (status, sent) = app
        .post_message(json!({"account_id": account, "body": "storm", "idempotency_key": "k1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let id = sent["message"]["id"].as_i64().unwrap();

    app.directory.tamper(
        "messages",
        &format!("UPDATE messages SET state = 'lost' WHERE id = {id}"),
    );
    let (status, answer) = app
        .post_message(json!({"account_id": account, "body": "storm", "idempotency_key": "k1"}))
        .await;
    assert_unknown_value(
        status,
        &answer,
        &format!("messages row {id}: unknown state 'lost'"),
    );
    assert_eq!(fake.sent().len(), 1, "nothing sent again");

    app.directory.tamper(
        "messages",
        &format!("UPDATE messages SET state = 'sent', kind = 'promo' WHERE id = {id}"),
    );
    let (status, answer) = app
        .request("GET", "/v1/admin/reconciliation", Some(ADMIN_TOKEN), None)
        .await;
    assert_unknown_value(status, &answer, "kind 'promo'");
}

on_both_stores!(a_ledger_row_of_an_unknown_type_is_an_error);
async fn a_ledger_row_of_an_unknown_type_is_an_error() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550903").await;
    assert_eq!(
        app.post_adjustment(account, 1_000_000, "a").await.0,
        StatusCode::OK
    );
    app.directory.tamper(
        "transactions",
        &format!("UPDATE transactions SET type = 'bonus' WHERE account_id = {account}"),
    );
    let (status, answer) = app.get_transactions(account).await;
    assert_unknown_value(
        status,
        &answer,
        &format!("transactions row account {account} seq 1: unknown type 'bonus'"),
    );
}

on_both_stores!(a_consent_without_its_words_is_an_error_not_an_empty_text);
async fn a_consent_without_its_words_is_an_error_not_an_empty_text() {
    let (app, _fake) = app_with_fake_stripe().await;
    let account = app.create_account("+14155550931").await;
    app.directory.tamper(
        "auto_top_up_settings",
        &format!(
            "INSERT INTO auto_top_up_settings (account_id, enabled, threshold, amount, monthly_cap,
                     consent_at, consent_via, consent_text, updated_at)
             VALUES ({account}, 0, 2000000, 10000000, 50000000, 1, 'admin', NULL, 1)"
        ),
    );
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/auto-top-up"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_unknown_value(
        status,
        &answer,
        &format!("auto_top_up_settings row {account}: unknown consent_text 'NULL'"),
    );
}

on_both_stores!(a_feed_ticket_of_an_unknown_scope_is_an_error_not_a_feed);
async fn a_feed_ticket_of_an_unknown_scope_is_an_error_not_a_feed() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550904").await;
    let token = app.issue_token(account).await;
    let mut tickets = Vec::new();
    for (path, token) in [
        ("/v1/admin/feed-tickets".to_string(), ADMIN_TOKEN),
        (
            format!("/v1/accounts/{account}/feed-tickets"),
            token.as_str(),
        ),
    ] {
        let (status, issued) = app.request("POST", &path, Some(token), None).await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        tickets.push(issued["ticket"].as_str().unwrap().to_string());
    }
    app.directory.tamper(
        "feed_tickets",
        "UPDATE feed_tickets SET scope = 'owner' WHERE scope = 'admin'",
    );
    app.directory.tamper(
        "feed_tickets",
        "UPDATE feed_tickets SET account_id = NULL WHERE scope = 'account'",
    );
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/feed?ticket={}", tickets[0]),
            None,
            None,
        )
        .await;
    assert_unknown_value(status, &answer, "unknown scope 'owner'");
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/feed?ticket={}", tickets[1]),
            None,
            None,
        )
        .await;
    assert_unknown_value(status, &answer, "unknown scope 'account'");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("feed_tickets row "),
        "{answer}"
    );
}

/// A $10 top-up refunded $3 (taken back), then the refund's standing
/// tampered to one this release does not know: the app, the Stripe fake,
/// the events, the account, the PaymentIntent and the refund's id.
async fn refund_of_unknown_standing(
    phone: &str,
) -> (
    TestApp,
    crate::fake_stripe::FakeStripe,
    EventFactory,
    i64,
    String,
    String,
) {
    let (app, fake) = app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let (account, _, intent) = crate::refunds::paid_top_up(&app, &mut events, phone).await;
    let refund = fake.refund_in_dashboard(&intent, "ch_unknown", 300);
    let refund_id = refund["id"].as_str().unwrap().to_string();
    let refunded = fake.charge_refunded(
        &mut events,
        "ch_unknown",
        &intent,
        1000,
        crate::fake_stripe::Listed::All,
    );
    assert_eq!(app.deliver(&refunded).await.0, StatusCode::OK);
    assert_eq!(app.balance_micros(account).await, 12_000_000);
    app.directory.tamper(
        "stripe_refunds",
        &format!("UPDATE stripe_refunds SET standing = 'disputed' WHERE refund_id = '{refund_id}'"),
    );
    (app, fake, events, account, intent, refund_id)
}

on_both_stores!(a_refund_of_an_unknown_standing_is_an_error_not_a_refund_that_counts);
async fn a_refund_of_an_unknown_standing_is_an_error_not_a_refund_that_counts() {
    let (app, fake, mut events, account, _, refund_id) =
        refund_of_unknown_standing("+14155550906").await;
    // Its failure is not taken for a refund that never counted (nothing
    // given back) nor for one that does (given back): it is an error.
    let failed = events.refund_event("refund.failed", fake.fail_refund(&refund_id));
    let (status, answer) = app.deliver(&failed).await;
    assert_unknown_value(
        status,
        &answer,
        &format!("stripe_refunds row {refund_id}: unknown standing 'disputed'"),
    );
    assert_eq!(app.balance_micros(account).await, 12_000_000);
}

on_both_stores!(a_refund_of_an_unknown_standing_is_an_error_to_a_dispute_of_its_order);
/// What a dispute takes back is decided from every refund of the order:
/// one whose standing is unknown is an error, not a refund left out.
async fn a_refund_of_an_unknown_standing_is_an_error_to_a_dispute_of_its_order() {
    let (app, _fake, mut events, account, intent, refund_id) =
        refund_of_unknown_standing("+14155550907").await;
    let withdrawn = events.dispute(
        "charge.dispute.funds_withdrawn",
        "dp_unknown_standing",
        "ch_unknown",
        &intent,
        1000,
        "needs_response",
    );
    let (status, answer) = app.deliver(&withdrawn).await;
    assert_unknown_value(
        status,
        &answer,
        &format!("stripe_refunds row {refund_id}: unknown standing 'disputed'"),
    );
    assert_eq!(app.balance_micros(account).await, 12_000_000);
}

on_both_stores!(a_refund_told_mark_this_release_does_not_know_is_an_error_not_untold);
/// A refund whose row took nothing was told to the host on its own and
/// marked so; a mark tampered to a value this release does not know is an
/// error to the next event about the order (never read as "not told",
/// which would tell the host again), and to the order's view.
async fn a_refund_told_mark_this_release_does_not_know_is_an_error_not_untold() {
    let (app, fake) = app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let (account, order, intent) =
        crate::refunds::paid_top_up(&app, &mut events, "+14155550908").await;
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_told_mark",
        "ch_told_mark",
        &intent,
        1000,
        "needs_response",
    );
    assert_eq!(app.deliver(&disputed).await.0, StatusCode::OK);
    let refund = fake.refund_in_dashboard(&intent, "ch_told_mark", 300);
    let refund_id = refund["id"].as_str().unwrap().to_string();
    let created = events.refund_event("refund.created", refund.clone());
    assert_eq!(app.deliver(&created).await.0, StatusCode::OK);
    assert_eq!(
        app.directory.number(&format!(
            "SELECT told FROM stripe_refunds WHERE refund_id = '{refund_id}'"
        )),
        1
    );
    app.directory.tamper(
        "stripe_refunds",
        &format!("UPDATE stripe_refunds SET told = 2 WHERE refund_id = '{refund_id}'"),
    );
    let names = format!("stripe_refunds row {refund_id}: unknown told '2'");
    let (status, answer) = app
        .deliver(&events.refund_event("refund.updated", refund))
        .await;
    assert_unknown_value(status, &answer, &names);
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_unknown_value(status, &answer, &names);
    assert_eq!(app.balance_micros(account).await, 5_000_000);
}

on_both_stores!(a_sweep_mark_out_of_place_is_an_error_not_a_refund_that_counts);
/// The legacy sweep's marks belong to an order's legacy record: a refund
/// of Stripe's holding one was not written by this release, and is an
/// error naming it, to the order's view and to the next event about it.
async fn a_sweep_mark_out_of_place_is_an_error_not_a_refund_that_counts() {
    let (app, fake) = app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let (account, order, intent) =
        crate::refunds::paid_top_up(&app, &mut events, "+14155550909").await;
    let refund = fake.refund_in_dashboard(&intent, "ch_sweep_mark", 300);
    let refund_id = refund["id"].as_str().unwrap().to_string();
    let created = events.refund_event("refund.created", refund.clone());
    assert_eq!(app.deliver(&created).await.0, StatusCode::OK);
    app.directory.execute(&format!(
        "UPDATE stripe_refunds SET settled_at = 1 WHERE refund_id = '{refund_id}'"
    ));
    let names =
        format!("stripe_refunds row {refund_id}: unknown settled_at '1 on a counted record'");
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_unknown_value(status, &answer, &names);
    let (status, answer) = app
        .deliver(&events.refund_event("refund.updated", refund))
        .await;
    assert_unknown_value(status, &answer, &names);
    assert_eq!(app.balance_micros(account).await, 12_000_000);
}

on_both_stores!(a_stored_receipt_that_is_not_a_link_to_stripe_is_an_error_not_hidden);
/// A receipt is stored only once it is an `https` link: one that is not
/// (a hand edit) is an error naming its row, never a link on the holder's
/// page nor quietly left out.
async fn a_stored_receipt_that_is_not_a_link_to_stripe_is_an_error_not_hidden() {
    let (app, _fake) = app_with_fake_stripe().await;
    let mut events = EventFactory::new();
    let (account, _, token) =
        crate::stripe::active_account(&app, &mut events, "+14155550902").await;
    app.directory.tamper(
        "orders",
        &format!(
            "UPDATE orders SET receipt_url = 'javascript:alert(1)' WHERE account_id = {account}"
        ),
    );
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/payments"),
            Some(&token),
            None,
        )
        .await;
    assert_unknown_value(status, &answer, "unknown receipt_url");
}

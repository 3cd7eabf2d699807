//! Webhooks to the host application: endpoints managed by the admin, money
//! events committed with their change, delivered signed (verified by a real
//! receiver), retried with the same id, disabled on 410, replayed, and the
//! secret rotated with an overlap. On both stores.

use std::time::Duration;

use awc::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sms_credit_actors::clock::{Clock, ManualClock};

use crate::helpers::{fresh_directory, test_settings, TestApp, TestDatabase, ADMIN_TOKEN};
use crate::webhook_receiver::{Receiver, Reply};

/// Test settings with endpoints on loopback allowed.
pub fn webhook_settings(directory: &TestDatabase) -> sms_credit::config::Settings {
    let mut settings = test_settings(directory);
    settings.webhooks.allow_private = true;
    settings
}

/// Adds an endpoint; answers its id and secret.
pub async fn add_endpoint(app: &TestApp, url: &str, events: Value) -> (String, String) {
    let (status, body) = app
        .request(
            "POST",
            "/v1/admin/webhook-endpoints",
            Some(ADMIN_TOKEN),
            Some(json!({"url": url, "events": events, "description": "forecasts"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        body["secret"].as_str().unwrap().to_string(),
    )
}

/// The endpoint's tries, the latest first, once there are `count`.
async fn attempts(app: &TestApp, endpoint: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app
            .request(
                "GET",
                &format!("/v1/admin/webhook-endpoints/{endpoint}/deliveries"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let attempts = body["attempts"].as_array().unwrap().clone();
        if attempts.len() >= count {
            return attempts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for {count} tries: {attempts:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn send_test(app: &TestApp, id: &str) {
    let path = format!("/v1/admin/webhook-endpoints/{id}/test");
    let (status, body) = app.request("POST", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

async fn endpoint(app: &TestApp, id: &str) -> (StatusCode, Value) {
    app.request(
        "GET",
        &format!("/v1/admin/webhook-endpoints/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
}

async fn endpoints_are_managed_and_bad_input_is_refused() {
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.webhooks.allow_private = false;
    let app = TestApp::spawn_with(directory, settings).await;
    let path = "/v1/admin/webhook-endpoints";

    // Only the admin.
    let (status, _) = app.request("GET", path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.request("GET", path, Some("wrong"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad input names its field and makes nothing.
    for (body, code, field) in [
        (json!({}), "invalid_url", "url:"),
        (
            json!({"url": "http://hooks.example.com/in"}),
            "invalid_url",
            "url:",
        ),
        (
            json!({"url": "https://127.0.0.1/in"}),
            "invalid_url",
            "url:",
        ),
        (
            json!({"url": "https://169.254.169.254/latest"}),
            "invalid_url",
            "url:",
        ),
        (
            json!({"url": "https://[::1]:8443/in"}),
            "invalid_url",
            "url:",
        ),
        // NAT64 (the well-known prefix) reaches the IPv4 address inside it
        // from an IPv6-only host: the metadata service, a private network.
        (
            json!({"url": "https://[64:ff9b::a9fe:a9fe]/latest"}),
            "invalid_url",
            "url:",
        ),
        (
            json!({"url": "https://[64:ff9b::10.1.2.3]/in"}),
            "invalid_url",
            "url:",
        ),
        // A local-use NAT64 prefix (RFC 8215) is the operator's own: its
        // layout is unknown, so it is never public.
        (
            json!({"url": "https://[64:ff9b:1::a00:1]/in"}),
            "invalid_url",
            "url:",
        ),
        (
            json!({"url": "https://hooks.example.com", "events": ["balance.lo"]}),
            "invalid_events",
            "events:",
        ),
        (
            json!({"url": "https://hooks.example.com", "events": []}),
            "invalid_events",
            "events:",
        ),
    ] {
        let (status, answer) = app
            .request("POST", path, Some(ADMIN_TOKEN), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{answer}"
        );
    }
    let (status, answer) = app
        .request(
            "POST",
            path,
            Some(ADMIN_TOKEN),
            Some(json!({"url": "https://x.example", "colour": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (_, listed) = app.request("GET", path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(listed["endpoints"], json!([]));

    // Made, with its secret shown once.
    let (id, secret) =
        add_endpoint(&app, "https://hooks.example.com/in", json!(["balance.low"])).await;
    assert!(id.starts_with("we_"), "{id}");
    assert!(secret.starts_with("whsec_"), "{secret}");
    let (status, shown) = endpoint(&app, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["url"], "https://hooks.example.com/in");
    assert_eq!(shown["events"], json!(["balance.low"]));
    assert_eq!(shown["enabled"], true);
    let (_, listed) = app.request("GET", path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 1);
    let secret_body = secret.trim_start_matches("whsec_");
    for answer in [&shown, &listed] {
        assert!(
            !answer.to_string().contains(secret_body),
            "the secret is shown again: {answer}"
        );
    }

    // Changed.
    let (status, changed) = app
        .request(
            "PATCH",
            &format!("{path}/{id}"),
            Some(ADMIN_TOKEN),
            Some(json!({"events": ["*"], "enabled": false, "description": "paused"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["events"], json!(["*"]));
    assert_eq!(changed["enabled"], false);
    assert_eq!(changed["description"], "paused");
    assert_eq!(changed["url"], "https://hooks.example.com/in");
    let (status, answer) = app
        .request(
            "PATCH",
            &format!("{path}/{id}"),
            Some(ADMIN_TOKEN),
            Some(json!({"url": "ftp://x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        endpoint(&app, &id).await.1["url"],
        "https://hooks.example.com/in"
    );

    // Rotated: a new secret, shown once.
    let (status, rotated) = app
        .request(
            "POST",
            &format!("{path}/{id}/rotate-secret"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_ne!(rotated["secret"], secret.as_str());
    assert!(rotated["previous_secret_until"].as_str().is_some());

    // Bad replay input.
    for (body, code) in [
        (json!({}), "invalid_since"),
        (json!({"since": "yesterday"}), "invalid_since"),
        (json!({"since": "2099-01-01T00:00:00Z"}), "invalid_since"),
    ] {
        let (status, answer) = app
            .request(
                "POST",
                &format!("{path}/{id}/replay"),
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], code);
    }

    // Removed; then it is not found anywhere.
    let (status, _) = app
        .request("DELETE", &format!("{path}/{id}"), Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for (method, suffix) in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/test"),
        ("POST", "/rotate-secret"),
        ("GET", "/deliveries"),
    ] {
        let (status, answer) = app
            .request(
                method,
                &format!("{path}/{id}{suffix}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {suffix}: {answer}");
    }
    let (_, listed) = app.request("GET", path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(listed["endpoints"], json!([]));
}
on_both_stores!(endpoints_are_managed_and_bad_input_is_refused);

async fn balance_crossings_reach_a_verifying_receiver_once_each() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let app = TestApp::spawn_with(directory, settings).await;
    let receiver = Receiver::start().await;
    let other = Receiver::start().await;
    let (_, secret) = add_endpoint(
        &app,
        &receiver.url,
        json!(["balance.low", "balance.replenished", "balance.depleted"]),
    )
    .await;
    receiver.trust(&secret);
    let (other_id, other_secret) =
        add_endpoint(&app, &other.url, json!(["payment.succeeded"])).await;
    other.trust(&other_secret);

    let account = app.create_account("+14155550123").await;
    // 0 → $3.00: a new account reaches the $2.00 threshold (nothing: it was
    // never announced low); → $1.50: low; → $1.40: still low (nothing);
    // → $2.40: replenished; → $1.00: low.
    for (index, amount) in [3_000_000, -1_500_000, -100_000, 1_000_000, -1_400_000]
        .into_iter()
        .enumerate()
    {
        let (status, body) = app
            .post_adjustment(account, amount, &format!("adj-{index}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A retried adjustment makes no second event.
    let (status, body) = app.post_adjustment(account, -1_400_000, "adj-4").await;
    assert!(status.is_success(), "{body}");

    let received = receiver
        .wait_until("three balance events", |received| received.len() >= 3)
        .await;
    let seen: Vec<(String, i64, i64)> = received
        .iter()
        .map(|r| {
            (
                r.kind().to_string(),
                r.body["data"]["seq"].as_i64().unwrap(),
                r.body["data"]["balance_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut sorted = seen.clone();
    sorted.sort_by_key(|(_, seq, _)| *seq);
    assert_eq!(
        sorted,
        vec![
            ("balance.low".to_string(), 2, 1_500_000),
            ("balance.replenished".to_string(), 4, 2_400_000),
            ("balance.low".to_string(), 5, 1_000_000),
        ],
        "{seen:?}"
    );
    assert_eq!(received.len(), 3, "one delivery per event: {seen:?}");
    for delivery in &received {
        assert_eq!(delivery.verified_by, vec![0], "{delivery:?}");
        assert_eq!(delivery.body["data"]["account_id"], account);
        assert!(delivery.id.starts_with("evt_"));
        let created = delivery.body["created_at"].as_str().unwrap();
        assert!(
            created.starts_with("2026-11-21T") && created.ends_with('Z'),
            "{created}"
        );
    }
    let mut ids: Vec<&str> = received.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    // The other endpoint takes only payments: a test event reaches it,
    // and nothing else did.
    let (status, sent) = app
        .request(
            "POST",
            &format!("/v1/admin/webhook-endpoints/{other_id}/test"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let got = other.accepted("webhook_endpoint.test", 1).await;
    assert_eq!(got[0].id, sent["event_id"].as_str().unwrap());
    assert_eq!(got[0].verified_by, vec![0]);
    assert_eq!(other.received().len(), 1, "{:?}", other.received());
}
on_both_stores!(balance_crossings_reach_a_verifying_receiver_once_each);

on_both_stores!(balance_events_describe_the_balance_not_what_moved_it);
/// `balance.depleted` for any change that leaves less than one segment to
/// the account's own number (an adjustment to exactly $0, a refund taken
/// back), `balance.replenished` only for an account announced low: a new
/// account credited hears nothing.
async fn balance_events_describe_the_balance_not_what_moved_it() {
    let (_stripe, app, receiver) = stripe_app_with_receiver(json!([
        "balance.low",
        "balance.replenished",
        "balance.depleted"
    ]))
    .await;

    // A new account: $1, then $3 (never announced low: nothing), then an
    // adjustment to exactly $0 (low and depleted), then $5 (replenished).
    let account = app.create_account("+14155550131").await;
    for (index, amount) in [1_000_000, 2_000_000, -3_000_000, 5_000_000]
        .into_iter()
        .enumerate()
    {
        let (status, body) = app
            .post_adjustment(account, amount, &format!("describe-{index}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Access bought with $5 of included credit, refunded in full: the
    // credit taken back leaves $0 (low and depleted).
    let mut events = crate::fake_stripe::EventFactory::new();
    let (paid, _, _) = crate::stripe::active_account(&app, &mut events, "+14155550132").await;
    let refund = events.charge_refunded("ch_describe", &format!("pi_access_{paid}"), 2999, 2999);
    let (status, answer) = app.deliver(&refund).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(app.balance_micros(paid).await, 0);

    let received = receiver
        .wait_until("five balance events", |received| received.len() >= 5)
        .await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let mut seen: Vec<(i64, i64, String, i64)> = receiver
        .received()
        .iter()
        .map(|r| {
            (
                r.body["data"]["account_id"].as_i64().unwrap(),
                r.body["data"]["seq"].as_i64().unwrap(),
                r.kind().to_string(),
                r.body["data"]["balance_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (account, 3, "balance.depleted".to_string(), 0),
            (account, 3, "balance.low".to_string(), 0),
            (account, 4, "balance.replenished".to_string(), 5_000_000),
            (paid, 2, "balance.depleted".to_string(), 0),
            (paid, 2, "balance.low".to_string(), 0),
        ],
        "{received:?}"
    );
}

/// An account that has had $2.00 and is back at $0, so announced low:
/// its next credit to $2.00 or more is `balance.replenished`. Made before
/// the endpoints that must not hear of its own events.
async fn announced_low_account(app: &TestApp, phone: &str) -> i64 {
    let account = app.create_account(phone).await;
    for (amount, key) in [(2_000_000, "prime-up"), (-2_000_000, "prime-down")] {
        let (status, body) = app.post_adjustment(account, amount, key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    account
}

/// `/metrics` of a test app with a metrics token.
async fn metrics(app: &TestApp) -> String {
    let mut response = app
        .client
        .get(app.url("/metrics"))
        .insert_header(("Authorization", "Bearer metrics-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    String::from_utf8(response.body().await.unwrap().to_vec()).unwrap()
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn a_failing_receiver_is_retried_with_the_same_id_until_it_accepts() {
    let directory = fresh_directory();
    let mut settings = webhook_settings(&directory);
    settings.access.metrics_token = Some(sms_credit::config::Secret::new("metrics-token"));
    let clock = ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    // Nothing listens on the port yet: the first try is refused.
    let port = Receiver::free_port();
    let (endpoint_id, secret) = add_endpoint(
        &app,
        &format!("http://127.0.0.1:{port}/hooks"),
        json!(["balance.replenished"]),
    )
    .await;
    let account = announced_low_account(&app, "+14155550124").await;
    let (status, body) = app.post_adjustment(account, 5_000_000, "fill").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tries = attempts(&app, &endpoint_id, 1).await;
    assert_eq!(tries[0]["status_code"], Value::Null);
    assert!(
        tries[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("could not connect"),
        "{tries:?}"
    );
    let (_, shown) = endpoint(&app, &endpoint_id).await;
    assert!(shown["failing_since"].as_str().is_some(), "{shown}");
    let text = metrics(&app).await;
    assert_eq!(metric(&text, "sms_credit_webhook_pending"), 1, "{text}");
    assert_eq!(
        metric(
            &text,
            "sms_credit_webhook_deliveries_total{outcome=\"retried\"}"
        ),
        1
    );

    // Not again before its wait (about 5 s) is over.
    let receiver = Receiver::start_on_port(port);
    receiver.trust(&secret);
    receiver.plan(&[Reply::Status(500), Reply::Hang(Duration::from_secs(11))]);
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert!(receiver.received().is_empty());

    // 5 s on: a 500. 5 min on: no answer within the 10 s timeout. 30 min
    // on: accepted.
    clock.advance_ms(5_000);
    attempts(&app, &endpoint_id, 2).await;
    clock.advance_ms(300_000);
    let tries = attempts(&app, &endpoint_id, 3).await;
    assert_eq!(tries[0]["error"], "no answer within 10 s", "{tries:?}");
    clock.advance_ms(1_800_000);
    let tries = attempts(&app, &endpoint_id, 4).await;
    let statuses: Vec<Value> = tries
        .iter()
        .rev()
        .map(|t| t["status_code"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![Value::Null, json!(500), Value::Null, json!(200)]
    );
    assert!(tries[0]["error"].is_null(), "{tries:?}");
    let event_ids: Vec<&str> = tries
        .iter()
        .map(|t| t["event_id"].as_str().unwrap())
        .collect();
    assert!(
        event_ids.iter().all(|id| *id == event_ids[0]),
        "{event_ids:?}"
    );

    // Every request that reached the receiver was the same event, signed.
    let received = receiver
        .wait_until("the hung try recorded too", |received| received.len() >= 3)
        .await;
    for delivery in &received {
        assert_eq!(delivery.id, event_ids[0]);
        assert_eq!(delivery.kind(), "balance.replenished");
        assert_eq!(delivery.verified_by, vec![0]);
    }
    let (_, shown) = endpoint(&app, &endpoint_id).await;
    assert_eq!(shown["failing_since"], Value::Null, "{shown}");
    let text = metrics(&app).await;
    assert_eq!(metric(&text, "sms_credit_webhook_pending"), 0, "{text}");
    assert_eq!(
        metric(&text, "sms_credit_webhook_oldest_pending_seconds"),
        0
    );
    assert_eq!(
        metric(
            &text,
            "sms_credit_webhook_deliveries_total{outcome=\"retried\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            &text,
            "sms_credit_webhook_deliveries_total{outcome=\"delivered\"}"
        ),
        1
    );
    assert_eq!(shown["enabled"], true);
    // Delivered: not tried again, however long.
    clock.advance_ms(86_400_000);
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(attempts(&app, &endpoint_id, 0).await.len(), 4);
}
on_both_stores!(a_failing_receiver_is_retried_with_the_same_id_until_it_accepts);

async fn gone_disables_the_endpoint_and_tells_the_others() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let app = TestApp::spawn_with(directory, settings).await;
    let gone = Receiver::start().await;
    gone.plan(&[Reply::Status(410)]);
    let watcher = Receiver::start().await;
    let (gone_id, gone_secret) =
        add_endpoint(&app, &gone.url, json!(["balance.replenished"])).await;
    gone.trust(&gone_secret);
    let (_, watcher_secret) =
        add_endpoint(&app, &watcher.url, json!(["webhook_endpoint.disabled"])).await;
    watcher.trust(&watcher_secret);

    let account = announced_low_account(&app, "+14155550125").await;
    app.post_adjustment(account, 5_000_000, "fill").await;
    let told = watcher.accepted("webhook_endpoint.disabled", 1).await;
    assert_eq!(told[0].body["data"]["endpoint_id"], gone_id.as_str());
    assert_eq!(
        told[0].body["data"]["reason"],
        "the endpoint answered 410 Gone"
    );
    assert_eq!(told[0].verified_by, vec![0]);
    let (_, shown) = endpoint(&app, &gone_id).await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert_eq!(shown["disabled_reason"], "the endpoint answered 410 Gone");

    // Disabled: later events are not sent to it.
    app.post_adjustment(account, -4_000_000, "drain").await;
    app.post_adjustment(account, 4_000_000, "refill").await;
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gone.received().len(), 1);

    // Enabled again by the admin: its reason and failures are forgotten,
    // and the next event reaches it.
    let (status, enabled) = app
        .request(
            "PATCH",
            &format!("/v1/admin/webhook-endpoints/{gone_id}"),
            Some(ADMIN_TOKEN),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(enabled["failing_since"], Value::Null);
    app.post_adjustment(account, -4_000_000, "drain-2").await;
    app.post_adjustment(account, 4_000_000, "refill-2").await;
    let back = gone.accepted("balance.replenished", 1).await;
    assert_eq!(back[0].body["data"]["balance_micros"], 5_000_000);
}
on_both_stores!(gone_disables_the_endpoint_and_tells_the_others);

async fn a_rotated_secret_signs_beside_the_old_one_for_a_day() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let clock = ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let receiver = Receiver::start().await;
    let (id, old_secret) = add_endpoint(&app, &receiver.url, json!(["*"])).await;
    let (status, rotated) = app
        .request(
            "POST",
            &format!("/v1/admin/webhook-endpoints/{id}/rotate-secret"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    receiver.trust(&old_secret);
    receiver.trust(&new_secret);
    send_test(&app, &id).await;
    let first = receiver.accepted("webhook_endpoint.test", 1).await;
    assert_eq!(first[0].verified_by, vec![0, 1], "either secret verifies");

    clock.advance_ms(86_400_000);
    send_test(&app, &id).await;
    let both = receiver.accepted("webhook_endpoint.test", 2).await;
    assert_eq!(both[1].verified_by, vec![1], "after a day only the new one");
}
on_both_stores!(a_rotated_secret_signs_beside_the_old_one_for_a_day);

async fn replay_sends_the_same_events_again() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let app = TestApp::spawn_with(directory, settings).await;
    let receiver = Receiver::start().await;
    let (id, secret) = add_endpoint(
        &app,
        &receiver.url,
        json!(["balance.low", "balance.replenished"]),
    )
    .await;
    receiver.trust(&secret);
    // $3.00 (a new account: nothing), $1.00 (low), $3.00 (replenished).
    let account = app.create_account("+14155550126").await;
    app.post_adjustment(account, 3_000_000, "up").await;
    app.post_adjustment(account, -2_000_000, "down").await;
    app.post_adjustment(account, 2_000_000, "up-again").await;
    let first = receiver.wait_until("two events", |r| r.len() >= 2).await;

    let (status, replayed) = app
        .request(
            "POST",
            &format!("/v1/admin/webhook-endpoints/{id}/replay"),
            Some(ADMIN_TOKEN),
            Some(json!({"since": "2026-11-21T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    assert_eq!(replayed["replayed"], 2);
    let all = receiver.wait_until("the two again", |r| r.len() >= 4).await;
    let mut first_ids: Vec<&str> = first.iter().map(|r| r.id.as_str()).collect();
    let mut again: Vec<&str> = all[2..].iter().map(|r| r.id.as_str()).collect();
    first_ids.sort_unstable();
    again.sort_unstable();
    assert_eq!(first_ids, again, "the same ids");
    assert!(all.iter().all(|r| r.verified_by == vec![0]));
}
on_both_stores!(replay_sends_the_same_events_again);

/// The data of the accepted deliveries of `kind`, in `seq` order where
/// they have one.
fn data_of(received: &[crate::webhook_receiver::Received]) -> Vec<Value> {
    let mut data: Vec<Value> = received.iter().map(|r| r.body["data"].clone()).collect();
    data.sort_by_key(|data| data["seq"].as_i64().unwrap_or_default());
    data
}

/// A server paid through the fake Stripe (kept alive by the first value),
/// and a receiver of `events` on loopback that trusts its endpoint.
async fn stripe_app_with_receiver(
    events: Value,
) -> (crate::fake_stripe::FakeStripe, TestApp, Receiver) {
    let fake = crate::fake_stripe::FakeStripe::start().await;
    let directory = fresh_directory();
    let mut settings = crate::helpers::stripe_settings(&directory, &fake.base_url);
    settings.webhooks.allow_private = true;
    let app = TestApp::spawn_with(directory, settings).await;
    let receiver = Receiver::start().await;
    let (_, secret) = add_endpoint(&app, &receiver.url, events).await;
    receiver.trust(&secret);
    (fake, app, receiver)
}

async fn payments_and_refunds_through_stripe_make_their_events() {
    let (_stripe, app, receiver) = stripe_app_with_receiver(json!([
        "account.created",
        "payment.succeeded",
        "payment.refunded",
        "payment.failed"
    ]))
    .await;
    let mut events = crate::fake_stripe::EventFactory::new();

    // Access by Checkout: the account, then its payment with the included
    // credit.
    let (account, customer, token) =
        crate::stripe::active_account(&app, &mut events, "+14155550127").await;
    let created = receiver.accepted("account.created", 1).await;
    assert_eq!(created[0].body["data"]["account_id"], account);
    assert_eq!(created[0].body["data"]["status"], "pending");
    let paid = receiver.accepted("payment.succeeded", 1).await;
    let access = &paid[0].body["data"];
    assert_eq!(access["order_type"], "initial_access");
    assert_eq!(access["source"], "checkout");
    assert_eq!(access["amount_micros"], 29_990_000);
    assert_eq!(access["credited_micros"], 5_000_000);
    assert_eq!(
        (access["seq"].as_i64(), access["balance_micros"].as_i64()),
        (Some(1), Some(5_000_000))
    );

    // A top-up by Checkout, its completion said three times, and two
    // partial refunds each said twice: one event each.
    let (order, session) = app.start_top_up(account, &token).await;
    let completed = events.checkout_completed(&session, order, &customer, 1000, "pi_hook_1");
    let first_refund = events.charge_refunded("ch_hook_1", "pi_hook_1", 1000, 300);
    let second_refund = events.charge_refunded("ch_hook_1", "pi_hook_1", 1000, 500);
    for payload in [
        &completed,
        &first_refund,
        &completed,
        &second_refund,
        &first_refund,
        &completed,
        &second_refund,
    ] {
        let (status, answer) = app.deliver(payload).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let paid = receiver.accepted("payment.succeeded", 2).await;
    let top_up = &data_of(&paid)[1];
    assert_eq!(top_up["order_id"], order);
    assert_eq!(top_up["order_type"], "top_up");
    assert_eq!(top_up["amount_micros"], 10_000_000);
    assert_eq!(top_up["balance_micros"], 15_000_000);
    let refunded = data_of(&receiver.accepted("payment.refunded", 2).await);
    assert_eq!(refunded[0]["refunded_micros"], 3_000_000);
    assert_eq!(refunded[0]["total_refunded_micros"], 3_000_000);
    assert_eq!(refunded[0]["balance_micros"], 12_000_000);
    assert_eq!(refunded[1]["refunded_micros"], 2_000_000);
    assert_eq!(refunded[1]["total_refunded_micros"], 5_000_000);
    assert_eq!(refunded[1]["credit_taken_back_micros"], 2_000_000);
    assert_eq!(refunded[1]["balance_micros"], 10_000_000);

    // Another top-up, refunded $3 then $2 ($5 in all), whose events come
    // the other way round: the later total first, which lists both
    // refunds: one event per refund, newest first, as Stripe lists them.
    // The earlier total, which takes nothing back, says nothing: no total
    // goes down.
    let (later_order, later_session) = app.start_top_up(account, &token).await;
    let later_paid =
        events.checkout_completed(&later_session, later_order, &customer, 1000, "pi_hook_2");
    let three = events.charge_refunded("ch_hook_2", "pi_hook_2", 1000, 300);
    let five = events.charge_refunded("ch_hook_2", "pi_hook_2", 1000, 500);
    for payload in [&later_paid, &five, &three, &five, &three] {
        let (status, answer) = app.deliver(payload).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let refunded = data_of(&receiver.accepted("payment.refunded", 4).await);
    for (event, refunded_micros) in refunded[2..].iter().zip([2_000_000, 3_000_000]) {
        assert_eq!(event["order_id"], later_order);
        assert_eq!(event["refunded_micros"], refunded_micros);
        assert_eq!(event["credit_taken_back_micros"], refunded_micros);
        assert_eq!(event["total_refunded_micros"], 5_000_000);
    }

    // A Checkout whose payment failed.
    let (failed_order, failed_session) = app.start_top_up(account, &token).await;
    let failed = events.checkout_failed(&failed_session, failed_order);
    for _ in 0..2 {
        assert_eq!(app.deliver(&failed).await.0, StatusCode::OK);
    }
    let failures = receiver.accepted("payment.failed", 1).await;
    assert_eq!(failures[0].body["data"]["order_id"], failed_order);

    // Every delivery verified, one per event.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let all = receiver.received();
    assert_eq!(
        all.len(),
        9,
        "{:?}",
        all.iter().map(|r| r.kind()).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|r| r.verified_by == vec![0]));
}
on_both_stores!(payments_and_refunds_through_stripe_make_their_events);

async fn auto_top_ups_and_messages_make_their_events() {
    use crate::auto_top_up::{adjust_to, burst, put_auto, setup, wait_for_attempts, Setup};
    use crate::fake_stripe::ChargeMode;
    let Setup {
        app,
        stripe,
        mut events,
        clock,
        ..
    } = setup().await;
    let receiver = Receiver::start().await;
    let (_, secret) = add_endpoint(
        &app,
        &receiver.url,
        json!([
            "payment.succeeded",
            "payment.failed",
            "auto_top_up.failed",
            "auto_top_up.disabled",
            "balance.depleted"
        ]),
    )
    .await;
    receiver.trust(&secret);
    let (account, _, token) =
        crate::stripe::active_account(&app, &mut events, "+14155550128").await;

    // A message that leaves less than one segment's price: depleted, once.
    adjust_to(&app, account, 100_000, "to-0.10").await;
    assert_eq!(burst(&app, account, "m", 1).await, 1);
    let depleted = receiver.accepted("balance.depleted", 1).await;
    assert_eq!(depleted[0].body["data"]["balance_micros"], 100_000 - 56_500);

    // Auto top-up on: it charges the saved card.
    adjust_to(&app, account, 2_100_000, "to-2.10").await;
    let (status, body) = put_auto(&app, account, &token, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(burst(&app, account, "a", 2).await, 2);
    let paid = receiver
        .wait_until("the auto top-up's payment", |received| {
            received.iter().any(|r| {
                r.kind() == "payment.succeeded" && r.body["data"]["source"] == "auto_top_up"
            })
        })
        .await;
    let auto = paid
        .iter()
        .find(|r| r.body["data"]["source"] == "auto_top_up")
        .unwrap();
    assert_eq!(auto.body["data"]["order_type"], "auto_top_up");
    assert!(
        auto.body["data"]["card"]["last4"].is_string(),
        "{:?}",
        auto.body
    );

    // Declined three times (with the waits between): three failures, the
    // last one turning it off.
    stripe.set_charge_mode(ChargeMode::Decline);
    let balance = app.balance_micros(account).await;
    adjust_to(&app, account, 2_100_000.min(balance), "back-to-2.10").await;
    // From $2.10, two messages take it below $2.00; later ones keep it there.
    for (round, (wait_ms, messages)) in [(0, 2), (3_600_000, 1), (6 * 3_600_000, 1)]
        .into_iter()
        .enumerate()
    {
        clock.advance_ms(wait_ms);
        assert_eq!(
            burst(&app, account, &format!("d{round}"), messages).await,
            messages
        );
        wait_for_attempts(&app, account, &token, |attempts| {
            attempts.len() == round + 2
                && attempts[0]["status"] != "charging"
                && attempts[0]["status"] != "pending"
        })
        .await;
    }
    let failed = receiver.accepted("auto_top_up.failed", 3).await;
    let next: Vec<bool> = failed
        .iter()
        .map(|r| r.body["data"]["next_try_at"].is_string())
        .collect();
    assert_eq!(next.iter().filter(|has| **has).count(), 2, "{next:?}");
    let disabled = receiver.accepted("auto_top_up.disabled", 1).await;
    assert_eq!(disabled[0].body["data"]["reason"], "failures");
    let declined = receiver.accepted("payment.failed", 3).await;
    assert!(declined
        .iter()
        .all(|r| r.body["data"]["order_type"] == "auto_top_up"));
    assert!(receiver.received().iter().all(|r| r.verified_by == vec![0]));
}
on_both_stores!(auto_top_ups_and_messages_make_their_events);

/// The CLI's answer as JSON, after checking it succeeded.
fn cli_json(directory: &TestDatabase, arguments: &[&str]) -> Value {
    let output = crate::helpers::run_cli(directory, arguments);
    assert!(
        output.status.success(),
        "{arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn endpoints_are_managed_from_the_command_line() {
    let directory = fresh_directory();
    // Bad input names the field, and makes nothing.
    for (arguments, says) in [
        (
            vec!["webhooks", "add", "http://hooks.example.com/in"],
            "url:",
        ),
        (vec!["webhooks", "add", "https://10.0.0.1/in"], "url:"),
        (
            vec![
                "webhooks",
                "add",
                "https://hooks.example.com/in",
                "--events",
                "balance.lo",
            ],
            "events:",
        ),
    ] {
        let output = crate::helpers::run_cli(&directory, &arguments);
        assert!(!output.status.success(), "{arguments:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{arguments:?}: {stderr}");
    }
    assert_eq!(
        cli_json(&directory, &["webhooks", "list", "--json"]),
        json!({"endpoints": []})
    );

    let added = cli_json(
        &directory,
        &[
            "webhooks",
            "add",
            "https://hooks.example.com/in",
            "--events",
            "balance.low,payment.succeeded",
            "--json",
        ],
    );
    let id = added["id"].as_str().unwrap().to_string();
    let secret = added["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(added["events"], json!(["balance.low", "payment.succeeded"]));

    // People's output names it, and never the secret again.
    let listed = crate::helpers::run_cli(&directory, &["webhooks", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(&id) && text.contains("https://hooks.example.com/in"),
        "{text}"
    );
    let shown = crate::helpers::run_cli(&directory, &["webhooks", "show", &id]);
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(!text.contains(&secret[6..]) && !shown_text.contains(&secret[6..]));

    assert_eq!(
        cli_json(&directory, &["webhooks", "disable", &id, "--json"])["enabled"],
        false
    );
    assert_eq!(
        cli_json(&directory, &["webhooks", "enable", &id, "--json"])["enabled"],
        true
    );
    let rotated = cli_json(&directory, &["webhooks", "rotate-secret", &id, "--json"]);
    assert_ne!(rotated["secret"], secret.as_str());
    let test = cli_json(&directory, &["webhooks", "test", &id, "--json"]);
    assert!(test["event_id"].as_str().unwrap().starts_with("evt_"));
    let replayed = cli_json(
        &directory,
        &[
            "webhooks",
            "replay",
            &id,
            "--since",
            "2020-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(
        replayed["replayed"], 0,
        "only test events so far, never replayed"
    );
    assert_eq!(
        cli_json(&directory, &["webhooks", "deliveries", &id, "--json"])["attempts"],
        json!([])
    );
    let output = crate::helpers::run_cli(
        &directory,
        &["webhooks", "replay", &id, "--since", "last week"],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("RFC 3339"));

    assert_eq!(
        cli_json(&directory, &["webhooks", "remove", &id, "--json"])["removed"],
        true
    );
    let output = crate::helpers::run_cli(&directory, &["webhooks", "show", &id]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    assert_eq!(
        cli_json(&directory, &["webhooks", "list", "--json"]),
        json!({"endpoints": []})
    );
}
on_both_stores!(sync endpoints_are_managed_from_the_command_line);

async fn an_endpoint_failing_for_three_days_is_disabled() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let clock = ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let failing = Receiver::start().await;
    failing.plan(&[Reply::Status(500); 20]);
    let watcher = Receiver::start().await;
    let (failing_id, _) = add_endpoint(&app, &failing.url, json!(["balance.replenished"])).await;
    let (_, watcher_secret) =
        add_endpoint(&app, &watcher.url, json!(["webhook_endpoint.disabled"])).await;
    watcher.trust(&watcher_secret);
    let account = announced_low_account(&app, "+14155550129").await;
    app.post_adjustment(account, 5_000_000, "fill").await;
    // Tried at 0, then after 5 s, 5 min, 30 min, 2 h, 5 h and 10 h six times:
    // twelve tries over 67 h 35 min, every one failing.
    let mut tries = 1;
    attempts(&app, &failing_id, tries).await;
    for wait_ms in [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000]
        .into_iter()
        .chain([36_000_000; 6])
    {
        let (_, shown) = endpoint(&app, &failing_id).await;
        assert_eq!(
            shown["enabled"], true,
            "disabled after {tries} tries: {shown}"
        );
        clock.advance_ms(wait_ms);
        tries += 1;
        attempts(&app, &failing_id, tries).await;
    }
    let told = watcher.accepted("webhook_endpoint.disabled", 1).await;
    assert_eq!(
        told[0].body["data"]["reason"],
        "every delivery failed for three days"
    );
    let (_, shown) = endpoint(&app, &failing_id).await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert_eq!(
        shown["disabled_reason"],
        "every delivery failed for three days"
    );
    // Given up: never tried again.
    clock.advance_ms(86_400_000);
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(attempts(&app, &failing_id, 0).await.len(), 12);
    assert_eq!(failing.received().len(), 12);
}
on_both_stores!(an_endpoint_failing_for_three_days_is_disabled);

/// A running server process's admin API.
struct Admin {
    client: awc::Client,
    base: String,
}

impl Admin {
    fn of(server: &crate::helpers::ServerProcess) -> Admin {
        Admin {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(5))
                .finish(),
            base: server.base_url.clone(),
        }
    }

    /// The answer, or `None` when the server did not answer.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(StatusCode, Value)> {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")));
        let mut response = match body {
            Some(body) => request.send_json(&body).await.ok()?,
            None => request.send().await.ok()?,
        };
        let bytes = response.body().limit(16 * 1024 * 1024).await.ok()?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some((response.status(), json))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, body).await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body
    }

    /// Sends a one-segment message to the account's own number, as the
    /// host application does; the answer, or `None` when the server did
    /// not answer.
    async fn message(&self, account: i64, key: &str) -> Option<(StatusCode, Value)> {
        let mut response = self
            .client
            .post(format!("{}/v1/messages", self.base))
            .insert_header((
                "Authorization",
                format!("Bearer {}", crate::helpers::API_KEY),
            ))
            .send_json(&json!({"account_id": account, "body": "forecast", "idempotency_key": key}))
            .await
            .ok()?;
        let json = response.json::<Value>().await.unwrap_or(Value::Null);
        Some((response.status(), json))
    }

    /// Waits (up to 30 s: a killed instance's reservations are recovered
    /// once it has been silent for the instance timeout) until none of the
    /// account's messages is still reserved.
    async fn no_message_reserved(&self, account: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listed = self
                .ok(
                    "GET",
                    &format!("/v1/admin/accounts/{account}/messages"),
                    None,
                )
                .await;
            let reserved = listed["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|message| message["state"] == "reserved")
                .count();
            if reserved == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "account {account}: {reserved} messages still reserved after 30 s"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (seq, balance after) of every ledger row of the account.
    async fn ledger(&self, account: i64) -> Vec<(i64, i64)> {
        let mut rows = Vec::new();
        loop {
            let after = rows.last().map_or(0, |(seq, _)| *seq);
            let page = self
                .ok(
                    "GET",
                    &format!(
                        "/v1/admin/accounts/{account}/transactions?after_seq={after}&limit=1000"
                    ),
                    None,
                )
                .await;
            let page = page["transactions"].as_array().unwrap().clone();
            if page.is_empty() {
                return rows;
            }
            rows.extend(page.iter().map(|row| {
                (
                    row["seq"].as_i64().unwrap(),
                    row["balance_after_micros"].as_i64().unwrap(),
                )
            }));
        }
    }
}

/// The balance events a ledger makes: (account, seq, type), crossing the
/// $2.00 threshold down (`balance.low`) or up (`balance.replenished`, once
/// the account has had the threshold, so was announced low).
fn crossings(account: i64, ledger: &[(i64, i64)]) -> Vec<(i64, i64, String)> {
    let threshold = 2_000_000;
    let mut before = 0;
    let mut reached = false;
    let mut events = Vec::new();
    for &(seq, after) in ledger {
        if before >= threshold && after < threshold {
            events.push((account, seq, "balance.low".to_string()));
        }
        if before < threshold && after >= threshold && reached {
            events.push((account, seq, "balance.replenished".to_string()));
        }
        reached |= after >= threshold;
        before = after;
    }
    events
}

const WEBHOOKS_ON: [(&str, &str); 1] = [("SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE", "true")];

/// A receiver of the balance events of a server process, trusting its
/// endpoint's secret.
async fn balance_receiver(admin: &Admin) -> Receiver {
    let receiver = Receiver::start().await;
    let body = json!({"url": receiver.url, "events": ["balance.low", "balance.replenished"]});
    let added = admin
        .ok("POST", "/v1/admin/webhook-endpoints", Some(body))
        .await;
    receiver.trust(added["secret"].as_str().unwrap());
    receiver
}

fn a_killed_server_loses_no_event_and_sends_none_for_an_uncommitted_change() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    actix_rt::System::new().block_on(async {
        let directory = fresh_directory();
        let fake = crate::fake_twilio::FakeTwilio::start().await;
        let mut env = crate::helpers::process_env(&fake.base_url, None);
        env.extend(WEBHOOKS_ON);
        let server = crate::helpers::ServerProcess::start(&directory, &env);
        let admin = Admin::of(&server);
        let receiver = balance_receiver(&admin).await;
        // Sixteen accounts, two per writer. The first four writers move
        // theirs ($1.00) up by $1.50 and back down by adjustments; the
        // other four move theirs ($1.9735) up by an adjustment of $0.0565
        // and back down by a message (one segment, $0.0565): every change
        // crosses the $2.00 threshold, until the server is killed under
        // them.
        let mut accounts = Vec::new();
        for index in 0..16 {
            let body = json!({"phone": format!("+1415555{:04}", 2000 + index)});
            let id = admin.ok("POST", "/v1/admin/accounts", Some(body)).await["id"].as_i64().unwrap();
            let start = if index < 8 { 1_000_000 } else { 1_973_500 };
            let body = json!({"amount_micros": start, "reason": "start", "idempotency_key": "start"});
            admin.ok("POST", &format!("/v1/admin/accounts/{id}/adjustments"), Some(body)).await;
            accounts.push(id);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for writer in 0..8usize {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            let mine = accounts[writer * 2..writer * 2 + 2].to_vec();
            let admin = Admin::of(&server);
            writers.push(actix_rt::spawn(async move {
                let messages = writer >= 4;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let account = mine[n % 2];
                    let down = !(n / 2).is_multiple_of(2);
                    let key = format!("w{writer}-{n}");
                    n += 1;
                    let answer = if messages && down {
                        admin.message(account, &key).await
                    } else {
                        let amount = match (messages, down) {
                            (true, _) => 56_500,
                            (false, false) => 1_500_000,
                            (false, true) => -1_500_000,
                        };
                        let body = json!({"amount_micros": amount, "reason": "burst", "idempotency_key": key});
                        admin.call("POST", &format!("/v1/admin/accounts/{account}/adjustments"), Some(body)).await
                    };
                    match answer {
                        Some((status, _)) if status.is_success() => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => actix_rt::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        while answered.load(Ordering::Relaxed) < 300 {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }

        // Started again: what the ledger holds is what the receiver gets,
        // once the messages the killed server left reserved are given back
        // (their rows cross too).
        let server = crate::helpers::ServerProcess::start(&directory, &env);
        let admin = Admin::of(&server);
        for &account in &accounts[8..] {
            admin.no_message_reserved(account).await;
        }
        let mut expected = BTreeSet::new();
        for &account in &accounts {
            expected.extend(crossings(account, &admin.ledger(account).await));
        }
        // Every answered adjustment crossed, but an account's first climb
        // past $2.00 is no event (it was never announced low).
        assert!(
            expected.len() >= 300 - accounts.len(),
            "every answered adjustment crossed: {}",
            expected.len()
        );
        let received = receiver
            .wait_until("every committed crossing", |received| {
                let got: BTreeSet<(i64, i64, String)> = received.iter().map(crossing_of).collect();
                expected.is_subset(&got)
            })
            .await;
        let got: BTreeSet<(i64, i64, String)> = received.iter().map(crossing_of).collect();
        assert_eq!(got, expected, "none for a change the ledger does not hold");
        // An event delivered twice (killed before its try was recorded) has
        // the same id both times.
        let mut ids = std::collections::HashMap::new();
        for r in &received {
            let key = (r.body["data"]["account_id"].clone(), r.body["data"]["seq"].clone(), r.kind().to_string());
            assert_eq!(ids.entry(key).or_insert_with(|| r.id.clone()), &r.id);
            assert_eq!(r.verified_by, vec![0]);
        }
        server.kill();
    });
}
on_both_stores!(sync a_killed_server_loses_no_event_and_sends_none_for_an_uncommitted_change);

/// (account, seq, type) of a delivery.
fn crossing_of(received: &crate::webhook_receiver::Received) -> (i64, i64, String) {
    (
        received.body["data"]["account_id"].as_i64().unwrap(),
        received.body["data"]["seq"].as_i64().unwrap(),
        received.kind().to_string(),
    )
}

fn instances_deliver_each_event_once_and_take_over_a_killed_ones() {
    use std::collections::{BTreeSet, HashMap};
    actix_rt::System::new().block_on(async {
        let directory = fresh_directory();
        let first = crate::helpers::ServerProcess::start(&directory, &WEBHOOKS_ON);
        let admin = Admin::of(&first);
        let account = admin
            .ok("POST", "/v1/admin/accounts", Some(json!({"phone": "+14155552100"})))
            .await["id"]
            .as_i64()
            .unwrap();
        // Announced low before the receiver is there: the next climb past
        // $2.00 is `balance.replenished`.
        for (amount, key) in [(2_000_000, "prime-up"), (-2_000_000, "prime-down")] {
            let body = json!({"amount_micros": amount, "reason": "t", "idempotency_key": key});
            admin.ok("POST", &format!("/v1/admin/accounts/{account}/adjustments"), Some(body)).await;
        }
        let receiver = balance_receiver(&admin).await;

        // Killed mid-delivery: the first instance's tries hang at the
        // receiver when it dies; the second sends them once their lease ends.
        receiver.plan(&[Reply::Hang(Duration::from_secs(3)); 2]);
        for (index, amount) in [3_000_000, -2_000_000].into_iter().enumerate() {
            let body = json!({"amount_micros": amount, "reason": "t", "idempotency_key": format!("k{index}")});
            admin.ok("POST", &format!("/v1/admin/accounts/{account}/adjustments"), Some(body)).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while receiver.started() < 2 {
            assert!(std::time::Instant::now() < deadline, "the first tries never came");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        first.kill();
        let second = crate::helpers::ServerProcess::start(&directory, &WEBHOOKS_ON);
        let third = crate::helpers::ServerProcess::start(&directory, &WEBHOOKS_ON);
        let taken_over = receiver
            .wait_until("both events after the lease", |received| {
                received.iter().filter(|r| r.answered == 200).count() >= 4
            })
            .await;
        let kinds: BTreeSet<(i64, i64, String)> = taken_over.iter().map(crossing_of).collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");

        // Two live instances, writes through both: each event once.
        let admins = [Admin::of(&second), Admin::of(&third)];
        let before = receiver.received().len();
        let mut expected = 0;
        let mut balance = 1_000_000;
        for round in 0..40 {
            let amount = if round % 2 == 0 { 1_500_000 } else { -1_500_000 };
            let body = json!({"amount_micros": amount, "reason": "t", "idempotency_key": format!("r{round}")});
            admins[round % 2]
                .ok("POST", &format!("/v1/admin/accounts/{account}/adjustments"), Some(body))
                .await;
            let after = balance + amount;
            if (balance >= 2_000_000) != (after >= 2_000_000) {
                expected += 1;
            }
            balance = after;
        }
        assert_eq!(expected, 40);
        let received = receiver
            .wait_until("forty more events", |received| received.len() >= before + expected)
            .await;
        // Nothing more arrives: no event went out twice.
        actix_rt::time::sleep(Duration::from_millis(2500)).await;
        let received_later = receiver.received();
        assert_eq!(received_later.len(), received.len());
        let mut per_id: HashMap<&str, usize> = HashMap::new();
        for r in &received_later[before..] {
            *per_id.entry(r.id.as_str()).or_default() += 1;
        }
        assert_eq!(per_id.len(), expected);
        assert!(per_id.values().all(|count| *count == 1), "{per_id:?}");
        drop((second, third));
    });
}
on_both_stores!(sync instances_deliver_each_event_once_and_take_over_a_killed_ones);

async fn a_dead_endpoint_does_not_hold_up_a_live_one() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let app = TestApp::spawn_with(directory, settings).await;
    let dead = Receiver::start().await;
    dead.plan(&[Reply::Hang(Duration::from_secs(12)); 40]);
    let live = Receiver::start().await;
    let account = announced_low_account(&app, "+14155550130").await;
    let events = json!(["balance.low", "balance.replenished"]);
    add_endpoint(&app, &dead.url, events.clone()).await;
    let (_, secret) = add_endpoint(&app, &live.url, events).await;
    live.trust(&secret);
    for round in 0..20usize {
        let amount = if round.is_multiple_of(2) {
            3_000_000
        } else {
            -3_000_000
        };
        let (status, body) = app
            .post_adjustment(account, amount, &format!("r{round}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Every event reaches the live endpoint while the dead one still holds
    // its first tries (each waits out the 10 s timeout), at most 64 at once.
    live.wait_until("twenty events", |received| received.len() >= 20)
        .await;
    assert!(
        dead.received().is_empty(),
        "the dead endpoint answered already"
    );
    assert!(
        (1..=64).contains(&dead.started()),
        "{} tries at once",
        dead.started()
    );
}
on_both_stores!(a_dead_endpoint_does_not_hold_up_a_live_one);

/// Two instances write one account at once, eight writers moving it
/// $1.50 up and down across the $2.00 threshold (each write may be beaten
/// by the other instance's and computed again): each crossing the ledger
/// holds is announced once, and only those — `balance.replenished` only
/// after a `balance.low`, whichever instance wrote either.
fn two_instances_writing_one_account_at_once_announce_each_crossing_once() {
    use std::collections::BTreeSet;
    actix_rt::System::new().block_on(async {
        let directory = fresh_directory();
        let first = crate::helpers::ServerProcess::start(&directory, &WEBHOOKS_ON);
        let second = crate::helpers::ServerProcess::start(&directory, &WEBHOOKS_ON);
        let admins = [Admin::of(&first), Admin::of(&second)];
        let receiver = balance_receiver(&admins[0]).await;
        let account = admins[0]
            .ok("POST", "/v1/admin/accounts", Some(json!({"phone": "+14155552200"})))
            .await["id"]
            .as_i64()
            .unwrap();
        let writers = (0..8usize).map(|writer| {
            let admin = &admins[writer % 2];
            async move {
                for n in 0..10 {
                    let amount = if n % 2 == 0 { 1_500_000 } else { -1_500_000 };
                    let body = json!({"amount_micros": amount, "reason": "race", "idempotency_key": format!("w{writer}-{n}")});
                    admin.ok("POST", &format!("/v1/admin/accounts/{account}/adjustments"), Some(body)).await;
                }
            }
        });
        join_all(writers).await;

        let expected: BTreeSet<(i64, i64, String)> =
            crossings(account, &admins[1].ledger(account).await).into_iter().collect();
        assert!(!expected.is_empty(), "eighty writes crossed the threshold");
        let received = receiver
            .wait_until("every crossing the ledger holds", |received| {
                let got: BTreeSet<(i64, i64, String)> = received.iter().map(crossing_of).collect();
                expected.is_subset(&got)
            })
            .await;
        // Nothing more arrives: none twice, none the ledger does not hold.
        actix_rt::time::sleep(Duration::from_millis(1500)).await;
        let received_later = receiver.received();
        assert_eq!(received_later.len(), received.len());
        let got: Vec<(i64, i64, String)> = received_later.iter().map(crossing_of).collect();
        assert_eq!(got.len(), expected.len(), "each once: {got:?}");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    });
}
on_both_stores!(sync two_instances_writing_one_account_at_once_announce_each_crossing_once);

/// The admin's change to an endpoint, which must succeed.
async fn patch_endpoint(app: &TestApp, id: &str, change: Value) -> Value {
    let (status, body) = app
        .request(
            "PATCH",
            &format!("/v1/admin/webhook-endpoints/{id}"),
            Some(ADMIN_TOKEN),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// `sms_credit_webhook_pending` and the oldest pending delivery's age.
async fn pending(app: &TestApp) -> (i64, i64) {
    let text = metrics(app).await;
    (
        metric(&text, "sms_credit_webhook_pending"),
        metric(&text, "sms_credit_webhook_oldest_pending_seconds"),
    )
}

/// Disabling an endpoint ends the deliveries it had not taken yet (they no
/// longer count as pending, and its deliveries list says why), events made
/// while it is disabled get none, enabling it again sends only new events;
/// removing one ends its deliveries too.
async fn disabling_or_removing_an_endpoint_ends_its_pending_deliveries() {
    let directory = fresh_directory();
    let mut settings = webhook_settings(&directory);
    settings.access.metrics_token = Some(sms_credit::config::Secret::new("metrics-token"));
    let clock = ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    // Nothing listens on either port yet: every try is refused.
    let port = Receiver::free_port();
    let (paused, secret) = add_endpoint(
        &app,
        &format!("http://127.0.0.1:{port}/hooks"),
        json!(["*"]),
    )
    .await;
    let (removed, _) = add_endpoint(
        &app,
        &format!("http://127.0.0.1:{}/hooks", Receiver::free_port()),
        json!(["balance.low"]),
    )
    .await;
    send_test(&app, &paused).await;
    send_test(&app, &paused).await;
    send_test(&app, &removed).await;
    attempts(&app, &paused, 2).await;
    attempts(&app, &removed, 1).await;
    clock.advance_ms(1_000);
    let (count, oldest) = pending(&app).await;
    assert_eq!(count, 3, "three deliveries wait for their next try");
    assert!(oldest >= 1, "the oldest waited a second: {oldest}");

    // Disabled by the admin: its two are over, and its list says why.
    let shown = patch_endpoint(&app, &paused, json!({"enabled": false})).await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert_eq!(
        pending(&app).await.0,
        1,
        "only the other endpoint's delivery"
    );
    let listed = attempts(&app, &paused, 4).await;
    let ended: Vec<&Value> = listed
        .iter()
        .filter(|attempt| attempt["error"].as_str().unwrap().starts_with("not sent"))
        .collect();
    assert_eq!(ended.len(), 2, "one entry per delivery ended: {listed:?}");
    for entry in ended {
        assert_eq!(
            entry["error"], "not sent: the endpoint was disabled",
            "{listed:?}"
        );
        assert_eq!(entry["status_code"], Value::Null, "{listed:?}");
        assert_eq!(entry["duration_ms"], 0, "{listed:?}");
    }

    // Removed: its delivery is over too.
    let (status, _) = app
        .request(
            "DELETE",
            &format!("/v1/admin/webhook-endpoints/{removed}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pending(&app).await, (0, 0));

    // An event made while it is disabled gets no delivery, and a test or
    // a replay is refused, saying why.
    app.create_account("+14155550133").await;
    assert_eq!(pending(&app).await, (0, 0));
    for (method, suffix, body) in [
        ("POST", "/test", None),
        (
            "POST",
            "/replay",
            Some(json!({"since": "2026-11-21T00:00:00Z"})),
        ),
    ] {
        let (status, answer) = app
            .request(
                method,
                &format!("/v1/admin/webhook-endpoints/{paused}{suffix}"),
                Some(ADMIN_TOKEN),
                body,
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{suffix}: {answer}");
        assert_eq!(answer["error"]["code"], "endpoint_disabled", "{answer}");
    }
    assert_eq!(pending(&app).await, (0, 0));

    // Enabled again, with a receiver there: only what happens from now on
    // is sent, however long the old deliveries' waits were.
    let receiver = Receiver::start_on_port(port);
    receiver.trust(&secret);
    patch_endpoint(&app, &paused, json!({"enabled": true})).await;
    clock.advance_ms(3_600_000);
    send_test(&app, &paused).await;
    let got = receiver.accepted("webhook_endpoint.test", 1).await;
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let kinds: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.kind().to_string())
        .collect();
    assert_eq!(kinds, vec!["webhook_endpoint.test"], "{kinds:?}");
    assert_eq!(got[0].verified_by, vec![0]);
    assert_eq!(pending(&app).await, (0, 0));
}
on_both_stores!(disabling_or_removing_an_endpoint_ends_its_pending_deliveries);

/// Rows of the webhook tables: (events, deliveries, attempts).
fn webhook_rows(app: &TestApp) -> (i64, i64, i64) {
    (
        app.directory.number("SELECT COUNT(*) FROM webhook_events"),
        app.directory
            .number("SELECT COUNT(*) FROM webhook_deliveries"),
        app.directory
            .number("SELECT COUNT(*) FROM webhook_attempts"),
    )
}

/// Made deliveries, their tries and the events no delivery needs any more
/// are removed once older than the retention (30 days), by the worker, as
/// the clock moves; what is younger stays.
async fn old_delivered_rows_are_pruned_and_recent_ones_kept() {
    let directory = fresh_directory();
    let settings = webhook_settings(&directory);
    let clock = ManualClock::new(1_795_253_400_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    // An event with no endpoint to deliver it (the account's creation).
    app.create_account("+14155550134").await;
    let receiver = Receiver::start().await;
    // It takes only test events (sent to it whatever it takes).
    let (id, secret) = add_endpoint(&app, &receiver.url, json!(["balance.low"])).await;
    receiver.trust(&secret);
    // One delivered now, one two days later.
    send_test(&app, &id).await;
    attempts(&app, &id, 1).await;
    clock.advance_ms(2 * 86_400_000);
    send_test(&app, &id).await;
    attempts(&app, &id, 2).await;
    let kept = receiver.accepted("webhook_endpoint.test", 2).await;
    assert_eq!(webhook_rows(&app), (3, 2, 2));

    // 31 days after the first: it goes, with its event and the event no
    // endpoint took; the one of 29 days stays.
    clock.advance_ms(29 * 86_400_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while webhook_rows(&app) != (1, 1, 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for the rows of 31 days ago to be pruned: (events, deliveries, tries) = {:?}",
            webhook_rows(&app)
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = attempts(&app, &id, 1).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["event_id"], kept[1].id.as_str());
}
on_both_stores!(old_delivered_rows_are_pruned_and_recent_ones_kept);

/// A store of its own on the test's database, as another instance opens it.
fn instance(directory: &TestDatabase) -> sms_credit_actors::Store {
    sms_credit_actors::adapters::open(&sms_credit_actors::StoreSettings::new(directory.location()))
        .unwrap()
}

/// An enabled endpoint for every event, made through `store`.
async fn store_endpoint(store: &sms_credit_actors::Store, now_ms: i64) -> String {
    use sms_credit_actors::webhooks::{EventFilter, NewEndpoint, SigningSecret};
    let id = sms_credit_actors::webhooks::endpoints::endpoint_id().unwrap();
    store
        .webhooks()
        .create_endpoint(NewEndpoint {
            id: id.clone(),
            url: "https://hooks.example.com/in".into(),
            filter: EventFilter::All,
            description: String::new(),
            enabled: true,
            secret: SigningSecret::generate().unwrap(),
            created_at_ms: now_ms,
        })
        .await
        .unwrap();
    id
}

/// A test event for the endpoint, due at `now_ms`.
async fn due_delivery(store: &sms_credit_actors::Store, endpoint: &str, now_ms: i64) {
    use sms_credit_actors::webhooks::events::{data, event_id};
    use sms_credit_actors::webhooks::{EventType, NewEvent};
    let event = NewEvent::new(
        EventType::EndpointTest,
        None,
        format!("webhook_endpoint.test:{}", event_id().unwrap()),
        data([("endpoint_id", json!(endpoint))]),
        now_ms,
    )
    .unwrap();
    let made = store
        .webhooks()
        .record_test_event(endpoint.to_string(), event)
        .await
        .unwrap();
    assert_eq!(made, sms_credit_actors::webhooks::ForEnabled::Done(()));
}

/// How long a claim lasts (the worker's lease).
const LEASE_MS: i64 = 15_000;

/// Claims due deliveries as `store`'s worker does (64 per endpoint).
async fn claim(
    store: &sms_credit_actors::Store,
    now_ms: i64,
) -> Vec<sms_credit_actors::webhooks::ClaimedDelivery> {
    store
        .webhooks()
        .claim_deliveries(
            now_ms,
            now_ms + LEASE_MS,
            64,
            1024,
            store.instance_id().to_string(),
        )
        .await
        .unwrap()
}

/// What the worker records of a try of `delivery` that answered `status`
/// at `now_ms`, with what it decides of it.
fn tried(
    delivery: &sms_credit_actors::webhooks::ClaimedDelivery,
    status: u16,
    now_ms: i64,
) -> sms_credit_actors::webhooks::delivery::Attempted {
    use sms_credit_actors::webhooks::delivery::{decide, Attempted, TryResult};
    use sms_credit_actors::webhooks::events::data;
    use sms_credit_actors::webhooks::{EventType, NewEvent};
    let decided = decide(delivery, &TryResult::Answered(status), now_ms);
    let endpoint = &delivery.endpoint.id;
    Attempted {
        delivery_id: delivery.id,
        claim: delivery.attempts,
        endpoint_id: endpoint.clone(),
        at_ms: now_ms,
        status_code: Some(status),
        error: (!(200..300).contains(&status)).then(|| format!("answered {status}")),
        duration_ms: 5,
        outcome: decided.outcome,
        disable: decided.disable.map(|reason| {
            let event = NewEvent::new(
                EventType::EndpointDisabled,
                None,
                format!("webhook_endpoint.disabled:{endpoint}:{now_ms}"),
                data([("endpoint_id", json!(endpoint))]),
                now_ms,
            )
            .unwrap();
            (reason, event)
        }),
    }
}

/// A try whose lease ran out, and whose delivery another instance then
/// claimed and made, is recorded when it ends at last — as a try, and
/// nothing more: its `410 Gone` neither undoes the delivery nor marks the
/// endpoint failing nor disables it.
async fn a_late_outcome_changes_nothing_the_next_claim_decided() {
    use sms_credit_actors::webhooks::TryRecorded;
    let directory = fresh_directory();
    let clock = ManualClock::new(1_795_253_400_000);
    let (first, second) = (instance(&directory), instance(&directory));
    let endpoint = store_endpoint(&first, clock.now_ms()).await;
    due_delivery(&first, &endpoint, clock.now_ms()).await;
    let slow = claim(&first, clock.now_ms()).await;
    assert_eq!(slow.len(), 1, "the first instance claims the delivery");

    // Its lease runs out; the second instance takes it over and delivers.
    clock.advance_ms(LEASE_MS + 1_000);
    let taken = claim(&second, clock.now_ms()).await;
    assert_eq!(taken.len(), 1, "the lapsed claim is taken over");
    assert_eq!(taken[0].id, slow[0].id);
    let made = second
        .webhooks()
        .attempted(tried(&taken[0], 200, clock.now_ms()))
        .await
        .unwrap();
    assert_eq!(made, TryRecorded::Applied);

    // The first try ends at last: 410 Gone.
    clock.advance_ms(1_000);
    let late = first
        .webhooks()
        .attempted(tried(&slow[0], 410, clock.now_ms()))
        .await
        .unwrap();
    assert_eq!(late, TryRecorded::Late);

    let stats = first.webhooks().delivery_stats().await.unwrap();
    assert_eq!(stats.pending, 0, "{stats:?}");
    assert_eq!(
        directory.number("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'delivered'"),
        1,
        "the delivery stays delivered"
    );
    let shown = first
        .webhooks()
        .endpoint(endpoint.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(shown.enabled, "the endpoint stays enabled: {shown:?}");
    assert_eq!(shown.disabled_reason, None);
    assert_eq!(shown.failing_since_ms, None, "nor is it failing");
    assert_eq!(
        directory
            .number("SELECT COUNT(*) FROM webhook_events WHERE type = 'webhook_endpoint.disabled'"),
        0,
        "no endpoint was said disabled"
    );
    let listed = first.webhooks().attempts_of(endpoint, 10).await.unwrap();
    let statuses: Vec<Option<u16>> = listed.iter().map(|a| a.status_code).collect();
    assert_eq!(
        statuses,
        vec![Some(410), Some(200)],
        "both tries are listed"
    );
}
on_both_stores!(a_late_outcome_changes_nothing_the_next_claim_decided);

/// Two instances claim one endpoint's deliveries at once, again and again
/// (three claims each at a time): never more than 64 of its tries are in
/// flight across them, and each round fills what is free.
async fn the_per_endpoint_cap_holds_across_instances() {
    use std::collections::HashMap;
    let directory = fresh_directory();
    let clock = ManualClock::new(1_795_253_400_000);
    let instances = [instance(&directory), instance(&directory)];
    let endpoint = store_endpoint(&instances[0], clock.now_ms()).await;
    for _ in 0..200 {
        due_delivery(&instances[0], &endpoint, clock.now_ms()).await;
    }
    // In flight: delivery → the claim (and lease end) that holds it.
    let mut in_flight: HashMap<i64, (sms_credit_actors::webhooks::ClaimedDelivery, i64)> =
        HashMap::new();
    for round in 0..4 {
        let now_ms = clock.now_ms();
        in_flight.retain(|_, (_, until)| *until >= now_ms);
        let free = 64 - in_flight.len();
        let claims = join_all((0..6).map(|index| claim(&instances[index % 2], now_ms))).await;
        let claimed: Vec<_> = claims.into_iter().flatten().collect();
        assert!(
            in_flight.len() + claimed.len() <= 64,
            "round {round}: {} in flight and {} claimed at once, more than 64",
            in_flight.len(),
            claimed.len()
        );
        assert_eq!(
            claimed.len(),
            free,
            "round {round}: the free room is filled"
        );
        for delivery in claimed {
            in_flight.insert(delivery.id, (delivery, now_ms + LEASE_MS));
        }
        // Half of them end (made), the rest hold their claims; in the last
        // rounds the leases run out instead.
        let ending: Vec<i64> = in_flight.keys().copied().take(32).collect();
        for id in ending {
            let (delivery, _) = in_flight.remove(&id).unwrap();
            let made = instances[0]
                .webhooks()
                .attempted(tried(&delivery, 200, now_ms + 100))
                .await
                .unwrap();
            assert_eq!(made, sms_credit_actors::webhooks::TryRecorded::Applied);
        }
        clock.advance_ms(if round < 2 { 1_000 } else { LEASE_MS + 1 });
    }
}
on_both_stores!(the_per_endpoint_cap_holds_across_instances);

/// The upkeep's two operations, in bounded batches: deliveries left
/// waiting for a disabled endpoint (an event committed beside the change
/// that disabled it, on another instance) are ended and listed as such;
/// made and ended deliveries before the cut go with their tries, and then
/// their events.
async fn the_upkeep_ends_and_prunes_in_batches() {
    use sms_credit_actors::webhooks::Pruned;
    let directory = fresh_directory();
    let clock = ManualClock::new(1_795_253_400_000);
    let store = instance(&directory);
    let endpoint = store_endpoint(&store, clock.now_ms()).await;
    due_delivery(&store, &endpoint, clock.now_ms()).await;
    due_delivery(&store, &endpoint, clock.now_ms()).await;
    // Disabled behind the store's back: its deliveries still wait.
    directory.execute(&format!(
        "UPDATE webhook_endpoints SET enabled = 0 WHERE id = '{endpoint}'"
    ));
    assert_eq!(store.webhooks().delivery_stats().await.unwrap().pending, 2);
    clock.advance_ms(1_000);
    let webhooks = store.webhooks();
    let mut ended = Vec::new();
    for _ in 0..3 {
        ended.push(
            webhooks
                .end_deliveries_of_disabled(clock.now_ms(), 1)
                .await
                .unwrap(),
        );
    }
    assert_eq!(ended, vec![1, 1, 0], "one a batch, then none");
    assert_eq!(webhooks.delivery_stats().await.unwrap().pending, 0);
    let listed = webhooks.attempts_of(endpoint.clone(), 10).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|entry| entry.error.as_deref()
            == Some("not sent: the endpoint was disabled")
            && entry.status_code.is_none()),
        "{listed:?}"
    );

    // Nothing ended before the cut goes; after it, one a batch, each with
    // its try and its event.
    assert_eq!(
        webhooks.prune(clock.now_ms(), 1).await.unwrap(),
        Pruned::default()
    );
    let mut pruned = Vec::new();
    for _ in 0..3 {
        pruned.push(webhooks.prune(clock.now_ms() + 1, 1).await.unwrap());
    }
    let one = Pruned {
        deliveries: 1,
        events: 1,
    };
    assert_eq!(pruned, vec![one, one, Pruned::default()]);
    assert!(webhooks.attempts_of(endpoint, 10).await.unwrap().is_empty());
    assert_eq!(directory.number("SELECT COUNT(*) FROM webhook_events"), 0);
}
on_both_stores!(the_upkeep_ends_and_prunes_in_batches);

/// The table of event types in docs/integrating.md is the code's list, in its order,
/// and the API's document takes those and `*`: a type added to one and not
/// the other fails here.
#[test]
fn the_docs_and_the_api_list_every_event_type() {
    let page = include_str!("../docs/integrating.md");
    let table = &page[page
        .find("| type | when |")
        .expect("docs/integrating.md has the table of event types")..];
    let listed: Vec<&str> = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with("| `"))
        .map(|line| line.split('`').nth(1).unwrap())
        .collect();
    let known: Vec<&str> = sms_credit_actors::webhooks::EventType::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect();
    assert_eq!(listed, known);
    let schemas = &sms_credit::openapi::document()["components"]["schemas"];
    for schema in ["NewEndpointRequest", "EndpointPatch"] {
        let events = &schemas[schema]["properties"]["events"];
        let named: Vec<&str> = events["items"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}: {events}"))
            .iter()
            .map(|name| name.as_str().unwrap())
            .collect();
        let mut expected = known.clone();
        expected.push("*");
        assert_eq!(named, expected, "{schema}");
        assert!(
            !schemas[schema]["required"]
                .as_array()
                .is_some_and(|required| required.iter().any(|name| name == "events")),
            "{schema}: events may be left out"
        );
    }
}

on_both_stores!(sync an_endpoint_the_server_will_not_deliver_to_is_named_flagged_and_logged);
/// `webhooks_allow_private` is each process's own setting: an endpoint added
/// by a command line that has it, on a database whose server has not, is
/// told of at its creation, flagged by the server's API (and console), and
/// each delivery the server refuses for its URL is logged.
fn an_endpoint_the_server_will_not_deliver_to_is_named_flagged_and_logged() {
    let directory = fresh_directory();
    // Refused: the refusal names the setting that would allow it.
    let refused =
        crate::helpers::run_cli(&directory, &["webhooks", "add", "http://127.0.0.1:9/hooks"]);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("webhooks_allow_private")
            && stderr.contains("SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE"),
        "{stderr}"
    );
    // Allowed in the command line's environment: added, with a warning
    // that servers deliver to it only when they allow it too.
    let added = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(["webhooks", "add", "http://127.0.0.1:9/hooks"])
        .env("SMS_CREDIT_DATABASE", directory.url())
        .env("SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE", "true")
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let text = String::from_utf8_lossy(&added.stdout);
    assert!(
        text.contains("warning:") && text.contains("webhooks_allow_private"),
        "{text}"
    );
    let id = text.split_whitespace().next().unwrap().to_string();

    // A server without the setting: its API flags the endpoint.
    let server = crate::helpers::ServerProcess::start(&directory, &[]);
    let client = reqwest_like_get(&server.url("/v1/admin/webhook-endpoints"));
    let endpoint = &client["endpoints"][0];
    assert_eq!(endpoint["id"], id.as_str());
    let flag = endpoint["undeliverable"].as_str().unwrap_or_default();
    assert!(
        flag.contains("https://") && flag.contains("webhooks_allow_private"),
        "{endpoint}"
    );
    // A delivery it refuses for its URL is logged, naming the endpoint.
    let tested = crate::helpers::run_cli(&directory, &["webhooks", "test", &id]);
    assert!(tested.status.success(), "{tested:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let deliveries = cli_json(&directory, &["webhooks", "deliveries", &id, "--json"]);
        if deliveries["attempts"]
            .as_array()
            .is_some_and(|tries| !tries.is_empty())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a try of the test delivery within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.stop_and_read_log();
    assert!(
        log.iter().any(|line| line.contains("WARN")
            && line.contains(&id)
            && line.contains("webhooks_allow_private")),
        "{log:#?}"
    );
}

/// GET with the admin token from a thread outside any runtime: the body
/// as JSON.
fn reqwest_like_get(url: &str) -> Value {
    let url = url.to_string();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let mut response = awc::Client::new()
                .get(url)
                .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        })
    })
    .join()
    .unwrap()
}

//! The admin API and the common error body, over HTTP.

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{fresh_directory, test_settings, TestApp, ADMIN_TOKEN};

on_both_stores!(health_and_readiness_answer);
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.get_healthz().await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        app.get_readyz().await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

on_both_stores!(creates_reads_and_adjusts_an_account);
async fn creates_reads_and_adjusts_an_account() {
    let app = TestApp::spawn().await;
    let (status, created) = app
        .post_admin_account("+14155550100", Some("hiker@example.com"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["balance_micros"], 0);
    let id = created["id"].as_i64().unwrap();

    let (status, adjusted) = app.post_adjustment(id, 2_359_999, "gift-1").await;
    assert_eq!(status, StatusCode::OK, "{adjusted}");
    assert_eq!(adjusted["transaction"]["seq"], 1);
    assert_eq!(adjusted["transaction"]["type"], "adjustment");
    assert_eq!(adjusted["transaction"]["balance_after_micros"], 2_359_999);
    assert_eq!(adjusted["replayed"], false);

    let (status, account) = app.get_admin_account(id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["phone"], "+14155550100");
    assert_eq!(account["email"], "hiker@example.com");
    assert_eq!(account["balance_micros"], 2_359_999);
    // The string shows every micro-dollar (never $2.35 for $2.359999).
    assert_eq!(account["balance"], "$2.359999");
    assert_eq!(account["seq"], 1);
}

on_both_stores!(adjustments_take_effect_once_per_key);
async fn adjustments_take_effect_once_per_key() {
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550101").await;
    let (_, first) = app.post_adjustment(id, 5_000_000, "same-key").await;
    let (status, again) = app.post_adjustment(id, 5_000_000, "same-key").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["replayed"], true);
    assert_eq!(again["transaction"], first["transaction"]);
    assert_eq!(app.balance_micros(id).await, 5_000_000);

    let (status, conflict) = app.post_adjustment(id, 6_000_000, "same-key").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    assert_eq!(app.balance_micros(id).await, 5_000_000);
}

on_both_stores!(an_adjustment_cannot_take_a_key_the_service_keeps_for_itself);
async fn an_adjustment_cannot_take_a_key_the_service_keeps_for_itself() {
    // An admin key such as "stripe-order:1" would block the credit of order
    // 1 (or be replayed as it): the service's own keys are refused.
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550109").await;
    for key in [
        "stripe-order:1",
        "stripe-payment:pi_1",
        "msg:4",
        "msg-void:4",
    ] {
        let (status, body) = app.post_adjustment(id, 1_000_000, key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
        assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{key}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("reserved"),
            "{body}"
        );
    }
    assert_eq!(app.balance_micros(id).await, 0);
    let (_, ledger) = app.get_transactions(id).await;
    assert_eq!(ledger["transactions"], serde_json::json!([]));
}

on_both_stores!(negative_adjustments_may_go_below_zero);
async fn negative_adjustments_may_go_below_zero() {
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550102").await;
    let (status, body) = app.post_adjustment(id, -1_500_000, "correction").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, account) = app.get_admin_account(id).await;
    assert_eq!(account["balance_micros"], -1_500_000);
    assert_eq!(account["balance"], "-$1.50");
    // A sub-cent part is shown exactly, to the operator and to the holder:
    // -$82.266, neither -$82.26 (cut) nor -$82.27 (rounded).
    app.post_adjustment(id, -80_766_000, "more").await;
    let (_, account) = app.get_admin_account(id).await;
    assert_eq!(account["balance"], "-$82.266");
    let token = app.issue_token(id).await;
    let (status, me) = app
        .request("GET", "/v1/accounts/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["balance"], "-$82.266");
}

on_both_stores!(bad_requests_get_a_clear_error_and_change_nothing);
async fn bad_requests_get_a_clear_error_and_change_nothing() {
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550103").await;
    let path = format!("/v1/admin/accounts/{id}/adjustments");

    let cases: Vec<(serde_json::Value, StatusCode, &str)> = vec![
        (
            json!({"amount_micros": 0, "reason": "x", "idempotency_key": "k"}),
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        ),
        (
            json!({"amount_micros": 5, "reason": "", "idempotency_key": "k"}),
            StatusCode::BAD_REQUEST,
            "invalid_reason",
        ),
        (
            json!({"amount_micros": 5, "reason": "x", "idempotency_key": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
        (
            json!({"amount_micros": 5, "reason": "x", "idempotency_key": "has space"}),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
        (
            json!({"amount_micros": "5", "reason": "x", "idempotency_key": "k"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            json!({"amount_micros": 5, "reason": "x", "idempotency_key": "k", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            json!({"amount_micros": 1e30, "reason": "x", "idempotency_key": "k"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        // Beyond SMS_CREDIT_MAX_ADJUSTMENT (so no adjustment can overflow a
        // balance either).
        (
            json!({"amount_micros": 10_000_000_000i64, "reason": "x", "idempotency_key": "big-1"}),
            StatusCode::OK,
            "",
        ),
        (
            json!({"amount_micros": i64::MAX, "reason": "x", "idempotency_key": "big-2"}),
            StatusCode::BAD_REQUEST,
            "adjustment_too_large",
        ),
    ];
    for (body, expected_status, expected_code) in cases {
        let (status, answer) = app
            .request("POST", &path, Some(ADMIN_TOKEN), Some(body.clone()))
            .await;
        assert_eq!(status, expected_status, "{body} -> {answer}");
        if !expected_code.is_empty() {
            assert_eq!(answer["error"]["code"], expected_code, "{body} -> {answer}");
            assert!(answer["error"]["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty()));
        }
    }
    let (_, account) = app.get_admin_account(id).await;
    assert_eq!(
        account["seq"], 1,
        "only the one valid adjustment is in the ledger"
    );

    let (status, answer) = app
        .post_raw(&path, "application/json", b"{\"amount_micros\": 5".to_vec())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (status, answer) = app
        .post_raw(&path, "text/plain", b"amount=5".to_vec())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_content_type"))
    );
    let (status, answer) = app
        .post_raw(&path, "application/json", vec![0xff, 0xfe, 0x7b])
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let huge = format!("{{\"reason\": \"{}\"}}", "x".repeat(100 * 1024));
    let (status, answer) = app
        .post_raw(&path, "application/json", huge.into_bytes())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let (status, answer) = app
        .request(
            "GET",
            "/v1/admin/accounts/not-a-number",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path"))
    );
    let (status, answer) = app.get_admin_account(9_999).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, answer) = app.post_adjustment(9_999, 5, "k").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("account_not_found"))
    );
    let (status, answer) = app.request("GET", "/no/such/route", None, None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(app.get_admin_account(id).await.1["seq"], 1);
}

on_both_stores!(account_creation_checks_its_input);
async fn account_creation_checks_its_input() {
    let app = TestApp::spawn().await;
    let (status, answer) = app.post_admin_account("4155550104", None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_phone"))
    );
    let (status, answer) = app
        .post_admin_account("+14155550104", Some("not-an-email"))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_email"))
    );
    let (status, _) = app.post_admin_account("+14155550104", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, answer) = app.post_admin_account("+14155550104", None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("phone_taken"))
    );
}

on_both_stores!(the_admin_api_needs_its_token);
async fn the_admin_api_needs_its_token() {
    let app = TestApp::spawn().await;
    let (status, answer) = app.request("GET", "/v1/admin/accounts/1", None, None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, _) = app
        .request("GET", "/v1/admin/accounts/1", Some("wrong-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .request(
            "POST",
            "/v1/admin/accounts",
            Some("wrong-token"),
            Some(json!({"phone": "+14155550105"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.post_admin_account("+14155550105", None).await.0,
        StatusCode::CREATED,
        "nothing was created before"
    );
}

on_both_stores!(without_an_admin_token_the_admin_api_is_not_configured);
async fn without_an_admin_token_the_admin_api_is_not_configured() {
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.access.admin_token = None;
    let app = TestApp::spawn_with(directory, settings).await;
    let (status, answer) = app
        .request("GET", "/v1/admin/accounts/1", Some("anything"), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["error"]["code"], "admin_not_configured");
    assert_eq!(
        app.get_healthz().await.0,
        StatusCode::OK,
        "everything else works"
    );
}

on_both_stores!(lists_the_ledger_oldest_first);
async fn lists_the_ledger_oldest_first() {
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550106").await;
    for index in 1..=5 {
        app.post_adjustment(id, index * 1_000, &format!("row-{index}"))
            .await;
    }
    let (status, listed) = app.get_transactions(id).await;
    assert_eq!(status, StatusCode::OK);
    let rows = listed["transactions"].as_array().unwrap();
    let seqs: Vec<i64> = rows
        .iter()
        .map(|row| row["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(rows[4]["balance_after_micros"], 15_000);
    let (status, page) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{id}/transactions?after_seq=3"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["transactions"].as_array().map(Vec::len), Some(2));
    let (status, answer) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{id}/transactions?limit=0"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_limit"))
    );
}

on_both_stores!(admins_list_search_export_verify_and_rotate_tokens);
async fn admins_list_search_export_verify_and_rotate_tokens() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for (phone, email) in [
        ("+14155553600", Some("ann@example.com")),
        ("+14155553601", None),
        ("+447400123456", Some("bob@example.co.uk")),
    ] {
        let (status, body) = app.post_admin_account(phone, email).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_i64().unwrap());
    }
    let (status, page) = app
        .request("GET", "/v1/admin/accounts?limit=2", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["accounts"].as_array().unwrap().len(), 2);
    // Beside each: auto top-up (off) and when its balance last changed.
    assert_eq!(page["accounts"][0]["auto_top_up"], false);
    assert_eq!(
        page["accounts"][0]["last_activity_at"],
        "2026-11-21T09:30:00.000Z"
    );
    let next = page["next_after_id"].as_i64().unwrap();
    let (_, rest) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts?limit=2&after_id={next}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(rest["accounts"][0]["id"].as_i64(), Some(ids[2]));
    assert!(rest["next_after_id"].is_null());
    for (search, expected) in [
        ("bob@", vec![ids[2]]),
        ("4155553", vec![ids[0], ids[1]]),
        ("%", vec![]),
        ("_", vec![]),
    ] {
        let (_, found) = app
            .request(
                "GET",
                &format!("/v1/admin/accounts?q={}", search.replace('%', "%25")),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        let found: Vec<i64> = found["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|account| account["id"].as_i64().unwrap())
            .collect();
        assert_eq!(found, expected, "search {search:?}");
    }

    // The ledger as CSV.
    app.post_adjustment(ids[0], 2_500_000, "csv-1").await;
    app.request(
        "POST",
        &format!("/v1/admin/accounts/{}/adjustments", ids[0]),
        Some(ADMIN_TOKEN),
        Some(json!({"amount_micros": -56_500, "reason": "=cmd|' /C calc'!A0, oops", "idempotency_key": "csv-2"})),
    )
    .await;
    let mut response = app
        .client
        .get(app.url(&format!("/v1/admin/accounts/{}/transactions.csv", ids[0])))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("Content-Type").unwrap(),
        "text/csv; charset=utf-8"
    );
    let csv = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("account_id,seq,type,amount_micros"));
    assert!(
        lines[1].contains(",1,adjustment,2500000,2.50,2500000,2.50,csv-1,,Balance adjustment,")
            && lines[1].ends_with(",test adjustment,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(",-56500,-0.0565,2443500,2.4435,csv-2,,Balance adjustment,")
            && lines[2].ends_with(",\"'=cmd|' /C calc'!A0, oops\",1:promotional:56500"),
        "{}",
        lines[2]
    );
    let (status, _) = app
        .request(
            "GET",
            "/v1/admin/accounts/999/transactions.csv",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, verified) = app
        .request("GET", "/v1/admin/verify", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        (status, verified["clean"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{verified}"
    );
    assert_eq!(verified["report"]["transactions_checked"], 2);

    // Rotation: the old token stops working, the new one works.
    let old = app.issue_token(ids[1]).await;
    let (status, rotated) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{}/tokens/rotate", ids[1]),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, rotated["revoked"].as_i64()),
        (StatusCode::CREATED, Some(1))
    );
    let new = rotated["token"].as_str().unwrap();
    assert_eq!(
        app.request("GET", "/v1/accounts/me", Some(&old), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.request("GET", "/v1/accounts/me", Some(new), None)
            .await
            .0,
        StatusCode::OK
    );
}

on_both_stores!(a_server_without_its_state_answers_500_not_404);
async fn a_server_without_its_state_answers_500_not_404() {
    // Every guard needs the application's state; its absence is the
    // server's fault, never "not found".
    async fn guarded(_admin: sms_credit::auth::Admin) -> actix_web::HttpResponse {
        actix_web::HttpResponse::Ok().finish()
    }
    let app = actix_web::test::init_service(
        actix_web::App::new().route("/guarded", actix_web::web::get().to(guarded)),
    )
    .await;
    let request = actix_web::test::TestRequest::get()
        .uri("/guarded")
        .to_request();
    let response = actix_web::test::call_service(&app, request).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = actix_web::test::read_body_json(response).await;
    assert_eq!(body["error"]["code"], "internal_error");
}

on_both_stores!(a_service_left_off_is_told_in_plain_words_naming_no_setting);
/// With neither Stripe nor Twilio configured, an account holder, a
/// stranger and the host application are told what is unavailable, never
/// which setting would turn it on; nor is the admin in the console (the
/// setting is in the server's log).
async fn a_service_left_off_is_told_in_plain_words_naming_no_setting() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550977").await;
    let token = app.issue_token(account).await;
    let holder = app
        .request(
            "POST",
            "/v1/checkout/topup",
            Some(&token),
            Some(serde_json::json!({})),
        )
        .await;
    let stranger = app
        .request(
            "POST",
            "/v1/checkout/access",
            None,
            Some(serde_json::json!({"phone": "+14155550978", "email": "a@example.com"})),
        )
        .await;
    let twilio = app
        .post_raw(
            "/webhooks/twilio/sms",
            "application/x-www-form-urlencoded",
            b"From=%2B14155550977&Body=BALANCE".to_vec(),
        )
        .await;
    for (who, (status, answer)) in [
        ("holder", holder),
        ("stranger", stranger),
        ("twilio", twilio),
    ] {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{who}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("not available"), "{who}: {answer}");
        assert!(
            !message.contains("SMS_CREDIT_"),
            "{who} is told a setting: {message}"
        );
    }
    let (status, admin) = app
        .request(
            "POST",
            "/v1/admin/reconciliation/check-prices",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The operator reads it in the console: what, never which variable (that
    // is in the server's log).
    let message = admin["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("the answer has an error message: {admin}"));
    assert!(message.contains("not configured"), "{admin}");
    assert!(!message.contains("SMS_CREDIT_"), "{admin}");
    app.stop().await;
}

on_both_stores!(an_adjustment_beyond_the_limit_is_refused_naming_it);
async fn an_adjustment_beyond_the_limit_is_refused_naming_it() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155553962").await;
    for (amount, key) in [
        (10_000_000_001, "too-much"),
        (-10_000_000_001, "too-little"),
        (i64::MIN, "i64-min"),
        (i64::MAX, "i64-max"),
    ] {
        let (status, answer) = app.post_adjustment(account, amount, key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{amount}: {answer}");
        assert_eq!(answer["error"]["code"], "adjustment_too_large");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(
                    |message| message.contains("$10000.00") && !message.contains("SMS_CREDIT_")
                ),
            "{answer}"
        );
    }
    let (status, _) = app
        .post_adjustment(account, 10_000_000_000, "the-most")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.balance_micros(account).await, 10_000_000_000);
    let cli = crate::helpers::run_cli(
        &app.directory,
        &[
            "accounts",
            "adjust",
            &account.to_string(),
            "--amount",
            "-10000.01",
            "--reason",
            "x",
            "--idempotency-key",
            "cli-too-much",
        ],
    );
    assert!(!cli.status.success());
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("at most $10000.00"),
        "{cli:?}"
    );
}

on_both_stores!(the_operators_reason_is_never_shown_to_the_holder);
async fn the_operators_reason_is_never_shown_to_the_holder() {
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550190").await;
    let token = app.issue_token(id).await;
    let mut feed = crate::feed::open(
        &app,
        &format!("/v1/accounts/{id}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    assert_eq!(crate::feed::next_json(&mut feed).await["seq"], 0);
    let mut admin_feed = crate::feed::open_admin_feed(&app).await;

    let adjust = |body: serde_json::Value| {
        let app = &app;
        async move {
            let (status, answer) = app
                .request(
                    "POST",
                    &format!("/v1/admin/accounts/{id}/adjustments"),
                    Some(ADMIN_TOKEN),
                    Some(body),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            answer
        }
    };
    // Without a description the holder reads a neutral one; the operator
    // reads both.
    let first = adjust(json!({"amount_micros": 1_000_000,
        "reason": "goodwill: broken promise", "idempotency_key": "r1"}))
    .await;
    assert_eq!(
        first["transaction"]["description"], "Balance adjustment",
        "{first}"
    );
    assert_eq!(first["transaction"]["reason"], "goodwill: broken promise");
    let second = adjust(
        json!({"amount_micros": 500_000, "reason": "internal: ticket 42",
        "description": "A thank-you from us", "idempotency_key": "r2"}),
    )
    .await;
    assert_eq!(second["transaction"]["description"], "A thank-you from us");
    assert_eq!(second["transaction"]["reason"], "internal: ticket 42");

    // The holder: the API, the account page's rows and the feed.
    let (status, rows) = app
        .request(
            "GET",
            &format!("/v1/accounts/{id}/transactions"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let descriptions: Vec<&str> = rows["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions, ["Balance adjustment", "A thank-you from us"]);
    let mut holder_saw = rows.to_string();
    for _ in 0..2 {
        let event = crate::feed::next_json(&mut feed).await;
        holder_saw.push_str(&event.to_string());
    }
    assert!(holder_saw.contains("A thank-you from us"), "{holder_saw}");
    for reason in ["goodwill", "ticket 42", "\"reason\""] {
        assert!(
            !holder_saw.contains(reason),
            "the holder reads {reason}: {holder_saw}"
        );
    }

    // The operator: the admin API and the admin feed keep the reason.
    let (_, rows) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{id}/transactions"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let reasons: Vec<&str> = rows["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["goodwill: broken promise", "internal: ticket 42"]);
    let event = crate::feed::next_json(&mut admin_feed).await;
    assert_eq!(event["reason"], "goodwill: broken promise", "{event}");
    assert_eq!(event["description"], "Balance adjustment");

    // A description is refused as a reason is: empty or too long.
    let (status, refused) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{id}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(
                json!({"amount_micros": 1, "reason": "r", "description": " ",
                "idempotency_key": "r3"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_description");
}

on_both_stores!(an_adjustment_an_earlier_release_wrote_keeps_its_reason_from_the_holder);
/// During a rolling upgrade a server of the release before keeps writing
/// adjustments its way: the operator's reason as the description, no
/// reason. The holder reads the neutral description for such a row, and
/// never an adjustment's key (the operator's free text too).
async fn an_adjustment_an_earlier_release_wrote_keeps_its_reason_from_the_holder() {
    let app = TestApp::spawn().await;
    let id = app.create_account("+14155550196").await;
    let token = app.issue_token(id).await;
    let (status, _) = app.post_adjustment(id, 1_000_000, "fraud-check-bob").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{id}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": 500_000, "reason": "ticket 9",
                "description": "A thank-you from us", "idempotency_key": "thanks-ticket-9"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The first row as the release before writes it.
    app.directory.execute(&format!(
        "UPDATE transactions SET description = 'internal: fraud check', reason = NULL
          WHERE account_id = {id} AND seq = 1"
    ));
    let (status, rows) = app
        .request(
            "GET",
            &format!("/v1/accounts/{id}/transactions"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let mut holder_saw = rows.to_string();
    let mut feed = crate::feed::open(
        &app,
        &format!("/v1/accounts/{id}/feed?since=0"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    // The snapshot, then the rows since 0.
    assert_eq!(crate::feed::next_json(&mut feed).await["seq"], 2);
    let mut replayed = Vec::new();
    for _ in 0..2 {
        replayed.push(crate::feed::next_json(&mut feed).await);
    }
    holder_saw.push_str(&serde_json::to_string(&replayed).unwrap());
    let descriptions: Vec<&str> = rows["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions, ["Balance adjustment", "A thank-you from us"]);
    assert_eq!(
        replayed[0]["description"], "Balance adjustment",
        "{replayed:?}"
    );
    for secret in ["fraud", "ticket", "thanks", "idempotency_key"] {
        assert!(
            !holder_saw.contains(secret),
            "the holder reads {secret}: {holder_saw}"
        );
    }
    // The operator reads the row as it was written.
    let (_, rows) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{id}/transactions"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        rows["transactions"][0]["description"],
        "internal: fraud check"
    );
    assert_eq!(
        rows["transactions"][0]["idempotency_key"],
        "fraud-check-bob"
    );
}

on_both_stores!(one_thing_has_one_shape_in_the_cli_and_the_api);
/// What the command line prints with `--json` is what the API answers for
/// the same thing, field for field; and times over HTTP are RFC 3339.
async fn one_thing_has_one_shape_in_the_cli_and_the_api() {
    let (app, _stripe) = crate::stripe::app_with_fake_stripe().await;
    let cli = |arguments: &[&str]| {
        let output = crate::helpers::run_cli(&app.directory, arguments);
        assert!(output.status.success(), "{arguments:?}: {output:?}");
        assert_eq!(
            output.stdout.iter().filter(|byte| **byte == b'\n').count(),
            1,
            "{arguments:?}: one line of JSON"
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let get = |path: String| {
        let app = &app;
        async move {
            let (status, body) = app.request("GET", &path, Some(ADMIN_TOKEN), None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body
        }
    };
    // An account made by the command line, adjusted by both.
    let created = cli(&["accounts", "create", "--phone", "+14155550195", "--json"]);
    let id = created["id"].as_i64().unwrap();
    let account = get(format!("/v1/admin/accounts/{id}")).await;
    let mut created_account = created.clone();
    created_account.as_object_mut().unwrap().remove("warnings");
    assert_eq!(created_account, account, "accounts create --json");
    let by_cli = cli(&[
        "accounts",
        "adjust",
        &id.to_string(),
        "--amount",
        "1.50",
        "--reason",
        "cli",
        "--idempotency-key",
        "shape-1",
        "--json",
    ]);
    let (_, by_api) = app.post_adjustment(id, 1_000_000, "shape-2").await;
    assert_eq!(keys(&by_cli), keys(&by_api), "{by_cli} / {by_api}");
    assert_eq!(
        keys(&by_cli["transaction"]),
        keys(&by_api["transaction"]),
        "{by_cli} / {by_api}"
    );
    // One account, its rows, a page of accounts.
    let shown = cli(&["accounts", "show", &id.to_string(), "--json"]);
    let account = get(format!("/v1/admin/accounts/{id}")).await;
    assert_eq!(shown["account"], account);
    let mut rows = get(format!("/v1/admin/accounts/{id}/transactions")).await["transactions"]
        .as_array()
        .unwrap()
        .clone();
    rows.reverse();
    assert_eq!(
        shown["transactions"],
        serde_json::json!(rows),
        "newest first"
    );
    assert_eq!(
        cli(&["accounts", "list", "--json"]),
        get("/v1/admin/accounts".to_string()).await
    );
    // Webhook endpoints and discount codes.
    let added = cli(&[
        "webhooks",
        "add",
        "https://hooks.example.com/shape",
        "--json",
    ]);
    assert!(added["secret"].as_str().unwrap().starts_with("whsec_"));
    let endpoints = get("/v1/admin/webhook-endpoints".to_string()).await;
    assert_eq!(cli(&["webhooks", "list", "--json"]), endpoints);
    let endpoint = &endpoints["endpoints"][0];
    let endpoint_id = endpoint["id"].as_str().unwrap();
    assert_eq!(added["id"], endpoint["id"], "{added}");
    assert!(
        endpoint["created_at"].as_str().unwrap().ends_with('Z')
            && endpoint.get("created_at_ms").is_none(),
        "{endpoint}"
    );
    assert_eq!(
        cli(&["webhooks", "show", endpoint_id, "--json"]),
        get(format!("/v1/admin/webhook-endpoints/{endpoint_id}")).await
    );
    assert_eq!(
        cli(&["webhooks", "deliveries", endpoint_id, "--json"]),
        get(format!(
            "/v1/admin/webhook-endpoints/{endpoint_id}/deliveries"
        ))
        .await
    );
    cli(&[
        "discount-codes",
        "create",
        "SHAPE",
        "--percent",
        "10",
        "--json",
    ]);
    assert_eq!(
        cli(&["discount-codes", "list", "--json"]),
        get("/v1/admin/discount-codes".to_string()).await
    );
    // The auto top-up's view is one line too.
    cli(&["accounts", "auto-top-up", &id.to_string(), "--json"]);
    // A backup: what `backup --json` tells of it is the console's last
    // backup, field for field, with its verdict and what --keep removed.
    let backup_to = app.directory.path().join("shape-backup.db");
    let mut backed_up = cli(&["backup", "--to", backup_to.to_str().unwrap(), "--json"]);
    let told = backed_up.as_object_mut().unwrap();
    assert_eq!(told.remove("verify"), Some(serde_json::json!("clean")));
    assert_eq!(told.remove("removed"), Some(serde_json::json!([])));
    let overview = get("/v1/admin/overview".to_string()).await;
    assert_eq!(backed_up, overview["last_backup"], "backup --json");

    // Pricing, and a code switched off and on.
    assert_eq!(
        cli(&["pricing", "--json"]),
        get("/v1/admin/pricing".to_string()).await
    );
    let patched = |active: bool| {
        let app = &app;
        async move {
            let (status, body) = app
                .request(
                    "PATCH",
                    "/v1/admin/discount-codes/SHAPE",
                    Some(ADMIN_TOKEN),
                    Some(serde_json::json!({ "active": active })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let by_api = patched(false).await;
    let by_cli = cli(&["discount-codes", "activate", "SHAPE", "--json"]);
    let mut expected = by_api.clone();
    expected["active"] = serde_json::json!(true);
    assert_eq!(by_cli, expected, "discount-codes activate --json");
    assert_eq!(
        cli(&["discount-codes", "deactivate", "SHAPE", "--json"]),
        by_api,
        "discount-codes deactivate --json"
    );
    // A token issued.
    let (status, issued) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{id}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let by_cli = cli(&["accounts", "token", "issue", &id.to_string(), "--json"]);
    assert_eq!(keys(&by_cli), keys(&issued), "{by_cli} / {issued}");
    // An order's refunds.
    let (account, order, _, _) = crate::stripe::start_access(&app, "+14155550198", None).await;
    assert!(account > 0);
    assert_eq!(
        cli(&["orders", "refunds", &order.to_string(), "--json"]),
        get(format!("/v1/admin/orders/{order}/refunds")).await
    );
    // A ledger row: the same fields over REST and over the feed, for the
    // holder and for the operator.
    let token = issued["token"].as_str().unwrap().to_string();
    let mut feed = crate::feed::open(
        &app,
        &format!("/v1/accounts/{id}/feed?since=0"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    crate::feed::next_json(&mut feed).await;
    let fed = crate::feed::next_json(&mut feed).await;
    let (_, rows) = app
        .request(
            "GET",
            &format!("/v1/accounts/{id}/transactions"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(fed, rows["transactions"][0], "the holder's row");
    let mut admin_feed = crate::feed::open_admin_feed(&app).await;
    let (_, adjusted) = app.post_adjustment(id, 1, "shape-3").await;
    let fed = crate::feed::next_json(&mut admin_feed).await;
    assert_eq!(fed, adjusted["transaction"], "the operator's row");
}

/// The names of an object's fields, sorted.
fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = value
        .as_object()
        .map(|object| object.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Every time under `value` (at `path`): no field named `…_ms` (but a
/// duration, `duration_ms`), no time as a number, and every field named as
/// a time RFC 3339 in UTC.
fn times_are_rfc3339(path: &str, value: &serde_json::Value, problems: &mut Vec<String>) {
    match value {
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                times_are_rfc3339(&format!("{path}[{index}]"), item, problems);
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, field) in fields {
                let at = format!("{path}.{key}");
                if key.ends_with("_ms") && key != "duration_ms" {
                    problems.push(format!("{at} is in milliseconds: {field}"));
                }
                let a_time = key == "at"
                    || key == "since"
                    || key == "hour"
                    || key == "respond_by"
                    || key.ends_with("_at")
                    || key.ends_with("_until")
                    || key.ends_with("_since");
                if a_time && !field.is_null() {
                    let text = field.as_str().unwrap_or_default();
                    if !text.ends_with('Z')
                        || sms_credit_actors::clock::parse_rfc3339_ms(text).is_none()
                    {
                        problems.push(format!("{at} is not RFC 3339 in UTC: {field}"));
                    }
                }
                if field
                    .as_i64()
                    .is_some_and(|number| number > 1_000_000_000_000)
                    && !key.ends_with("_micros")
                {
                    problems.push(format!("{at} looks like a time in milliseconds: {field}"));
                }
                times_are_rfc3339(&at, field, problems);
            }
        }
        _ => {}
    }
}

on_both_stores!(every_time_over_http_is_rfc3339);
/// What the API answers about orders, refunds, tokens, notices, codes,
/// Stripe events, auto top-up, backups, disputes and reports, with a row of
/// each: every time is an RFC 3339 string under a name without `_ms`.
async fn every_time_over_http_is_rfc3339() {
    use crate::auto_top_up::{adjust_to, put_auto, setup, wait_for_attempts, Setup};
    let Setup {
        app, mut events, ..
    } = setup().await;
    crate::stripe::create_code(
        &app,
        json!({"code": "TIMES10", "type": "percent", "percent": 10, "max_uses": 5}),
    )
    .await;
    let (account, _, token) =
        crate::stripe::active_account(&app, &mut events, "+14155550197").await;
    let orders = app.get_orders(account).await;
    let order = orders[0]["id"].as_i64().unwrap();
    let (status, refunded) = app
        .request(
            "POST",
            &format!("/v1/admin/orders/{order}/refund"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": 1_000_000, "reason": "times", "idempotency_key": "times-refund"})),
        )
        .await;
    assert!(status.is_success(), "{refunded}");
    // An auto top-up, charged.
    adjust_to(&app, account, 30_000_000, "times-up").await;
    let (status, body) = put_auto(
        &app,
        account,
        &token,
        json!({"enabled": true, "threshold_micros": 20_000_000, "amount_micros": 10_000_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app
        .post_message(
            json!({"account_id": account, "body": "Storm at 3pm", "idempotency_key": "times-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    adjust_to(&app, account, 19_000_000, "times-down").await;
    let (status, _) = app
        .post_message(
            json!({"account_id": account, "body": "Storm at 4pm", "idempotency_key": "times-2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_for_attempts(&app, account, &token, |attempts| {
        attempts.first().is_some_and(|a| a["status"] == "succeeded")
    })
    .await;
    // A low-balance warning, sent: auto top-up off, a message that takes
    // the balance below $2.00.
    let (status, body) = put_auto(&app, account, &token, json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    adjust_to(&app, account, 2_050_000, "times-low").await;
    let (status, _) = app
        .post_message(
            json!({"account_id": account, "body": "Storm at 5pm", "idempotency_key": "times-3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let notices = app.settle_notices(account).await;
    assert!(!notices.is_empty(), "a warning was queued");
    // A dispute (attention), and a backup (the overview).
    let disputed = events.dispute(
        "charge.dispute.created",
        "dp_times",
        "ch_times",
        &format!("pi_access_{account}"),
        2999,
        "needs_response",
    );
    assert_eq!(app.deliver(&disputed).await.0, StatusCode::OK);
    let folder = tempfile::tempdir().unwrap();
    let backup = folder.path().join("times.db");
    let backed_up = crate::helpers::run_cli(
        &app.directory,
        &["backup", "--to", backup.to_str().unwrap()],
    );
    assert!(backed_up.status.success(), "{backed_up:?}");

    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (path, bearer) in [
        (format!("/v1/accounts/{account}"), token.as_str()),
        (format!("/v1/accounts/{account}/transactions"), &token),
        (format!("/v1/accounts/{account}/auto-top-up"), &token),
        (format!("/v1/admin/accounts/{account}"), ADMIN_TOKEN),
        ("/v1/admin/accounts".to_string(), ADMIN_TOKEN),
        (
            format!("/v1/admin/accounts/{account}/transactions"),
            ADMIN_TOKEN,
        ),
        (format!("/v1/admin/accounts/{account}/orders"), ADMIN_TOKEN),
        (
            format!("/v1/admin/accounts/{account}/auto-top-up"),
            ADMIN_TOKEN,
        ),
        (format!("/v1/admin/accounts/{account}/notices"), ADMIN_TOKEN),
        (
            format!("/v1/admin/accounts/{account}/messages"),
            ADMIN_TOKEN,
        ),
        (format!("/v1/admin/accounts/{account}/tokens"), ADMIN_TOKEN),
        (format!("/v1/admin/orders/{order}/refunds"), ADMIN_TOKEN),
        ("/v1/admin/discount-codes".to_string(), ADMIN_TOKEN),
        ("/v1/admin/stripe-events".to_string(), ADMIN_TOKEN),
        ("/v1/admin/overview".to_string(), ADMIN_TOKEN),
        ("/v1/admin/attention".to_string(), ADMIN_TOKEN),
        ("/v1/admin/reports".to_string(), ADMIN_TOKEN),
    ] {
        let (status, body) = app.request("GET", &path, Some(bearer), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        times_are_rfc3339(&path, &body, &mut problems);
        seen.push(body.to_string());
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Each kind of time was there to be checked.
    let seen = seen.join("\n");
    for field in [
        "\"completed_at\"",
        "\"consent\"",
        "\"taken_at\"",
        "\"respond_by\"",
        "\"sent_at\"",
        "\"received_at\"",
    ] {
        assert!(seen.contains(field), "{field} in {seen}");
    }
}

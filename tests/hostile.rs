//! Hostile requests on every public endpoint, table-driven: bad, expired
//! and replayed signatures, wrong content types, truncated and oversized
//! bodies, invalid UTF-8, huge and negative numbers, SQL-ish strings and
//! unknown fields. Each gets its 4xx with a JSON error; the ledger, the
//! orders and the messages do not change.

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::fake_stripe::{sign, EventFactory, FakeStripe, WEBHOOK_SECRET};
use crate::fake_twilio::{FakeTwilio, AUTH_TOKEN};
use crate::helpers::{
    fresh_directory, stripe_settings, with_twilio, ServerProcess, TestApp, ADMIN_TOKEN, API_KEY,
    NOW_UNIX,
};

/// Who a request claims to be.
#[derive(Clone, Copy)]
enum As {
    Nobody,
    Admin,
    Host,
    Holder,
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    caller: As,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: StatusCode,
    /// The error code, when one exact code is expected.
    code: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    caller: As,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        caller,
        content_type: "application/json",
        headers: Vec::new(),
        body: body.into(),
        status: StatusCode::from_u16(status).unwrap(),
        code,
    }
}

fn with_type(mut case: Case, content_type: &'static str) -> Case {
    case.content_type = content_type;
    case
}

fn with_header(mut case: Case, name: &'static str, value: String) -> Case {
    case.headers.push((name, value));
    case
}

/// Everything that must not change: ledger, orders, messages, inbound sids.
async fn footprint(app: &TestApp) -> Value {
    let (_, verified) = app
        .request("GET", "/v1/admin/verify", Some(ADMIN_TOKEN), None)
        .await;
    let (_, accounts) = app
        .request(
            "GET",
            "/v1/admin/accounts?limit=1000",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let (_, reconciliation) = app
        .request("GET", "/v1/admin/reconciliation", Some(ADMIN_TOKEN), None)
        .await;
    let (_, codes) = app
        .request("GET", "/v1/admin/discount-codes", Some(ADMIN_TOKEN), None)
        .await;
    let (_, pricing) = app
        .request("GET", "/v1/admin/pricing", Some(ADMIN_TOKEN), None)
        .await;
    json!({
        "transactions": verified["report"]["transactions_checked"],
        "clean": verified["clean"],
        "accounts": accounts["accounts"],
        "messages": reconciliation["overall"]["messages"],
        "service": reconciliation["service"]["messages"],
        "codes": codes,
        "pricing": pricing,
    })
}

on_both_stores!(hostile_requests_get_a_clear_4xx_and_change_nothing);
async fn hostile_requests_get_a_clear_4xx_and_change_nothing() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let app = TestApp::spawn_with(directory, settings).await;
    let account = app.create_account("+14155553900").await;
    app.post_adjustment(account, 1_000_000, "seed").await;
    let other = app.create_account("+14155553901").await;
    let token = app.issue_token(account).await;
    let (status, _) = app
        .request(
            "POST",
            "/v1/admin/discount-codes",
            Some(ADMIN_TOKEN),
            Some(json!({"code": "SPRING", "type": "percent", "percent": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = footprint(&app).await;

    let huge = "9".repeat(400);
    let sqlish = "'; DROP TABLE transactions; --";
    let mut events = EventFactory::new();
    let event = events.other();
    let other_event = events.other();
    let signed_other = sign(&other_event, WEBHOOK_SECRET, NOW_UNIX);
    let twilio_url = "https://sms.example.com/webhooks/twilio/sms";
    let fields = |body: &str| {
        vec![
            ("MessageSid".to_string(), "SMhostile".to_string()),
            ("From".to_string(), "+14155553900".to_string()),
            ("Body".to_string(), body.to_string()),
        ]
    };
    let form = |body: &str| serde_urlencoded::to_string(fields(body)).unwrap();
    let signature_for =
        |body: &str| sms_credit::twilio::signature::compute(AUTH_TOKEN, twilio_url, &fields(body));
    let adjustments = format!("/v1/admin/accounts/{account}/adjustments");

    let cases = vec![
        // /v1/quote (public)
        with_type(case("quote: text/plain", "POST", "/v1/quote", As::Nobody, r#"{"to":"+14155550100","body":"hi"}"#, 400, Some("unsupported_content_type")), "text/plain"),
        case("quote: truncated", "POST", "/v1/quote", As::Nobody, r#"{"to": "+1415"#, 400, Some("invalid_json")),
        case("quote: invalid UTF-8", "POST", "/v1/quote", As::Nobody, b"{\"to\":\"+14155550100\",\"body\":\"\xff\xfe\"}".to_vec(), 400, Some("invalid_json")),
        case("quote: unknown field", "POST", "/v1/quote", As::Nobody, r#"{"to":"+14155550100","body":"hi","rate":0}"#, 400, Some("invalid_json")),
        case("quote: oversized", "POST", "/v1/quote", As::Nobody, format!(r#"{{"to":"+14155550100","body":"{}"}}"#, "a".repeat(70_000)), 413, Some("payload_too_large")),
        case("quote: SQL-ish number", "POST", "/v1/quote", As::Nobody, json!({"to": sqlish, "body": "hi"}).to_string(), 400, None),
        case("quote: unknown country", "POST", "/v1/quote", As::Nobody, json!({"to": "+4915112345678", "body": "hi"}).to_string(), 422, Some("unsupported_destination")),
        case("quote: number as a number", "POST", "/v1/quote", As::Nobody, r#"{"to":14155550100,"body":"hi"}"#, 400, Some("invalid_json")),
        // /v1/checkout/access (public)
        case("access: bad email", "POST", "/v1/checkout/access", As::Nobody, json!({"phone": "+14155553902", "email": "not an email"}).to_string(), 400, None),
        case("access: SQL-ish phone", "POST", "/v1/checkout/access", As::Nobody, json!({"phone": sqlish, "email": "a@example.com"}).to_string(), 400, None),
        case("access: SQL-ish code", "POST", "/v1/checkout/access", As::Nobody, json!({"phone": "+14155553903", "email": "a@example.com", "discount_code": "' OR 1=1 --"}).to_string(), 400, Some("invalid_discount_code")),
        case("access: unknown field", "POST", "/v1/checkout/access", As::Nobody, json!({"phone": "+14155553904", "email": "a@example.com", "price": 0}).to_string(), 400, Some("invalid_json")),
        // /v1/checkout/topup (account token)
        case("topup: no token", "POST", "/v1/checkout/topup", As::Nobody, "", 401, Some("unauthorized")),
        with_header(case("topup: garbage token", "POST", "/v1/checkout/topup", As::Nobody, "", 401, Some("unauthorized")), "Authorization", "Bearer sct_' OR '1'='1".to_string()),
        // /v1/messages (host application)
        case("messages: no key", "POST", "/v1/messages", As::Nobody, json!({"account_id": account, "body": "hi", "idempotency_key": "h1"}).to_string(), 401, Some("unauthorized")),
        case("messages: huge account id", "POST", "/v1/messages", As::Host, format!(r#"{{"account_id":{huge},"body":"hi","idempotency_key":"h2"}}"#), 400, Some("invalid_json")),
        case("messages: negative account id", "POST", "/v1/messages", As::Host, json!({"account_id": -1, "body": "hi", "idempotency_key": "h3"}).to_string(), 404, None),
        case("messages: no destination", "POST", "/v1/messages", As::Host, json!({"body": "hi", "idempotency_key": "h4"}).to_string(), 400, None),
        case("messages: long key", "POST", "/v1/messages", As::Host, json!({"account_id": account, "body": "hi", "idempotency_key": "k".repeat(1000)}).to_string(), 400, None),
        case("messages: truncated", "POST", "/v1/messages", As::Host, r#"{"account_id": 1, "body"#, 400, Some("invalid_json")),
        case("messages: unaffordable", "POST", "/v1/messages", As::Host, json!({"account_id": account, "body": "ж".repeat(1500), "idempotency_key": "h5"}).to_string(), 402, Some("insufficient_credit")),
        // /v1/accounts/… (account token)
        case("account: another's id", "GET", &format!("/v1/accounts/{other}"), As::Holder, "", 404, None),
        case("account: id not a number", "GET", "/v1/accounts/1%20OR%201=1", As::Holder, "", 400, Some("invalid_path")),
        case("account: huge limit", "GET", &format!("/v1/accounts/{account}/transactions?limit={huge}"), As::Holder, "", 400, Some("invalid_query")),
        case("account: negative limit", "GET", &format!("/v1/accounts/{account}/transactions?limit=-5"), As::Holder, "", 400, Some("invalid_limit")),
        case("account: unknown query", "GET", &format!("/v1/accounts/{account}/transactions?all=1"), As::Holder, "", 400, Some("invalid_query")),
        // /v1/admin (admin token)
        case("admin: wrong token", "POST", &adjustments, As::Holder, json!({"amount_micros": 1, "reason": "x", "idempotency_key": "a0"}).to_string(), 401, Some("unauthorized")),
        case("admin: huge amount", "POST", &adjustments, As::Admin, format!(r#"{{"amount_micros":{huge},"reason":"x","idempotency_key":"a1"}}"#), 400, Some("invalid_json")),
        case("admin: overflowing amount", "POST", &adjustments, As::Admin, json!({"amount_micros": i64::MAX, "reason": "x", "idempotency_key": "a2"}).to_string(), 400, None),
        case("admin: fractional amount", "POST", &adjustments, As::Admin, r#"{"amount_micros":1.5,"reason":"x","idempotency_key":"a3"}"#, 400, Some("invalid_json")),
        case("admin: amount as a string", "POST", &adjustments, As::Admin, r#"{"amount_micros":"5","reason":"x","idempotency_key":"a4"}"#, 400, Some("invalid_json")),
        case("admin: zero amount", "POST", &adjustments, As::Admin, json!({"amount_micros": 0, "reason": "x", "idempotency_key": "a5"}).to_string(), 400, None),
        case("admin: empty key", "POST", &adjustments, As::Admin, json!({"amount_micros": 5, "reason": "x", "idempotency_key": ""}).to_string(), 400, None),
        case("admin: SQL-ish phone", "POST", "/v1/admin/accounts", As::Admin, json!({"phone": sqlish}).to_string(), 400, None),
        case("admin: percent over 100", "POST", "/v1/admin/discount-codes", As::Admin, json!({"code": "BIG", "type": "percent", "percent": 150}).to_string(), 400, None),
        case("admin: negative fixed code", "POST", "/v1/admin/discount-codes", As::Admin, json!({"code": "NEG", "type": "fixed", "amount_micros": -5_000_000}).to_string(), 400, None),
        case("admin: negative max uses", "POST", "/v1/admin/discount-codes", As::Admin, json!({"code": "MAXNEG", "type": "percent", "percent": 10, "max_uses": -1}).to_string(), 400, None),
        case("admin: negative sale price", "PUT", "/v1/admin/pricing", As::Admin, json!({"mode": "sale", "sale_price_micros": -1}).to_string(), 400, None),
        case("admin: unknown mode", "PUT", "/v1/admin/pricing", As::Admin, json!({"mode": "free"}).to_string(), 400, None),
        // /webhooks/stripe (Stripe-Signature)
        case("stripe: no signature", "POST", "/webhooks/stripe", As::Nobody, event.clone(), 400, Some("bad_signature")),
        with_header(case("stripe: garbage signature", "POST", "/webhooks/stripe", As::Nobody, event.clone(), 400, Some("bad_signature")), "Stripe-Signature", "t=abc,v1=zzz".to_string()),
        with_header(case("stripe: expired", "POST", "/webhooks/stripe", As::Nobody, event.clone(), 400, Some("bad_signature")), "Stripe-Signature", sign(&event, WEBHOOK_SECRET, NOW_UNIX - 3_600)),
        with_header(case("stripe: replayed for another body", "POST", "/webhooks/stripe", As::Nobody, event.clone(), 400, Some("bad_signature")), "Stripe-Signature", signed_other.clone()),
        with_header(case("stripe: invalid UTF-8", "POST", "/webhooks/stripe", As::Nobody, b"{\"id\":\"\xff\"}".to_vec(), 400, None), "Stripe-Signature", signed_other.clone()),
        with_header(case("stripe: signed garbage", "POST", "/webhooks/stripe", As::Nobody, "not json", 400, None), "Stripe-Signature", sign("not json", WEBHOOK_SECRET, NOW_UNIX)),
        with_header(case("stripe: oversized", "POST", "/webhooks/stripe", As::Nobody, "x".repeat(600 * 1024), 413, Some("payload_too_large")), "Stripe-Signature", signed_other.clone()),
        // /webhooks/twilio/* (X-Twilio-Signature)
        with_type(case("twilio: no signature", "POST", "/webhooks/twilio/sms", As::Nobody, form("BALANCE"), 403, None), "application/x-www-form-urlencoded"),
        with_header(with_type(case("twilio: garbage signature", "POST", "/webhooks/twilio/sms", As::Nobody, form("BALANCE"), 403, None), "application/x-www-form-urlencoded"), "X-Twilio-Signature", "AAAA".to_string()),
        with_header(with_type(case("twilio: replayed for another body", "POST", "/webhooks/twilio/sms", As::Nobody, form("BUY $10"), 403, None), "application/x-www-form-urlencoded"), "X-Twilio-Signature", signature_for("BALANCE")),
        with_header(with_type(case("twilio: status signed as sms", "POST", "/webhooks/twilio/status", As::Nobody, form("BALANCE"), 403, None), "application/x-www-form-urlencoded"), "X-Twilio-Signature", signature_for("BALANCE")),
        with_header(case("twilio: JSON", "POST", "/webhooks/twilio/sms", As::Nobody, r#"{"MessageSid":"SM1"}"#, 400, Some("unsupported_content_type")), "X-Twilio-Signature", signature_for("BALANCE")),
        with_type(case("twilio: invalid UTF-8", "POST", "/webhooks/twilio/sms", As::Nobody, b"MessageSid=SM1&Body=%FF%FE".to_vec(), 400, Some("invalid_form")), "application/x-www-form-urlencoded"),
        with_type(case("twilio: truncated escape", "POST", "/webhooks/twilio/sms", As::Nobody, "MessageSid=SM1&From=%2", 400, Some("invalid_form")), "application/x-www-form-urlencoded"),
        with_type(case("twilio: oversized", "POST", "/webhooks/twilio/sms", As::Nobody, format!("Body={}", "a".repeat(70_000)), 413, Some("payload_too_large")), "application/x-www-form-urlencoded"),
    ];

    let mut wrong = Vec::new();
    for case in &cases {
        let method = awc::http::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = app
            .client
            .request(method, app.url(&case.path))
            .insert_header(("Content-Type", case.content_type));
        let bearer = match case.caller {
            As::Nobody => None,
            As::Admin => Some(ADMIN_TOKEN.to_string()),
            As::Host => Some(API_KEY.to_string()),
            As::Holder => Some(token.clone()),
        };
        if let Some(bearer) = bearer {
            request = request.insert_header(("Authorization", format!("Bearer {bearer}")));
        }
        for (name, value) in &case.headers {
            request = request.insert_header((*name, value.as_str()));
        }
        let mut response = request.send_body(case.body.clone()).await.unwrap();
        let bytes = response.body().limit(1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str();
        let message = body["error"]["message"].as_str().unwrap_or("");
        let right = response.status() == case.status
            && code.is_some()
            && !message.is_empty()
            && case.code.is_none_or(|expected| code == Some(expected));
        if !right {
            wrong.push(format!(
                "{}: {} {} (wanted {} {:?})",
                case.name,
                response.status(),
                String::from_utf8_lossy(&bytes),
                case.status,
                case.code
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert!(cases.len() >= 50);
    assert_eq!(footprint(&app).await, before, "nothing changed");
    assert_eq!(twilio.sent().len(), 0, "nothing was sent");
}

/// The headers of an answer to `method path` (with `token` as a bearer).
async fn headers_of(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, awc::http::header::HeaderMap) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let response = request.send().await.unwrap();
    (response.status(), response.headers().clone())
}

on_both_stores!(every_answer_says_nosniff_and_nothing_with_a_token_is_cached);
async fn every_answer_says_nosniff_and_nothing_with_a_token_is_cached() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155553960").await;
    for (method, path, token) in [
        ("GET", "/healthz", None),
        ("GET", "/account", None),
        ("GET", "/account.js", None),
        ("GET", "/docs", None),
        ("GET", "/docs.js", None),
        ("GET", "/nowhere", None),
        ("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN)),
        ("GET", "/v1/admin/accounts", Some("wrong-token-wrong-token")),
        (
            "POST",
            &format!("/v1/admin/accounts/{account}/tokens") as &str,
            Some(ADMIN_TOKEN),
        ),
    ] {
        let (status, headers) = headers_of(&app, method, path, token).await;
        assert_eq!(
            headers
                .get("X-Content-Type-Options")
                .map(|value| value.as_bytes()),
            Some(&b"nosniff"[..]),
            "{method} {path} ({status})"
        );
        let cache = headers
            .get("Cache-Control")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if path.starts_with("/v1/") {
            assert_eq!(cache, "no-store", "{method} {path} ({status})");
        } else {
            assert!(
                cache == "no-store" || cache == "no-cache",
                "{path}: {cache}"
            );
        }
    }
    // The pages run no inline script and cannot be framed or re-based.
    for path in ["/account", "/docs"] {
        let (_, page) = headers_of(&app, "GET", path, None).await;
        let policy = page
            .get("Content-Security-Policy")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let script = policy
            .split(';')
            .map(str::trim)
            .find(|directive| directive.starts_with("script-src"))
            .unwrap_or_default();
        assert_eq!(script, "script-src 'self'", "{path}: {policy}");
        for directive in [
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {directive}: {policy}");
        }
    }
}

on_both_stores!(a_payment_providers_words_reach_the_log_not_the_caller);
async fn a_payment_providers_words_reach_the_log_not_the_caller() {
    let (app, fake) = crate::stripe::app_with_fake_stripe().await;
    let account = app.create_account("+14155553961").await;
    let token = app.issue_token(account).await;
    fake.set_unreachable(true);
    let (status, answer) = app
        .request("POST", "/v1/checkout/topup", Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"]["code"], "stripe_error");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("fake"),
        "the provider's text reached the caller: {message}"
    );
    assert!(message.contains("X-Request-Id"), "{message}");
}

#[actix_rt::test]
async fn wrong_tokens_from_one_address_are_slowed() {
    let app = TestApp::spawn().await;
    for attempt in 1..=20 {
        let (status, _) = app
            .request(
                "GET",
                "/v1/admin/accounts",
                Some("wrong-admin-token-guess"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let (status, headers) = headers_of(
        &app,
        "GET",
        "/v1/admin/accounts",
        Some("wrong-admin-token-guess"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers
        .get("Retry-After")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    // While it waits, even the right token is not looked at.
    let (status, answer) = app
        .request("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_attempts");
    actix_rt::time::sleep(
        std::time::Duration::from_secs(wait) + std::time::Duration::from_millis(200),
    )
    .await;
    let (status, _) = app
        .request("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "after the wait the right token works"
    );
}

/// A wrong token through a trusted proxy counts against the address the
/// proxy names, not against the proxy (which every caller shares); from an
/// untrusted peer, `X-Forwarded-For` is not believed.
#[actix_rt::test]
async fn behind_a_trusted_proxy_each_client_is_counted_apart() {
    let directory = crate::helpers::fresh_directory();
    let mut settings = crate::helpers::test_settings(&directory);
    settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = TestApp::spawn_with(directory, settings).await;
    let from = |client: &'static str, token: &'static str| {
        app.client
            .get(app.url("/v1/admin/accounts"))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .insert_header(("X-Forwarded-For", format!("198.51.100.9, {client}")))
            .send()
    };
    for _ in 0..20 {
        let status = from("203.0.113.7", "wrong-admin-token-guess")
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = from("203.0.113.7", "wrong-admin-token-guess")
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the guessing client waits"
    );
    let status = from("203.0.113.8", ADMIN_TOKEN).await.unwrap().status();
    assert_eq!(
        status,
        StatusCode::OK,
        "another client behind the same proxy does not"
    );

    // Without a trusted proxy the header changes nothing: all one address.
    let plain = TestApp::spawn().await;
    for index in 0..21 {
        let response = plain
            .client
            .get(plain.url("/v1/admin/accounts"))
            .insert_header(("Authorization", "Bearer wrong-admin-token-guess"))
            .insert_header(("X-Forwarded-For", format!("203.0.113.{index}")))
            .send()
            .await
            .unwrap();
        let expected = if index < 20 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(response.status(), expected, "request {index}");
    }
}

/// `count` anonymous calls (quotes) from this address, each answered.
async fn anonymous_quotes(app: &TestApp, count: usize) {
    let quote = json!({"to": "+14155550100", "body": "hi"});
    for call in 1..=count {
        let (status, answer) = app
            .request("POST", "/v1/quote", None, Some(quote.clone()))
            .await;
        assert_eq!(status, StatusCode::OK, "call {call}: {answer}");
    }
}

#[actix_rt::test]
async fn anonymous_routes_are_limited_per_address_and_unknown_sessions_count_as_guesses() {
    // 60 anonymous calls a minute from one address, whatever the route.
    let app = TestApp::spawn().await;
    anonymous_quotes(&app, 60).await;
    let (status, answer) = app
        .request(
            "GET",
            "/v1/checkout/sessions/cs_test_other_route",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_requests");
    let (status, headers) = headers_of(&app, "GET", "/v1/checkout/sessions/cs_test_x", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers
        .get("Retry-After")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    // Routes with a credential are not counted.
    let (status, _) = app
        .request("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Unknown Checkout Session ids are guesses: 20, then 429.
    let app = TestApp::spawn().await;
    for guess in 1..=20 {
        let (status, _) = app
            .request(
                "GET",
                &format!("/v1/checkout/sessions/cs_test_guess{guess}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "guess {guess}");
    }
    let (status, answer) = app
        .request("GET", "/v1/checkout/sessions/cs_test_guess21", None, None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_attempts");
}

/// The anonymous routes' limit is a setting: at 5, the 6th call in a
/// minute from one address is `429`, whatever the route.
#[actix_rt::test]
async fn the_anonymous_calls_a_minute_are_a_setting() {
    let directory = fresh_directory();
    let server = ServerProcess::start(
        &directory,
        &[("SMS_CREDIT_ANONYMOUS_CALLS_PER_MINUTE", "5")],
    );
    let app = TestApp::attach(&server, &directory);
    anonymous_quotes(&app, 5).await;
    let (status, answer) = app
        .request("GET", "/v1/checkout/sessions/cs_test_sixth", None, None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_requests");
    let (status, _) = app
        .request("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a call with a credential is not counted"
    );
    server.kill();
}

/// One way of presenting a wrong credential to one operation.
struct Guess {
    method: String,
    path: String,
    /// The security scheme the wrong credential claims to be.
    scheme: String,
    /// Through a real websocket handshake rather than a plain request.
    websocket: bool,
}

/// A wrong credential of `guess.scheme`, from `client` (named to the
/// trusted proxy in `X-Forwarded-For`): the status it got and its code.
async fn present_wrong(app: &TestApp, guess: &Guess, client: &str, body: &Value) -> (u16, String) {
    const WRONG: &str = "wrong-credential-0123456789abcdef";
    let mut path = guess.path.clone();
    if guess.scheme == "feedTicket" {
        path.push_str(&format!("?ticket=ft_{WRONG}"));
    }
    if guess.websocket {
        let url = app.url(&path).replacen("http://", "ws://", 1);
        let mut request = awc::Client::new()
            .ws(url)
            .set_header("X-Forwarded-For", client);
        request = match guess.scheme.as_str() {
            "accountToken" => request.protocols(["sms-credit-feed", &format!("sct_{WRONG}")]),
            "adminToken" => request.bearer_auth(WRONG),
            _ => request,
        };
        return match request.connect().await {
            Ok(_) => panic!(
                "{} {} opened with a wrong credential",
                guess.method, guess.path
            ),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                let code = if status == StatusCode::TOO_MANY_REQUESTS {
                    "too_many_attempts"
                } else {
                    "refused"
                };
                (status.as_u16(), code.to_string())
            }
            Err(other) => panic!("{} {}: {other}", guess.method, guess.path),
        };
    }
    let method = awc::http::Method::from_bytes(guess.method.to_uppercase().as_bytes()).unwrap();
    let mut request = app
        .client
        .request(method, app.url(&path))
        .insert_header(("X-Forwarded-For", client));
    let payload = match guess.scheme.as_str() {
        "adminToken" | "apiKey" | "metricsToken" => {
            request = request.insert_header(("Authorization", format!("Bearer {WRONG}")));
            body.to_string()
        }
        "accountToken" => {
            request = request.insert_header(("Authorization", format!("Bearer sct_{WRONG}")));
            body.to_string()
        }
        "twilioSignature" => {
            request = request
                .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                .insert_header(("X-Twilio-Signature", "bm90IHRoZSBzaWduYXR1cmU="));
            "MessageSid=SM0123456789abcdef0123456789abcdef&From=%2B14155550100&Body=BALANCE"
                .to_string()
        }
        "stripeSignature" => {
            request = request.insert_header((
                "Stripe-Signature",
                format!("t={NOW_UNIX},v1={}", "0".repeat(64)),
            ));
            EventFactory::new().other()
        }
        "feedTicket" => String::new(),
        // A credential carried in the body (a sign-up token, a code).
        "body" => body.to_string(),
        other => panic!("a scheme the test does not know: {other}"),
    };
    if !payload.is_empty() && !matches!(guess.scheme.as_str(), "twilioSignature") {
        request = request.insert_header(("Content-Type", "application/json"));
    }
    let mut response = request.send_body(payload).await.unwrap();
    let bytes = response.body().limit(1 << 20).await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = answer["error"]["code"].as_str().unwrap_or("").to_string();
    (response.status().as_u16(), code)
}

/// Every route that takes a credential (every operation of the OpenAPI
/// document with a security requirement, and the websocket routes through
/// a real handshake, and the credentials carried in bodies) counts a wrong
/// one in the one limiter: 20 from an address are answered as wrong, the
/// 21st `429 too_many_attempts`, and then the same address waits on the
/// admin routes too, even with the right token.
#[actix_rt::test]
async fn every_credential_check_is_counted_by_the_one_limiter() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    settings.access.metrics_token = Some(sms_credit::config::Secret::new(
        "metrics-token-for-the-walk",
    ));
    settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = TestApp::spawn_with(directory, settings).await;
    let account = app.create_account("+14155553950").await;

    let document = sms_credit::openapi::document();
    let mut guesses = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(security) = operation["security"].as_array() else {
                continue;
            };
            let concrete = path
                .replace("{id}", &account.to_string())
                .replace("{code}", "NOPE");
            let websocket = operation["responses"].get("101").is_some();
            for requirement in security {
                for scheme in requirement.as_object().unwrap().keys() {
                    guesses.push(Guess {
                        method: method.clone(),
                        path: concrete.clone(),
                        scheme: scheme.clone(),
                        websocket: false,
                    });
                    if websocket && scheme != "feedTicket" {
                        guesses.push(Guess {
                            method: method.clone(),
                            path: concrete.clone(),
                            scheme: scheme.clone(),
                            websocket: true,
                        });
                    }
                }
                if websocket && requirement.get("feedTicket").is_some() {
                    guesses.push(Guess {
                        method: method.clone(),
                        path: concrete.clone(),
                        scheme: "feedTicket".to_string(),
                        websocket: true,
                    });
                }
            }
        }
    }
    assert!(
        guesses.len() > 50,
        "the document's routes were walked: {}",
        guesses.len()
    );
    assert!(
        guesses.iter().filter(|guess| guess.websocket).count() >= 4,
        "both feeds, each way"
    );
    // Credentials the document cannot name: a sign-up token at sign-in and
    // at checkout, a Checkout Session's id.
    for (method, path) in [
        ("post", "/v1/sign-in"),
        ("post", "/v1/checkout/access"),
        ("get", "/v1/checkout/sessions/cs_test_not_a_session"),
    ] {
        guesses.push(Guess {
            method: method.to_string(),
            path: path.to_string(),
            scheme: "body".to_string(),
            websocket: false,
        });
    }

    let mut wrong = Vec::new();
    for (index, guess) in guesses.iter().enumerate() {
        let client = format!("198.18.{}.{}", index / 200, index % 200 + 1);
        // Where the body is read before the credential, it is a good one.
        let body = match (guess.method.as_str(), guess.path.as_str()) {
            ("put", path) if path.starts_with("/v1/accounts/") => json!({"enabled": false}),
            ("post", "/v1/checkout/access") if guess.scheme == "body" => json!({
                "phone": "+14155553951", "email": "a@example.com", "sign_up_token": "sup_wrong-token-guess"
            }),
            ("post", "/v1/checkout/access") => {
                json!({"phone": "+14155553951", "email": "a@example.com"})
            }
            ("post", "/v1/sign-in") => {
                json!({"phone": "+14155553951", "sign_up_token": "sup_wrong-token-guess"})
            }
            _ => json!({}),
        };
        let name = format!(
            "{} {} ({}{})",
            guess.method,
            guess.path,
            guess.scheme,
            if guess.websocket { ", websocket" } else { "" }
        );
        let mut refused = true;
        for attempt in 1..=20 {
            let (status, code) = present_wrong(&app, guess, &client, &body).await;
            if status == 429 || !(400..500).contains(&status) {
                wrong.push(format!(
                    "{name}: attempt {attempt} answered {status} {code}"
                ));
                refused = false;
                break;
            }
        }
        if !refused {
            continue;
        }
        let (status, code) = present_wrong(&app, guess, &client, &body).await;
        if status != 429 || code != "too_many_attempts" {
            wrong.push(format!(
                "{name}: the 21st wrong one answered {status} {code}"
            ));
            continue;
        }
        let response = app
            .client
            .get(app.url("/v1/admin/overview"))
            .insert_header(("X-Forwarded-For", client.as_str()))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send()
            .await
            .unwrap();
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            wrong.push(format!(
                "{name}: the address then opened the admin routes ({})",
                response.status()
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// A wrong admin token sent through the trusted proxy with these
/// `headers` (name, value; several of one name are several lines): its
/// status.
async fn through_the_proxy(app: &TestApp, headers: &[(&str, String)]) -> StatusCode {
    let mut request = app
        .client
        .get(app.url("/v1/admin/accounts"))
        .insert_header(("Authorization", "Bearer wrong-admin-token-guess"));
    for (name, value) in headers {
        request = request.append_header((*name, value.as_str()));
    }
    request.send().await.unwrap().status()
}

/// 20 wrong tokens, each with the `headers` that `nth` makes, then a 21st:
/// whether the 21st was refused `429` (all counted under one address).
async fn counted_as_one(app: &TestApp, nth: impl Fn(usize) -> Vec<(&'static str, String)>) -> bool {
    for index in 0..20 {
        let status = through_the_proxy(app, &nth(index)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "request {index}");
    }
    through_the_proxy(app, &nth(20)).await == StatusCode::TOO_MANY_REQUESTS
}

/// Behind trusted proxies the client's address is read from the right of
/// every `X-Forwarded-For` line (HAProxy's `option forwardfor` appends a
/// line of its own), past trusted proxies only, a hop written `ip:port`
/// taken as its address, the walk stopped at a hop that does not parse,
/// and IPv4-mapped IPv6 taken as IPv4; with the `Forwarded` header chosen,
/// that header the same way (and `X-Forwarded-For` not at all). Rotating
/// what the client writes itself gets it nothing.
#[actix_rt::test]
async fn behind_proxies_the_client_cannot_choose_its_address() {
    let spawn = |header: Option<&'static str>| async move {
        let directory = crate::helpers::fresh_directory();
        let mut settings = crate::helpers::test_settings(&directory);
        settings.access.trusted_proxies =
            vec!["127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        if let Some(header) = header {
            settings.access.forwarded_header = header.parse().unwrap();
        }
        TestApp::spawn_with(directory, settings).await
    };
    let forged = |index: usize| format!("198.51.100.{index}");

    // HAProxy's own line after the client's.
    let app = spawn(None).await;
    assert!(
        counted_as_one(&app, |index| vec![
            ("X-Forwarded-For", forged(index)),
            ("X-Forwarded-For", "203.0.113.7".to_string()),
        ])
        .await,
        "the proxy's line is read, not the client's"
    );
    // A load balancer that writes the port; a chain of trusted proxies.
    let app = spawn(None).await;
    assert!(
        counted_as_one(&app, |index| vec![(
            "X-Forwarded-For",
            format!("{}, 203.0.113.9:5555", forged(index))
        )])
        .await,
        "ip:port is the client"
    );
    let app = spawn(None).await;
    assert!(
        counted_as_one(&app, |index| vec![(
            "X-Forwarded-For",
            format!("{}, [2001:db8::9]:443, 10.0.0.2", forged(index))
        )])
        .await,
        "walked past the trusted proxy to the client"
    );
    // A hop that does not parse ends the walk there.
    let app = spawn(None).await;
    assert!(
        counted_as_one(&app, |index| vec![(
            "X-Forwarded-For",
            format!("{}, not-an-address", forged(index))
        )])
        .await,
        "a hop that does not parse is not skipped"
    );
    // One client, whether written as IPv4 or IPv4-mapped IPv6.
    let app = spawn(None).await;
    assert!(
        counted_as_one(&app, |index| {
            let client = if index % 2 == 0 {
                "203.0.113.10"
            } else {
                "::ffff:203.0.113.10"
            };
            vec![("X-Forwarded-For", client.to_string())]
        })
        .await,
        "IPv4-mapped IPv6 is IPv4"
    );
    // A `Forwarded` header is not believed unless it is the one chosen.
    let app = spawn(None).await;
    assert!(
        !counted_as_one(&app, |index| vec![
            ("Forwarded", "for=203.0.113.11".to_string()),
            ("X-Forwarded-For", forged(index)),
        ])
        .await,
        "each forged X-Forwarded-For is its own client here (no proxy line)"
    );

    // The standard header, chosen: the same walk.
    let app = spawn(Some("forwarded")).await;
    assert!(
        counted_as_one(&app, |index| vec![
            ("Forwarded", format!("for={};proto=https", forged(index))),
            (
                "Forwarded",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https".to_string()
            ),
            ("X-Forwarded-For", forged(index)),
        ])
        .await,
        "the proxy's Forwarded element is read"
    );
    let app = spawn(Some("forwarded")).await;
    assert!(
        counted_as_one(&app, |index| vec![(
            "Forwarded",
            format!("for={}, for=unknown", forged(index))
        )])
        .await,
        "an element that names no address ends the walk"
    );
    let app = spawn(Some("forwarded")).await;
    let statuses = [
        through_the_proxy(&app, &[("Forwarded", "for=203.0.113.12".to_string())]).await,
        through_the_proxy(&app, &[("Forwarded", "for=203.0.113.13".to_string())]).await,
    ];
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 2]);
}

/// An IPv6 host has a whole /64: its addresses are one client for the
/// limits, so rotating them gains no guesses; another /64 is another
/// client.
#[actix_rt::test]
async fn an_ipv6_client_is_counted_by_its_64() {
    let directory = crate::helpers::fresh_directory();
    let mut settings = crate::helpers::test_settings(&directory);
    settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = TestApp::spawn_with(directory, settings).await;
    assert!(
        counted_as_one(&app, |index| vec![(
            "X-Forwarded-For",
            format!("2001:db8:7:8:{index:x}::1")
        )])
        .await,
        "one /64, one client"
    );
    let status =
        through_the_proxy(&app, &[("X-Forwarded-For", "2001:db8:7:9::1".to_string())]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "another /64");
}

/// An IPv6 address that carries an IPv4 one is counted as that IPv4
/// address: NAT64 (64:ff9b::/96) and IPv4-compatible (::a.b.c.d) by the
/// address inside, 6to4 (2002::/16) by its site's address (all its /64s
/// one client), Teredo by the client's address it hides. So two IPv4
/// clients behind one NAT64 gateway are two clients, not one /64, and a
/// 6to4 site cannot rotate its /64s.
#[actix_rt::test]
async fn an_ipv6_address_that_carries_an_ipv4_one_is_counted_as_that_one() {
    let spawn = || async {
        let directory = crate::helpers::fresh_directory();
        let mut settings = crate::helpers::test_settings(&directory);
        settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        TestApp::spawn_with(directory, settings).await
    };
    let from = |client: &str| vec![("X-Forwarded-For", client.to_string())];

    let app = spawn().await;
    for attempt in 0..20 {
        let status = through_the_proxy(&app, &from("64:ff9b::198.51.100.1")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    assert_eq!(
        through_the_proxy(&app, &from("64:ff9b::198.51.100.2")).await,
        StatusCode::UNAUTHORIZED,
        "another IPv4 client behind the NAT64 gateway is another client"
    );
    for same in ["64:ff9b::198.51.100.1", "198.51.100.1", "::198.51.100.1"] {
        assert_eq!(
            through_the_proxy(&app, &from(same)).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{same} is the client that guessed"
        );
    }

    let app = spawn().await;
    assert!(
        counted_as_one(&app, |index| from(&format!("2002:c633:6403:{index:x}::1"))).await,
        "a 6to4 site's /64s are one client"
    );
    // Teredo: the client's address is the last 32 bits, inverted
    // (198.51.100.4 is 39cc:9bfb), whatever its port.
    let app = spawn().await;
    assert!(
        counted_as_one(&app, |index| {
            if index % 2 == 0 {
                from("198.51.100.4")
            } else {
                from(&format!(
                    "2001:0:4136:e378:8000:{:x}:39cc:9bfb",
                    0x63bf + index
                ))
            }
        })
        .await,
        "a Teredo client is the IPv4 address it hides"
    );
    assert_eq!(
        through_the_proxy(&app, &from("2001:0:4136:e378:8000:63bf:39cc:9bfa")).await,
        StatusCode::UNAUTHORIZED,
        "another Teredo client of the same relay is another client"
    );
}

/// A sign-up token for `phone`, got as a stranger gets one: a texted code,
/// then `POST /v1/sign-in`.
async fn sign_up_token(app: &TestApp, twilio: &FakeTwilio, phone: &str) -> String {
    let (status, answer) = app
        .request(
            "POST",
            "/v1/sign-in/code",
            None,
            Some(json!({ "phone": phone })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let code = crate::sign_in::code_sent_to(twilio, phone).await;
    let (status, signed_up) = app
        .request(
            "POST",
            "/v1/sign-in",
            None,
            Some(json!({ "phone": phone, "code": code })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{signed_up}");
    signed_up["sign_up_token"].as_str().unwrap().to_string()
}

/// An anonymous caller with a real sign-up token gets one answer for a
/// discount code that does not exist, one that is inactive and one used
/// up, so it learns nothing of which codes exist; each is a wrong guess in
/// the one limiter (and against the token, which the tenth uses up), so
/// the 21st in a minute is `429`. Nothing is made.
#[actix_rt::test]
async fn wrong_discount_codes_are_answered_alike_and_counted_as_guesses() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let app = TestApp::spawn_with(directory, settings).await;
    for (code, max_uses) in [("PAUSED", 5), ("SPENT", 1)] {
        let (status, answer) = app
            .request(
                "POST",
                "/v1/admin/discount-codes",
                Some(ADMIN_TOKEN),
                Some(json!({"code": code, "type": "percent", "percent": 10, "max_uses": max_uses})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (status, answer) = app
        .request(
            "PATCH",
            "/v1/admin/discount-codes/PAUSED",
            Some(ADMIN_TOKEN),
            Some(json!({"active": false})),
        )
        .await;
    assert!(status.is_success(), "{answer}");
    // The host application uses SPENT's one use.
    let (status, answer) = app
        .request(
            "POST",
            "/v1/checkout/access",
            Some(API_KEY),
            Some(json!({"phone": "+14155553960", "email": "a@example.com", "discount_code": "SPENT"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let sessions = stripe.requests("/v1/checkout/sessions").len();

    let phone = "+14155553961";
    let token = sign_up_token(&app, &twilio, phone).await;
    let with_code = |code: &str| {
        app.request(
            "POST",
            "/v1/checkout/access",
            None,
            Some(json!({"phone": phone, "email": "b@example.com", "sign_up_token": token, "discount_code": code})),
        )
    };
    let mut answers = Vec::new();
    for code in ["NOPE", "PAUSED", "SPENT"] {
        answers.push(with_code(code).await);
    }
    let (status, answer) = &answers[0];
    assert_eq!(*status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(
        answer["error"]["code"], "discount_code_unusable",
        "{answer}"
    );
    assert_eq!(
        answer["error"]["message"], "this discount code cannot be used",
        "{answer}"
    );
    assert!(
        answers.iter().all(|other| other == &answers[0]),
        "one answer for unknown, inactive and used-up codes: {answers:?}"
    );
    for guess in 4..=10 {
        let (status, answer) = with_code(&format!("NOPE{guess}")).await;
        assert_eq!(status, StatusCode::CONFLICT, "guess {guess}: {answer}");
    }
    // Ten wrong codes used the sign-up token up: a wrong token, counted
    // as a guess too.
    for guess in 11..=20 {
        let (status, answer) = with_code(&format!("NOPE{guess}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {guess}: {answer}");
        assert_eq!(answer["error"]["code"], "sign_up_required");
    }
    let (status, answer) = with_code("NOPE21").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_attempts");
    assert_eq!(
        stripe.requests("/v1/checkout/sessions").len(),
        sessions,
        "no Checkout was opened for a wrong code"
    );
}

/// A sign-up token for `phone`, asked for and signed in with as `client`
/// (through the trusted proxy).
async fn sign_up_token_as(app: &TestApp, twilio: &FakeTwilio, phone: &str, client: &str) -> String {
    let before = crate::sign_in::texts_to(twilio, phone);
    for (path, body) in [
        ("/v1/sign-in/code", json!({ "phone": phone })),
        ("/v1/sign-in", json!({ "phone": phone, "code": "" })),
    ] {
        let mut body = body;
        if path == "/v1/sign-in" {
            body["code"] = json!(crate::sign_in::code_after(twilio, phone, before).await);
        }
        let mut response = app
            .client
            .post(app.url(path))
            .insert_header(("X-Forwarded-For", client))
            .send_json(&body)
            .await
            .unwrap();
        let answer = response.json::<Value>().await.unwrap_or(Value::Null);
        assert!(response.status().is_success(), "{path}: {answer}");
        if let Some(token) = answer["sign_up_token"].as_str() {
            return token.to_string();
        }
    }
    panic!("no sign-up token for {phone}");
}

/// `POST /v1/checkout/access` as an anonymous buyer at `client` (through
/// the trusted proxy), with a sign-up token and a discount code.
async fn access_with_code(
    app: &TestApp,
    phone: &str,
    token: &str,
    code: &str,
    client: &str,
) -> (StatusCode, Value) {
    let mut response = app
        .client
        .post(app.url("/v1/checkout/access"))
        .insert_header(("X-Forwarded-For", client))
        .send_json(&json!({
            "phone": phone, "email": "b@example.com", "sign_up_token": token, "discount_code": code
        }))
        .await
        .unwrap();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status(), body)
}

/// A world for discount codes: Stripe and Twilio at fakes, behind a
/// trusted proxy (each client names its address), with these codes
/// (code, percent off).
async fn discount_world(codes: &[(&str, i64)]) -> (TestApp, FakeStripe, FakeTwilio) {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let app = TestApp::spawn_with(directory, settings).await;
    for (code, percent) in codes {
        let (status, answer) = app
            .request(
                "POST",
                "/v1/admin/discount-codes",
                Some(ADMIN_TOKEN),
                Some(json!({"code": code, "type": "percent", "percent": percent, "max_uses": 5})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    (app, stripe, twilio)
}

on_both_stores!(ten_wrong_discount_codes_use_the_sign_up_token_up);
/// Wrong discount codes are counted per sign-up token too, not only per
/// address: a buyer rotating addresses (a /64 each) with one token gets
/// ten wrong codes, then the token is used up: the next try, even with a
/// real code, is `401 sign_up_required`, and no Checkout is opened.
async fn ten_wrong_discount_codes_use_the_sign_up_token_up() {
    let (app, stripe, twilio) = discount_world(&[("REAL10", 10)]).await;
    let phone = "+14155553963";
    let token = sign_up_token(&app, &twilio, phone).await;
    for guess in 1..=10 {
        let (status, answer) = access_with_code(
            &app,
            phone,
            &token,
            &format!("NOPE{guess}"),
            &format!("2001:db8:{guess}::1"),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "guess {guess}: {answer}");
        assert_eq!(answer["error"]["code"], "discount_code_unusable");
    }
    let (status, answer) = access_with_code(&app, phone, &token, "REAL10", "2001:db8:99::1").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the token is used up: {answer}"
    );
    assert_eq!(answer["error"]["code"], "sign_up_required");
    assert_eq!(
        stripe.requests("/v1/checkout/sessions").len(),
        0,
        "no Checkout was opened"
    );
    // Signing in again (from another address) gives a new token, which
    // works.
    let token = sign_up_token_as(&app, &twilio, phone, "203.0.113.40").await;
    let (status, answer) = access_with_code(&app, phone, &token, "REAL10", "2001:db8:99::1").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

on_both_stores!(a_code_that_leaves_too_little_to_charge_is_answered_as_an_unusable_one);
/// A real code that makes access free (100 % off), or leaves less than
/// Stripe's smallest charge, is answered to an anonymous buyer as any
/// code that cannot be used (`409 discount_code_unusable`), not
/// `below_minimum_charge` (which tells the code exists), and counts as a
/// wrong code, against the sign-up token too. The host application is
/// told `below_minimum_charge`.
async fn a_code_that_leaves_too_little_to_charge_is_answered_as_an_unusable_one() {
    let (app, stripe, twilio) = discount_world(&[("FREE", 100), ("NEARLY", 99)]).await;
    let phone = "+14155553964";
    let token = sign_up_token(&app, &twilio, phone).await;
    let mut answers = Vec::new();
    for (index, code) in ["NOPE", "FREE", "NEARLY"].iter().enumerate() {
        answers.push(
            access_with_code(&app, phone, &token, code, &format!("2001:db8:{index}::1")).await,
        );
    }
    assert_eq!(answers[0].0, StatusCode::CONFLICT, "{:?}", answers[0]);
    assert!(
        answers.iter().all(|answer| answer == &answers[0]),
        "one answer for an unknown code and those that leave too little: {answers:?}"
    );
    // Counted against the token: seven more wrong codes use it up.
    for guess in 4..=10 {
        let (status, answer) = access_with_code(
            &app,
            phone,
            &token,
            &format!("NOPE{guess}"),
            &format!("2001:db8:{guess}::1"),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "guess {guess}: {answer}");
    }
    let (status, answer) = access_with_code(&app, phone, &token, "NOPE11", "2001:db8:11::1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, answer) = app
        .request(
            "POST",
            "/v1/checkout/access",
            Some(API_KEY),
            Some(
                json!({"phone": "+14155553965", "email": "a@example.com", "discount_code": "FREE"}),
            ),
        )
        .await;
    assert_eq!(
        answer["error"]["code"], "below_minimum_charge",
        "{status}: {answer}"
    );
    assert_eq!(stripe.requests("/v1/checkout/sessions").len(), 0);
}

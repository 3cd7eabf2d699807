//! Sign-in by phone: codes texted, checked, limited and killed in the
//! store (both stores); what a stranger learns (nothing); sign-up only for
//! a proved phone; tokens that expire and close their feeds.

use actix_web::http::StatusCode;
use serde_json::{json, Value};
use sms_credit_actors::clock::ManualClock;

use crate::fake_stripe::{EventFactory, FakeStripe};
use crate::fake_twilio::FakeTwilio;
use crate::feed::{close_of, next_json, open};
use crate::helpers::{
    fresh_directory, stripe_settings, test_settings, with_twilio, TestApp, ADMIN_TOKEN,
};

const START_MS: i64 = 1_795_253_400_000;

struct World {
    app: TestApp,
    clock: ManualClock,
    twilio: FakeTwilio,
    stripe: FakeStripe,
}

async fn world_with(change: impl FnOnce(&mut sms_credit::config::Settings)) -> World {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    change(&mut settings);
    let clock = ManualClock::new(START_MS);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    World {
        app,
        clock,
        twilio,
        stripe,
    }
}

async fn ask_code(app: &TestApp, phone: &str) -> (StatusCode, Value) {
    app.request(
        "POST",
        "/v1/sign-in/code",
        None,
        Some(json!({ "phone": phone })),
    )
    .await
}

async fn sign_in(app: &TestApp, phone: &str, proof: Value) -> (StatusCode, Value) {
    let mut body = proof;
    body["phone"] = json!(phone);
    app.request("POST", "/v1/sign-in", None, Some(body)).await
}

/// Waits (up to 10 s) until `sql` counts `expected`.
async fn wait_for_number(app: &TestApp, sql: &str, expected: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let counted = app.directory.number(sql);
        if counted == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql} counted {counted}, not {expected}, within 10 s"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// How many texts went to `phone` so far.
pub(crate) fn texts_to(twilio: &FakeTwilio, phone: &str) -> usize {
    twilio.sent().iter().filter(|sms| sms.to == phone).count()
}

/// The code in the newest text to `phone`, waiting (up to 10 s) for one:
/// a code is texted after the answer.
pub(crate) async fn code_sent_to(twilio: &FakeTwilio, phone: &str) -> String {
    code_after(twilio, phone, 0).await
}

/// The code in the newest text to `phone` once more than `before` went to
/// it, waiting up to 10 s.
pub(crate) async fn code_after(twilio: &FakeTwilio, phone: &str, before: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sent = twilio.sent();
        let to_phone: Vec<_> = sent.iter().filter(|sms| sms.to == phone).collect();
        if to_phone.len() > before {
            let text = to_phone[to_phone.len() - 1];
            let code: String = text.body.chars().take(6).collect();
            assert!(code.chars().all(|c| c.is_ascii_digit()), "{}", text.body);
            return code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new text to {phone} ({before} before) within 10 s: {sent:?}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A code that is not `code`.
fn other_code(code: &str) -> String {
    let first = code.as_bytes()[0];
    let replaced = if first == b'9' {
        '0'
    } else {
        (first + 1) as char
    };
    format!("{replaced}{}", &code[1..])
}

on_both_stores!(a_texted_code_signs_in_a_customer_and_a_stranger_learns_nothing);
/// A customer's phone and an unknown one get the same answer to a code
/// request; the customer's code gives an account token that works,
/// expires in 30 days and is listed for the admin; the unknown phone's
/// gives a sign-up token. A wrong code is 401; a used code works once.
async fn a_texted_code_signs_in_a_customer_and_a_stranger_learns_nothing() {
    let world = world_with(|_| {}).await;
    let app = &world.app;
    let customer = "+14155554001";
    let stranger = "+14155554002";
    let account = app.create_account(customer).await;

    let (status, for_customer) = ask_code(app, customer).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_customer}");
    let (status, for_stranger) = ask_code(app, stranger).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_stranger}");
    assert_eq!(
        for_customer, for_stranger,
        "the same answer for every phone"
    );
    assert_eq!(
        for_customer,
        json!({"code_length": 6, "expires_in_seconds": 600})
    );
    let (status, invalid) = ask_code(app, "not a phone").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{invalid}");

    let code = code_sent_to(&world.twilio, customer).await;
    let (status, wrong) = sign_in(app, customer, json!({ "code": other_code(&code) })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
    assert_eq!(wrong["error"]["code"], "invalid_code");

    let (status, signed_in) = sign_in(app, customer, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);
    let token = signed_in["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("sct_"), "{signed_in}");
    assert_eq!(signed_in["expires_at"], "2026-12-21T09:30:00.000Z");
    let (status, me) = app
        .request("GET", "/v1/accounts/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], account);
    let (status, again) = sign_in(app, customer, json!({ "code": code })).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a code works once: {again}"
    );

    let (status, listed) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{listed}");
    assert_eq!(tokens[0]["source"], "sign_in");
    assert_eq!(
        tokens[0]["expires_at"],
        sms_credit_actors::clock::format_rfc3339_ms(START_MS + 30 * 86_400_000),
        "{listed}"
    );
    assert!(!listed.to_string().contains(&token[4..]), "never the token");
    // The list is the operator's: no credential, a wrong one or the
    // account's own token gets nothing of it.
    for credential in [None, Some("wrong-admin-token-guess"), Some(token.as_str())] {
        let (status, answer) = app
            .request(
                "GET",
                &format!("/v1/admin/accounts/{account}/tokens"),
                credential,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{credential:?}: {answer}");
        assert!(answer.get("tokens").is_none(), "{answer}");
    }

    // The stranger's code: a sign-up token, no account.
    let code = code_sent_to(&world.twilio, stranger).await;
    let (status, signed_up) = sign_in(app, stranger, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK, "{signed_up}");
    assert!(signed_up["sign_up_token"]
        .as_str()
        .unwrap()
        .starts_with("sup_"));
    assert_eq!(signed_up["expires_at"], "2026-11-21T10:00:00.000Z");
    assert!(signed_up.get("token").is_none());
    let (status, accounts) = app
        .request(
            "GET",
            "/v1/admin/accounts?q=4155554002",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        accounts["accounts"],
        json!([]),
        "nothing made for the phone"
    );

    // A code for one phone is nothing for another.
    ask_code(app, "+14155554003").await;
    let code = code_sent_to(&world.twilio, "+14155554003").await;
    let (status, _) = sign_in(app, customer, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Each code went out as a service message: costed, not charged
    // (recorded once Twilio took it, after the answer), and the code
    // itself is nowhere in the database.
    wait_for_number(
        app,
        "SELECT COUNT(*) FROM messages WHERE kind = 'reply' AND charged = 0
           AND account_id IS NULL AND carrier_cost_per_segment > 0",
        3,
    )
    .await;
    assert_eq!(
        app.directory.number(&format!(
            "SELECT COUNT(*) FROM sign_in_codes WHERE code_hash = '{code}'"
        )),
        0
    );
    // Malformed proofs are 400 with a reason.
    let (status, answer) = sign_in(app, customer, json!({ "code": "12ab" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = sign_in(app, customer, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "proof_required");
}

on_both_stores!(codes_are_limited_and_five_wrong_ones_stop_the_address);
/// Per phone, from one address: one code per 30 s, five per hour; per
/// address: as many as the setting says per hour (429 with Retry-After).
/// A code expires after 10 min. After five wrong codes the address can no
/// longer sign the phone in: the right code no longer works from it.
async fn codes_are_limited_and_five_wrong_ones_stop_the_address() {
    let world = world_with(|settings| {
        settings.access.sign_in.limits.per_address_per_hour = 8;
    })
    .await;
    let app = &world.app;
    let phone = "+14155554011";
    app.create_account(phone).await;

    assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
    code_sent_to(&world.twilio, phone).await;

    // 30 s between codes.
    let (status, too_soon) = ask_code(app, phone).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{too_soon}");
    assert_eq!(too_soon["error"]["code"], "too_many_codes");
    world.clock.advance_ms(30_000);
    assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
    // A code expires after 10 minutes.
    let code = code_after(&world.twilio, phone, 1).await;
    world.clock.advance_ms(600_000);
    let (status, _) = sign_in(app, phone, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired code");

    // Five codes an hour for one phone: three more now, the sixth refused.
    for _ in 0..3 {
        world.clock.advance_ms(31_000);
        assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
    }
    world.clock.advance_ms(31_000);
    code_after(&world.twilio, phone, 4).await;
    let sent_before = world.twilio.sent().len();
    let response = world
        .app
        .request(
            "POST",
            "/v1/sign-in/code",
            None,
            Some(json!({"phone": phone})),
        )
        .await;
    assert_eq!(response.0, StatusCode::TOO_MANY_REQUESTS, "{}", response.1);
    assert_eq!(world.twilio.sent().len(), sent_before, "nothing sent");
    let retry_after = retry_after_of(app, phone).await;
    assert!(
        (1..=3_600).contains(&retry_after),
        "Retry-After {retry_after}"
    );

    // Per address: 8 an hour from here, whatever the phones (5 used above).
    for index in 0..3 {
        let (status, answer) = ask_code(app, &format!("+1415555402{index}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let (status, answer) = ask_code(app, "+14155554029").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    world.clock.advance_ms(3_600_000);
    assert_eq!(ask_code(app, "+14155554029").await.0, StatusCode::ACCEPTED);
    let before = texts_to(&world.twilio, phone);
    assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);

    // Five wrong codes, and the right one no longer works from here.
    let code = code_after(&world.twilio, phone, before).await;
    for _ in 0..5 {
        let (status, answer) = sign_in(app, phone, json!({ "code": other_code(&code) })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }
    let (status, stopped) = sign_in(app, phone, json!({ "code": code })).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the address guessed wrong five times: {stopped}"
    );
    assert_eq!(stopped["error"]["code"], "too_many_wrong_codes");
}

/// The `Retry-After` of a refused code request.
async fn retry_after_of(app: &TestApp, phone: &str) -> u64 {
    let response = awc::Client::default()
        .post(app.url("/v1/sign-in/code"))
        .send_json(&json!({ "phone": phone }))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    response
        .headers()
        .get("Retry-After")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

on_both_stores!(anonymous_access_needs_a_proved_phone_and_creates_nothing_without_one);
/// Without a sign-up token an anonymous purchase of access gets the same
/// 401 for a customer's phone and an unknown one, and nothing is made:
/// no account, no Stripe customer, no Checkout, no discount use. With the
/// token of another phone, the same. With its own, Checkout opens; once
/// paid, the sign-up token is exchanged for an account token.
async fn anonymous_access_needs_a_proved_phone_and_creates_nothing_without_one() {
    let world = world_with(|_| {}).await;
    let app = &world.app;
    let customer = "+14155554031";
    let stranger = "+14155554032";
    app.create_account(customer).await;
    let (status, _) = app
        .request(
            "POST",
            "/v1/admin/discount-codes",
            Some(ADMIN_TOKEN),
            Some(json!({"code": "ONCE", "type": "percent", "percent": 10, "max_uses": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let anonymous = |phone: &str, token: Option<&str>| {
        let mut body = json!({"phone": phone, "email": "a@example.com", "discount_code": "ONCE"});
        if let Some(token) = token {
            body["sign_up_token"] = json!(token);
        }
        app.request("POST", "/v1/checkout/access", None, Some(body))
    };
    let (status, for_customer) = anonymous(customer, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{for_customer}");
    let (status, for_stranger) = anonymous(stranger, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{for_stranger}");
    assert_eq!(
        for_customer, for_stranger,
        "the same answer for every phone"
    );
    assert_eq!(for_customer["error"]["code"], "sign_up_required");
    let (status, _) = anonymous(stranger, Some("sup_made_up")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The stranger proves their phone; the token is for that phone only.
    ask_code(app, stranger).await;
    let code = code_sent_to(&world.twilio, stranger).await;
    let (_, signed_up) = sign_in(app, stranger, json!({ "code": code })).await;
    let sign_up_token = signed_up["sign_up_token"].as_str().unwrap().to_string();
    let (status, _) = anonymous("+14155554033", Some(&sign_up_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "another phone's token");

    assert!(world.stripe.requests("/v1/customers").is_empty());
    assert!(world.stripe.requests("/v1/checkout/sessions").is_empty());
    let (_, accounts) = app
        .request("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        accounts["accounts"].as_array().unwrap().len(),
        1,
        "{accounts}"
    );
    let (_, codes) = app
        .request("GET", "/v1/admin/discount-codes", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(codes["discount_codes"][0]["current_uses"], 0, "{codes}");

    // Not paid yet: no account token.
    let (status, not_yet) = sign_in(app, stranger, json!({ "sign_up_token": sign_up_token })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{not_yet}");
    assert_eq!(not_yet["error"]["code"], "no_access_yet");

    let (status, started) = anonymous(stranger, Some(&sign_up_token)).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let account = started["account_id"].as_i64().unwrap();
    let order = started["order_id"].as_i64().unwrap();
    let session = app.get_orders(account).await[0]["stripe_session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let customer_id = app.get_admin_account(account).await.1["stripe_customer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = EventFactory::new();
    let (status, _) = app
        .deliver(&events.checkout_completed(&session, order, &customer_id, 2699, "pi_signup"))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, signed_in) =
        sign_in(app, stranger, json!({ "sign_up_token": sign_up_token })).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);
    let token = signed_in["token"].as_str().unwrap();
    let (status, me) = app
        .request("GET", "/v1/accounts/me", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["status"], "active");

    // The exchange used the sign-up token up.
    let (status, _) = sign_in(app, stranger, json!({ "sign_up_token": sign_up_token })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

on_both_stores!(a_sign_in_token_expires_and_closes_its_feeds);
/// When a token made by signing in expires, requests with it are 401 and
/// the feeds it opened close, saying so.
async fn a_sign_in_token_expires_and_closes_its_feeds() {
    let world = world_with(|settings| {
        settings.access.sign_in.token_lifetime_ms = 86_400_000;
    })
    .await;
    let app = &world.app;
    let phone = "+14155554041";
    let account = app.create_account(phone).await;
    ask_code(app, phone).await;
    let code = code_sent_to(&world.twilio, phone).await;
    let (_, signed_in) = sign_in(app, phone, json!({ "code": code })).await;
    let token = signed_in["token"].as_str().unwrap().to_string();
    let mut feed = open(
        app,
        &format!("/v1/accounts/{account}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    next_json(&mut feed).await;

    world.clock.advance_ms(86_400_000);
    assert_eq!(
        close_of(&mut feed).await,
        (1008, "the token expired: sign in again".to_string())
    );
    let (status, _) = app
        .request("GET", "/v1/accounts/me", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Every service left off answers `503 …_not_configured`; sign-in by text
/// message too, in the customer's words.
#[actix_rt::test]
async fn without_twilio_sign_in_is_not_configured_in_customer_words() {
    let directory = fresh_directory();
    let settings = test_settings(&directory);
    let app = TestApp::spawn_with(directory, settings).await;
    let (status, answer) = ask_code(&app, "+14155554051").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "sign_in_not_configured");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("not available"), "{message}");
    assert!(!message.contains("SMS_CREDIT_"), "{message}");
}

on_both_stores!(a_sign_up_token_is_used_up_by_its_exchange_and_revoked_with_the_accounts_tokens);
/// A sign-up token is exchanged for one account token, once (two
/// exchanges at once: one wins); revoking or rotating the account's tokens
/// revokes the sign-up tokens of its phone too, for the exchange and for
/// buying access.
async fn a_sign_up_token_is_used_up_by_its_exchange_and_revoked_with_the_accounts_tokens() {
    let world = world_with(|_| {}).await;
    let app = &world.app;
    let twilio = &world.twilio;

    // Proved while without access; the admin then makes the account.
    let sign_up = |phone: &'static str| async move {
        ask_code(app, phone).await;
        let code = code_sent_to(twilio, phone).await;
        let (status, signed_up) = sign_in(app, phone, json!({ "code": code })).await;
        assert_eq!(status, StatusCode::OK, "{signed_up}");
        signed_up["sign_up_token"].as_str().unwrap().to_string()
    };
    let phone = "+14155554061";
    let token = sign_up(phone).await;
    let account = app.create_account(phone).await;
    let exchange = || sign_in(app, phone, json!({ "sign_up_token": token }));
    let (first, second) = futures_util::join!(exchange(), exchange());
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::UNAUTHORIZED],
        "one exchange of two at once: {} {}",
        first.1,
        second.1
    );
    let (status, again) = exchange().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "used up: {again}");
    assert_eq!(again["error"]["code"], "invalid_code");
    let (_, listed) = app
        .request(
            "GET",
            &format!("/v1/admin/accounts/{account}/tokens"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");

    // Revoked, then rotated: the phone's sign-up tokens go with them.
    for (phone, action) in [("+14155554062", "revoke"), ("+14155554063", "rotate")] {
        let token = sign_up(phone).await;
        let account = app.create_account(phone).await;
        let (method, path) = match action {
            "revoke" => ("DELETE", format!("/v1/admin/accounts/{account}/tokens")),
            _ => (
                "POST",
                format!("/v1/admin/accounts/{account}/tokens/rotate"),
            ),
        };
        let (status, answer) = app.request(method, &path, Some(ADMIN_TOKEN), None).await;
        assert!(status.is_success(), "{action}: {status} {answer}");
        let (status, answer) = sign_in(app, phone, json!({ "sign_up_token": token })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{action}: {answer}");
        let (status, answer) = app
            .request(
                "POST",
                "/v1/checkout/access",
                None,
                Some(json!({"phone": phone, "email": "a@example.com", "sign_up_token": token})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{action}: {answer}");
        assert_eq!(answer["error"]["code"], "sign_up_required");
    }

    // One not exchanged dies after 30 minutes.
    let phone = "+14155554064";
    let token = sign_up(phone).await;
    app.create_account(phone).await;
    world.clock.advance_ms(30 * 60_000);
    let (status, answer) = sign_in(app, phone, json!({ "sign_up_token": token })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired: {answer}");
}

/// The metrics text, with the metrics token the test world set.
pub(crate) async fn metrics_text(app: &TestApp) -> String {
    let mut response = app
        .client
        .get(app.url("/metrics"))
        .insert_header(("Authorization", format!("Bearer {METRICS_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    String::from_utf8(response.body().await.unwrap().to_vec()).unwrap()
}

/// The value of the metric line `series` (name and labels), 0 if absent.
pub(crate) fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const METRICS_TOKEN: &str = "metrics-token-for-sign-in";

on_both_stores!(a_number_twilio_refuses_gets_the_same_answer_as_any_other);
/// A phone that told the service STOP (Twilio refuses it: 21610) or that
/// Twilio refuses for another reason gets the same `202` as every other
/// phone; the refusal is counted in the metrics (and logged).
async fn a_number_twilio_refuses_gets_the_same_answer_as_any_other() {
    let world = world_with(|settings| {
        settings.access.metrics_token = Some(sms_credit::config::Secret::new(METRICS_TOKEN));
    })
    .await;
    let app = &world.app;
    let customer = "+14155554071";
    let stopped = "+14155554072";
    let unreachable = "+14155554073";
    app.create_account(customer).await;
    app.create_account(stopped).await;
    world.twilio.opt_out(stopped, true);

    let (status, for_customer) = ask_code(app, customer).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_customer}");
    let (status, for_stopped) = ask_code(app, stopped).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_stopped}");
    assert_eq!(for_stopped, for_customer, "the same answer for every phone");
    // The texts go after the answers: both settled before Twilio refuses
    // every code.
    wait_for_outcomes(app, 2).await;
    assert_eq!(world.twilio.refused_opted_out(), 1);
    world.twilio.refuse(Some("sign-in code"));
    let (status, for_unreachable) = ask_code(app, unreachable).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_unreachable}");
    assert_eq!(
        for_unreachable, for_customer,
        "the same answer for every phone"
    );

    let metrics = wait_for_outcomes(app, 3).await;
    for (outcome, count) in [("sent", 1), ("opted_out", 1), ("refused", 1)] {
        assert_eq!(
            metric(
                &metrics,
                &format!("sms_credit_sign_in_codes_total{{country=\"US\",outcome=\"{outcome}\"}}")
            ),
            count,
            "{outcome}: {metrics}"
        );
    }
}

/// Asks for a code for `phone` as `client` (through the trusted proxy).
async fn ask_code_from(app: &TestApp, phone: &str, client: &str) -> (StatusCode, Value) {
    let mut response = app
        .client
        .post(app.url("/v1/sign-in/code"))
        .insert_header(("X-Forwarded-For", client))
        .send_json(&json!({ "phone": phone }))
        .await
        .unwrap();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status(), body)
}

on_both_stores!(sign_in_cannot_be_used_to_text_codes_at_the_services_expense);
/// SMS pumping: an IPv6 host's addresses are one client (its /64) for the
/// per-address limit; codes of an hour are capped across every caller and
/// per destination country (429 to all once reached, whatever the address);
/// a country the rate table does not price gets no code; codes are counted
/// by country in `/metrics`, and an unusual rate is listed for the
/// operator.
async fn sign_in_cannot_be_used_to_text_codes_at_the_services_expense() {
    let world = world_with(|settings| {
        settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        settings.access.sign_in.limits.per_address_per_hour = 3;
        settings.access.sign_in.limits.per_hour = 8;
        settings.access.sign_in.limits.per_country_per_hour = 4;
        settings.access.metrics_token = Some(sms_credit::config::Secret::new(METRICS_TOKEN));
    })
    .await;
    let app = &world.app;

    // One /64, rotating its addresses: three codes, then no more; another
    // /64 is another client.
    for index in 1..=3 {
        let (status, answer) = ask_code_from(
            app,
            &format!("+1415555410{index}"),
            &format!("2001:db8:1:2::{index}"),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let (status, answer) = ask_code_from(app, "+14155554104", "2001:db8:1:2:ffff::9").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_codes");

    // A fourth US code from another client fills the country's cap of 4;
    // a fifth is answered as any other, and not texted.
    let (status, for_fourth) = ask_code_from(app, "+14155554105", "2001:db8:1:3::1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_fourth}");
    let (status, answer) = ask_code_from(app, "+14155554106", "203.0.113.21").await;
    assert_eq!(status, StatusCode::ACCEPTED, "the US cap: {answer}");
    assert_eq!(answer, for_fourth, "the same answer past the cap");
    // Other countries still get codes, until the cap of every code (8).
    for (index, phone) in [
        "+447400123456",
        "+33612345678",
        "+393123456789",
        "+41781234567",
    ]
    .iter()
    .enumerate()
    {
        let (status, answer) = ask_code_from(app, phone, &format!("203.0.113.3{index}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{phone}: {answer}");
    }
    let (status, answer) = ask_code_from(app, "+6421234567", "203.0.113.40").await;
    assert_eq!(status, StatusCode::ACCEPTED, "the cap of all: {answer}");
    // A country the rate table does not price: no code, whatever the phone.
    let (status, answer) = ask_code_from(app, "+4915112345678", "203.0.113.41").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "unsupported_destination");

    let metrics = wait_for_outcomes(app, 11).await;
    assert_eq!(
        world.twilio.sent().len(),
        8,
        "eight codes went out: {:?}",
        world.twilio.sent()
    );
    assert_eq!(texts_to(&world.twilio, "+14155554106"), 0);
    assert_eq!(texts_to(&world.twilio, "+6421234567"), 0);
    for (country, outcome, count) in [
        ("US", "sent", 4),
        ("US", "capped", 1),
        ("GB", "sent", 1),
        ("NZ", "capped", 1),
        ("DE", "unpriced", 1),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "sms_credit_sign_in_codes_total{{country=\"{country}\",outcome=\"{outcome}\"}}"
                )
            ),
            count,
            "{country} {outcome}: {metrics}"
        );
    }
    let (status, attention) = app
        .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{attention}");
    assert_eq!(
        attention["sign_in_codes"],
        json!([
            {"country": null, "codes_last_hour": 8, "cap": 8, "capped_last_hour": 2},
            {"country": "US", "codes_last_hour": 4, "cap": 4, "capped_last_hour": 1},
        ]),
        "{attention}"
    );

    // An hour later the caps have room again.
    world.clock.advance_ms(3_600_000);
    let (status, answer) = ask_code_from(app, "+14155554107", "203.0.113.21").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    code_sent_to(&world.twilio, "+14155554107").await;
}

on_both_stores!(the_admin_lifts_a_phones_sign_in_limits_a_stranger_used_up);
/// Strangers who know a customer's phone can use up its codes of the hour
/// from several addresses (each address five, the phone ten in all); the
/// admin lifts the phone's limits (API, then the CLI for another phone),
/// and the customer gets a code at once. What each stranger's address
/// used still counts against it: it cannot start again at once.
async fn the_admin_lifts_a_phones_sign_in_limits_a_stranger_used_up() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554081";
    let account = app.create_account(phone).await;
    let strangers = [STRANGER, "198.51.100.8"];
    let clock = &world.clock;

    // Two strangers' addresses: five codes each, the phone's ten.
    let use_up = |phone: &'static str| async move {
        for _ in 0..5 {
            for stranger in strangers {
                let (status, answer) = ask_code_from(app, phone, stranger).await;
                assert_eq!(status, StatusCode::ACCEPTED, "{stranger}: {answer}");
            }
            clock.advance_ms(31_000);
        }
        let (status, answer) = ask_code_from(app, phone, CUSTOMER).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "the customer is locked out: {answer}"
        );
    };
    use_up(phone).await;
    let code = code_after(&world.twilio, phone, 9).await;
    for _ in 0..5 {
        sign_in_from(app, phone, json!({ "code": other_code(&code) }), STRANGER).await;
    }

    let lift = |phone: &'static str, token: Option<&'static str>| {
        app.request(
            "POST",
            "/v1/admin/sign-in/lift",
            token,
            Some(json!({ "phone": phone })),
        )
    };
    let (status, _) = lift(phone, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the admin's alone");
    let (status, lifted) = lift(phone, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{lifted}");
    assert_eq!(lifted["phone"], phone);
    assert_eq!(lifted["codes_lifted"], 10, "{lifted}");
    let (status, answer) = ask_code_from(app, phone, CUSTOMER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let code = code_after(&world.twilio, phone, 10).await;
    let (status, signed_in) = sign_in_from(app, phone, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);
    for stranger in strangers {
        let (status, answer) = ask_code_from(app, phone, stranger).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{stranger} does not start again: {answer}"
        );
    }
    let (status, answer) = lift("not a phone", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // From the command line, for a phone with no account yet.
    let other = "+14155554082";
    use_up(other).await;
    let output = crate::helpers::run_cli(&app.directory, &["sign-in", "lift", other, "--json"]);
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["codes_lifted"], 10, "{printed}");
    assert_eq!(
        ask_code_from(app, other, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
}

/// Signs in to `phone` with `proof` as `client` (through the trusted proxy).
async fn sign_in_from(
    app: &TestApp,
    phone: &str,
    proof: Value,
    client: &str,
) -> (StatusCode, Value) {
    let mut body = proof;
    body["phone"] = json!(phone);
    let mut response = app
        .client
        .post(app.url("/v1/sign-in"))
        .insert_header(("X-Forwarded-For", client))
        .send_json(&body)
        .await
        .unwrap();
    let answer = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status(), answer)
}

/// A world behind a trusted proxy (127.0.0.1), so that each client of a
/// test names its own address, with the metrics token set.
async fn world_behind_proxy(change: impl FnOnce(&mut sms_credit::config::Settings)) -> World {
    world_with(|settings| {
        settings.access.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        settings.access.metrics_token = Some(sms_credit::config::Secret::new(METRICS_TOKEN));
        change(settings);
    })
    .await
}

/// Waits (up to 10 s) until `/metrics` has counted `total` sign-in code
/// outcomes (a code's is counted once its text is settled, after the
/// answer), and answers the metrics text.
async fn wait_for_outcomes(app: &TestApp, total: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = metrics_text(app).await;
        let counted: u64 = text
            .lines()
            .filter(|line| line.starts_with("sms_credit_sign_in_codes_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if counted >= total {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} sign-in code outcomes counted, not {total}, within 10 s: {text}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The count of one sign-in code outcome to one country in `metrics`.
fn outcome(metrics: &str, country: &str, outcome: &str) -> u64 {
    metric(
        metrics,
        &format!("sms_credit_sign_in_codes_total{{country=\"{country}\",outcome=\"{outcome}\"}}"),
    )
}

const STRANGER: &str = "198.51.100.7";
const CUSTOMER: &str = "203.0.113.9";

on_both_stores!(after_a_lift_a_strangers_wrong_codes_do_not_stop_the_customers_code);
/// Wrong codes count against the address that sends them (after five, it
/// can no longer sign the phone in, even with the right code), not
/// against the customer: after the admin lifts the phone's limits, the
/// customer asks for a code from their own address; the stranger's
/// address is still stopped, a new one of the stranger's guesses wrong
/// until it is stopped too, and the customer's code still signs in.
async fn after_a_lift_a_strangers_wrong_codes_do_not_stop_the_customers_code() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554091";
    let account = app.create_account(phone).await;

    // The stranger asks for the phone's codes and guesses wrong.
    for _ in 0..5 {
        let (status, answer) = ask_code_from(app, phone, STRANGER).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        world.clock.advance_ms(31_000);
    }
    let code = code_after(&world.twilio, phone, 4).await;
    for _ in 0..5 {
        let (status, answer) =
            sign_in_from(app, phone, json!({ "code": other_code(&code) }), STRANGER).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }
    let (status, lifted) = app
        .request(
            "POST",
            "/v1/admin/sign-in/lift",
            Some(ADMIN_TOKEN),
            Some(json!({ "phone": phone })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lifted}");

    // The customer asks; the stranger goes on guessing wrong: its
    // stopped address still is, a new one is after five.
    let before = texts_to(&world.twilio, phone);
    let (status, answer) = ask_code_from(app, phone, CUSTOMER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let code = code_after(&world.twilio, phone, before).await;
    let (status, answer) =
        sign_in_from(app, phone, json!({ "code": other_code(&code) }), STRANGER).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_wrong_codes");
    for guess in 1..=10 {
        let (status, answer) = sign_in_from(
            app,
            phone,
            json!({ "code": other_code(&code) }),
            "198.51.100.8",
        )
        .await;
        let expected = if guess <= 5 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, expected, "guess {guess}: {answer}");
    }
    let (status, signed_in) = sign_in_from(app, phone, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the customer's code still works: {signed_in}"
    );
    assert_eq!(signed_in["account_id"], account);

    // The address that guessed wrong five times cannot sign the phone in,
    // even with a right code; the customer's address can.
    world.clock.advance_ms(31_000);
    let before = texts_to(&world.twilio, phone);
    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let code = code_after(&world.twilio, phone, before).await;
    let (status, answer) = sign_in_from(app, phone, json!({ "code": code }), STRANGER).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    let (status, answer) = sign_in_from(app, phone, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

on_both_stores!(a_stranger_asking_for_codes_does_not_stop_the_customers_code);
/// A new code does not cancel the phone's earlier live ones (a few stay
/// live, each address's newest), and the codes of a phone are counted per
/// asking address plus a higher total: a stranger asking for the phone's
/// codes neither kills the customer's live code nor uses up the codes the
/// customer may ask for.
async fn a_stranger_asking_for_codes_does_not_stop_the_customers_code() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554092";
    let account = app.create_account(phone).await;

    let (status, answer) = ask_code_from(app, phone, CUSTOMER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let code = code_sent_to(&world.twilio, phone).await;
    let (status, answer) = ask_code_from(app, phone, STRANGER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    code_after(&world.twilio, phone, 1).await;
    let (status, signed_in) = sign_in_from(app, phone, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the stranger's code did not cancel the customer's: {signed_in}"
    );
    assert_eq!(signed_in["account_id"], account);

    // The stranger's address asks for all it may: five codes in the hour.
    for _ in 0..4 {
        world.clock.advance_ms(31_000);
        let (status, answer) = ask_code_from(app, phone, STRANGER).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    world.clock.advance_ms(31_000);
    let (status, answer) = ask_code_from(app, phone, STRANGER).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_codes");

    // The customer still gets a code, which works while another stranger
    // asks for one more (once the stranger's five texts are in).
    code_after(&world.twilio, phone, 5).await;
    let before = texts_to(&world.twilio, phone);
    let (status, answer) = ask_code_from(app, phone, CUSTOMER).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "one address did not use the phone's codes up: {answer}"
    );
    let code = code_after(&world.twilio, phone, before).await;
    let (status, answer) = ask_code_from(app, phone, "198.51.100.8").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    code_after(&world.twilio, phone, before + 1).await;
    let (status, signed_in) = sign_in_from(app, phone, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
}

on_both_stores!(the_answer_is_the_same_work_for_every_number_and_the_text_follows_it);
/// Asking for a code does the same work for every number before the
/// answer: the request is stored and answered `202`, and the text is sent
/// after the answer. While Twilio holds every text, a number that opted
/// out and one never seen are both answered; the second's code arrives
/// once Twilio lets it through, and the first is never texted.
async fn the_answer_is_the_same_work_for_every_number_and_the_text_follows_it() {
    let world = world_with(|_| {}).await;
    let app = &world.app;
    let opted_out = "+14155554111";
    let never_seen = "+14155554112";
    let (status, _) = app.post_twilio_sms("stop-4111", opted_out, "STOP").await;
    assert_eq!(status, StatusCode::OK);

    world.twilio.hold("sign-in code");
    let mut answers = Vec::new();
    for phone in [opted_out, never_seen] {
        let answered =
            actix_rt::time::timeout(std::time::Duration::from_secs(10), ask_code(app, phone))
                .await
                .unwrap_or_else(|_| {
                    panic!("{phone} was not answered within 10 s while Twilio held its text")
                });
        assert_eq!(answered.0, StatusCode::ACCEPTED, "{phone}: {}", answered.1);
        answers.push(answered);
    }
    assert_eq!(answers[0], answers[1], "the same answer for every number");
    assert_eq!(
        app.directory.number("SELECT COUNT(*) FROM sign_in_codes"),
        2,
        "both requests were stored before the answer"
    );
    world.twilio.wait_for_held(1).await;
    assert_eq!(texts_to(&world.twilio, never_seen), 0);

    world.twilio.release();
    let code = code_sent_to(&world.twilio, never_seen).await;
    let (status, signed_up) = sign_in(app, never_seen, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK, "{signed_up}");
    assert_eq!(texts_to(&world.twilio, opted_out), 0, "never texted");
    assert_eq!(
        world.twilio.refused_opted_out(),
        0,
        "Twilio was not even asked"
    );
}

on_both_stores!(strangers_who_use_up_the_caps_do_not_stop_a_customers_code);
/// The caps of the hour (every caller's codes, a country's) are against
/// texting numbers that are not customers (SMS pumping): four addresses
/// that use them up stop no customer's code. A request past a cap is
/// answered as any other (`202`) and nothing is texted; the metrics and
/// the console's Needs attention say so.
async fn strangers_who_use_up_the_caps_do_not_stop_a_customers_code() {
    // The defaults: 30 codes an hour per address, 100 an hour, 50 per
    // country.
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let customer = "+14155554121";
    let account = app.create_account(customer).await;

    // 60 numbers in the US, then 60 in the UK, from four addresses.
    for address in 0..4 {
        for index in 0..30 {
            let number = address * 30 + index;
            let phone = if number < 60 {
                format!("+1415555{:04}", 5000 + number)
            } else {
                format!("+447400{:06}", 123_000 + number)
            };
            let (status, answer) =
                ask_code_from(app, &phone, &format!("198.51.100.{}", address + 1)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{phone}: {answer}");
        }
    }

    let (status, for_customer) = ask_code_from(app, customer, CUSTOMER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_customer}");
    let code = code_sent_to(&world.twilio, customer).await;
    let (status, signed_in) = sign_in_from(app, customer, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);

    let new_number = "+14155554122";
    let (status, for_new) = ask_code_from(app, new_number, "203.0.113.10").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_new}");
    assert_eq!(for_new, for_customer, "the same answer for every number");

    let metrics = wait_for_outcomes(app, 122).await;
    assert_eq!(
        texts_to(&world.twilio, new_number),
        0,
        "nothing texted past the caps"
    );
    assert_eq!(
        world.twilio.sent().len(),
        101,
        "the caps' 100, and the customer's"
    );
    for (country, counted, sent, capped) in [("US", "US", 51, 11), ("GB", "GB", 50, 10)] {
        assert_eq!(
            outcome(&metrics, counted, "sent"),
            sent,
            "{country}: {metrics}"
        );
        assert_eq!(
            outcome(&metrics, counted, "capped"),
            capped,
            "{country}: {metrics}"
        );
    }
    let (status, attention) = app
        .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{attention}");
    assert_eq!(
        attention["sign_in_codes"],
        json!([
            {"country": null, "codes_last_hour": 100, "cap": 100, "capped_last_hour": 21},
            {"country": "GB", "codes_last_hour": 50, "cap": 50, "capped_last_hour": 10},
            {"country": "US", "codes_last_hour": 50, "cap": 50, "capped_last_hour": 11},
        ]),
        "{attention}"
    );
}

on_both_stores!(the_country_cap_counts_the_destination_the_rate_table_prices);
/// The cap per country counts the destination the rate table prices: with
/// `[aliases] GG = "GB"`, codes to Guernsey and to the UK share the UK's
/// cap.
async fn the_country_cap_counts_the_destination_the_rate_table_prices() {
    let world = world_behind_proxy(|settings| {
        settings.access.sign_in.limits.per_country_per_hour = 2;
        settings.messages.rates = std::sync::Arc::new(
            sms_credit_actors::rating::RateTable::from_toml(
                "margin_percent = 50\n[countries.GB]\nname = \"United Kingdom\"\ncarrier_cost_micros = 50000\n[aliases]\nGG = \"GB\"\n",
            )
            .unwrap(),
        );
    })
    .await;
    let app = &world.app;
    for (index, phone) in [
        "+447400123456",
        "+447911123456",
        "+447400123457",
        "+447911123457",
    ]
    .iter()
    .enumerate()
    {
        let (status, answer) =
            ask_code_from(app, phone, &format!("203.0.113.{}", 50 + index)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{phone}: {answer}");
    }
    let metrics = wait_for_outcomes(app, 4).await;
    assert_eq!(
        world.twilio.sent().len(),
        2,
        "two codes to the priced destination GB, its cap: {:?}",
        world.twilio.sent()
    );
    assert_eq!(outcome(&metrics, "GB", "sent"), 2, "{metrics}");
    assert_eq!(outcome(&metrics, "GB", "capped"), 2, "{metrics}");
    let (_, attention) = app
        .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        attention["sign_in_codes"],
        json!([{"country": "GB", "codes_last_hour": 2, "cap": 2, "capped_last_hour": 2}]),
        "{attention}"
    );
}

/// A code request as `client` (through the trusted proxy): the status, the
/// body and the `Retry-After` header's seconds, if any.
async fn ask_code_waiting_from(
    app: &TestApp,
    phone: &str,
    client: &str,
) -> (StatusCode, Value, Option<u64>) {
    let mut response = app
        .client
        .post(app.url("/v1/sign-in/code"))
        .insert_header(("X-Forwarded-For", client))
        .send_json(&json!({ "phone": phone }))
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status(), body, retry_after)
}

/// A sign-in as `client` (through the trusted proxy): the status, the body
/// and the `Retry-After` header's seconds, if any.
async fn sign_in_waiting_from(
    app: &TestApp,
    phone: &str,
    code: &str,
    client: &str,
) -> (StatusCode, Value, Option<u64>) {
    let mut response = app
        .client
        .post(app.url("/v1/sign-in"))
        .insert_header(("X-Forwarded-For", client))
        .send_json(&json!({ "phone": phone, "code": code }))
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (response.status(), body, retry_after)
}

on_both_stores!(a_customers_code_takes_its_place_in_the_caps_as_anyones_does);
/// The caps of the hour count every code, a customer's too; only phones
/// without an account are held back past them. So whether a code was a
/// customer's changes nothing for the next number: with a country's cap of
/// two, a stranger's number, then a customer's code, then a third phone's:
/// the third is not texted, exactly as when a phone without an account
/// stands in the customer's place.
async fn a_customers_code_takes_its_place_in_the_caps_as_anyones_does() {
    for customer_in_between in [true, false] {
        let world = world_behind_proxy(|settings| {
            settings.access.sign_in.limits.per_country_per_hour = 2;
        })
        .await;
        let app = &world.app;
        let first = "+14155554131";
        let between = "+14155554132";
        let third = "+14155554133";
        if customer_in_between {
            app.create_account(between).await;
        }
        for (index, phone) in [first, between, third].iter().enumerate() {
            let (status, answer) =
                ask_code_from(app, phone, &format!("198.51.100.{}", 20 + index)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{phone}: {answer}");
        }
        wait_for_outcomes(app, 3).await;
        assert_eq!(texts_to(&world.twilio, first), 1);
        assert_eq!(texts_to(&world.twilio, between), 1);
        assert_eq!(
            texts_to(&world.twilio, third),
            0,
            "the cap of two was reached, whether or not the second was a customer's \
             (customer: {customer_in_between})"
        );
        // A customer past the cap still gets a code (and it counts too).
        let customer = "+14155554134";
        app.create_account(customer).await;
        let (status, answer) = ask_code_from(app, customer, CUSTOMER).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        code_sent_to(&world.twilio, customer).await;
    }
}

on_both_stores!(a_phone_is_sent_at_most_a_days_codes_customer_or_not_and_listed);
/// Past the caps of the hour a customer is still texted, so a phone has a
/// total of the day too (24 by default), the same for every phone: the
/// 25th code of a day is `429 too_many_codes` with `Retry-After`, for a
/// customer's phone and a stranger's alike. Needs attention lists the
/// phones asked for at an unusual rate, customers' included.
async fn a_phone_is_sent_at_most_a_days_codes_customer_or_not_and_listed() {
    let world = world_behind_proxy(|settings| {
        settings.access.sign_in.limits.min_gap_ms = 0;
        settings.access.sign_in.limits.per_phone_per_hour = 100;
        settings.access.sign_in.limits.per_phone_total_per_hour = 100;
        settings.access.sign_in.limits.per_address_per_hour = 1_000;
    })
    .await;
    let app = &world.app;
    let customer = "+14155554151";
    let stranger = "+14155554152";
    app.create_account(customer).await;
    for phone in [customer, stranger] {
        for index in 0..24 {
            let (status, answer) =
                ask_code_from(app, phone, &format!("198.51.100.{}", 30 + index)).await;
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "{phone}, code {index}: {answer}"
            );
        }
    }
    let mut answers = Vec::new();
    for phone in [customer, stranger] {
        let (status, answer, retry_after) = ask_code_waiting_from(app, phone, "203.0.113.77").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{phone}: {answer}");
        assert_eq!(answer["error"]["code"], "too_many_codes", "{answer}");
        let retry_after = retry_after.expect("Retry-After");
        assert!(
            (1..=86_400).contains(&retry_after),
            "Retry-After {retry_after}"
        );
        answers.push((answer, retry_after));
    }
    assert_eq!(answers[0], answers[1], "the same answer for every phone");

    let (status, attention) = app
        .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{attention}");
    assert_eq!(
        attention["sign_in_phones"],
        json!([
            {"phone": customer, "codes_last_hour": 24, "codes_last_day": 24, "hour_limit": 100, "day_limit": 24},
            {"phone": stranger, "codes_last_hour": 24, "codes_last_day": 24, "hour_limit": 100, "day_limit": 24},
        ]),
        "{attention}"
    );

    // A day after its first code, the phone is sent codes again.
    world.clock.advance_ms(86_400_000);
    let (status, answer) = ask_code_from(app, customer, "203.0.113.77").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}

on_both_stores!(a_customer_who_asked_twice_signs_in_with_the_late_first_code);
/// Texts follow the answer, so a customer may ask again before the first
/// text arrives: the asking address's previous code stays live, and the
/// late first code signs in (the second then no longer does). A third
/// code replaces the first.
async fn a_customer_who_asked_twice_signs_in_with_the_late_first_code() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554161";
    let account = app.create_account(phone).await;

    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let first = code_sent_to(&world.twilio, phone).await;
    world.clock.advance_ms(31_000);
    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let second = code_after(&world.twilio, phone, 1).await;
    let (status, signed_in) = sign_in_from(app, phone, json!({ "code": first }), CUSTOMER).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first code still works: {signed_in}"
    );
    assert_eq!(signed_in["account_id"], account);
    let (status, answer) = sign_in_from(app, phone, json!({ "code": second }), CUSTOMER).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "signing in ended the address's other code: {answer}"
    );

    // Three codes: the first is replaced, the second and third work.
    let mut codes = Vec::new();
    for _ in 0..3 {
        world.clock.advance_ms(31_000);
        let before = texts_to(&world.twilio, phone);
        assert_eq!(
            ask_code_from(app, phone, CUSTOMER).await.0,
            StatusCode::ACCEPTED
        );
        codes.push(code_after(&world.twilio, phone, before).await);
    }
    let (status, answer) = sign_in_from(app, phone, json!({ "code": codes[0] }), CUSTOMER).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "replaced: {answer}");
    let (status, answer) = sign_in_from(app, phone, json!({ "code": codes[1] }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

on_both_stores!(an_address_that_may_no_longer_sign_a_phone_in_is_told_to_wait);
/// After five wrong codes from an address, that address cannot sign the
/// phone in for the hour: it is told so (`429 too_many_wrong_codes` with
/// `Retry-After`, saying to wait and nothing of the phone), not
/// `invalid_code` ("ask for a new one"), which a new code would not mend.
/// Once the wait is over, a new code signs in.
async fn an_address_that_may_no_longer_sign_a_phone_in_is_told_to_wait() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554171";
    let account = app.create_account(phone).await;

    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let code = code_sent_to(&world.twilio, phone).await;
    for attempt in 1..=5 {
        let (status, answer, _) =
            sign_in_waiting_from(app, phone, &other_code(&code), CUSTOMER).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{attempt}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_code");
        world.clock.advance_ms(60_000);
    }
    let (status, answer, retry_after) = sign_in_waiting_from(app, phone, &code, CUSTOMER).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert_eq!(answer["error"]["code"], "too_many_wrong_codes", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("wait"), "{message}");
    assert!(!message.contains("new one"), "{message}");
    // The first wrong code was five minutes ago: it is an hour old in 55.
    assert_eq!(retry_after, Some(55 * 60), "{answer}");
    // A stranger's phone: the same answer after the same wrong codes.
    let stranger = "+14155554172";
    assert_eq!(
        ask_code_from(app, stranger, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let stranger_code = code_sent_to(&world.twilio, stranger).await;
    for _ in 0..5 {
        sign_in_waiting_from(app, stranger, &other_code(&stranger_code), CUSTOMER).await;
    }
    let (status, for_stranger, _) =
        sign_in_waiting_from(app, stranger, &stranger_code, CUSTOMER).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{for_stranger}");
    assert_eq!(for_stranger, answer, "the same answer for every phone");

    world.clock.advance_ms(55 * 60_000);
    let before = texts_to(&world.twilio, phone);
    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let code = code_after(&world.twilio, phone, before).await;
    let (status, signed_in, _) = sign_in_waiting_from(app, phone, &code, CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);
}

on_both_stores!(a_lift_ends_the_phones_codes_and_keeps_what_each_address_guessed);
/// The lift ends the phone's live codes (their wrong tries with them) and
/// its totals, and keeps each address's wrong codes: a stranger's address
/// that guessed wrong five times still cannot sign the phone in, nor use a
/// code someone else asked for; a customer who mistyped five times gets in
/// with a code asked for after the lift.
async fn a_lift_ends_the_phones_codes_and_keeps_what_each_address_guessed() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554181";
    let account = app.create_account(phone).await;

    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let before_lift = code_sent_to(&world.twilio, phone).await;
    for client in [STRANGER, CUSTOMER] {
        for _ in 0..5 {
            let (status, answer) = sign_in_from(
                app,
                phone,
                json!({ "code": other_code(&before_lift) }),
                client,
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{client}: {answer}");
        }
    }
    let (status, lifted) = app
        .request(
            "POST",
            "/v1/admin/sign-in/lift",
            Some(ADMIN_TOKEN),
            Some(json!({ "phone": phone })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lifted}");

    // The stranger's address does not start again, even with a right code.
    let (status, answer) = sign_in_from(app, phone, json!({ "code": before_lift }), STRANGER).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the stranger's wrong codes still count: {answer}"
    );
    // The phone's live codes ended with the lift.
    let (status, answer) =
        sign_in_from(app, phone, json!({ "code": before_lift }), "203.0.113.99").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the lift ended the code: {answer}"
    );

    // The customer asks for a code after the lift and signs in with it,
    // from the address that mistyped five times.
    world.clock.advance_ms(31_000);
    let before = texts_to(&world.twilio, phone);
    assert_eq!(
        ask_code_from(app, phone, CUSTOMER).await.0,
        StatusCode::ACCEPTED
    );
    let fresh = code_after(&world.twilio, phone, before).await;
    // The stranger's address cannot use it, nor does its try stop it.
    let (status, answer) = sign_in_from(app, phone, json!({ "code": fresh }), STRANGER).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    let (status, signed_in) = sign_in_from(app, phone, json!({ "code": fresh }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);
}

on_both_stores!(two_instances_signing_in_two_phones_in_opposite_orders_never_deadlock);
/// Two instances each commit requests for codes and code checks for two
/// phones in one transaction (the writer's group commit), in opposite
/// orders: every sign-in write takes its locks in one order, so Postgres
/// never finds a deadlock between them (`pg_stat_database.deadlocks` does
/// not move), and every write is answered.
async fn two_instances_signing_in_two_phones_in_opposite_orders_never_deadlock() {
    use sms_credit_actors::accounts::PhoneNumber;
    use sms_credit_actors::sign_in::{code_hash, CodeLimits, CodeRequest, Proof, Redeem};

    let directory = fresh_directory();
    let settings = test_settings(&directory);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    let postgres = directory.url().starts_with("postgres");
    let deadlocks = || {
        directory
            .number("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    };
    let before = if postgres { deadlocks() } else { 0 };
    let phones = [
        PhoneNumber::parse("+14155554191").unwrap(),
        PhoneNumber::parse("+14155554192").unwrap(),
    ];
    let limits = CodeLimits {
        min_gap_ms: 0,
        per_phone_per_hour: 1_000,
        per_phone_total_per_hour: 1_000,
        per_address_per_hour: 1_000,
        ..CodeLimits::default()
    };
    for round in 0..10_i64 {
        let now_ms = START_MS + round * 1_000;
        let mut writes = Vec::new();
        for (app, order, address) in [
            (&first, [0, 1], "198.51.100.91"),
            (&second, [1, 0], "198.51.100.92"),
        ] {
            let store = app.store.as_ref().unwrap();
            store.gather_next_batch_for_testing(4);
            for index in order {
                let phone = &phones[index];
                let code = format!("{:06}", 100_000 + round * 10 + index as i64);
                let opened = store.sign_in().open_code(CodeRequest {
                    phone: phone.clone(),
                    country: sms_credit_actors::phone::CountryCode::parse("US").unwrap(),
                    code_hash: code_hash(phone, &code),
                    client_address: address.to_string(),
                    now_ms,
                    limits,
                });
                let checked = store.sign_in().redeem(Redeem {
                    phone: phone.clone(),
                    proof: Proof::Code(code_hash(phone, "000000")),
                    client_address: format!("{address}-guess-{round}"),
                    now_ms,
                    account_token_hash: format!("account-{address}-{round}-{index}"),
                    account_token_expires_at_ms: now_ms + 60_000,
                    sign_up_token_hash: format!("sign-up-{address}-{round}-{index}"),
                    sign_up_token_expires_at_ms: now_ms + 60_000,
                });
                writes.push(Box::pin(async move {
                    opened
                        .await
                        .map(|_| ())
                        .map_err(|error| error.to_string())?;
                    checked.await.map(|_| ()).map_err(|error| error.to_string())
                }));
            }
        }
        for (index, outcome) in futures_util::future::join_all(writes)
            .await
            .into_iter()
            .enumerate()
        {
            assert!(outcome.is_ok(), "round {round}, write {index}: {outcome:?}");
        }
    }
    first.stop().await;
    second.stop().await;
    if postgres {
        // A backend's counts reach pg_stat_database at the latest as it
        // exits (before it leaves pg_stat_activity): end the instances'
        // connections, and wait (bounded) until they are gone.
        directory.execute(
            "CREATE TEMPORARY TABLE ended AS SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid();
             SELECT pg_terminate_backend(pid) FROM ended",
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let others = directory.number(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE pid IN (SELECT pid FROM ended)",
            );
            if others == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{others} connections of the stopped instances still open after 10 s"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        directory.execute("SELECT pg_stat_clear_snapshot()");
        assert_eq!(deadlocks(), before, "Postgres found a deadlock");
    }
}

on_both_stores!(a_brief_twilio_failure_is_tried_again_and_the_code_arrives);
/// Twilio answering a code's text `429` (the account's rate), then `503`
/// (briefly unavailable), took nothing: the text is tried again a few
/// times within its minute, and the code arrives and signs in.
async fn a_brief_twilio_failure_is_tried_again_and_the_code_arrives() {
    let world = world_behind_proxy(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554201";
    world.twilio.fail_next_sends(&[429, 503]);
    let (status, answer) = ask_code_from(app, phone, CUSTOMER).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let code = code_sent_to(&world.twilio, phone).await;
    let (status, signed_up) = sign_in_from(app, phone, json!({ "code": code }), CUSTOMER).await;
    assert_eq!(status, StatusCode::OK, "{signed_up}");
    let metrics = wait_for_outcomes(app, 1).await;
    assert_eq!(outcome(&metrics, "US", "sent"), 1, "{metrics}");
    assert_eq!(outcome(&metrics, "US", "failed"), 0, "{metrics}");
}

on_both_stores!(a_stopping_server_waits_for_code_texts_and_counts_those_not_sent);
/// A code's text goes after the answer: a server stopped gracefully (a
/// SIGTERM) waits a bounded while for the texts in flight, and one that
/// did not go out by then is counted `failed` and logged, never lost
/// silently. Twilio holds two codes' texts; the server is told to stop;
/// one text is let through while it waits (it is sent), the other never
/// is (logged as not texted).
async fn a_stopping_server_waits_for_code_texts_and_counts_those_not_sent() {
    use crate::helpers::{process_env, ServerProcess};
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut server = ServerProcess::start(&directory, &process_env(&twilio.base_url, None));
    let app = TestApp::attach(&server, &directory);
    twilio.hold("sign-in code");
    let phones = ["+14155554211", "+14155554212"];
    for phone in phones {
        let (status, answer) = ask_code(&app, phone).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    twilio.wait_for_held(2).await;

    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let mut log = Vec::new();
    let read_until = |log: &mut Vec<String>, server: &ServerProcess, wanted: &str| {
        let wanted = wanted.to_string();
        while let Ok(line) = server.log.try_recv() {
            log.push(line);
        }
        log.iter().any(|line| line.contains(&wanted))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !read_until(&mut log, &server, "waiting for sign-in codes' texts") {
        assert!(
            std::time::Instant::now() < deadline,
            "the stopping server did not say within 30 s that it waits for the texts: {log:#?}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    twilio.let_one_through();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop within 30 s: {log:#?}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}: {log:#?}");
    // The pipe's last lines come with its end.
    while let Ok(line) = server.log.recv_timeout(std::time::Duration::from_secs(10)) {
        log.push(line);
    }
    let texted: Vec<_> = phones
        .iter()
        .filter(|phone| texts_to(&twilio, phone) == 1)
        .collect();
    assert_eq!(texted.len(), 1, "one text went out while the server waited");
    let not_sent: Vec<_> = log
        .iter()
        .filter(|line| line.contains("not texted before the server stopped"))
        .collect();
    assert_eq!(not_sent.len(), 1, "{log:#?}");
    assert!(not_sent[0].contains("US"), "{}", not_sent[0]);
}

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

/// The code in the newest text to `phone`.
pub(crate) fn code_sent_to(twilio: &FakeTwilio, phone: &str) -> String {
    let sent = twilio.sent();
    let text = sent
        .iter()
        .rev()
        .find(|sms| sms.to == phone)
        .unwrap_or_else(|| panic!("no text to {phone}: {sent:?}"));
    let code: String = text.body.chars().take(6).collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{}", text.body);
    code
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

    let code = code_sent_to(&world.twilio, customer);
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
    let code = code_sent_to(&world.twilio, stranger);
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
    let code = code_sent_to(&world.twilio, "+14155554003");
    let (status, _) = sign_in(app, customer, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Each code went out as a service message: costed, not charged, and
    // the code itself is nowhere in the database.
    assert_eq!(
        app.directory.number(
            "SELECT COUNT(*) FROM messages WHERE kind = 'reply' AND charged = 0
               AND account_id IS NULL AND carrier_cost_per_segment > 0"
        ),
        3
    );
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

on_both_stores!(codes_are_limited_and_five_wrong_ones_kill_a_code);
/// Per phone: one code per 30 s, five per hour; per address: as many as
/// the setting says per hour (429 with Retry-After). Five wrong codes kill
/// the code: the right one no longer works. A code expires after 10 min.
async fn codes_are_limited_and_five_wrong_ones_kill_a_code() {
    let world = world_with(|settings| {
        settings.access.sign_in.limits.per_address_per_hour = 8;
    })
    .await;
    let app = &world.app;
    let phone = "+14155554011";
    app.create_account(phone).await;

    assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
    let code = code_sent_to(&world.twilio, phone);
    for _ in 0..5 {
        let (status, answer) = sign_in(app, phone, json!({ "code": other_code(&code) })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }
    let (status, dead) = sign_in(app, phone, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a dead code: {dead}");
    assert_eq!(dead["error"]["code"], "invalid_code");

    // 30 s between codes.
    let (status, too_soon) = ask_code(app, phone).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{too_soon}");
    assert_eq!(too_soon["error"]["code"], "too_many_codes");
    let sent_before = world.twilio.sent().len();
    world.clock.advance_ms(30_000);
    assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
    assert_eq!(world.twilio.sent().len(), sent_before + 1);
    // A new code replaces the last one; it expires after 10 minutes.
    let code = code_sent_to(&world.twilio, phone);
    world.clock.advance_ms(600_000);
    let (status, _) = sign_in(app, phone, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired code");

    // Five codes an hour for one phone: three more now, the sixth refused.
    for _ in 0..3 {
        world.clock.advance_ms(31_000);
        assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
    }
    world.clock.advance_ms(31_000);
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
    assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
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
    let code = code_sent_to(&world.twilio, stranger);
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
    let code = code_sent_to(&world.twilio, phone);
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
        let code = code_sent_to(twilio, phone);
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
    assert_eq!(world.twilio.refused_opted_out(), 1);
    world.twilio.refuse(Some("sign-in code"));
    let (status, for_unreachable) = ask_code(app, unreachable).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{for_unreachable}");
    assert_eq!(
        for_unreachable, for_customer,
        "the same answer for every phone"
    );

    let metrics = metrics_text(app).await;
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

    // A fourth US code from another client fills the country's cap of 4.
    let (status, answer) = ask_code_from(app, "+14155554105", "2001:db8:1:3::1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) = ask_code_from(app, "+14155554106", "203.0.113.21").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the US cap: {answer}"
    );
    assert_eq!(answer["error"]["code"], "too_many_codes");
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
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the cap of all: {answer}"
    );
    assert_eq!(answer["error"]["code"], "too_many_codes");
    // A country the rate table does not price: no code, whatever the phone.
    let (status, answer) = ask_code_from(app, "+4915112345678", "203.0.113.41").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "unsupported_destination");
    let texted = world.twilio.sent().len();
    assert_eq!(texted, 8, "eight codes went out");

    let metrics = metrics_text(app).await;
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
            {"country": null, "codes_last_hour": 8, "cap": 8},
            {"country": "US", "codes_last_hour": 4, "cap": 4},
        ]),
        "{attention}"
    );

    // An hour later the caps have room again.
    world.clock.advance_ms(3_600_000);
    let (status, answer) = ask_code_from(app, "+14155554106", "203.0.113.21").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}

on_both_stores!(the_admin_lifts_a_phones_sign_in_limits_a_stranger_used_up);
/// A stranger who knows a customer's phone can use up its codes of the
/// hour and kill its live code with wrong guesses; the admin lifts the
/// phone's limits (API, then the CLI for another phone), and the customer
/// signs in at once. The address's limit and the caps still hold.
async fn the_admin_lifts_a_phones_sign_in_limits_a_stranger_used_up() {
    let world = world_with(|_| {}).await;
    let app = &world.app;
    let phone = "+14155554081";
    let account = app.create_account(phone).await;

    // The stranger: five codes in the hour, the last one killed.
    for _ in 0..5 {
        assert_eq!(ask_code(app, phone).await.0, StatusCode::ACCEPTED);
        world.clock.advance_ms(31_000);
    }
    let code = code_sent_to(&world.twilio, phone);
    for _ in 0..5 {
        sign_in(app, phone, json!({ "code": other_code(&code) })).await;
    }
    let (status, _) = ask_code(app, phone).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the customer is locked out"
    );

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
    assert_eq!(lifted["codes_lifted"], 5, "{lifted}");
    let (status, answer) = ask_code(app, phone).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let code = code_sent_to(&world.twilio, phone);
    let (status, signed_in) = sign_in(app, phone, json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["account_id"], account);
    let (status, answer) = lift("not a phone", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // From the command line, for a phone with no account yet.
    let other = "+14155554082";
    for _ in 0..5 {
        assert_eq!(ask_code(app, other).await.0, StatusCode::ACCEPTED);
        world.clock.advance_ms(31_000);
    }
    assert_eq!(ask_code(app, other).await.0, StatusCode::TOO_MANY_REQUESTS);
    let output = crate::helpers::run_cli(&app.directory, &["sign-in", "lift", other, "--json"]);
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["codes_lifted"], 5, "{printed}");
    assert_eq!(ask_code(app, other).await.0, StatusCode::ACCEPTED);
}

//! The books (#36): `GET /v1/admin/reports/credit` (and its CSV, and
//! `sms-credit reports credit`) reconcile exactly for any period, on both
//! stores: opening + granted − consumed − expired − refunded = closing for
//! each category, each period's closing is the next one's opening, and the
//! categories' closing balances sum to the accounts' balances at the
//! period's end (and, category by category, to what is left of their
//! grants). A bad period is refused with its reason; a row whose funding is
//! missing is an error, never counted as nothing; a database of the release
//! before grants gets right books once migrated.

use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit_actors::books::BOOKS_SETTLE_MS;
use sms_credit_actors::clock::{format_rfc3339_ms, parse_rfc3339_ms, Clock, ManualClock};

use crate::fake_stripe::{EventFactory, FakeStripe};
use crate::fake_twilio::FakeTwilio;
use crate::helpers::{
    fresh_directory, run_cli, stripe_settings, with_twilio, TestApp, ADMIN_TOKEN, NOW_UNIX,
};
use crate::ledger_actors::assert_verified;
use crate::refunds::paid_top_up;

const NOW_MS: i64 = NOW_UNIX * 1000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The figures of a line, in the order of the identity.
const FIGURES: [&str; 6] = [
    "opening", "granted", "consumed", "expired", "refunded", "closing",
];

/// The query of the period [from, to).
fn period(from_ms: i64, to_ms: i64) -> String {
    format!(
        "from={}&to={}",
        format_rfc3339_ms(from_ms),
        format_rfc3339_ms(to_ms)
    )
}

async fn books(app: &TestApp, query: &str) -> Value {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/admin/reports/credit?{query}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// A line's figures (opening, granted, consumed, expired, refunded,
/// closing), by its category (`total` for the total).
fn figures(books: &Value, category: &str) -> [i64; 6] {
    let line = if category == "total" {
        &books["total"]
    } else {
        books["categories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|line| line["category"] == category)
            .unwrap_or_else(|| panic!("no {category} line: {books}"))
    };
    assert_eq!(line["category"], category, "{books}");
    FIGURES.map(|figure| line[format!("{figure}_micros")].as_i64().unwrap())
}

/// Every line reconciles, and the total is the categories summed.
fn assert_reconciles(books: &Value) {
    let categories: Vec<&str> = books["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["category"].as_str().unwrap())
        .collect();
    assert_eq!(categories, ["paid", "promotional", "owed"], "{books}");
    for category in ["paid", "promotional", "owed", "total"] {
        let [opening, granted, consumed, expired, refunded, closing] = figures(books, category);
        assert_eq!(
            opening + granted - consumed - expired - refunded,
            closing,
            "{category}: {books}"
        );
    }
    for (index, figure) in FIGURES.iter().enumerate() {
        let sum: i64 = ["paid", "promotional", "owed"]
            .iter()
            .map(|category| figures(books, category)[index])
            .sum();
        assert_eq!(figures(books, "total")[index], sum, "{figure}: {books}");
    }
}

/// What the accounts' balances came to at `to_ms`: each account's last row
/// made before it, as the ledger itself says.
async fn balances_at(app: &TestApp, accounts: &[i64], to_ms: i64) -> i64 {
    let mut sum = 0;
    for account in accounts {
        let (status, body) = app.get_transactions(*account).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        sum += body["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|row| parse_rfc3339_ms(row["created_at"].as_str().unwrap()).unwrap() < to_ms)
            .map_or(0, |row| row["balance_after_micros"].as_i64().unwrap());
    }
    sum
}

/// What is left of the accounts' grants now, by category: (paid,
/// promotional, owed), from the grants' own listing.
async fn grants_left(app: &TestApp, accounts: &[i64]) -> [i64; 3] {
    let mut left = [0; 3];
    for account in accounts {
        let (status, body) = app
            .request(
                "GET",
                &format!("/v1/admin/accounts/{account}/credit-grants"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for grant in body["credit_grants"].as_array().unwrap() {
            let line = match (grant["id"].as_i64(), grant["category"].as_str()) {
                (Some(0), _) => 2,
                (_, Some("paid")) => 0,
                (_, Some("promotional")) => 1,
                other => panic!("{other:?}"),
            };
            left[line] += grant["remaining_micros"].as_i64().unwrap();
        }
    }
    left
}

/// The books of `query` as CSV (the body as text).
async fn books_csv(app: &TestApp, query: &str) -> String {
    let (status, body) = app
        .request(
            "GET",
            &format!("/v1/admin/reports/credit.csv?{query}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body["raw"].as_str().unwrap().to_string()
}

async fn send_message(app: &TestApp, account: i64, body: &str, key: &str) -> (StatusCode, Value) {
    app.post_message(json!({"account_id": account, "body": body, "idempotency_key": key}))
        .await
}

async fn adjust(app: &TestApp, account: i64, body: Value) -> Value {
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

on_both_stores!(the_books_reconcile_over_periods_that_cut_through_grants_refunds_and_expiries);
/// Four periods, and what came before them. Before: account B gets $7 of
/// paid credit. Period 1: A buys access ($5) and a $10 top-up, $6 is taken
/// by an adjustment (the access credit and $1 of the top-up), A is given
/// $0.50 of promotional credit that expires in period 3, one message spends
/// some of it and one Twilio refuses is given back. Period 2: another
/// message spends more of it; the top-up, partly spent, is refunded in full
/// ($9 of its own credit, $1 owed: A's balance goes below zero); B is
/// adjusted by −$9 ($7 of credit, $2 owed). Period 3: A's promotional
/// credit expires (at A's next change), $2 of paid credit pays down the $1
/// A owes first, and the access payment is disputed: $5 taken back (the $1
/// of paid credit left, $4 owed). Period 4: the dispute is won, and the $5
/// given back pays what is owed first.
async fn the_books_reconcile_over_periods_that_cut_through_grants_refunds_and_expiries() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let clock = ManualClock::new(NOW_MS - 90 * 60_000);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let mut events = EventFactory::new();
    let starts = [
        NOW_MS - HOUR_MS,
        NOW_MS + DAY_MS,
        NOW_MS + 2 * DAY_MS,
        NOW_MS + 3 * DAY_MS,
        NOW_MS + 4 * DAY_MS,
    ];

    // Before period 1.
    let account_b = app.create_account("+14155550602").await;
    adjust(
        &app,
        account_b,
        json!({"amount_micros": 7_000_000, "reason": "paid by bank transfer",
               "idempotency_key": "b-paid", "category": "paid"}),
    )
    .await;

    // Period 1 (Stripe's events are signed at the clock's time).
    clock.set_ms(NOW_MS);
    let (account_a, order, intent) = paid_top_up(&app, &mut events, "+14155550601").await;
    adjust(
        &app,
        account_a,
        json!({"amount_micros": -6_000_000, "reason": "correction", "idempotency_key": "a-take"}),
    )
    .await;
    let expires_at = NOW_MS + 2 * DAY_MS + 6 * HOUR_MS;
    adjust(
        &app,
        account_a,
        json!({"amount_micros": 500_000, "reason": "welcome", "idempotency_key": "a-promo",
               "category": "promotional", "expires_at": format_rfc3339_ms(expires_at)}),
    )
    .await;
    let (status, first) = send_message(&app, account_a, "Storm at 3pm", "m1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let first_cost = first["message"]["charged_micros"].as_i64().unwrap();
    twilio.refuse(Some("unreachable"));
    let (status, refused) = send_message(&app, account_a, "unreachable", "m2").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{refused}");
    twilio.refuse(None);

    // Period 2.
    clock.set_ms(NOW_MS + DAY_MS + HOUR_MS);
    let (status, second) = send_message(&app, account_a, "Storm at 4pm", "m3").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_cost = second["message"]["charged_micros"].as_i64().unwrap();
    let promotional_left = 500_000 - first_cost - second_cost;
    assert!(promotional_left > 0, "the messages spent part of it");
    let (status, shown) = app
        .request(
            "GET",
            &format!("/v1/admin/orders/{order}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["unspent_credit_micros"], 9_000_000, "partly spent");
    let refunded = events.charge_refunded("ch_books", &intent, 1000, 1000);
    let (status, answer) = app.deliver_at(&refunded, clock.now_ms() / 1000).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        app.balance_micros(account_a).await,
        promotional_left - 1_000_000
    );
    adjust(
        &app,
        account_b,
        json!({"amount_micros": -9_000_000, "reason": "chargeback outside Stripe",
               "idempotency_key": "b-take"}),
    )
    .await;
    assert_eq!(app.balance_micros(account_b).await, -2_000_000);

    // Period 3: the expiry is written before A's next change.
    clock.set_ms(NOW_MS + 2 * DAY_MS + 12 * HOUR_MS);
    adjust(
        &app,
        account_a,
        json!({"amount_micros": 2_000_000, "reason": "paid by cheque",
               "idempotency_key": "a-paid", "category": "paid"}),
    )
    .await;
    assert_eq!(app.balance_micros(account_a).await, 1_000_000);
    let access_intent = format!("pi_access_{account_a}");
    let dispute = |events: &mut EventFactory, event_type: &str, status: &str| {
        events.dispute(
            event_type,
            "dp_books",
            "ch_access_books",
            &access_intent,
            2999,
            status,
        )
    };
    let withdrawn = dispute(
        &mut events,
        "charge.dispute.funds_withdrawn",
        "needs_response",
    );
    let (status, answer) = app.deliver_at(&withdrawn, clock.now_ms() / 1000).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(app.balance_micros(account_a).await, -4_000_000);

    // Period 4: the dispute won.
    clock.set_ms(NOW_MS + 3 * DAY_MS + HOUR_MS);
    let reinstated = dispute(&mut events, "charge.dispute.funds_reinstated", "won");
    let (status, answer) = app.deliver_at(&reinstated, clock.now_ms() / 1000).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(app.balance_micros(account_a).await, 1_000_000);
    let (_, rows) = app.get_transactions(account_a).await;
    let kinds: Vec<&str> = rows["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "credit",
            "credit",
            "adjustment",
            "adjustment",
            "debit",
            "debit",
            "refund",
            "debit",
            "refund",
            "expiry",
            "adjustment",
            "refund",
            "refund"
        ],
        "{rows}"
    );

    let accounts = [account_a, account_b];
    let periods: Vec<Value> = {
        let mut periods = Vec::new();
        for bounds in starts.windows(2) {
            periods.push(books(&app, &period(bounds[0], bounds[1])).await);
        }
        periods
    };
    for (index, books) in periods.iter().enumerate() {
        assert_reconciles(books);
        // Each period's closing is the next one's opening.
        if let Some(next) = periods.get(index + 1) {
            for category in ["paid", "promotional", "owed", "total"] {
                assert_eq!(
                    figures(books, category)[5],
                    figures(next, category)[0],
                    "{category}: {books} then {next}"
                );
            }
        }
        // The categories' closing balances sum to the accounts' balances
        // at the period's end, as the ledger's rows say them.
        assert_eq!(
            figures(books, "total")[5],
            balances_at(&app, &accounts, starts[index + 1]).await,
            "{books}"
        );
    }
    let [first_period, second_period, third_period, fourth_period] =
        [&periods[0], &periods[1], &periods[2], &periods[3]];
    // Period 1: B's $7 is the opening; the access credit and the top-up
    // granted; the adjustment took $6; the refused message's cost was
    // given back, so only the first message is consumed.
    assert_eq!(
        figures(first_period, "paid"),
        [7_000_000, 15_000_000, 6_000_000, 0, 0, 16_000_000]
    );
    assert_eq!(
        figures(first_period, "promotional"),
        [0, 500_000, first_cost, 0, 0, 500_000 - first_cost]
    );
    assert_eq!(figures(first_period, "owed"), [0; 6]);
    assert_eq!(first_period["transactions_in_period"], 7);
    // Period 2: the refund takes the order's $9 and leaves $1 owed; B's
    // adjustment takes its $7 and leaves $2 owed.
    assert_eq!(
        figures(second_period, "paid"),
        [16_000_000, 0, 7_000_000, 0, 9_000_000, 0]
    );
    assert_eq!(
        figures(second_period, "promotional"),
        [500_000 - first_cost, 0, second_cost, 0, 0, promotional_left]
    );
    assert_eq!(
        figures(second_period, "owed"),
        [0, 0, 2_000_000, 0, 1_000_000, -3_000_000]
    );
    // Period 3: what was left of the promotional credit expired; the $2 of
    // paid credit paid down the $1 A owed first; the chargeback took the $1
    // of paid credit left and left $4 owed.
    assert_eq!(
        figures(third_period, "promotional"),
        [promotional_left, 0, 0, promotional_left, 0, 0]
    );
    assert_eq!(
        figures(third_period, "paid"),
        [0, 1_000_000, 0, 0, 1_000_000, 0]
    );
    assert_eq!(
        figures(third_period, "owed"),
        [-3_000_000, 1_000_000, 0, 0, 4_000_000, -6_000_000]
    );
    // Period 4: the dispute won gives the $5 back, what is owed first:
    // negative refunds.
    assert_eq!(
        figures(fourth_period, "paid"),
        [0, 0, 0, 0, -1_000_000, 1_000_000]
    );
    assert_eq!(
        figures(fourth_period, "owed"),
        [-6_000_000, 0, 0, 0, -4_000_000, -2_000_000]
    );
    assert_eq!(figures(fourth_period, "promotional"), [0; 6]);
    // The last closing balances are what is left of the grants, category
    // by category: paid credit is what customers paid for and not used.
    let closing =
        ["paid", "promotional", "owed"].map(|category| figures(fourth_period, category)[5]);
    assert_eq!(closing, grants_left(&app, &accounts).await);

    // November (UTC) holds all of it: nothing before, the same end.
    let november = books(&app, "month=2026-11").await;
    assert_reconciles(&november);
    assert_eq!(november["from"], "2026-11-01T00:00:00.000Z");
    assert_eq!(november["to"], "2026-12-01T00:00:00.000Z");
    assert_eq!(figures(&november, "total")[0], 0);
    for category in ["paid", "promotional", "owed", "total"] {
        assert_eq!(
            figures(&november, category)[5],
            figures(fourth_period, category)[5]
        );
    }
    assert_eq!(november["transactions_in_period"], 15);

    // The CSV says the same figures, in micro-dollars and in dollars.
    let csv = books_csv(&app, &period(starts[1], starts[2])).await;
    let lines: Vec<&str> = csv.split("\r\n").filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[0].starts_with("from,to,category,opening_micros,opening,"));
    for (line, category) in lines[1..]
        .iter()
        .zip(["paid", "promotional", "owed", "total"])
    {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[2], category, "{line}");
        let micros: Vec<i64> = (0..6)
            .map(|at| cells[3 + 2 * at].parse().unwrap())
            .collect();
        assert_eq!(micros, figures(second_period, category), "{line}");
        for at in 0..6 {
            let dollars = sms_credit_actors::Money::from_micros(micros[at])
                .to_string()
                .replacen('$', "", 1);
            assert_eq!(cells[4 + 2 * at], dollars, "{line}");
        }
    }
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(a_period_that_is_not_one_is_refused_with_its_reason);
async fn a_period_that_is_not_one_is_refused_with_its_reason() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550603").await;
    app.post_adjustment(account, 1_000_000, "welcome").await;
    for (query, says) in [
        ("", "give the period"),
        ("from=2026-11-01", "give the period"),
        ("to=2026-11-01T00:00:00Z", "give the period"),
        ("month=2026-13", "YYYY-MM"),
        ("month=November", "YYYY-MM"),
        ("month=2026-11&from=2026-11-01&to=2026-12-01", "not both"),
        ("from=2026-12-01&to=2026-11-01", "is after to"),
        ("from=yesterday&to=2026-11-01", "from: 'yesterday'"),
        (
            "from=2026-11-01T00:00:00.0001Z&to=2026-12-01",
            "finer than a millisecond",
        ),
        ("month=9999-12", "outside the months"),
        ("month=1969-12", "outside the months"),
        (
            "from=0000-01-01T00:00:00%2B00:01&to=2026-12-01",
            "outside the years",
        ),
        ("from=2026-11-01T00:00:00%2B99:99&to=2026-12-01", "from: '"),
        ("from=2026-11-01T00:00:00-1:00&to=2026-12-01", "from: '"),
    ] {
        for path in ["/v1/admin/reports/credit", "/v1/admin/reports/credit.csv"] {
            let (status, answer) = app
                .request("GET", &format!("{path}?{query}"), Some(ADMIN_TOKEN), None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}: {answer}");
            assert_eq!(answer["error"]["code"], "invalid_period", "{answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{query}: {message}");
        }
    }
    let (status, answer) = app
        .request(
            "GET",
            "/v1/admin/reports/credit?month=2026-11&year=2026",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query")),
        "{answer}"
    );
    let (status, _) = app
        .request("GET", "/v1/admin/reports/credit?month=2026-11", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was changed, and a good period answers.
    assert_eq!(app.balance_micros(account).await, 1_000_000);
    let november = books(&app, "month=2026-11").await;
    assert_eq!(figures(&november, "promotional")[5], 1_000_000);
    app.stop().await;
}

on_both_stores!(a_row_whose_funding_is_missing_is_an_error_never_counted_as_nothing);
/// A negative adjustment whose funding is gone (as an earlier release's
/// server writes one during an upgrade): the books refuse, naming the row,
/// in the API and the command line; one this release cannot read is an
/// unknown stored value.
async fn a_row_whose_funding_is_missing_is_an_error_never_counted_as_nothing() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550604").await;
    app.post_adjustment(account, 1_000_000, "welcome").await;
    app.post_adjustment(account, -250_000, "spent").await;
    let directory = app.stop().await;
    directory.execute(&format!(
        "UPDATE transactions SET funded_by = NULL WHERE account_id = {account} AND seq = 2"
    ));
    let app =
        TestApp::spawn_with(directory.clone(), crate::helpers::test_settings(&directory)).await;
    let (status, answer) = app
        .request(
            "GET",
            "/v1/admin/reports/credit?month=2026-11",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["error"]["code"], "ledger_inconsistent", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "account {account}: row #2 (an adjustment of -$0.25)"
        )) && message.contains("funding is missing or short")
            && message.contains("sms-credit verify"),
        "{message}"
    );
    // A funding this release cannot read is an unknown value, named.
    directory.execute(&format!(
        "UPDATE transactions SET funded_by = '1:x:250000' WHERE account_id = {account} AND seq = 2"
    ));
    let (status, answer) = app
        .request(
            "GET",
            "/v1/admin/reports/credit.csv?month=2026-11",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["error"]["code"], "unknown_stored_value", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "account {account} seq 2: unknown funded_by '1:x:250000'"
            )),
        "{answer}"
    );
    directory.execute(&format!(
        "UPDATE transactions SET funded_by = NULL WHERE account_id = {account} AND seq = 2"
    ));
    let directory = app.stop().await;
    let cli = run_cli(&directory, &["reports", "credit", "--month", "2026-11"]);
    assert!(!cli.status.success(), "{cli:?}");
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("row #2 (an adjustment of -$0.25)"),
        "{cli:?}"
    );
    // Its funding back, the books are made again.
    directory.execute(&format!(
        "UPDATE transactions SET funded_by = '1:r:250000' WHERE account_id = {account} AND seq = 2"
    ));
    let cli = run_cli(
        &directory,
        &["reports", "credit", "--month", "2026-11", "--json"],
    );
    assert!(cli.status.success(), "{cli:?}");
    let books: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(
        figures(&books, "promotional"),
        [0, 1_000_000, 250_000, 0, 0, 750_000]
    );
}

on_both_stores!(sync the_command_line_says_the_apis_books);
/// `reports credit` prints the API's books: `--json` its shape, `--csv`
/// its CSV, and a table for people; `--month` is `--from`/`--to` of that
/// month; a bad period is refused before the database is read.
fn the_command_line_says_the_apis_books() {
    let directory = fresh_directory();
    let (api, csv) = actix_rt::System::new().block_on(async {
        let app =
            TestApp::spawn_with(directory.clone(), crate::helpers::test_settings(&directory)).await;
        let account = app.create_account("+14155550605").await;
        adjust(
            &app,
            account,
            json!({"amount_micros": 10_000_000, "reason": "paid by transfer",
                   "idempotency_key": "paid", "category": "paid"}),
        )
        .await;
        app.post_adjustment(account, 2_000_000, "welcome").await;
        app.post_adjustment(account, -3_000_000, "spent").await;
        let api = books(&app, "month=2026-11").await;
        let csv = books_csv(&app, "month=2026-11").await;
        app.stop().await;
        (api, csv)
    });
    assert_reconciles(&api);
    assert_eq!(
        figures(&api, "paid"),
        [0, 10_000_000, 1_000_000, 0, 0, 9_000_000]
    );
    let json = run_cli(
        &directory,
        &["reports", "credit", "--month", "2026-11", "--json"],
    );
    assert!(json.status.success(), "{json:?}");
    let printed: Value = serde_json::from_slice(&json.stdout).unwrap();
    // The same books, read at another moment: the API's at the test's
    // clock (November not ended), the command line's at the real time,
    // long after November (and no grant expires: closed).
    assert_eq!(figures_alone(&printed), figures_alone(&api));
    assert_eq!(api["open_because"], "period_not_ended", "{api}");
    assert_eq!(
        (&printed["closed"], &printed["open_because"]),
        (&json!(true), &Value::Null),
        "{printed}"
    );
    let as_of = printed["as_of"].as_str().unwrap().to_string();
    let by_moments = run_cli(
        &directory,
        &[
            "reports",
            "credit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01T00:00:00Z",
            "--json",
        ],
    );
    let by_moments: Value = serde_json::from_slice(&by_moments.stdout).unwrap();
    assert_eq!(figures_alone(&by_moments), figures_alone(&printed));
    let printed_csv = run_cli(
        &directory,
        &["reports", "credit", "--month", "2026-11", "--csv"],
    );
    assert!(printed_csv.status.success(), "{printed_csv:?}");
    // The API's CSV but for its last three columns: when it was read and
    // whether November was closed then.
    let without_standing = |csv: &str| -> Vec<String> {
        csv.split("\r\n")
            .map(|line| line.rsplitn(4, ',').last().unwrap().to_string())
            .collect()
    };
    let printed_csv = String::from_utf8_lossy(&printed_csv.stdout).to_string();
    assert_eq!(without_standing(&printed_csv), without_standing(&csv));
    for line in printed_csv
        .split("\r\n")
        .skip(1)
        .filter(|line| !line.is_empty())
    {
        let standing: Vec<&str> = line.rsplitn(4, ',').take(3).collect();
        assert_eq!(standing[..2], ["", "true"], "{line}");
        assert!(
            parse_rfc3339_ms(standing[2]).unwrap() >= parse_rfc3339_ms(&as_of).unwrap(),
            "{line}"
        );
    }
    assert!(
        csv.contains(",2026-11-21T09:30:00.000Z,false,period_not_ended\r\n"),
        "{csv}"
    );
    let table = run_cli(&directory, &["reports", "credit", "--month", "2026-11"]);
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "credit from 2026-11-01T00:00:00.000Z to 2026-12-01T00:00:00.000Z (UTC; 3 ledger rows in the period)"
    );
    // Whether November is closed, and when the books were read (a moment
    // after the `--json` run's).
    let read_at = lines[1]
        .strip_prefix("closed: read at ")
        .and_then(|rest| {
            rest.strip_suffix(
                ", nothing more can be dated in it (the servers' clocks in step; but for an expiry the sweep passed)",
            )
        })
        .and_then(parse_rfc3339_ms)
        .unwrap_or_else(|| panic!("{table}"));
    assert!(read_at >= parse_rfc3339_ms(&as_of).unwrap(), "{table}");
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(lines[2]),
        ["category", "opening", "granted", "consumed", "expired", "refunded", "closing"]
    );
    assert_eq!(
        words(lines[3]),
        ["paid", "$0.00", "$10.00", "$1.00", "$0.00", "$0.00", "$9.00"]
    );
    assert_eq!(
        words(lines[4]),
        [
            "promotional",
            "$0.00",
            "$2.00",
            "$2.00",
            "$0.00",
            "$0.00",
            "$0.00"
        ]
    );
    assert_eq!(words(lines[6])[0], "total");
    for (arguments, says) in [
        (&["reports", "credit"][..], "give the period"),
        (&["reports", "credit", "--month", "2026-13"][..], "YYYY-MM"),
        (
            &[
                "reports",
                "credit",
                "--from",
                "2026-12-01",
                "--to",
                "2026-11-01",
            ][..],
            "is after to",
        ),
    ] {
        let refused = run_cli(&directory, arguments);
        assert!(!refused.status.success(), "{refused:?}");
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            said.contains("invalid period") && said.contains(says),
            "{said}"
        );
    }
}

on_both_stores!(sync the_books_of_a_database_made_before_grants_are_right_once_migrated);
/// The release just before grants (SQLite V34, Postgres V25), with rows of
/// every kind as it wrote them: once `migrate` has replayed them into
/// grants, the books place each row as the backfill funded it — a message
/// given back as negative consumption, a refund of an order's credit as
/// refunded, an account left owing by a refund as owed.
fn the_books_of_a_database_made_before_grants_are_right_once_migrated() {
    let directory = fresh_directory();
    sms_credit_actors::adapters::migrate_until_for_testing(&directory.location(), 34, 25).unwrap();
    directory.execute(
        "INSERT INTO accounts (id, phone, status, created_at) VALUES
             (1, '+14155550610', 'active', 0), (3, '+14155550612', 'active', 0);
         INSERT INTO orders (id, account_id, order_type, amount, list_price, status, created_at) VALUES
             (7, 1, 'initial_access', 2999000, 2999000, 'completed', 0),
             (8, 1, 'top_up', 10000000, 10000000, 'refunded', 0),
             (10, 3, 'top_up', 3000000, 3000000, 'refunded', 0);
         INSERT INTO transactions (account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at, reason) VALUES
             (1, 1, 'credit', 5000000, 5000000, 'stripe-order:7', 7, 'credit included with access', 1, NULL),
             (1, 2, 'credit', 10000000, 15000000, 'stripe-order:8', 8, 'top-up by Checkout', 2, NULL),
             (1, 3, 'adjustment', 1000000, 16000000, 'goodwill', NULL, 'Balance adjustment', 3, 'sorry'),
             (1, 4, 'debit', -56500, 15943500, 'msg:1', NULL, 'SMS', 4, NULL),
             (1, 5, 'refund', 56500, 16000000, 'msg-void:1', NULL, 'SMS not sent', 5, NULL),
             (1, 6, 'debit', -2000000, 14000000, 'msg:2', NULL, 'SMS', 6, NULL),
             (1, 7, 'refund', -10000000, 4000000, 'stripe-refund:ch_8:1000', 8, 'refund', 7, NULL),
             (3, 1, 'credit', 1000000, 1000000, 'opening', NULL, 'opening', 1, NULL),
             (3, 2, 'refund', -3000000, -2000000, 'stripe-refund:ch_10:300', 10, 'refund', 2, NULL);
         INSERT INTO account_balances (account_id, balance, seq, updated_at) VALUES
             (1, 4000000, 7, 0), (3, -2000000, 2, 0);",
    );
    let migrated = run_cli(&directory, &["migrate"]);
    assert!(migrated.status.success(), "{migrated:?}");
    // Rows 1 to 4 of account 1 and both of account 3 before the period;
    // the void, the second message and the refund within it.
    let json = run_cli(
        &directory,
        &[
            "reports",
            "credit",
            "--from",
            "1970-01-01T00:00:00.005Z",
            "--to",
            "1970-01-01T00:00:00.010Z",
            "--json",
        ],
    );
    assert!(json.status.success(), "{json:?}");
    let books: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_reconciles(&books);
    assert_eq!(books["transactions_in_period"], 3);
    // Paid: $15 of account 1 (account 3's $1 taken back by its refund);
    // the second message took $1 of it, the refund $10.
    assert_eq!(
        figures(&books, "paid"),
        [15_000_000, 0, 1_000_000, 0, 10_000_000, 4_000_000]
    );
    // Promotional: the $1 adjustment less the first message; the void
    // gave that back (negative consumption) and the second message took
    // all of it.
    assert_eq!(
        figures(&books, "promotional"),
        [943_500, 0, 943_500, 0, 0, 0]
    );
    // Owed: what account 3's refund took beyond its credit.
    assert_eq!(
        figures(&books, "owed"),
        [-2_000_000, 0, 0, 0, 0, -2_000_000]
    );
    assert_eq!(figures(&books, "total")[5], 4_000_000 - 2_000_000);
}

on_both_stores!(a_books_read_that_fails_is_answered_as_the_store_unavailable);
/// The store's switch that fails reads (as on a lost connection) fails the
/// books too, on either store: `503 store_unavailable`, saying nothing of
/// the cause, on the JSON and the CSV route; once reads work again the
/// books are made. (Background reads may take a failure meanwhile: the
/// switch is armed for many, and disarmed after.)
async fn a_books_read_that_fails_is_answered_as_the_store_unavailable() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550606").await;
    app.post_adjustment(account, 1_000_000, "welcome").await;
    let store = app.store.as_ref().unwrap();
    for path in ["/v1/admin/reports/credit", "/v1/admin/reports/credit.csv"] {
        store.fail_next_reads_for_testing(1_000);
        let (status, answer) = app
            .request(
                "GET",
                &format!("{path}?month=2026-11"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        store.fail_next_reads_for_testing(0);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
        assert_eq!(
            answer["error"]["message"], "the store is unavailable; nothing was changed",
            "{answer}"
        );
    }
    let november = books(&app, "month=2026-11").await;
    assert_eq!(figures(&november, "promotional")[5], 1_000_000);
    app.stop().await;
}

/// The books' answer apart from when they were read and whether the
/// period was closed then (what two reads at different moments of the
/// same ledger share).
fn figures_alone(books: &Value) -> Value {
    let mut figures = books.clone();
    for field in ["as_of", "closed", "open_because"] {
        figures
            .as_object_mut()
            .unwrap()
            .remove(field)
            .unwrap_or_else(|| panic!("no {field}: {books}"));
    }
    figures
}

on_both_stores!(an_open_or_just_ended_period_is_marked_so_and_only_a_settled_one_closed);
/// The books say when they were read (`as_of`, the app's clock) and
/// whether the period is closed: a period that has not ended is open (its
/// closing is what it is so far), one that ended less than the settling
/// time (five minutes) before `as_of` is open too (a row dated within it may still
/// be committed), and one that ended that long before or more is closed;
/// the CSV says the same on each line.
async fn an_open_or_just_ended_period_is_marked_so_and_only_a_settled_one_closed() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = crate::helpers::test_settings(&directory);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let account = app.create_account("+14155550607").await;
    app.post_adjustment(account, 1_000_000, "welcome").await;
    let now = format_rfc3339_ms(NOW_MS);
    let standing = |books: &Value| {
        (
            books["as_of"].clone(),
            books["closed"].clone(),
            books["open_because"].clone(),
        )
    };
    for (query, closed, because) in [
        (
            "month=2026-11".to_string(),
            false,
            json!("period_not_ended"),
        ),
        (
            period(NOW_MS - DAY_MS, NOW_MS + 1),
            false,
            json!("period_not_ended"),
        ),
        (period(NOW_MS - DAY_MS, NOW_MS), false, json!("settling")),
        (
            period(NOW_MS - DAY_MS, NOW_MS - BOOKS_SETTLE_MS + 1),
            false,
            json!("settling"),
        ),
        (
            period(NOW_MS - DAY_MS, NOW_MS - BOOKS_SETTLE_MS),
            true,
            Value::Null,
        ),
        ("month=2026-10".to_string(), true, Value::Null),
    ] {
        let books = books(&app, &query).await;
        assert_eq!(
            standing(&books),
            (json!(now), json!(closed), because.clone()),
            "{query}: {books}"
        );
        // Open or closed, the figures are the ledger's as of then.
        assert_reconciles(&books);
        let csv = books_csv(&app, &query).await;
        let lines: Vec<&str> = csv.split("\r\n").filter(|line| !line.is_empty()).collect();
        assert!(
            lines[0].ends_with(",closing_micros,closing,as_of,closed,open_because"),
            "{csv}"
        );
        let end = format!(",{now},{closed},{}", because.as_str().unwrap_or(""));
        assert_eq!(lines.len(), 5, "{csv}");
        for line in &lines[1..] {
            assert!(
                line.ends_with(&end),
                "{query}: {line} does not end with {end}"
            );
        }
    }
    // November is open until five minutes after its end, then closed.
    let december = parse_rfc3339_ms("2026-12-01T00:00:00Z").unwrap();
    clock.set_ms(december + BOOKS_SETTLE_MS - 1);
    let november = books(&app, "month=2026-11").await;
    assert_eq!(
        standing(&november),
        (
            json!(format_rfc3339_ms(december + BOOKS_SETTLE_MS - 1)),
            json!(false),
            json!("settling")
        )
    );
    clock.set_ms(december + BOOKS_SETTLE_MS);
    let closed = books(&app, "month=2026-11").await;
    assert_eq!(
        standing(&closed),
        (
            json!(format_rfc3339_ms(december + BOOKS_SETTLE_MS)),
            json!(true),
            Value::Null
        )
    );
    assert_eq!(figures_alone(&closed), figures_alone(&november));
    assert_eq!(figures(&closed, "promotional")[5], 1_000_000);
    app.stop().await;
}

on_both_stores!(sync a_period_whose_expired_grants_the_sweep_has_not_passed_is_not_closed);
/// A promotional grant expires within a period that ended long ago, but
/// no server has run the expiry sweep since: its expiry row, dated within
/// the period, is not written yet, so the books (here the command line's,
/// with no server running) say the period is open, `expiries_not_swept`.
/// A server started later sweeps it at its first round; the books then
/// count the expiry in the period and say it is closed, the command line
/// as the API.
fn a_period_whose_expired_grants_the_sweep_has_not_passed_is_not_closed() {
    let directory = fresh_directory();
    let expires_at = NOW_MS + HOUR_MS;
    let query = [
        "--from".to_string(),
        format_rfc3339_ms(NOW_MS - DAY_MS),
        "--to".to_string(),
        format_rfc3339_ms(expires_at + 60_000),
    ];
    let cli_books = |directory: &crate::database::TestDatabase| {
        let mut arguments = vec!["reports", "credit", "--json"];
        arguments.extend(query.iter().map(String::as_str));
        let printed = run_cli(directory, &arguments);
        assert!(printed.status.success(), "{printed:?}");
        serde_json::from_slice::<Value>(&printed.stdout).unwrap()
    };
    actix_rt::System::new().block_on(async {
        let settings = crate::helpers::test_settings(&directory);
        let app =
            TestApp::spawn_with_clock(directory.clone(), settings, ManualClock::new(NOW_MS)).await;
        let account = app.create_account("+14155550608").await;
        adjust(
            &app,
            account,
            json!({"amount_micros": 500_000, "reason": "welcome", "idempotency_key": "promo",
                   "category": "promotional", "expires_at": format_rfc3339_ms(expires_at)}),
        )
        .await;
        app.stop().await;
    });
    // The command line reads at the real time, long after the period.
    let unswept = cli_books(&directory);
    assert_eq!(unswept["closed"], false, "{unswept}");
    assert_eq!(unswept["open_because"], "expiries_not_swept", "{unswept}");
    assert_eq!(
        figures(&unswept, "promotional"),
        [0, 500_000, 0, 0, 0, 500_000],
        "the expiry row is not written yet"
    );
    let api = actix_rt::System::new().block_on(async {
        let settings = crate::helpers::test_settings(&directory);
        let clock = ManualClock::new(NOW_MS + 2 * HOUR_MS);
        let app = TestApp::spawn_with_clock(directory.clone(), settings, clock).await;
        let query = period(NOW_MS - DAY_MS, expires_at + 60_000);
        crate::refunds_by_id::eventually("the books of the period to be closed", || async {
            books(&app, &query).await["closed"] == true
        })
        .await;
        let api = books(&app, &query).await;
        app.stop().await;
        api
    });
    assert_eq!(api["open_because"], Value::Null, "{api}");
    assert_eq!(api["as_of"], format_rfc3339_ms(NOW_MS + 2 * HOUR_MS));
    assert_eq!(
        figures(&api, "promotional"),
        [0, 500_000, 0, 500_000, 0, 0],
        "{api}"
    );
    let swept = cli_books(&directory);
    assert_eq!(swept["closed"], true, "{swept}");
    assert_eq!(figures_alone(&swept), figures_alone(&api));
}

/// A GET of the books with the admin token: its status, its `Retry-After`
/// (if any) and its body.
async fn books_answer(app: &TestApp, path: &str) -> (StatusCode, Option<String>, Value) {
    let mut response = app
        .client
        .get(app.url(path))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|value| value.to_str().unwrap().to_string());
    let bytes = response.body().limit(1024 * 1024).await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (response.status(), retry_after, body)
}

on_both_stores!(books_read_beyond_two_at_once_are_refused_busy_until_one_ends);
/// A server reads at most two books at once: with two held in flight (the
/// store's test switch stops them once read, before they answer), a third,
/// JSON or CSV, is `503 books_busy` at once, with `Retry-After`, reading
/// nothing; once they answer, the books are read again.
async fn books_read_beyond_two_at_once_are_refused_busy_until_one_ends() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550609").await;
    app.post_adjustment(account, 1_000_000, "welcome").await;
    let store = app.store.as_ref().unwrap();
    let hold = store.hold_books_for_testing(2);
    let held = async {
        futures_util::join!(
            books_answer(&app, "/v1/admin/reports/credit?month=2026-11"),
            books_answer(&app, "/v1/admin/reports/credit.csv?month=2026-10")
        )
    };
    let meanwhile = async {
        for which in ["first", "second"] {
            actix_rt::time::timeout(std::time::Duration::from_secs(10), hold.reached())
                .await
                .unwrap_or_else(|_| panic!("the {which} books read was not held within 10 s"));
        }
        let mut refused = Vec::new();
        for path in [
            "/v1/admin/reports/credit?month=2026-11",
            "/v1/admin/reports/credit.csv?month=2026-11",
        ] {
            refused.push(books_answer(&app, path).await);
        }
        hold.release();
        hold.release();
        refused
    };
    let ((first, second), refused) = futures_util::join!(held, meanwhile);
    for (status, retry_after, answer) in refused {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(answer["error"]["code"], "books_busy", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("2 books at once"),
            "{answer}"
        );
        let seconds: u64 = retry_after
            .expect("a Retry-After with books_busy")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&seconds), "{seconds}");
    }
    assert_eq!(first.0, StatusCode::OK, "{:?}", first.2);
    assert_eq!(figures(&first.2, "promotional")[5], 1_000_000);
    assert_eq!(second.0, StatusCode::OK, "{:?}", second.2);
    assert!(second.2["raw"].as_str().unwrap().starts_with("from,to,"));
    // Both ended: the books are read again.
    let november = books(&app, "month=2026-11").await;
    assert_eq!(figures(&november, "promotional")[5], 1_000_000);
    app.stop().await;
}

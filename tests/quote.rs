//! Quotes over HTTP and the CLI: the same fields, the seed rates, clear refusals.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{fresh_directory, run_cli, test_settings, TestApp};

async fn post_quote(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.request("POST", "/v1/quote", None, Some(body)).await
}

#[actix_rt::test]
async fn quotes_each_seed_country() {
    let app = TestApp::spawn().await;
    let cases = [
        ("+14155551234", "US", 56_500, 176),
        ("+14165551234", "CA", 85_000, 117),
        ("+447400123456", "GB", 262_000, 38),
        ("+33612345678", "FR", 399_000, 25),
        ("+393123456789", "IT", 463_500, 21),
        ("+41781234567", "CH", 362_500, 27),
        ("+64211234567", "NZ", 525_000, 19),
        ("+27821234567", "ZA", 544_500, 18),
    ];
    for (to, country, rate, per_ten) in cases {
        let (status, quoted) = post_quote(&app, json!({"to": to, "body": "a".repeat(200)})).await;
        assert_eq!(status, StatusCode::OK, "{quoted}");
        assert_eq!(quoted["country"], country);
        assert_eq!(quoted["encoding"], "GSM-7");
        assert_eq!(quoted["segments"], 2);
        assert_eq!(quoted["price_per_segment_micros"], rate);
        assert_eq!(quoted["total_micros"], 2 * rate);
        assert_eq!(quoted["segments_per_10_dollars"], per_ten);
    }
}

#[actix_rt::test]
async fn reports_and_applies_smart_encoding() {
    let app = TestApp::spawn().await;
    let body = format!("Storm warning — it’s {}", "a".repeat(60));
    let (_, plain) = post_quote(&app, json!({"to": "+14155551234", "body": body})).await;
    assert_eq!(
        (plain["encoding"].as_str(), plain["segments"].as_i64()),
        (Some("UCS-2"), Some(2))
    );
    assert_eq!(
        plain["smart_encoding"],
        json!({
            "encoding": "GSM-7", "segments": 1, "total_micros": 56_500,
            "replacements": 2, "saved_segments": 1, "saved_micros": 56_500
        })
    );
    let (_, smart) = post_quote(
        &app,
        json!({"to": "+14155551234", "body": body, "smart_encoding": true}),
    )
    .await;
    assert_eq!(
        (smart["encoding"].as_str(), smart["total_micros"].as_i64()),
        (Some("GSM-7"), Some(56_500))
    );
}

#[actix_rt::test]
async fn refuses_what_it_cannot_price() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"to": "+4915112345678", "body": "hi"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_destination",
        ),
        (
            json!({"to": "+447911123456", "body": "hi"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_destination",
        ),
        (
            json!({"to": "+1415", "body": "hi"}),
            StatusCode::BAD_REQUEST,
            "invalid_phone",
        ),
        (
            json!({"to": "4155551234", "body": "hi"}),
            StatusCode::BAD_REQUEST,
            "invalid_phone",
        ),
        (
            json!({"to": "+14155551234", "body": "a".repeat(1601)}),
            StatusCode::BAD_REQUEST,
            "body_too_long",
        ),
        (
            json!({"to": "+14155551234"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            json!({"to": "+14155551234", "body": "hi", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let (answered, answer) = post_quote(&app, body.clone()).await;
        assert_eq!(
            (answered, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
}

#[actix_rt::test]
async fn a_configured_rate_file_replaces_the_table_and_may_alias_regions() {
    let directory = fresh_directory();
    let rates = directory.path().join("rates.toml");
    std::fs::write(
        &rates,
        "margin_percent = 50\n[countries.GB]\nname = \"United Kingdom\"\ncarrier_cost_micros = 50000\n[aliases]\nGG = \"GB\"\n",
    )
    .unwrap();
    let mut settings = test_settings(&directory);
    settings.messages.rates =
        std::sync::Arc::new(sms_credit_actors::rating::RateTable::load(&rates).unwrap());
    let app = TestApp::spawn_with(directory, settings).await;
    let (status, quoted) = post_quote(&app, json!({"to": "+447911123456", "body": "hi"})).await;
    assert_eq!(status, StatusCode::OK, "{quoted}");
    assert_eq!(
        (quoted["country"].as_str(), quoted["total_micros"].as_i64()),
        (Some("GG"), Some(100_000))
    );
    let (status, _) = post_quote(&app, json!({"to": "+14155551234", "body": "hi"})).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the file's table replaces the embedded one"
    );
}

#[test]
fn the_cli_quotes_with_the_same_fields() {
    let directory = fresh_directory();
    let output = run_cli(
        &directory,
        &["quote", "--to", "+14155551234", "--json", "hello"],
    );
    assert!(output.status.success(), "{output:?}");
    let quoted: Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in [
        "country",
        "encoding",
        "segments",
        "price_per_segment_micros",
        "total_micros",
        "segments_per_10_dollars",
        "smart_encoding",
    ] {
        assert!(quoted.get(field).is_some(), "{field} missing from {quoted}");
    }
    assert_eq!(quoted["total_micros"], 56_500);

    let human = run_cli(
        &directory,
        &["quote", "--to", "+14155551234", "it’s “fine”"],
    );
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("+14155551234 (US): 1 segment, UCS-2, at $0.0565 each = $0.0565"),
        "{text}"
    );
    assert!(text.contains("$10 buys 176 segments to US"), "{text}");

    let refused = run_cli(&directory, &["quote", "--to", "+4915112345678", "hi"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not supported"));

    let bad_rates = directory.path().join("bad.toml");
    std::fs::write(&bad_rates, "margin_percent = 80\n").unwrap();
    let output = run_cli(
        &directory,
        &[
            "--rates-file",
            bad_rates.to_str().unwrap(),
            "quote",
            "--to",
            "+14155551234",
            "hi",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SMS_CREDIT_RATES_FILE"));
}

//! Operations, on the real binary: request ids on log lines (and no secrets
//! there), `/metrics`, and a graceful stop on SIGTERM that keeps everything
//! acknowledged.

use std::process::Command;

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    fresh_directory, run_cli, test_settings, ServerProcess, TestApp, ADMIN_TOKEN,
};

const METRICS_TOKEN: &str = "metrics-reader-token";

on_both_stores!(metrics_are_not_published_on_the_main_address_by_default);
async fn metrics_are_not_published_on_the_main_address_by_default() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.post_adjustment(app.create_account("+14155553801").await, 1_000_000, "m")
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = app.request("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "metrics_not_configured");
    assert!(!body.to_string().contains("ledger_amount"), "{body}");
    // Not even the admin token opens it: it is its own secret.
    let (status, _) = app
        .request("GET", "/metrics", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

on_both_stores!(a_metrics_address_of_its_own_serves_them_without_a_token);
async fn a_metrics_address_of_its_own_serves_them_without_a_token() {
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.access.metrics_bind = Some("127.0.0.1:0".to_string());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let application = sms_credit::startup::Application::build(settings, listener).unwrap();
    let main = format!("http://127.0.0.1:{}", application.port());
    let metrics = format!("http://127.0.0.1:{}", application.metrics_port().unwrap());
    let handle = application.handle();
    let running = actix_rt::spawn(application.run_until_stopped());
    let client = awc::Client::new();
    let mut answer = client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let text = String::from_utf8(answer.body().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("sms_credit_ledger_amount_micros"), "{text}");
    // Only metrics there; and still nothing on the main address.
    let other = client
        .get(format!("{metrics}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let main_metrics = client.get(format!("{main}/metrics")).send().await.unwrap();
    assert_eq!(main_metrics.status(), StatusCode::SERVICE_UNAVAILABLE);
    handle.stop(true).await;
    running.await.unwrap().unwrap();
}

on_both_stores!(logs_carry_request_ids_metrics_count_and_sigterm_stops_cleanly);
async fn logs_carry_request_ids_metrics_count_and_sigterm_stops_cleanly() {
    let directory = fresh_directory();
    let server = ServerProcess::start(&directory, &[("SMS_CREDIT_METRICS_TOKEN", METRICS_TOKEN)]);
    let base = server.base_url.clone();
    let client = awc::Client::new();

    let mut created = client
        .post(format!("{base}/v1/admin/accounts"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .insert_header(("X-Request-Id", "ops-create-1"))
        .send_json(&json!({"phone": "+14155553800"}))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        created.headers().get("X-Request-Id").unwrap(),
        "ops-create-1"
    );
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    for (amount, key) in [(2_000_000, "ops-1"), (-56_500, "ops-2")] {
        let response = client
            .post(format!("{base}/v1/admin/accounts/{id}/adjustments"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send_json(&json!({"amount_micros": amount, "reason": "ops", "idempotency_key": key}))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let generated = response
            .headers()
            .get("X-Request-Id")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(!generated.is_empty() && generated != "ops-create-1");
    }
    let webhook = client
        .post(format!("{base}/webhooks/stripe"))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(webhook.status(), StatusCode::SERVICE_UNAVAILABLE);

    let refused = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let mut response = client
        .get(format!("{base}/metrics"))
        .insert_header(("Authorization", format!("Bearer {METRICS_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    for expected in [
        "sms_credit_ledger_rows_total{type=\"adjustment\"} 2",
        "sms_credit_ledger_amount_micros{type=\"adjustment\"} 1943500",
        "sms_credit_http_requests_total{route=\"/v1/admin/accounts\",status=\"201\"} 1",
        "sms_credit_http_requests_total{route=\"/v1/admin/accounts/{id}/adjustments\",status=\"200\"} 2",
        "sms_credit_http_requests_total{route=\"/webhooks/stripe\",status=\"503\"} 1",
        "sms_credit_active_account_actors 1",
        "sms_credit_commit_batch_size_bucket{le=\"+Inf\"}",
        "sms_credit_ack_seconds_count 2",
        "# TYPE sms_credit_commit_seconds histogram",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }

    // SIGTERM: a graceful stop, the last commit flushed, exit 0.
    let mut server = server;
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The reader thread ends with the process; give it the last lines.
    let log: Vec<String> = server.log.iter().collect();
    let text = log.join("\n");
    assert!(text.contains("the last commit is flushed"), "{text}");
    let create_lines: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("request_id=ops-create-1"))
        .collect();
    assert!(
        create_lines
            .iter()
            .any(|line| line.contains("answered") && line.contains("status=201")),
        "{text}"
    );
    assert!(
        create_lines
            .iter()
            .any(|line| line.contains("account created")),
        "the handler's own line carries the id: {text}"
    );
    assert!(
        !text.contains(ADMIN_TOKEN),
        "a secret reached the log:\n{text}"
    );
    // One start-up line says where it is and what is on and off.
    let summary = log
        .iter()
        .find(|line| line.contains("sms-credit is serving"))
        .unwrap_or_else(|| panic!("no start-up summary in\n{text}"));
    for expected in [
        format!("address={base}"),
        format!("page={base}/account"),
        "admin_api=on".to_string(),
        "host_api=off (set SMS_CREDIT_API_KEY)".to_string(),
        "stripe=off (set SMS_CREDIT_STRIPE_SECRET_KEY)".to_string(),
        "twilio=off (set SMS_CREDIT_TWILIO_ACCOUNT_SID)".to_string(),
        "metrics=on (with the token)".to_string(),
        "database=".to_string(),
    ] {
        assert!(
            summary.contains(&expected),
            "{expected} missing in {summary}"
        );
    }
    assert!(!summary.contains(":postgres@"), "a password in {summary}");

    let verified = run_cli(&directory, &["verify"]);
    assert!(verified.status.success(), "{verified:?}");
    let shown =
        String::from_utf8(run_cli(&directory, &["accounts", "show", &id.to_string()]).stdout)
            .unwrap();
    assert!(shown.contains("balance $1.9435 seq 2"), "{shown}");
}

on_both_stores!(ctrl_c_stops_gracefully_and_feeds_are_told_where_to_resume);
async fn ctrl_c_stops_gracefully_and_feeds_are_told_where_to_resume() {
    use futures_util::StreamExt;
    let directory = fresh_directory();
    let server = ServerProcess::start(&directory, &[]);
    let app = TestApp::attach(&server, &directory);
    let id = app.create_account("+14155553802").await;
    app.post_adjustment(id, 2_000_000, "before-stop").await;
    let token = app.issue_token(id).await;
    let mut feed = crate::feed::open(
        &app,
        &format!("/v1/accounts/{id}/feed"),
        &["sms-credit-feed", &token],
    )
    .await
    .unwrap();
    let snapshot = crate::feed::next_json(&mut feed).await;
    assert_eq!(snapshot["seq"], 1);

    // Ctrl-C (SIGINT): the feed is closed at once with 1001 and where to
    // resume, the last commit is flushed, and the process exits 0 — long
    // before the 10 s the server gives requests in flight.
    let started = std::time::Instant::now();
    let mut server = server;
    let interrupted = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let close = loop {
        let frame = actix_rt::time::timeout(std::time::Duration::from_secs(5), feed.next())
            .await
            .expect("the feed is told within 5 s");
        match frame {
            Some(Ok(awc::ws::Frame::Close(reason))) => break reason.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.code, awc::ws::CloseCode::Away);
    assert_eq!(
        close.description.as_deref(),
        Some("server restarting: reconnect with ?since=1")
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "stopped in {:?}",
        started.elapsed()
    );
    let text = server.log.iter().collect::<Vec<_>>().join("\n");
    assert!(text.contains("stopping gracefully"), "{text}");
    assert!(text.contains("SIGINT"), "{text}");
    assert!(text.contains("the last commit is flushed"), "{text}");
}

#[actix_rt::test]
async fn the_page_carries_the_services_name_escaped() {
    let directory = fresh_directory();
    let mut settings = test_settings(&directory);
    settings.server.service_name = "Trail <Forecasts> & Co".to_string();
    let app = TestApp::spawn_with(directory, settings).await;
    let mut response = app.client.get(app.url("/account")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    assert!(page.contains("<title>Trail &lt;Forecasts&gt; &amp; Co</title>"));
    assert!(page.contains("<h1>Trail &lt;Forecasts&gt; &amp; Co</h1>"));
    assert!(!page.contains("{{SERVICE_NAME}}"));
    assert!(
        page.contains("Trail &lt;Forecasts&gt; &amp; Co may have given you one"),
        "the page says where a token comes from"
    );
    assert!(page.contains("Sign in with your phone"));
    // A name that is not one is refused, naming the variable.
    let refused = Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .arg("verify")
        .env("SMS_CREDIT_DATABASE", app.directory.url())
        .env("SMS_CREDIT_SERVICE_NAME", " ")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SMS_CREDIT_SERVICE_NAME"));
}

on_both_stores!(a_feature_left_off_is_not_logged_as_an_error);
async fn a_feature_left_off_is_not_logged_as_an_error() {
    let directory = fresh_directory();
    let mut server = ServerProcess::start(&directory, &[("SMS_CREDIT_ADMIN_TOKEN", "")]);
    let app = TestApp::attach(&server, &directory);
    for _ in 0..3 {
        let (status, body) = app
            .request("GET", "/v1/admin/accounts", Some(ADMIN_TOKEN), None)
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "admin_not_configured");
    }
    assert!(Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(server.child.wait().unwrap().success());
    let log: Vec<String> = server.log.iter().collect();
    assert!(
        log.iter().all(|line| !line.contains("ERROR")),
        "the operator's choice is not an error:\n{}",
        log.join("\n")
    );
    assert!(log
        .iter()
        .any(|line| line.contains("admin_api=off (set SMS_CREDIT_ADMIN_TOKEN)")));
}

/// Standard error to a pipe (a file, journald, a container's log) gets
/// plain text: no colour escapes, even without `NO_COLOR`.
#[actix_rt::test]
async fn logs_to_a_pipe_carry_no_colour_escapes() {
    let directory = fresh_directory();
    let server = ServerProcess::start(&directory, &[("NO_COLOR", "")]);
    let app = TestApp::attach(&server, &directory);
    let (status, _) = app.get_healthz().await;
    assert_eq!(status, StatusCode::OK);
    let log = server.stop_and_read_log();
    let text = log.join("\n");
    assert!(
        log.iter().any(|line| line.contains("answered")),
        "the request is logged:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "an escape byte in a log written to a pipe:\n{text}"
    );
}

on_both_stores!(json_logs_are_one_object_a_line_with_the_request_and_the_account);
async fn json_logs_are_one_object_a_line_with_the_request_and_the_account() {
    let directory = fresh_directory();
    let server = ServerProcess::start(&directory, &[("SMS_CREDIT_LOG_FORMAT", "json")]);
    let app = TestApp::attach(&server, &directory);
    let mut created = app
        .client
        .post(app.url("/v1/admin/accounts"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .insert_header(("X-Request-Id", "json-create-1"))
        .send_json(&json!({"phone": "+14155553811"}))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let token = app.issue_token(id).await;
    let me = app
        .client
        .get(app.url("/v1/accounts/me"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("X-Request-Id", "json-me-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let log = server.stop_and_read_log();
    let lines: Vec<Value> = log
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"))
        })
        .collect();
    assert!(lines.iter().all(Value::is_object), "{log:?}");
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "no {field} in {line}");
        }
    }
    let of_request = |request_id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|line| line["request_id"] == request_id)
            .collect()
    };
    // The handler's own line and the answer carry the request's id.
    let create = of_request("json-create-1");
    assert!(
        create
            .iter()
            .any(|line| line["message"] == "account created"
                && line["account_id"] == id
                && line["path"] == "/v1/admin/accounts"),
        "{create:?}"
    );
    assert!(
        create
            .iter()
            .any(|line| line["message"] == "answered" && line["status"] == 201),
        "{create:?}"
    );
    // The account holder's account is known from the token, and named.
    let me = of_request("json-me-1");
    assert!(
        me.iter().any(|line| line["message"] == "answered"
            && line["status"] == 200
            && line["account_id"] == id),
        "{me:?}"
    );
    // The start-up summary is one object too, its fields as fields.
    assert!(lines.iter().any(|line| line["message"]
        .as_str()
        .is_some_and(|message| message.starts_with("sms-credit is serving"))
        && line["address"] == app.address));
}

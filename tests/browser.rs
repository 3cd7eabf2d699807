//! The account page in headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`), driven over the DevTools protocol: sign in with a token, see
//! the balance, and see an admin adjustment arrive without a reload.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::{TestApp, ADMIN_TOKEN};

type Connection = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// A headless Chromium, killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools_port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        let binary = std::env::var("SMS_CREDIT_CHROMIUM")
            .unwrap_or_else(|_| "/usr/bin/chromium".to_string());
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} is missing: install Debian's chromium package (.ci/run does) or set SMS_CREDIT_CHROMIUM"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Chromium says where DevTools listens on stderr.
        let stderr = child.stderr.take().unwrap();
        let (found, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                    if !sent {
                        let number: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = found.send(number.parse::<u16>().unwrap());
                        sent = true;
                    }
                }
            }
        });
        let devtools_port = port
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium started DevTools within 60 s");
        Browser {
            child,
            _profile: profile,
            devtools_port,
        }
    }

    /// Connects to the browser's first page.
    async fn page(&self) -> Page {
        let client = awc::Client::new();
        let mut response = client
            .get(format!("http://127.0.0.1:{}/json/list", self.devtools_port))
            .send()
            .await
            .unwrap();
        let targets: Vec<Value> = response.json().await.unwrap();
        let target = targets
            .iter()
            .find(|target| target["type"] == "page")
            .expect("a page target");
        let url = target["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (_, connection) = client
            .ws(url)
            .max_frame_size(64 * 1024 * 1024)
            .connect()
            .await
            .unwrap();
        Page {
            connection,
            next_id: 1,
            events: Vec::new(),
        }
    }
}

/// One page, over the DevTools protocol.
struct Page {
    connection: Connection,
    next_id: u64,
    /// The events DevTools sent meanwhile (network, log), oldest first.
    events: Vec<Value>,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        self.connection
            .send(ws::Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = actix_rt::time::timeout(Duration::from_secs(30), self.connection.next())
                .await
                .expect("DevTools answers within 30 s")
                .expect("DevTools connection open")
                .unwrap();
            if let ws::Frame::Text(bytes) = frame {
                let message: Value = serde_json::from_slice(&bytes).unwrap();
                if message["id"] == id {
                    assert!(message.get("error").is_none(), "{method}: {message}");
                    return message["result"].clone();
                }
                if message.get("method").is_some() {
                    self.events.push(message);
                }
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(thrown) => panic!("{expression}: {thrown}"),
        }
    }

    /// Evaluates a JavaScript expression in the page: its value, or what
    /// it threw.
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        match result.get("exceptionDetails") {
            Some(thrown) => Err(thrown.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Opens the account page and waits until its sign-in form is there
    /// (watching the network and the console from the start).
    async fn open(&mut self, url: &str) {
        self.open_until(url, "token").await;
    }

    /// Opens a page and waits until the element `id` is there.
    async fn open_until(&mut self, url: &str, id: &str) {
        self.call("Network.enable", json!({})).await;
        self.call("Log.enable", json!({})).await;
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for(
            &format!("document.readyState === 'complete' && !!document.getElementById('{id}')"),
            json!(true),
        )
        .await;
    }

    /// A screenshot of the whole page (PNG, base64). For a person to look
    /// at, `SMS_CREDIT_SCREENSHOTS=DIR` also saves it there as `NAME.png`.
    async fn screenshot(&mut self, name: &str) -> String {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = shot["data"].as_str().unwrap().to_string();
        if let Ok(folder) = std::env::var("SMS_CREDIT_SCREENSHOTS") {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&png)
                .unwrap();
            std::fs::write(format!("{folder}/{name}.png"), bytes).unwrap();
        }
        png
    }

    /// Nothing the page asked for failed, and the console has no error.
    fn assert_clean(&self) {
        self.assert_clean_but(None, |_| false);
    }

    /// Nothing the page asked for failed but with `expected_status`, and
    /// the console has no error but those `expected_error` accepts.
    fn assert_clean_but(
        &self,
        expected_status: Option<i64>,
        expected_error: impl Fn(&str) -> bool,
    ) {
        let failed: Vec<&Value> = self
            .events
            .iter()
            .filter(|event| {
                // A response without a status is not one that failed.
                let status = event["params"]["response"]["status"].as_i64().unwrap_or(0);
                event["method"] == "Network.responseReceived"
                    && status >= 400
                    && Some(status) != expected_status
            })
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        let errors: Vec<&Value> = self
            .events
            .iter()
            .filter(|event| {
                event["method"] == "Log.entryAdded"
                    && event["params"]["entry"]["level"] == "error"
                    && !event["params"]["entry"]["text"]
                        .as_str()
                        .is_some_and(&expected_error)
            })
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// Types `token` into the sign-in form and presses the button.
    async fn sign_in_with(&mut self, token: &str) {
        self.eval(&format!(
            "document.getElementById('token').value = '{token}'; document.getElementById('signin-button').click(); true"
        ))
        .await;
    }

    /// Polls `expression` until it equals `expected` (30 s at most). An
    /// expression that throws (the page is between two documents, its
    /// elements not there yet) is polled again; after 30 s the last value
    /// or exception is the failure.
    async fn wait_for(&mut self, expression: &str, expected: Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = match self.try_eval(expression).await {
                Ok(value) => value,
                Err(thrown) => json!({ "threw": thrown["exception"]["description"] }),
            };
            if last == expected {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{expression} is {last}, not {expected}, after 30 s");
    }
}

/// Whether the account page's purchased and bonus credit add up to the
/// balance it shows (read from the digits, exactly).
const SPLIT_ADDS_UP: &str = "(() => { \
    const micros = (text) => { const [whole, part = ''] = text.replace('$', '').split('.'); \
      return BigInt(whole) * 1000000n + BigInt(part.padEnd(6, '0')); }; \
    const split = document.getElementById('credit-split').textContent.match(/\\$[0-9.]+/g) || []; \
    const balance = document.getElementById('balance').textContent; \
    return split.length === 2 && !balance.startsWith('-') \
      && micros(split[0]) + micros(split[1]) === micros(balance); })()";

#[actix_rt::test]
async fn the_account_page_shows_the_live_balance_without_a_reload() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155553500").await;
    app.post_adjustment(account, 5_000_000, "opening").await;
    let token = app.issue_token(account).await;

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.open(&app.url("/account")).await;

    // A wrong token is refused on the page.
    page.sign_in_with("sct_wrong").await;
    page.wait_for(
        "document.getElementById('signin-error').textContent",
        json!("That token is not valid, or it has expired."),
    )
    .await;

    page.sign_in_with(&token).await;
    page.wait_for(
        "document.getElementById('balance').textContent",
        json!("$5.00"),
    )
    .await;
    page.wait_for("document.getElementById('account').hidden", json!(false))
        .await;
    page.wait_for(
        "document.querySelectorAll('#transactions tr').length",
        json!(1),
    )
    .await;
    page.wait_for(
        "document.getElementById('live').textContent",
        json!("· live"),
    )
    .await;
    // Nothing the page asked for failed, and the console has no error
    // (the refused token above is an expected 401).
    page.assert_clean_but(Some(401), |text| text.contains("401"));

    // Marks this page load: a reload would lose it.
    page.eval("window.sameLoad = 'yes'; true").await;

    let (status, _) = app.post_adjustment(account, 1_250_000, "goodwill").await;
    assert_eq!(status, StatusCode::OK);
    page.wait_for(
        "document.getElementById('balance').textContent",
        json!("$6.25"),
    )
    .await;
    page.wait_for(
        "document.querySelectorAll('#transactions tr').length",
        json!(2),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#transactions tr td.amount').textContent")
            .await,
        json!("+$1.25")
    );
    assert_eq!(
        page.eval("window.sameLoad").await,
        json!("yes"),
        "no reload"
    );

    // Stripe is not configured here: the top-up button says so, in words
    // for a customer (the variable's name is for the operator's log).
    page.eval("document.getElementById('topup').click(); true")
        .await;
    page.wait_for(
        "document.getElementById('topup-message').textContent",
        json!("Payments are not available right now."),
    )
    .await;

    // What the balance means: messages at the account's own rate ($0.0565
    // for a US number), the balance over 30 days, times in the reader's zone.
    assert_eq!(
        page.eval("document.getElementById('estimate').textContent")
            .await,
        json!("About 110 messages at your country's rate ($0.0565 each).")
    );
    let points = page
        .eval("document.getElementById('chart-line').getAttribute('points').split(' ').length")
        .await;
    assert!(points.as_i64().unwrap() >= 4, "{points}");
    let zone = page
        .eval("document.getElementById('when-header').textContent")
        .await;
    assert!(
        zone.as_str().unwrap().starts_with("When (") && zone != json!("When ()"),
        "{zone}"
    );

    // On a phone: every row fits on one or two lines.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    let amounts = [10_000_i64, 4_350];
    for (index, description) in [
        "a long description of a goodwill adjustment that goes on and on and on",
        "x",
    ]
    .iter()
    .enumerate()
    {
        app.request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            // The second less than a cent, shown to its last digit.
            Some(
                json!({"amount_micros": amounts[index], "reason": "phone test",
                "description": description, "idempotency_key": format!("phone-{index}")}),
            ),
        )
        .await;
    }
    page.wait_for(
        "document.querySelectorAll('#transactions tr').length",
        json!(4),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#transactions tr td.amount').textContent")
            .await,
        json!("+$0.00435"),
        "an amount less than a cent is not shown as $0.00"
    );
    let tallest = page
        .eval(
            "(() => Math.max(...[...document.querySelectorAll('#transactions tr')].map((row) => { \
               const style = getComputedStyle(row.cells[2]); \
               const line = parseFloat(style.lineHeight) || 1.2 * parseFloat(style.fontSize); \
               const padding = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom) \
                 + parseFloat(style.borderBottomWidth); \
               return (row.getBoundingClientRect().height - padding) / line; })))()",
        )
        .await;
    assert!(
        tallest.as_f64().unwrap() <= 2.2,
        "a row takes {tallest} lines on a phone"
    );
    // The operator's reasons are never on the holder's page.
    assert_eq!(
        page.eval("['test adjustment', 'phone test'].some((reason) => document.body.innerText.includes(reason))")
            .await,
        json!(false)
    );
    // The split is read again after a burst of rows: before the picture,
    // it adds up to the balance shown.
    page.wait_for(SPLIT_ADDS_UP, json!(true)).await;
    let png = page.screenshot("account-phone").await;
    assert!(png.len() > 1_000, "a screenshot of the phone-width page");

    // A restart: the page says it is not live, reconnects by itself and
    // carries on from where it was.
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let directory = app.stop().await;
    page.wait_for(
        "document.getElementById('live').textContent.includes('not live')",
        json!(true),
    )
    .await;
    let settings = crate::helpers::test_settings(&directory);
    let app = TestApp::spawn_at(directory, settings, port).await;
    page.wait_for(
        "document.getElementById('live').textContent",
        json!("· live"),
    )
    .await;
    app.post_adjustment(account, 2_000_000, "after-restart")
        .await;
    // The balance to its last micro-dollar (the $0.00435 above), not $8.26.
    page.wait_for(
        "document.getElementById('balance').textContent",
        json!("$8.26435"),
    )
    .await;
    assert_eq!(page.eval("window.sameLoad").await, json!("yes"));

    // The balance split into purchased and bonus credit, and each grant
    // with what is left and when it expires, kept up live.
    page.wait_for(
        "document.getElementById('credit-split').textContent",
        json!("Purchased credit $0.00 · bonus credit $8.26435"),
    )
    .await;
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(crate::helpers::ADMIN_TOKEN),
            Some(
                json!({"amount_micros": 2_000_000, "reason": "bank transfer",
                        "idempotency_key": "transfer", "category": "paid",
                        "expires_at": "2027-01-31T12:00:00Z"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    page.wait_for(
        "document.getElementById('credit-split').textContent",
        json!("Purchased credit $2.00 · bonus credit $8.26435"),
    )
    .await;
    page.wait_for("document.querySelectorAll('#grants tr').length", json!(6))
        .await;
    let newest = page
        .eval("Array.from(document.querySelectorAll('#grants tr')[0].cells).map((c) => c.textContent)")
        .await;
    assert!(
        newest[0].as_str().unwrap().starts_with("Purchased")
            && newest[1] == json!("$2.00")
            && newest[2].as_str().unwrap().contains("2027"),
        "{newest}"
    );
    let oldest = page
        .eval("Array.from(document.querySelectorAll('#grants tr')[5].cells).map((c) => c.textContent)")
        .await;
    assert!(
        oldest[0].as_str().unwrap().starts_with("Bonus") && oldest[2] == json!("never"),
        "{oldest}"
    );
}

#[actix_rt::test]
/// A customer's page away — frozen, as a phone freezes a page in the
/// background — while 1 000 changes are written: once back it shows the
/// right balance and the newest change, without a reload and without a
/// failed request or a console error.
async fn the_account_page_away_while_a_thousand_changes_are_written_catches_up() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155553510").await;
    app.post_adjustment(account, 5_000_000, "opening").await;
    let token = app.issue_token(account).await;

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.open(&app.url("/account")).await;
    page.sign_in_with(&token).await;
    page.wait_for(
        "document.getElementById('live').textContent",
        json!("· live"),
    )
    .await;
    page.eval("window.sameLoad = 'yes'; true").await;

    page.call("Page.setWebLifecycleState", json!({"state": "frozen"}))
        .await;
    crate::feed::write_changes(&app, account, 1_000, "away").await;
    page.call("Page.setWebLifecycleState", json!({"state": "active"}))
        .await;

    page.wait_for(
        "document.getElementById('balance').textContent",
        json!("$6.00"),
    )
    .await;
    page.wait_for(
        "document.querySelector('#transactions tr').dataset.seq",
        json!("1001"),
    )
    .await;
    assert_eq!(
        page.eval("window.sameLoad").await,
        json!("yes"),
        "no reload"
    );
    // Nothing failed, and the console has no error but Chromium's own note
    // that freezing the page closed its websocket (what a phone does to a
    // page in the background: the page reconnected from its last change).
    page.assert_clean_but(None, |text| {
        text.ends_with("failed: Page entered Back-Forward Cache.")
    });
    // For a person to look at, at a desktop's width and a phone's.
    for (name, width, height, mobile) in [
        ("account-away-1280", 1280, 900, false),
        ("account-away-360", 360, 740, true),
    ] {
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        page.screenshot(name).await;
    }
}

#[actix_rt::test]
async fn the_account_page_turns_auto_top_up_on_and_shows_the_card() {
    use crate::fake_stripe::{EventFactory, FakeStripe};
    use crate::helpers::{fresh_directory, stripe_settings};
    let stripe = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &stripe.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, _, token) =
        crate::stripe::active_account(&app, &mut events, "+14155553900").await;

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.open(&app.url("/account")).await;
    page.sign_in_with(&token).await;
    page.wait_for("document.getElementById('auto').hidden", json!(false))
        .await;
    assert_eq!(
        page.eval("document.getElementById('auto-card').textContent")
            .await,
        json!("Card: visa ending 4242 (expires 08/2030)")
    );
    assert_eq!(
        page.eval("document.getElementById('auto-status').textContent")
            .await,
        json!("Off.")
    );
    // A bad amount is refused on the page, and nothing changes.
    page.eval("document.getElementById('auto-amount').value = '5'; document.getElementById('auto-on').click(); true")
        .await;
    page.wait_for(
        "document.getElementById('auto-message').textContent.includes('at least $10.00')",
        json!(true),
    )
    .await;
    page.eval("document.getElementById('auto-amount').value = '10'; document.getElementById('auto-threshold').value = '3.50'; document.getElementById('auto-on').click(); true")
        .await;
    page.wait_for(
        "document.getElementById('auto-status').textContent.startsWith('On: below $3.50, $10.00 is charged')",
        json!(true),
    )
    .await;
    let (_, view) = app
        .request(
            "GET",
            &format!("/v1/accounts/{account}/auto-top-up"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (
            view["enabled"].as_bool(),
            view["threshold_micros"].as_i64(),
            view["consent"]["via"].as_str()
        ),
        (Some(true), Some(3_500_000), Some("web"))
    );
    assert!(view["consent"]["text"]
        .as_str()
        .unwrap()
        .contains("card ending 4242"));
    // And off again.
    page.eval("document.getElementById('auto-off').click(); true")
        .await;
    page.wait_for(
        "document.getElementById('auto-status').textContent",
        json!("Off."),
    )
    .await;
}

/// A number whose country has no rate yet (a Guernsey mobile: the embedded
/// table has no GG and no alias for it): the admin is told what to add when
/// the account is made, and the customer's page says messages to their
/// number are not available yet instead of leaving the estimate blank.
#[actix_rt::test]
async fn a_number_that_cannot_be_priced_is_said_so_to_the_admin_and_the_customer() {
    let app = TestApp::spawn().await;
    let (status, created) = app.post_admin_account("+447911123456", None).await;
    assert_eq!(status, awc::http::StatusCode::CREATED, "{created}");
    let warning = created["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("cannot be priced yet")
            && warning.contains("GG")
            && !warning.contains("SMS_CREDIT_"),
        "{created}"
    );
    let account = created["id"].as_i64().unwrap();
    let (_, priced) = app.post_admin_account("+14155553610", None).await;
    assert!(priced.get("warnings").is_none(), "{priced}");
    let token = app.issue_token(account).await;

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.open(&app.url("/account")).await;
    page.sign_in_with(&token).await;
    page.wait_for(
        "document.getElementById('estimate').textContent",
        json!("Messages to your number are not available yet."),
    )
    .await;
}

/// A number that texted STOP: its page tells the customer that nothing is
/// texted to it and how to get texts again (in the customer's words), and
/// the console says so beside the account, where the phone's sign-in
/// limits are lifted too, at a desktop's and a phone's width; no failed
/// request, no console error.
#[actix_rt::test]
async fn a_number_that_said_stop_is_told_so_on_its_page_and_the_console() {
    let stripe = crate::fake_stripe::FakeStripe::start().await;
    let twilio = crate::fake_twilio::FakeTwilio::start().await;
    let directory = crate::helpers::fresh_directory();
    let settings = crate::helpers::with_twilio(
        crate::helpers::stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    let app = TestApp::spawn_with(directory, settings).await;
    let phone = "+14155553620";
    let account = app.create_account(phone).await;
    let (status, _) = app.post_twilio_sms("said-stop", phone, "STOP").await;
    assert_eq!(status, StatusCode::OK);
    let token = app.issue_token(account).await;

    let browser = Browser::start();
    for (width, height, mobile) in [(1280, 800, false), (360, 740, true)] {
        let mut page = browser.page().await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        page.open(&app.url("/account")).await;
        page.eval("sessionStorage.clear(); true").await;
        page.sign_in_with(&token).await;
        page.wait_for("document.getElementById('opted-out').hidden", json!(false))
            .await;
        let told = page.eval(&text_of("opted-out")).await;
        let told = told.as_str().unwrap_or_default();
        assert!(told.contains("Text START"), "{told}");
        assert!(!told.contains("SMS_CREDIT_"), "{told}");

        page.open_until(
            &app.url(&format!("/admin#account-{account}")),
            "admin-token",
        )
        .await;
        page.eval(&format!(
            "sessionStorage.clear(); document.getElementById('admin-token').value = '{ADMIN_TOKEN}'; document.getElementById('signin-button').click(); true"
        ))
        .await;
        page.wait_for(
            "document.getElementById('account-facts').textContent.includes('opted out of texts (texted STOP)')",
            json!(true),
        )
        .await;
        // The phone's sign-in limits, lifted from the account.
        page.eval(
            "window.confirm = () => true; document.getElementById('sign-in-lift').click(); true",
        )
        .await;
        page.wait_for(
            "document.getElementById('sign-in-message').textContent.startsWith('Lifted: ')",
            json!(true),
        )
        .await;
        page.assert_clean();
    }
}

/// Sign-in codes at half their cap or more in the last hour are listed in
/// the console's Needs attention, and so is a phone sent half its total of
/// the hour, at a desktop's and a phone's width.
#[actix_rt::test]
async fn the_console_lists_sign_in_codes_at_an_unusual_rate() {
    let twilio = crate::fake_twilio::FakeTwilio::start().await;
    let directory = crate::helpers::fresh_directory();
    let mut settings =
        crate::helpers::with_twilio(crate::helpers::test_settings(&directory), &twilio.base_url);
    settings.access.sign_in.limits.per_country_per_hour = 4;
    settings.access.sign_in.limits.per_phone_total_per_hour = 4;
    settings.access.sign_in.limits.min_gap_ms = 0;
    let app = TestApp::spawn_with(directory, settings).await;
    for phone in ["+14155553630", "+14155553631", "+14155553630"] {
        let (status, answer) = app
            .request(
                "POST",
                "/v1/sign-in/code",
                None,
                Some(json!({ "phone": phone })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }

    let browser = Browser::start();
    for (width, height, mobile) in [(1280, 800, false), (360, 740, true)] {
        let mut page = browser.page().await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        page.open_until(&app.url("/admin"), "admin-token").await;
        page.eval(&format!(
            "sessionStorage.clear(); document.getElementById('admin-token').value = '{ADMIN_TOKEN}'; document.getElementById('signin-button').click(); true"
        ))
        .await;
        page.wait_for(
            "document.querySelector('#sign-in-list li') && document.querySelector('#sign-in-list li').textContent",
            json!("to US · 3 codes in the last hour (cap 4)"),
        )
        .await;
        page.wait_for(
            "document.querySelector('#sign-in-list li:nth-child(2)') && document.querySelector('#sign-in-list li:nth-child(2)').textContent",
            json!("to +14155553630 · 2 codes in the last hour (limit 4), 2 in the last day (limit 24)"),
        )
        .await;
        page.assert_clean();
    }
}

/// A payer back from Stripe Checkout: on a phone, the success page waits
/// for Stripe's confirmation and says when access is ready, with no reload;
/// on a desktop, the cancel page says nothing was charged and offers to try
/// again. No failed request, no console error, nothing wider than the screen.
#[actix_rt::test]
async fn a_payer_back_from_checkout_sees_where_the_payment_stands() {
    use crate::fake_stripe::{EventFactory, FakeStripe};
    use crate::helpers::{fresh_directory, stripe_settings};
    let stripe = FakeStripe::start().await;
    let directory = fresh_directory();
    let settings = stripe_settings(&directory, &stripe.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let (_, order, session, customer) =
        crate::stripe::start_access(&app, "+14155553971", None).await;

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    page.open_until(
        &app.url(&format!("/checkout/success?session_id={session}")),
        "status",
    )
    .await;
    page.wait_for(
        "document.getElementById('status').textContent",
        json!("Waiting for Stripe to confirm your payment…"),
    )
    .await;
    page.eval("window.sameLoad = 'yes'; true").await;
    let mut events = EventFactory::new();
    let completed = events.checkout_completed(&session, order, &customer, 2999, "pi_back_1");
    let (status, _) = app.deliver(&completed).await;
    assert_eq!(status, awc::http::StatusCode::OK);
    page.wait_for(
        "document.getElementById('status').textContent",
        json!("Payment received: your access is ready."),
    )
    .await;
    assert_eq!(
        page.eval("window.sameLoad").await,
        json!("yes"),
        "no reload"
    );
    assert_eq!(
        page.eval("document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true),
        "nothing wider than a phone"
    );
    page.assert_clean();

    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    page.open_until(&app.url("/checkout/cancel"), "status")
        .await;
    assert_eq!(
        page.eval("document.getElementById('status').textContent")
            .await,
        json!("You left the payment page: nothing was charged.")
    );
    assert_eq!(
        page.eval("[document.getElementById('next').textContent, document.getElementById('next').getAttribute('href')]").await,
        json!(["Try again", "/account"])
    );
    page.assert_clean();
}

impl Page {
    /// Signs in by phone on the account page: the number, then the code
    /// texted to it.
    async fn sign_in_by_phone(
        &mut self,
        twilio: &crate::fake_twilio::FakeTwilio,
        typed: &str,
        phone: &str,
    ) {
        self.eval(&format!(
            "document.getElementById('phone').value = '{typed}'; document.getElementById('phone-button').click(); true"
        ))
        .await;
        self.wait_for("!document.getElementById('code-form').hidden", json!(true))
            .await;
        let code = crate::sign_in::code_sent_to(twilio, phone).await;
        self.eval(&format!(
            "document.getElementById('code').value = '{code}'; document.getElementById('code-button').click(); true"
        ))
        .await;
    }
}

#[actix_rt::test]
async fn a_stranger_signs_up_with_their_phone_pays_and_lands_in_their_account() {
    use crate::fake_stripe::{EventFactory, FakeStripe};
    use crate::fake_twilio::FakeTwilio;
    use crate::helpers::{fresh_directory, stripe_settings, with_twilio};
    use sms_credit_actors::clock::{Clock, ManualClock};
    let stripe = FakeStripe::start().await;
    stripe.serve_checkout_pages();
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(
        stripe_settings(&directory, &stripe.base_url),
        &twilio.base_url,
    );
    // The server's clock is the browser's: the page compares expiry times.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = ManualClock::new(now_ms);
    let app = TestApp::spawn_with_clock(directory, settings, clock.clone()).await;
    let phone = "+14155553981";

    // At a phone's width: the number (typed as people type it), the code,
    // then sign-up, since the phone has no access.
    let browser = Browser::start();
    let mut page = browser.page().await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    page.open_until(&app.url("/account"), "phone").await;
    page.sign_in_by_phone(&twilio, "+1 (415) 555-3981", phone)
        .await;
    page.wait_for("!document.getElementById('signup').hidden", json!(true))
        .await;
    assert_eq!(
        page.eval("document.getElementById('signup-phone').textContent")
            .await,
        json!(phone)
    );
    assert_eq!(
        page.eval("document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true),
        "nothing wider than a phone"
    );
    page.eval(
        "document.getElementById('signup-email').value = 'hiker@example.com'; document.getElementById('signup-button').click(); true",
    )
    .await;
    page.wait_for("location.pathname.startsWith('/c/pay/cs_')", json!(true))
        .await;
    page.assert_clean();

    // Stripe confirms the payment and sends the payer back: the page
    // follows the order and opens the account, no sign-in needed.
    let (_, found) = app
        .request(
            "GET",
            "/v1/admin/accounts?q=4155553981",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let account = found["accounts"][0]["id"].as_i64().unwrap();
    let order = &app.get_orders(account).await[0];
    let session = order["stripe_session_id"].as_str().unwrap().to_string();
    assert_eq!(
        page.eval("location.pathname").await,
        json!(format!("/c/pay/{session}"))
    );
    let customer = app.get_admin_account(account).await.1["stripe_customer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = EventFactory::new();
    let completed = events.checkout_completed(
        &session,
        order["id"].as_i64().unwrap(),
        &customer,
        2999,
        "pi_signup_browser",
    );
    let signed_at = clock.now_ms() / 1000;
    assert_eq!(
        app.deliver_at(&completed, signed_at).await.0,
        StatusCode::OK
    );
    page.open_until(
        &app.url(&format!("/checkout/success?session_id={session}")),
        "status",
    )
    .await;
    page.wait_for("location.pathname", json!("/account")).await;
    page.wait_for("!document.getElementById('account').hidden", json!(true))
        .await;
    page.wait_for(
        "document.getElementById('balance').textContent",
        json!("$5.00"),
    )
    .await;
    // The payment, with Stripe's receipt (asked of Stripe for the page).
    page.wait_for("document.querySelectorAll('#payments tr').length", json!(1))
        .await;
    assert_eq!(
        page.eval("Array.from(document.querySelectorAll('#payments tr')[0].cells).slice(1, 3).map((c) => c.textContent)")
            .await,
        json!(["Access", "$29.99"])
    );
    assert_eq!(
        page.eval("document.querySelector('#payments a').href")
            .await,
        json!(crate::fake_stripe::receipt_url("pi_signup_browser"))
    );
    assert_eq!(
        page.eval("document.querySelector('#payments a').rel").await,
        json!("noopener noreferrer")
    );
    assert_eq!(
        page.eval("document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true),
        "the payments fit a phone"
    );
    page.screenshot("account-payments-phone").await;
    page.assert_clean();

    // At a desktop's width, after signing out: the customer signs in with
    // the phone again and is in their account.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    page.eval("document.getElementById('signout').click(); true")
        .await;
    page.wait_for("!document.getElementById('signin').hidden", json!(true))
        .await;
    clock.advance_ms(31_000);
    page.sign_in_by_phone(&twilio, phone, phone).await;
    page.wait_for("!document.getElementById('account').hidden", json!(true))
        .await;
    page.wait_for(
        "document.getElementById('balance').textContent",
        json!("$5.00"),
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('signup').hidden").await,
        json!(true)
    );
    page.wait_for("document.querySelectorAll('#payments a').length", json!(1))
        .await;
    page.screenshot("account-payments-desktop").await;
    page.assert_clean();
}

/// The console's visible text of element `id`.
fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}').textContent")
}

#[actix_rt::test]
async fn the_operator_console_finds_an_account_adjusts_once_and_refunds_an_order() {
    use crate::fake_stripe::{EventFactory, FakeStripe};
    let fake = FakeStripe::start().await;
    let directory = crate::helpers::fresh_directory();
    let settings = crate::helpers::stripe_settings(&directory, &fake.base_url);
    let app = TestApp::spawn_with(directory, settings).await;
    let mut events = EventFactory::new();
    let (account, order, intent) =
        crate::refunds::paid_top_up(&app, &mut events, "+14155550150").await;
    app.create_account("+14155550151").await;
    // The cardholder's bank asks about the access payment: an inquiry,
    // which takes nothing back but needs the operator.
    let inquiry = events.dispute(
        "charge.dispute.created",
        "dp_console",
        "ch_console",
        &format!("pi_access_{account}"),
        2999,
        "warning_needs_response",
    );
    assert_eq!(app.deliver(&inquiry).await.0, StatusCode::OK);
    // A backup taken two hours before the server's clock.
    let backup_taken_at_ms = crate::helpers::NOW_UNIX * 1000 - 7_200_000;
    app.store
        .as_ref()
        .unwrap()
        .backups()
        .record_backup(sms_credit_actors::store::backup::BackupRecord {
            taken_at_ms: backup_taken_at_ms,
            path: "/var/backups/sms-credit/nightly.db".to_string(),
            accounts: 2,
            transactions: 3,
            bytes: 65_536,
            duration_ms: 120,
        })
        .await
        .unwrap();

    // An endpoint added by a command line whose setting allows loopback,
    // which this server's does not: flagged on the console.
    let cli_directory = app.directory.clone();
    let added = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
            .args(["webhooks", "add", "http://127.0.0.1:9/hooks"])
            .env("SMS_CREDIT_DATABASE", cli_directory.url())
            .env("SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE", "true")
            .env_remove("SMS_CREDIT_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(added.status.success(), "{added:?}");

    let browser = Browser::start();

    for (width, height, mobile) in [(1280, 800, false), (360, 740, true)] {
        let mut page = browser.page().await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        page.open_until(&app.url("/admin"), "admin-token").await;
        page.eval(&format!(
            "sessionStorage.clear(); window.confirm = () => true; document.getElementById('admin-token').value = '{ADMIN_TOKEN}'; document.getElementById('signin-button').click(); true"
        ))
        .await;
        page.wait_for("document.getElementById('console').hidden", json!(false))
            .await;

        // The overview's figures are the API's.
        let (_, overview) = app
            .request("GET", "/v1/admin/overview", Some(ADMIN_TOKEN), None)
            .await;
        let owed = overview["credit_owed_micros"].as_i64().unwrap();
        page.wait_for(&text_of("owed"), json!(format_dollars(owed)))
            .await;
        assert_eq!(
            page.eval("document.getElementById('owed').title").await,
            json!(format!("{} micro-dollars", thousands(owed)))
        );
        assert_eq!(
            page.eval(&text_of("below")).await,
            json!(overview["accounts_below_threshold"].to_string())
        );
        // The last backup: its time (as the page writes times), where it is
        // and what it holds; nothing about backups needs attention.
        assert_eq!(
            overview["last_backup"]["taken_at"],
            json!(sms_credit_actors::clock::format_rfc3339_ms(
                backup_taken_at_ms
            ))
        );
        assert_eq!(
            page.eval(&text_of("last-backup")).await,
            page.eval(&format!(
                "when(new Date({backup_taken_at_ms}).toISOString())"
            ))
            .await
        );
        assert_ne!(page.eval(&text_of("last-backup")).await, json!(""));
        assert_eq!(
            page.eval("document.getElementById('last-backup').title")
                .await,
            json!("/var/backups/sms-credit/nightly.db · 2 accounts, 3 ledger rows")
        );
        assert_eq!(page.eval(&text_of("backup-list")).await, json!("None."));
        page.wait_for(
            "document.getElementById('endpoint-list').textContent.includes('this server does not deliver to it')",
            json!(true),
        )
        .await;
        // The figure links to the list behind it: the account with no credit.
        let (_, attention) = app
            .request("GET", "/v1/admin/attention", Some(ADMIN_TOKEN), None)
            .await;
        let lows = attention["low_balances"].as_array().unwrap().len();
        page.wait_for(
            "document.querySelectorAll('#low-list li a').length",
            json!(lows),
        )
        .await;
        assert_eq!(
            page.eval(
                "document.querySelector('a.card[href=\"#attention-low\"] .figure').textContent"
            )
            .await,
            json!(lows.to_string())
        );
        // The dispute is listed, linking to its account, and counted.
        page.wait_for(
            "document.querySelectorAll('#dispute-list li a').length",
            json!(1),
        )
        .await;
        assert!(page
            .eval("document.querySelector('#dispute-list li').textContent")
            .await
            .as_str()
            .unwrap()
            .contains("inquiry dp_console"));
        assert_eq!(page.eval(&text_of("disputes-open")).await, json!("1"));
        // The chart's total is the API's for the same days.
        page.wait_for(
            "document.getElementById('money-chart-words').dataset.since !== undefined",
            json!(true),
        )
        .await;
        let since = page
            .eval("document.getElementById('money-chart-words').dataset.since")
            .await;
        let (_, reports) = app
            .request(
                "GET",
                &format!("/v1/admin/reports?since={}", since.as_str().unwrap()),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        let paid: i64 = reports["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hour| hour["payments_micros"].as_i64().unwrap())
            .sum();
        assert_eq!(
            page.eval("document.getElementById('money-chart-words').dataset.paid")
                .await,
            json!(paid.to_string())
        );

        // Found by a part of its phone number, opened with one click.
        page.eval("document.getElementById('search').value = '0150'; document.getElementById('search-button').click(); true").await;
        page.wait_for(
            "document.querySelectorAll('#account-rows tr').length",
            json!(1),
        )
        .await;
        // Beside it: its auto top-up and when its balance last changed.
        assert_eq!(
            page.eval(
                "document.querySelector('#account-rows td.last-activity').textContent.length > 0"
            )
            .await,
            json!(true)
        );
        page.eval("document.querySelector('#account-rows a').click(); true")
            .await;
        page.wait_for("document.getElementById('account').hidden", json!(false))
            .await;
        let before = app.balance_micros(account).await;
        page.wait_for(&text_of("balance"), json!(format_dollars(before)))
            .await;
        page.wait_for(&text_of("live"), json!("· live")).await;
        assert!(page
            .eval(&text_of("ledger-zone"))
            .await
            .as_str()
            .unwrap()
            .starts_with("(times in "));

        // The CLI adjusts: the page follows without a reload.
        page.eval("window.sameLoad = 'yes'; true").await;
        let key = format!("cli-{width}");
        let cli_directory = app.directory.clone();
        let output = actix_rt::task::spawn_blocking(move || {
            crate::helpers::run_cli(
                &cli_directory,
                &[
                    "accounts",
                    "adjust",
                    &account.to_string(),
                    "--amount",
                    // Less than a cent beside the dollar: shown exactly.
                    "1.0005",
                    "--reason",
                    "cli",
                    "--idempotency-key",
                    &key,
                ],
            )
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        page.wait_for(
            &text_of("balance"),
            json!(format_dollars(before + 1_000_500)),
        )
        .await;

        // An adjustment through the page, clicked twice: applied once.
        page.eval("document.getElementById('adjust-amount').value = '2.00'; document.getElementById('adjust-reason').value = 'goodwill from the console'; { const b = document.getElementById('adjust-button'); b.click(); b.click(); } true").await;
        page.wait_for(
            &text_of("balance"),
            json!(format_dollars(before + 3_000_500)),
        )
        .await;
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            app.balance_micros(account).await,
            before + 3_000_500,
            "one adjustment"
        );
        assert_eq!(page.eval("window.sameLoad").await, json!("yes"));
        // Rows that came by the feed say when, as those read from the API do.
        assert_eq!(
            page.eval("[...document.querySelectorAll('#ledger-rows td.when')].every((cell) => cell.textContent.length > 0)")
                .await,
            json!(true)
        );

        page.wait_for(&text_of("message-rows"), json!("No messages yet."))
            .await;
        // The ledger filtered by type: only the adjustments (the CLI's and
        // the page's, and those of an earlier width).
        page.eval("{ const t = document.getElementById('ledger-type'); t.value = 'adjustment'; t.dispatchEvent(new Event('change')); } true").await;
        let shown = page
            .eval("[...document.querySelectorAll('#ledger-rows tr')].filter((row) => !row.hidden).map((row) => row.dataset.type)")
            .await;
        let shown = shown.as_array().unwrap();
        assert!(
            !shown.is_empty() && shown.iter().all(|kind| kind == "adjustment"),
            "{shown:?}"
        );
        page.eval("{ const t = document.getElementById('ledger-type'); t.value = ''; t.dispatchEvent(new Event('change')); } true").await;
        assert_eq!(
            page.eval("document.getElementById('ledger-older').hidden")
                .await,
            json!(true),
            "fewer than 50 rows"
        );

        // A refund of the top-up: asked of Stripe once; the credit comes
        // off, live, when Stripe's refund event arrives.
        let refunds_before = fake.refunds_made();
        page.eval(&format!(
            "document.querySelector('button[aria-label=\"Refund order {order}\"]').click(); true"
        ))
        .await;
        page.wait_for(
            "document.getElementById('refund-form').hidden",
            json!(false),
        )
        .await;
        // The form offers the order's unspent credit (whole cents) first.
        let (status, detail) = app
            .request(
                "GET",
                &format!("/v1/admin/orders/{order}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        let unspent = detail["unspent_credit_micros"].as_i64().unwrap();
        assert!(unspent > 0, "{detail}");
        // The orders table shows it too, in the order's row.
        assert_eq!(
            page.eval(&format!(
                "[...document.querySelector('button[aria-label=\"Refund order {order}\"]').closest('tr').cells].map((c) => c.textContent)[5]"
            ))
            .await,
            json!(format_dollars(unspent))
        );
        assert_eq!(
            page.eval("document.getElementById('refund-amount').value")
                .await,
            json!(format!(
                "{}.{:02}",
                unspent / 1_000_000,
                unspent % 1_000_000 / 10_000
            ))
        );
        assert!(page
            .eval(&text_of("refund-what"))
            .await
            .as_str()
            .unwrap()
            .contains(&format!(
                "{} of its credit unspent",
                format_dollars(unspent)
            )));
        page.eval("document.getElementById('refund-amount').value = '1.00'; document.getElementById('refund-reason').value = 'trip cancelled'; { const r = document.getElementById('refund-button'); r.click(); r.click(); } true").await;
        page.wait_for(
            &text_of("refund-message"),
            json!("Stripe is refunding $1.00; the credit comes off when Stripe confirms it."),
        )
        .await;
        assert_eq!(
            fake.refunds_made(),
            refunds_before + 1,
            "one refund for a double click"
        );
        let refunded = fake.charge_refunded(
            &mut events,
            "ch_console",
            &intent,
            1000,
            crate::fake_stripe::Listed::All,
        );
        assert_eq!(app.deliver(&refunded).await.0, StatusCode::OK);
        page.wait_for(
            &text_of("balance"),
            json!(format_dollars(before + 2_000_500)),
        )
        .await;

        if !mobile {
            // A token issued from the page is shown once and listed (never
            // shown again).
            page.eval("document.getElementById('token-issue').click(); true")
                .await;
            page.wait_for(
                "document.getElementById('token-shown').hidden",
                json!(false),
            )
            .await;
            let token = page.eval(&text_of("token-value")).await;
            assert!(token.as_str().unwrap().starts_with("sct_"), "{token}");
            page.wait_for(
                "document.querySelectorAll('#token-rows tr').length",
                json!(2),
            )
            .await;
            let (status, _) = app
                .request(
                    "GET",
                    "/v1/accounts/me",
                    Some(token.as_str().unwrap()),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "the shown token works");
            // Auto top-up was never on: said so, and nothing to turn off.
            page.wait_for(&text_of("auto-state"), json!("Off.")).await;

            // The price of access and a discount code.
            page.eval("document.getElementById('pricing-mode').value = 'sale'; document.getElementById('sale-price').value = '19.99'; document.getElementById('pricing-button').click(); true").await;
            page.wait_for(
                &text_of("pricing-message"),
                json!("Access costs $19.99 now."),
            )
            .await;
            let (_, pricing) = app
                .request("GET", "/v1/admin/pricing", Some(ADMIN_TOKEN), None)
                .await;
            assert_eq!(pricing["price_micros"], 19_990_000);
            page.eval("document.getElementById('code-name').value = 'console10'; document.getElementById('code-percent').value = '10'; document.getElementById('code-button').click(); true").await;
            page.wait_for(
                "document.querySelectorAll('#code-rows tr').length",
                json!(1),
            )
            .await;
            page.eval("document.querySelector('button[aria-label=\"Deactivate CONSOLE10\"]').click(); true").await;
            page.wait_for(
                "!!document.querySelector('button[aria-label=\"Activate CONSOLE10\"]')",
                json!(true),
            )
            .await;
            let (_, codes) = app
                .request("GET", "/v1/admin/discount-codes", Some(ADMIN_TOKEN), None)
                .await;
            assert_eq!(codes["discount_codes"][0]["active"], false);
        }
        if mobile {
            assert_eq!(
                page.eval("document.documentElement.scrollWidth <= window.innerWidth")
                    .await,
                json!(true),
                "nothing wider than a phone"
            );
        }
        // For a person to look at: SMS_CREDIT_SCREENSHOTS=DIR saves the
        // whole page at each width.
        page.screenshot(&format!("admin-{width}")).await;
        // Nothing the page says names a setting or a stack trace.
        let words = page.eval("document.body.innerText").await;
        assert!(!words.as_str().unwrap().contains("SMS_CREDIT_"), "{words}");
        page.assert_clean();
    }

    // A wrong token says so and shows nothing (last: DevTools replays a
    // tab's earlier log entries to the next page that listens).
    let mut stranger = browser.page().await;
    stranger.open_until(&app.url("/admin"), "admin-token").await;
    // A stranger's browser has no token of this tab's.
    stranger.eval("sessionStorage.clear(); true").await;
    stranger.open_until(&app.url("/admin"), "admin-token").await;
    stranger
        .eval("document.getElementById('admin-token').value = 'not-the-token'; document.getElementById('signin-button').click(); true")
        .await;
    stranger
        .wait_for(
            &text_of("signin-error"),
            json!("That admin token is not valid."),
        )
        .await;
    assert_eq!(
        stranger
            .eval("document.getElementById('console').hidden")
            .await,
        json!(true)
    );
    assert_eq!(stranger.eval(&text_of("owed")).await, json!(""));
    drop(stranger);
}

/// The console's books: a month picked, the table shows each category's
/// figures as the API gives them (owed below zero included, and amounts
/// beyond 2^53 micro-dollars, which a JSON number read by JavaScript
/// would round, exactly), and the CSV link downloads the API's own CSV; at
/// a desktop's and a phone's width, with no failed request, no console
/// error and nothing wider than a phone.
#[actix_rt::test]
async fn the_console_shows_the_books_of_a_month_and_downloads_them() {
    let directory = crate::helpers::fresh_directory();
    let mut settings = crate::helpers::test_settings(&directory);
    // Room for an adjustment beyond 2^53 micro-dollars.
    settings.access.max_adjustment = sms_credit_actors::Money::from_micros(1 << 60);
    let app = TestApp::spawn_with(directory, settings).await;
    // 2^53 + 1 micro-dollars of paid credit, on an account of its own: the
    // paid line is granted $9,007,199,264.740993, which a JSON number
    // would show as ...740992.
    let large = app.create_account("+14155550621").await;
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{large}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(
                json!({"amount_micros": (1_i64 << 53) + 1, "reason": "a large transfer",
                        "idempotency_key": "large", "category": "paid"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let account = app.create_account("+14155550620").await;
    for body in [
        json!({"amount_micros": 10_000_000, "reason": "paid by transfer", "idempotency_key": "paid",
               "category": "paid"}),
        json!({"amount_micros": 2_000_000, "reason": "welcome", "idempotency_key": "promo"}),
        json!({"amount_micros": -13_000_000, "reason": "chargeback", "idempotency_key": "take"}),
    ] {
        let (status, answer) = app
            .request(
                "POST",
                &format!("/v1/admin/accounts/{account}/adjustments"),
                Some(ADMIN_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, books) = app
        .request(
            "GET",
            "/v1/admin/reports/credit?month=2026-11",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{books}");
    let (status, csv) = app
        .request(
            "GET",
            "/v1/admin/reports/credit.csv?month=2026-11",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    // The table the page should show: each line's name and figures, as the
    // page writes money.
    let lines: Vec<&Value> = books["categories"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&books["total"]])
        .collect();
    let expected: Vec<Vec<String>> = lines
        .iter()
        .map(|line| {
            let name = match line["category"].as_str().unwrap() {
                "paid" => "Paid",
                "promotional" => "Promotional",
                "owed" => "Owed",
                _ => "Total",
            };
            std::iter::once(name.to_string())
                .chain(
                    [
                        "opening", "granted", "consumed", "expired", "refunded", "closing",
                    ]
                    .iter()
                    .map(|figure| {
                        format_dollars(line[format!("{figure}_micros")].as_i64().unwrap())
                    }),
                )
                .collect()
        })
        .collect();
    assert_eq!(expected[2][6], "-$1.00", "the account owes $1");
    assert_eq!(
        expected[0][2], "$9,007,199,264.740993",
        "paid granted: $10 and 2^53 + 1 micro-dollars"
    );

    let browser = Browser::start();
    for (width, height, mobile) in [(1280, 800, false), (360, 740, true)] {
        let mut page = browser.page().await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        page.open_until(&app.url("/admin"), "admin-token").await;
        page.eval(&format!(
            "sessionStorage.clear(); document.getElementById('admin-token').value = '{ADMIN_TOKEN}'; document.getElementById('signin-button').click(); true"
        ))
        .await;
        page.wait_for("document.getElementById('console').hidden", json!(false))
            .await;
        // Nothing is read until the operator asks: the books read the
        // whole ledger.
        assert_eq!(
            page.eval("document.querySelectorAll('#books-rows tr').length")
                .await,
            json!(0)
        );
        assert_eq!(
            page.eval("document.getElementById('books-csv').hidden")
                .await,
            json!(true)
        );
        page.eval(
            "document.getElementById('books-month').value = '2026-11'; document.getElementById('books-button').click(); true",
        )
        .await;
        page.wait_for(
            &text_of("books-message"),
            json!("2026-11 (UTC): 4 ledger rows."),
        )
        .await;
        // November has not ended on the test's clock: the page says the
        // period is open, as of when, and that the closing is so far.
        assert_eq!(books["open_because"], "period_not_ended", "{books}");
        let as_of = books["as_of"].as_str().unwrap();
        assert_eq!(
            page.eval(&text_of("books-state")).await,
            page.eval(&format!(
                "'Open period — figures as of ' + when('{as_of}') + ' (' + zone + '): the month has not ended; the closing balances are so far.'"
            ))
            .await
        );
        assert_eq!(
            page.eval("document.getElementById('books-closing-head').textContent")
                .await,
            json!("Closing so far")
        );
        let shown = page
            .eval("Array.from(document.querySelectorAll('#books-rows tr')).map((row) => Array.from(row.cells).map((cell) => cell.textContent))")
            .await;
        assert_eq!(shown, json!(expected));
        assert_eq!(
            page.eval(
                "document.querySelector('#books-rows tr[data-category=\"owed\"] td.closing').title"
            )
            .await,
            json!("-1,000,000 micro-dollars")
        );
        assert_eq!(
            page.eval(
                "document.querySelector('#books-rows tr[data-category=\"paid\"] td.granted').title"
            )
            .await,
            json!("9,007,199,264,740,993 micro-dollars")
        );
        // The CSV link downloads the API's CSV (caught before the browser
        // saves it).
        page.eval(
            "window.caught = null; URL.createObjectURL = (blob) => { window.caught = blob; return 'about:blank'; };
             HTMLAnchorElement.prototype.click = function () { window.caughtName = this.download; };
             document.getElementById('books-csv').dispatchEvent(new MouseEvent('click', { bubbles: true, cancelable: true })); true",
        )
        .await;
        page.wait_for("window.caught !== null", json!(true)).await;
        assert_eq!(page.eval("window.caught.text()").await, csv["raw"]);
        assert_eq!(
            page.eval("window.caughtName").await,
            json!("credit-2026-11.csv")
        );
        // October ended long before the test's clock: closed.
        page.eval(
            "document.getElementById('books-month').value = '2026-10'; document.getElementById('books-button').click(); true",
        )
        .await;
        page.wait_for(
            &text_of("books-message"),
            json!("2026-10 (UTC): 0 ledger rows."),
        )
        .await;
        let (status, october) = app
            .request(
                "GET",
                "/v1/admin/reports/credit?month=2026-10",
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{october}");
        assert_eq!(october["closed"], true, "{october}");
        assert_eq!(
            page.eval(&text_of("books-state")).await,
            page.eval(&format!(
                "'Closed: nothing more can be dated in 2026-10 (read ' + when('{}') + ', ' + zone + ').'",
                october["as_of"].as_str().unwrap()
            ))
            .await
        );
        assert_eq!(
            page.eval("document.getElementById('books-closing-head').textContent")
                .await,
            json!("Closing")
        );
        // November again, for the screenshot.
        page.eval(
            "document.getElementById('books-month').value = '2026-11'; document.getElementById('books-button').click(); true",
        )
        .await;
        page.wait_for(
            &text_of("books-message"),
            json!("2026-11 (UTC): 4 ledger rows."),
        )
        .await;
        if mobile {
            assert_eq!(
                page.eval("document.documentElement.scrollWidth <= window.innerWidth")
                    .await,
                json!(true),
                "nothing wider than a phone"
            );
        }
        page.assert_clean();
        // For a person to look at: the books alone, and on a phone
        // scrolled to their closing balances.
        page.eval(
            "document.querySelectorAll('section:not(#books)').forEach((section) => { section.hidden = true; });
             document.querySelector('#books .table').scrollLeft = 1000; true",
        )
        .await;
        page.screenshot(&format!("admin-books-{width}")).await;
    }
}

/// `1234567` → `"1,234,567"`, as the page's `toLocaleString("en-US")`.
fn thousands(value: i64) -> String {
    let digits = value.abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Micro-dollars as the console shows them: exactly (at least two
/// decimals, no trailing zeros beyond them), the dollars in thousands.
fn format_dollars(micros: i64) -> String {
    let exact = sms_credit_actors::Money::from_micros(micros).to_string();
    let (dollars, decimals) = exact.rsplit_once('.').unwrap();
    let whole: i64 = dollars.trim_start_matches(['-', '$']).parse().unwrap();
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}${}.{decimals}", thousands(whole))
}

/// The API reference at `/docs` shows every operation of the server's own
/// OpenAPI document (method, path, summary, who may call it, parameters,
/// request body and responses with their schemas), at a desktop's and a
/// phone's width, asking nothing of anyone but this server, with no failed
/// request and no console error.
#[actix_rt::test]
async fn the_api_reference_shows_every_operation_of_the_document() {
    let app = TestApp::spawn().await;
    let document = sms_credit::openapi::document();
    let mut expected: Vec<String> = document["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .flat_map(|(path, item)| {
            ["get", "put", "post", "delete", "patch"]
                .into_iter()
                .filter(|method| item.get(*method).is_some())
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    expected.sort();
    assert!(
        expected.len() > 60,
        "the document's operations: {expected:?}"
    );
    let origin = app.url("/");

    let browser = Browser::start();
    for (width, height, mobile) in [(1280, 800, false), (360, 740, true)] {
        let mut page = browser.page().await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        page.open_until(&app.url("/docs"), "operations").await;
        page.wait_for(
            "document.getElementById('status').dataset.operations",
            json!(expected.len().to_string()),
        )
        .await;
        let shown = page
            .eval("Array.from(document.querySelectorAll('section.operation')).map(s => s.dataset.method + ' ' + s.dataset.path).sort()")
            .await;
        assert_eq!(shown, json!(expected), "at {width} px");
        // Each operation's section says what the document says of it.
        let section = |method: &str, path: &str| {
            format!("document.getElementById('op-{method}-{path}').textContent")
        };
        let adjustments = page
            .eval(&section("post", "/v1/admin/accounts/{id}/adjustments"))
            .await;
        let adjustments = adjustments.as_str().unwrap_or_default();
        for words in [
            "POST/v1/admin/accounts/{id}/adjustments",
            "adminToken",
            "Parameters",
            "Request body",
            "amount_micros",
            "idempotency_key",
            "Responses",
            "ErrorBody",
        ] {
            assert!(adjustments.contains(words), "{words} in {adjustments}");
        }
        let summary = document["paths"]["/v1/admin/accounts/{id}/adjustments"]["post"]["summary"]
            .as_str()
            .expect("the adjustment has a summary");
        assert!(adjustments.contains(summary), "{summary} in {adjustments}");
        let messages = page.eval(&section("post", "/v1/messages")).await;
        assert!(
            messages.as_str().unwrap_or_default().contains("apiKey"),
            "{messages}"
        );
        let healthz = page.eval(&section("get", "/healthz")).await;
        assert!(
            healthz
                .as_str()
                .unwrap_or_default()
                .contains("Anyone may call it"),
            "{healthz}"
        );
        // Every schema named is there to follow, and the contents lead to
        // every operation.
        assert_eq!(
            page.eval("Array.from(document.querySelectorAll('a[href^=\"#schema-\"]')).filter(a => !document.getElementById(a.getAttribute('href').slice(1))).map(a => a.getAttribute('href'))")
                .await,
            json!([])
        );
        assert_eq!(
            page.eval("document.querySelectorAll('#toc a').length")
                .await,
            json!(expected.len())
        );
        // The filter keeps what it names.
        page.eval("const f = document.getElementById('filter'); f.value = 'refund'; f.dispatchEvent(new Event('input')); true")
            .await;
        let kept = page
            .eval("Array.from(document.querySelectorAll('section.operation')).filter(s => !s.hidden).map(s => s.dataset.path)")
            .await;
        let kept = kept.as_array().cloned().unwrap_or_default();
        assert!(
            !kept.is_empty() && kept.len() < expected.len(),
            "refund keeps {kept:?}"
        );
        assert!(
            kept.iter()
                .any(|path| path == "/v1/admin/orders/{id}/refund"),
            "{kept:?}"
        );
        assert_eq!(
            page.eval("document.documentElement.scrollWidth <= window.innerWidth")
                .await,
            json!(true),
            "nothing wider than {width} px"
        );
        page.screenshot(&format!("docs-{width}")).await;
        let elsewhere: Vec<&str> = page
            .events
            .iter()
            .filter(|event| event["method"] == "Network.requestWillBeSent")
            .filter_map(|event| event["params"]["request"]["url"].as_str())
            .filter(|url| !url.starts_with(&origin) && !url.starts_with("data:"))
            .collect();
        assert!(elsewhere.is_empty(), "asked elsewhere: {elsewhere:?}");
        page.assert_clean();
    }
}

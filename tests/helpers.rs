//! The test harness: starts the real application on 127.0.0.1:0 with a
//! fresh database (SQLite or Postgres, see `database.rs`), with one method
//! per endpoint.

use std::net::TcpListener;
use std::sync::Arc;

pub use crate::database::TestDatabase;
use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit::config::Settings;
use sms_credit::startup::{Application, Core};
use sms_credit_actors::clock::{Clock, ManualClock};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running server and a client for it.
pub struct TestApp {
    pub address: String,
    /// Keeps the database alive for as long as the app (and a restart) needs it.
    pub directory: TestDatabase,
    pub client: awc::Client,
    /// The in-process server's store, for its test switches (none when
    /// attached to a server process).
    pub store: Option<sms_credit_actors::Store>,
    /// The in-process server (none when attached to a server process).
    server: Option<(
        sms_credit::startup::Stopper,
        actix_rt::task::JoinHandle<std::io::Result<()>>,
    )>,
}

/// A fresh database of the store the running test uses.
pub fn fresh_directory() -> TestDatabase {
    crate::watchdog::watch();
    TestDatabase::fresh()
}

/// Settings for a test server: admin token set, nothing else configured.
pub fn test_settings(directory: &TestDatabase) -> Settings {
    let mut settings = Settings::local(directory.path().join("unused.db"));
    settings.database.location = directory.location();
    settings.access.admin_token = Some(sms_credit::config::Secret::new(ADMIN_TOKEN));
    settings.server.actor_threads = 2;
    settings.server.http_workers = 2;
    settings
}

/// Settings with Stripe pointed at a fake, and $5.00 of credit with access.
pub fn stripe_settings(directory: &TestDatabase, stripe_base: &str) -> Settings {
    let mut settings = test_settings(directory);
    settings.stripe = Some(sms_credit::config::StripeSettings {
        secret_key: sms_credit::config::Secret::new("sk_test_fake"),
        webhook_secret: sms_credit::config::Secret::new(crate::fake_stripe::WEBHOOK_SECRET),
        api_base: stripe_base.to_string(),
        allow_promotion_codes: false,
        included_credit: sms_credit_actors::Money::from_micros(5_000_000),
        buy_daily_limit: sms_credit_actors::Money::from_micros(30_000_000),
    });
    settings.server.public_url = Some("https://sms.example.com".to_string());
    // The host application buys access for phones it has proved.
    settings.access.api_key = Some(sms_credit::config::Secret::new(API_KEY));
    settings
}

pub const API_KEY: &str = "host-application-key";

/// Adds Twilio (pointed at a fake) and the host application's API key.
pub fn with_twilio(mut settings: Settings, twilio_base: &str) -> Settings {
    settings.twilio = Some(sms_credit::config::TwilioSettings {
        account_sid: crate::fake_twilio::ACCOUNT_SID.to_string(),
        auth_token: sms_credit::config::Secret::new(crate::fake_twilio::AUTH_TOKEN),
        from: Some(crate::fake_twilio::FROM.to_string()),
        api_base: twilio_base.to_string(),
    });
    settings.access.api_key = Some(sms_credit::config::Secret::new(API_KEY));
    settings.server.public_url = Some("https://sms.example.com".to_string());
    settings
}

/// The MessageSid Twilio would give the message a test calls `label`: `SM`
/// and 32 hexadecimal characters, the same for the same label (the first
/// half of the label's SHA-256), so that a test can look it up.
pub fn twilio_sid(label: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(label.as_bytes());
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("SM{hex}")
}

/// The fields Twilio posts for an inbound SMS with this MessageSid, from
/// `from` to the service's number.
pub fn twilio_sms_fields(message_sid: &str, from: &str, text: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", crate::fake_twilio::ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("Body", text),
        ("From", from),
        ("MessageSid", message_sid),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsMessageSid", message_sid),
        ("SmsSid", message_sid),
        ("SmsStatus", "received"),
        ("To", crate::fake_twilio::FROM),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

/// The test clock's time, in Unix seconds (for webhook signatures).
pub const NOW_UNIX: i64 = 1_795_253_400;

impl TestApp {
    /// A server on a fresh database.
    pub async fn spawn() -> TestApp {
        let directory = fresh_directory();
        let settings = test_settings(&directory);
        TestApp::spawn_with(directory, settings).await
    }

    /// A server with these settings; `directory` holds its database.
    pub async fn spawn_with(directory: TestDatabase, settings: Settings) -> TestApp {
        TestApp::spawn_with_clock(directory, settings, ManualClock::new(1_795_253_400_000)).await
    }

    /// As `spawn_with`, on the port a stopped app used (a restart that
    /// clients reconnect to).
    pub async fn spawn_at(directory: TestDatabase, settings: Settings, port: u16) -> TestApp {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        TestApp::spawn_on(
            directory,
            settings,
            listener,
            ManualClock::new(1_795_253_400_000),
        )
        .await
    }

    /// As `spawn_with`, on a clock the test moves.
    pub async fn spawn_with_clock(
        directory: TestDatabase,
        settings: Settings,
        clock: ManualClock,
    ) -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TestApp::spawn_on(directory, settings, listener, clock).await
    }

    async fn spawn_on(
        directory: TestDatabase,
        settings: Settings,
        listener: TcpListener,
        clock: ManualClock,
    ) -> TestApp {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let application = Application::build_with_clock(settings, listener, clock).unwrap();
        let address = format!("http://127.0.0.1:{}", application.port());
        let handle = application.stopper();
        let store = application.store().clone();
        let finished = actix_rt::spawn(application.run_until_stopped());
        TestApp {
            address,
            directory,
            client: awc::Client::default(),
            store: Some(store),
            server: Some((handle, finished)),
        }
    }

    /// The helpers of this type, for a server process (which the caller
    /// starts and stops).
    pub fn attach(process: &ServerProcess, directory: &TestDatabase) -> TestApp {
        TestApp {
            address: process.base_url.clone(),
            directory: directory.clone(),
            client: awc::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .finish(),
            store: None,
            server: None,
        }
    }

    /// Stops gracefully (in-flight requests finish, the last commit is
    /// flushed) and gives back the directory so the database can be reopened.
    pub async fn stop(self) -> TestDatabase {
        if let Some((handle, finished)) = self.server {
            handle.stop().await;
            finished.await.unwrap().unwrap();
        }
        self.directory
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Sends a request and returns the status and the JSON body (`Null` if none).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let mut response = match body {
            Some(body) => request.send_json(&body).await.unwrap(),
            None => request.send().await.unwrap(),
        };
        let bytes = response.body().limit(16 * 1024 * 1024).await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}))
        };
        (response.status(), json)
    }

    /// Sends raw bytes with a content type, for malformed-body tests.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut response = self
            .client
            .post(self.url(path))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .insert_header(("Content-Type", content_type))
            .send_body(body)
            .await
            .unwrap();
        let bytes = response.body().limit(1024 * 1024).await.unwrap();
        (
            response.status(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get_healthz(&self) -> (StatusCode, Value) {
        self.request("GET", "/healthz", None, None).await
    }

    pub async fn get_readyz(&self) -> (StatusCode, Value) {
        self.request("GET", "/readyz", None, None).await
    }

    pub async fn post_admin_account(
        &self,
        phone: &str,
        email: Option<&str>,
    ) -> (StatusCode, Value) {
        self.request(
            "POST",
            "/v1/admin/accounts",
            Some(ADMIN_TOKEN),
            Some(json!({"phone": phone, "email": email})),
        )
        .await
    }

    /// Creates an account and returns its id.
    pub async fn create_account(&self, phone: &str) -> i64 {
        let (status, body) = self
            .post_admin_account(phone, Some("hiker@example.com"))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn get_admin_account(&self, id: i64) -> (StatusCode, Value) {
        self.request(
            "GET",
            &format!("/v1/admin/accounts/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await
    }

    pub async fn balance_micros(&self, id: i64) -> i64 {
        let (status, body) = self.get_admin_account(id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["balance_micros"].as_i64().unwrap()
    }

    pub async fn post_adjustment(
        &self,
        id: i64,
        amount_micros: i64,
        key: &str,
    ) -> (StatusCode, Value) {
        self.request(
            "POST",
            &format!("/v1/admin/accounts/{id}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(json!({"amount_micros": amount_micros, "reason": "test adjustment", "idempotency_key": key})),
        )
        .await
    }

    pub async fn post_checkout_access(
        &self,
        phone: &str,
        email: &str,
        code: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = json!({"phone": phone, "email": email, "discount_code": code});
        self.request("POST", "/v1/checkout/access", Some(API_KEY), Some(body))
            .await
    }

    /// Posts a webhook body signed with `signature` (as Stripe would).
    pub async fn post_stripe_webhook(
        &self,
        payload: &str,
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.url("/webhooks/stripe"))
            .insert_header(("Content-Type", "application/json"));
        if let Some(signature) = signature {
            request = request.insert_header(("Stripe-Signature", signature));
        }
        let mut response = request.send_body(payload.to_string()).await.unwrap();
        let bytes = response.body().await.unwrap();
        (
            response.status(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Posts a webhook signed correctly, at the test clock's start.
    pub async fn deliver(&self, payload: &str) -> (StatusCode, Value) {
        self.deliver_at(payload, NOW_UNIX).await
    }

    /// Posts a webhook signed correctly at `unix` seconds (the clock's time).
    pub async fn deliver_at(&self, payload: &str, unix: i64) -> (StatusCode, Value) {
        let signature = crate::fake_stripe::sign(payload, crate::fake_stripe::WEBHOOK_SECRET, unix);
        self.post_stripe_webhook(payload, Some(signature)).await
    }

    /// Posts a Twilio webhook form, signed as Twilio signs it for the
    /// public URL (or with `signature` given as is).
    pub async fn post_twilio(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        signature: Option<&str>,
    ) -> (StatusCode, String) {
        self.post_twilio_with(&self.client, path, fields, signature)
            .await
    }

    /// As [`TestApp::post_twilio`], through `client` (one that waits longer
    /// than the default 5 s, say).
    pub async fn post_twilio_with(
        &self,
        client: &awc::Client,
        path: &str,
        fields: &[(&str, &str)],
        signature: Option<&str>,
    ) -> (StatusCode, String) {
        let owned: Vec<(String, String)> = fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let computed = sms_credit::twilio::signature::compute(
            crate::fake_twilio::AUTH_TOKEN,
            &format!("https://sms.example.com{path}"),
            &owned,
        );
        let body = serde_urlencoded::to_string(&owned).unwrap();
        let mut response = client
            .post(self.url(path))
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .insert_header((
                "X-Twilio-Signature",
                signature.unwrap_or(&computed).to_string(),
            ))
            .send_body(body)
            .await
            .unwrap_or_else(|error| panic!("no answer from {path}: {error}"));
        let bytes = response.body().await.unwrap();
        (
            response.status(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// An inbound SMS, signed, as Twilio would post it: `label` names the
    /// message, and its MessageSid is [`twilio_sid`]`(label)`.
    pub async fn post_twilio_sms(
        &self,
        label: &str,
        from: &str,
        text: &str,
    ) -> (StatusCode, String) {
        self.post_twilio_sms_with(&self.client, label, from, text)
            .await
    }

    /// As [`TestApp::post_twilio_sms`], waiting up to 30 s for the answer
    /// (twice Twilio's 15 s): how long it took is the caller's to judge.
    pub async fn post_twilio_sms_waiting(
        &self,
        label: &str,
        from: &str,
        text: &str,
    ) -> (StatusCode, String, std::time::Duration) {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .finish();
        let started = std::time::Instant::now();
        let (status, body) = self.post_twilio_sms_with(&client, label, from, text).await;
        (status, body, started.elapsed())
    }

    async fn post_twilio_sms_with(
        &self,
        client: &awc::Client,
        label: &str,
        from: &str,
        text: &str,
    ) -> (StatusCode, String) {
        let fields = twilio_sms_fields(&twilio_sid(label), from, text);
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        self.post_twilio_with(client, "/webhooks/twilio/sms", &fields, None)
            .await
    }

    /// Waits (up to 10 s) until no notice of the account is waiting to be
    /// sent, and answers its notices (newest first).
    pub async fn settle_notices(&self, account: i64) -> Vec<Value> {
        self.notices_once(account, "no notice waiting to be sent", |notices| {
            notices
                .iter()
                .all(|notice| notice["state"] != "pending" && notice["state"] != "sending")
        })
        .await
    }

    /// Waits (up to 10 s, failing with `what`) until the account's notices
    /// (newest first) are as `done` wants them, and answers them.
    pub async fn notices_once(
        &self,
        account: i64,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (status, body) = self
                .request(
                    "GET",
                    &format!("/v1/admin/accounts/{account}/notices"),
                    Some(ADMIN_TOKEN),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let notices = body["notices"].as_array().unwrap().clone();
            if done(&notices) {
                return notices;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}, within 10 s: {notices:?}"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn post_message(&self, body: Value) -> (StatusCode, Value) {
        self.request("POST", "/v1/messages", Some(API_KEY), Some(body))
            .await
    }

    pub async fn issue_token(&self, id: i64) -> String {
        let (status, body) = self
            .request(
                "POST",
                &format!("/v1/admin/accounts/{id}/tokens"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// Starts a $10 top-up by Checkout for the token's account; answers
    /// the order and its Checkout Session id.
    pub async fn start_top_up(&self, account: i64, token: &str) -> (i64, String) {
        let (status, started) = self
            .request("POST", "/v1/checkout/topup", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{started}");
        let order = started["order_id"].as_i64().unwrap();
        let session = self
            .get_orders(account)
            .await
            .iter()
            .find(|row| row["id"] == order)
            .unwrap()["stripe_session_id"]
            .as_str()
            .unwrap()
            .to_string();
        (order, session)
    }

    pub async fn get_orders(&self, id: i64) -> Vec<Value> {
        let (status, body) = self
            .request(
                "GET",
                &format!("/v1/admin/accounts/{id}/orders"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["orders"].as_array().unwrap().clone()
    }

    pub async fn get_transactions(&self, id: i64) -> (StatusCode, Value) {
        self.request(
            "GET",
            &format!("/v1/admin/accounts/{id}/transactions?limit=1000"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await
    }
}

/// Starts the core alone (no HTTP) on a database, for actor-level tests.
pub fn start_core(directory: &TestDatabase, passivate_after: std::time::Duration) -> Core {
    let mut settings = test_settings(directory);
    settings.server.passivate_after = passivate_after;
    Core::start(&settings, Arc::new(ManualClock::new(1_795_253_400_000))).unwrap()
}

/// Runs `sms-credit` (the real binary) with the database of `directory`.
pub fn run_cli(directory: &TestDatabase, arguments: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"))
        .args(arguments)
        .env("SMS_CREDIT_DATABASE", directory.url())
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap()
}

/// The environment of a server process with Twilio at a fake (and the host
/// application's key), Stripe at a fake when given, prices never looked up
/// during a test, and a killed instance counted as gone after 2 s.
pub fn process_env<'a>(
    twilio_base: &'a str,
    stripe_base: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut env = vec![
        ("SMS_CREDIT_API_KEY", API_KEY),
        ("SMS_CREDIT_PUBLIC_URL", "https://sms.example.com"),
        (
            "SMS_CREDIT_TWILIO_ACCOUNT_SID",
            crate::fake_twilio::ACCOUNT_SID,
        ),
        (
            "SMS_CREDIT_TWILIO_AUTH_TOKEN",
            crate::fake_twilio::AUTH_TOKEN,
        ),
        ("SMS_CREDIT_TWILIO_FROM", crate::fake_twilio::FROM),
        ("SMS_CREDIT_TWILIO_API_BASE", twilio_base),
        ("SMS_CREDIT_RECONCILE_DELAY_SECS", "3600"),
        ("SMS_CREDIT_INSTANCE_TIMEOUT_SECS", "4"),
    ];
    if let Some(stripe_base) = stripe_base {
        env.extend([
            ("SMS_CREDIT_STRIPE_SECRET_KEY", "sk_test_fake"),
            (
                "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
                crate::fake_stripe::WEBHOOK_SECRET,
            ),
            ("SMS_CREDIT_STRIPE_API_BASE", stripe_base),
        ]);
    }
    env
}

/// The real `sms-credit serve` binary as a child process on a free port,
/// its log lines collected. Killed (SIGKILL) when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base_url: String,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts the binary on the database in `directory` with `env` set (an
    /// empty value: unset), and waits until it listens.
    pub fn start(directory: &TestDatabase, env: &[(&str, &str)]) -> ServerProcess {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sms-credit"));
        command
            .arg("serve")
            .env("SMS_CREDIT_DATABASE", directory.url())
            .env("SMS_CREDIT_BIND", "127.0.0.1:0")
            .env("SMS_CREDIT_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SMS_CREDIT_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // An empty value leaves the variable unset (the admin token, say).
        for (name, value) in env {
            if value.is_empty() {
                command.env_remove(name);
            } else {
                command.env(name, value);
            }
        }
        let mut child = command.spawn().unwrap();
        let (sender, log) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = sender.send(line);
            }
        });
        let (port, log) = loop {
            let line = log
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the server logs that it listens within 30 s");
            if line.contains("listening") {
                // `port=8080` in text, `"port":8080` in JSON.
                let digits: String = line
                    .split("port=")
                    .nth(1)
                    .or_else(|| line.split("\"port\":").nth(1))
                    .unwrap()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                break (digits.parse::<u16>().unwrap(), log);
            }
        };
        ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// SIGTERM, then every line the server logged until it exited (0).
    pub fn stop_and_read_log(mut self) -> Vec<String> {
        let stopped = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        // The reader thread ends at the end of the pipe, with the process.
        self.log.iter().collect()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

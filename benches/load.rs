//! HTTP load against the real server binary: signed Twilio inbound SMS
//! (distinct MessageSids, many accounts) and `POST /v1/messages`, with the
//! same server's `GET /healthz` measured in the same run. Prints requests/s,
//! p50/p99 latency, errors and the ratio to `/healthz`.
//!
//! `cargo bench --bench load` (options: `-- --seconds N --connections N
//! --accounts N --database URL`). It starts `target/release/sms-credit
//! serve` on a fresh database (SQLite in a temporary directory, or the
//! Postgres database `--database` names, which must be empty) with Twilio
//! pointed at a local fake. Phases: `/healthz`, inbound SMS, outbound
//! messages, and durable admin adjustments (each a ledger row, answered
//! only once committed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "server.rs"]
mod server;

#[path = "../tests/fake_twilio.rs"]
#[allow(dead_code)]
mod fake_twilio;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

const ADMIN_TOKEN: &str = "bench-admin-token";
const API_KEY: &str = "bench-host-application-key";
const PUBLIC_URL: &str = "https://sms.example.com";

struct Options {
    seconds: u64,
    connections: usize,
    accounts: usize,
    database: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 5,
        connections: 32,
        accounts: 1_000,
        database: None,
    };
    let arguments: Vec<String> = std::env::args().collect();
    for pair in arguments.windows(2) {
        let value = pair[1].parse::<u64>().ok();
        match (pair[0].as_str(), value) {
            ("--seconds", Some(value)) => options.seconds = value.max(1),
            ("--connections", Some(value)) => options.connections = value.max(1) as usize,
            ("--accounts", Some(value)) => options.accounts = value.clamp(1, 10_000) as usize,
            ("--database", _) => options.database = Some(pair[1].clone()),
            _ => {}
        }
    }
    options
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, per_mille: usize) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[(sorted.len() - 1) * per_mille / 1000] as f64 / 1000.0
    }
}

/// A request the phase sends, made fresh for each number.
type MakeRequest = Rc<dyn Fn(&awc::Client, u64) -> awc::SendClientRequest>;

/// `connections` loops, each sending requests back to back for `seconds`.
async fn run_phase(
    name: &'static str,
    seconds: u64,
    connections: usize,
    make: MakeRequest,
) -> Phase {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let results = Rc::new(RefCell::new((0usize, 0usize, Vec::new())));
    let counter = Rc::new(RefCell::new(0u64));
    join_all((0..connections).map(|_| {
        let make = Rc::clone(&make);
        let results = Rc::clone(&results);
        let counter = Rc::clone(&counter);
        async move {
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish();
            while Instant::now() < deadline {
                let number = {
                    let mut counter = counter.borrow_mut();
                    *counter += 1;
                    *counter
                };
                let sent = Instant::now();
                let ok = match make(&client, number).await {
                    Ok(mut response) => {
                        response.body().await.is_ok() && response.status().is_success()
                    }
                    Err(_) => false,
                };
                let mut results = results.borrow_mut();
                results.0 += 1;
                if !ok {
                    results.1 += 1;
                }
                results.2.push(sent.elapsed().as_micros() as u64);
            }
        }
    }))
    .await;
    let (requests, errors, latencies_us) = Rc::try_unwrap(results).ok().unwrap().into_inner();
    Phase {
        name,
        requests,
        errors,
        elapsed: started.elapsed(),
        latencies_us,
    }
}

fn phone(index: usize) -> String {
    format!("+1415555{:04}", index)
}

fn main() {
    let options = options();
    let directory = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async move {
        let twilio = fake_twilio::FakeTwilio::start().await;
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| directory.path().join("load.db").display().to_string());
        let server = server::Server::start(
            &database,
            &[
                ("SMS_CREDIT_ADMIN_TOKEN", ADMIN_TOKEN),
                ("SMS_CREDIT_METRICS_TOKEN", ADMIN_TOKEN),
                ("SMS_CREDIT_API_KEY", API_KEY),
                ("SMS_CREDIT_PUBLIC_URL", PUBLIC_URL),
                ("SMS_CREDIT_TWILIO_ACCOUNT_SID", fake_twilio::ACCOUNT_SID),
                ("SMS_CREDIT_TWILIO_AUTH_TOKEN", fake_twilio::AUTH_TOKEN),
                ("SMS_CREDIT_TWILIO_FROM", fake_twilio::FROM),
                ("SMS_CREDIT_TWILIO_API_BASE", &twilio.base_url),
                ("SMS_CREDIT_LOW_BALANCE_THRESHOLD", "0"),
            ],
        );
        let base = server.base.clone();

        // Accounts with plenty of credit.
        let client = awc::Client::new();
        for index in 0..options.accounts {
            let mut created = client
                .post(format!("{base}/v1/admin/accounts"))
                .bearer_auth(ADMIN_TOKEN)
                .send_json(&json!({"phone": phone(index)}))
                .await
                .unwrap();
            let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_i64().unwrap();
            client
                .post(format!("{base}/v1/admin/accounts/{id}/adjustments"))
                .bearer_auth(ADMIN_TOKEN)
                .send_json(&json!({"amount_micros": 1_000_000_000, "reason": "load", "idempotency_key": "load"}))
                .await
                .unwrap();
        }

        let accounts = options.accounts as u64;
        let healthz_url = format!("{base}/healthz");
        let healthz: MakeRequest = Rc::new(move |client, _| client.get(&healthz_url).send());
        let sms_url = format!("{base}/webhooks/twilio/sms");
        let inbound: MakeRequest = Rc::new(move |client, number| {
            let fields = vec![
                ("AccountSid".to_string(), fake_twilio::ACCOUNT_SID.to_string()),
                ("Body".to_string(), "BALANCE".to_string()),
                ("From".to_string(), phone((number % accounts) as usize)),
                ("MessageSid".to_string(), format!("SM{number:032x}")),
                ("NumMedia".to_string(), "0".to_string()),
                ("To".to_string(), fake_twilio::FROM.to_string()),
            ];
            let signature = sms_credit::twilio::signature::compute(
                fake_twilio::AUTH_TOKEN,
                &format!("{PUBLIC_URL}/webhooks/twilio/sms"),
                &fields,
            );
            client
                .post(&sms_url)
                .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                .insert_header(("X-Twilio-Signature", signature))
                .send_body(serde_urlencoded::to_string(&fields).unwrap())
        });
        let messages_url = format!("{base}/v1/messages");
        let outbound: MakeRequest = Rc::new(move |client, number| {
            client
                .post(&messages_url)
                .bearer_auth(API_KEY)
                .send_json(&json!({
                    "account_id": number % accounts + 1,
                    "body": "Storm warning: gusts to 90 km/h above 2000 m after 14:00.",
                    "idempotency_key": format!("load-{number}"),
                }))
        });

        let adjustments_url = format!("{base}/v1/admin/accounts");
        // Keys from one counter over every phase: each adjustment is a new
        // ledger row, never a replay of the warm-up's.
        let adjusted = Rc::new(std::cell::Cell::new(0u64));
        let adjustment: MakeRequest = Rc::new(move |client, number| {
            adjusted.set(adjusted.get() + 1);
            let key = adjusted.get();
            client
                .post(format!(
                    "{adjustments_url}/{}/adjustments",
                    number % accounts + 1
                ))
                .bearer_auth(ADMIN_TOKEN)
                .send_json(&json!({
                    "amount_micros": 1_000,
                    "reason": "load",
                    "idempotency_key": format!("adjust-{key}"),
                }))
        });

        let mut phases = Vec::new();
        // A short warm-up of every path, not measured.
        for make in [&healthz, &inbound, &outbound, &adjustment] {
            run_phase("warm-up", 1, options.connections, Rc::clone(make)).await;
        }
        let metrics_url = format!("{base}/metrics");
        let store_figures = |client: awc::Client, url: String| async move {
            let mut response = client
                .get(url)
                .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
                .send()
                .await
                .unwrap();
            let text = String::from_utf8(response.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
            let value = |name: &str| -> f64 {
                text.lines()
                    .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
                    .unwrap_or(0.0)
            };
            [
                value("sms_credit_commits_total "),
                value("sms_credit_commit_batch_size_sum "),
                value("sms_credit_commit_seconds_sum "),
                value("sms_credit_ack_seconds_sum "),
                value("sms_credit_ack_seconds_count "),
            ]
        };
        let mut store_lines = Vec::new();
        for (name, make) in [
            ("GET /healthz", healthz),
            ("POST /webhooks/twilio/sms", inbound),
            ("POST /v1/messages", outbound),
            ("POST …/adjustments", adjustment),
        ] {
            let before = store_figures(client.clone(), metrics_url.clone()).await;
            // On stderr as it starts (the table comes at the end): a
            // profiler can be attached to the server for one phase.
            eprintln!("phase {name} starts");
            phases.push(run_phase(name, options.seconds, options.connections, make).await);
            let after = store_figures(client.clone(), metrics_url.clone()).await;
            let commits = after[0] - before[0];
            if commits > 0.0 {
                store_lines.push(format!(
                    "{name:<28} store: {commits:.0} commits, {:.1} writes per commit, {:.3} ms per commit, ledger writes acknowledged in {:.2} ms (mean)",
                    (after[1] - before[1]) / commits,
                    1000.0 * (after[2] - before[2]) / commits,
                    1000.0 * (after[3] - before[3]) / (after[4] - before[4]).max(1.0)
                ));
            }
        }
        drop(server);

        println!(
            "load: {} s per phase, {} connections, {} accounts, release server on 127.0.0.1 (2 HTTP workers)",
            options.seconds, options.connections, options.accounts
        );
        println!("{:<28} {:>10} {:>8} {:>12} {:>9} {:>9} {:>10}", "route", "requests", "errors", "requests/s", "p50 ms", "p99 ms", "vs healthz");
        let baseline = phases[0].per_second();
        for phase in &phases {
            println!(
                "{:<28} {:>10} {:>8} {:>12.0} {:>9.2} {:>9.2} {:>9.0}%",
                phase.name,
                phase.requests,
                phase.errors,
                phase.per_second(),
                phase.percentile(500),
                phase.percentile(990),
                100.0 * phase.per_second() / baseline
            );
        }
        for line in store_lines {
            println!("{line}");
        }
    });
}

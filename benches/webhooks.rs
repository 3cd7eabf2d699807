//! Webhook delivery latency under load: the release server binary takes
//! durable admin adjustments that each move an account across the
//! low-balance threshold (so each commits a `balance.low` or
//! `balance.replenished` event), while a receiver on loopback takes the
//! deliveries. Prints, per event, the time from the adjustment's answer
//! (its commit) to the receiver having the event: p50, p99, max, and how
//! many arrived. A second endpoint subscribed to everything never answers
//! (each try waits out the 10 s timeout): the figures show that a dead
//! endpoint does not delay a live one.
//!
//! `cargo bench --bench webhooks` (options: `-- --seconds N --connections
//! N --accounts N --rate N --database URL`; SQLite in a temporary directory
//! unless `--database` names an empty Postgres database). Without `--rate`
//! adjustments go as fast as they are answered (every one an event: far
//! more events than a real ledger makes), so the figures are the delivery's
//! capacity; with `--rate N`, N adjustments a second in all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "server.rs"]
mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::future::join_all;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "bench-admin-token";

struct Options {
    seconds: u64,
    connections: usize,
    accounts: usize,
    database: Option<String>,
    /// Adjustments per second in all (0: as fast as answers come).
    rate: u64,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 5,
        connections: 16,
        accounts: 256,
        database: None,
        rate: 0,
    };
    let arguments: Vec<String> = std::env::args().collect();
    for pair in arguments.windows(2) {
        let value = pair[1].parse::<u64>().ok();
        match (pair[0].as_str(), value) {
            ("--seconds", Some(value)) => options.seconds = value.max(1),
            ("--connections", Some(value)) => options.connections = value.max(1) as usize,
            ("--accounts", Some(value)) => options.accounts = value.clamp(1, 10_000) as usize,
            ("--database", _) => options.database = Some(pair[1].clone()),
            ("--rate", Some(value)) => options.rate = value,
            _ => {}
        }
    }
    options.accounts = options.accounts.max(options.connections);
    options
}

/// (account, seq) of each event received, and when.
type Arrivals = Arc<Mutex<HashMap<(i64, i64), Instant>>>;

async fn receive(
    body: web::Bytes,
    arrivals: web::Data<Mutex<HashMap<(i64, i64), Instant>>>,
) -> HttpResponse {
    let now = Instant::now();
    let event: Value = serde_json::from_slice(&body).unwrap();
    let data = &event["data"];
    if let (Some(account), Some(seq)) = (data["account_id"].as_i64(), data["seq"].as_i64()) {
        arrivals
            .lock()
            .unwrap()
            .entry((account, seq))
            .or_insert(now);
    }
    HttpResponse::Ok().finish()
}

async fn never_answer() -> HttpResponse {
    actix_rt::time::sleep(Duration::from_secs(60)).await;
    HttpResponse::Ok().finish()
}

fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn main() {
    let options = options();
    let directory = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async move {
        let arrivals: Arrivals = Arc::default();
        let shared = web::Data::from(Arc::clone(&arrivals));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver_port = listener.local_addr().unwrap().port();
        actix_rt::spawn(
            HttpServer::new(move || {
                App::new()
                    .app_data(shared.clone())
                    .route("/live", web::post().to(receive))
                    .route("/dead", web::post().to(never_answer))
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run(),
        );

        let database = options
            .database
            .clone()
            .unwrap_or_else(|| directory.path().join("webhooks.db").display().to_string());
        let server = server::Server::start(
            &database,
            &[
                ("SMS_CREDIT_ADMIN_TOKEN", ADMIN_TOKEN),
                ("SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE", "true"),
            ],
        );
        let base = server.base.clone();
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        for (path, events) in [("live", json!(["balance.low", "balance.replenished"])), ("dead", json!(["*"]))] {
            let response = client
                .post(format!("{base}/v1/admin/webhook-endpoints"))
                .bearer_auth(ADMIN_TOKEN)
                .send_json(&json!({"url": format!("http://127.0.0.1:{receiver_port}/{path}"), "events": events}))
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
        // Accounts at $1.00: +$1.50 crosses up, −$1.50 back down.
        let mut accounts = Vec::new();
        for index in 0..options.accounts {
            let mut created = client
                .post(format!("{base}/v1/admin/accounts"))
                .bearer_auth(ADMIN_TOKEN)
                .send_json(&json!({"phone": format!("+1415555{:04}", index)}))
                .await
                .unwrap();
            let id = created.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
            // $2.00, then $1.00: announced low, so that every climb past
            // the threshold from here is an event (`balance.replenished`).
            for (amount, key) in [(2_000_000, "prime"), (-1_000_000, "start")] {
                client
                    .post(format!("{base}/v1/admin/accounts/{id}/adjustments"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send_json(&json!({"amount_micros": amount, "reason": "bench", "idempotency_key": key}))
                    .await
                    .unwrap();
            }
            accounts.push(id);
        }
        actix_rt::time::sleep(Duration::from_secs(2)).await;
        arrivals.lock().unwrap().clear();

        let deadline = Instant::now() + Duration::from_secs(options.seconds);
        let started = Instant::now();
        let per_connection = accounts.len() / options.connections;
        let acknowledged: Vec<Vec<((i64, i64), Instant)>> = join_all((0..options.connections).map(|connection| {
            let mine: Vec<i64> = accounts[connection * per_connection..(connection + 1) * per_connection].to_vec();
            let base = base.clone();
            let interval = (options.rate > 0)
                .then(|| Duration::from_secs_f64(options.connections as f64 / options.rate as f64));
            async move {
                let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
                let mut acks = Vec::new();
                let mut round = 0usize;
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    if let Some(interval) = interval {
                        next += interval;
                        actix_rt::time::sleep_until(next.into()).await;
                    }
                    let account = mine[round % mine.len()];
                    let up = (round / mine.len()).is_multiple_of(2);
                    round += 1;
                    let amount = if up { 1_500_000 } else { -1_500_000 };
                    let mut response = client
                        .post(format!("{base}/v1/admin/accounts/{account}/adjustments"))
                        .bearer_auth(ADMIN_TOKEN)
                        .send_json(&json!({"amount_micros": amount, "reason": "bench", "idempotency_key": format!("r{round}")}))
                        .await
                        .unwrap();
                    let answered = Instant::now();
                    let body: Value = response.json().await.unwrap();
                    acks.push(((account, body["transaction"]["seq"].as_i64().unwrap()), answered));
                }
                acks
            }
        }))
        .await;
        let elapsed = started.elapsed();
        let acknowledged: Vec<((i64, i64), Instant)> = acknowledged.into_iter().flatten().collect();
        // Wait (up to 30 s) for the deliveries to finish.
        let waiting = Instant::now();
        while arrivals.lock().unwrap().len() < acknowledged.len() && waiting.elapsed() < Duration::from_secs(30) {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let arrived = arrivals.lock().unwrap().clone();
        let mut latencies: Vec<f64> = acknowledged
            .iter()
            .filter_map(|(key, answered)| {
                arrived.get(key).map(|at| at.saturating_duration_since(*answered).as_secs_f64() * 1000.0)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        drop(server);
        println!(
            "webhooks: {} s, {} connections, {} accounts, {}, release server on 127.0.0.1, {}",
            options.seconds,
            options.connections,
            accounts.len(),
            if options.rate > 0 { format!("{} adjustments/s", options.rate) } else { "as fast as answered".to_string() },
            if options.database.is_some() { "Postgres" } else { "SQLite" }
        );
        println!(
            "{} adjustments answered ({:.0}/s), each an event; {} delivered to the live endpoint while a dead one took every event too",
            acknowledged.len(),
            acknowledged.len() as f64 / elapsed.as_secs_f64(),
            latencies.len()
        );
        println!(
            "from the answer to the receiver: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&latencies, 500),
            percentile(&latencies, 990),
            latencies.last().copied().unwrap_or(0.0)
        );
    });
}

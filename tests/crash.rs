//! The crash test: the real binary under concurrent credits, debits and
//! outbound messages, killed with SIGKILL at random moments and restarted.
//! Everything that got a success answer is in the ledger exactly once, the
//! ledger verifies (every grant's remaining what the ledger says), credit
//! added is a grant on the terms asked, no debit drew on credit that had
//! expired, and no reservation is left open after recovery.
//! `SMS_CREDIT_CRASH_CYCLES` (default 5) and `SMS_CREDIT_CRASH_SEED` run it
//! longer or differently.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::{json, Value};

use sms_credit_actors::clock::format_rfc3339_ms;

use crate::fake_twilio::FakeTwilio;
use crate::helpers::{fresh_directory, process_env, run_cli, ServerProcess, ADMIN_TOKEN, API_KEY};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// An operation that was answered with success.
#[derive(Debug)]
enum Acknowledged {
    Adjustment {
        account: i64,
        key: String,
        amount: i64,
        /// The grant credit added asked for: its category and priority.
        terms: Option<(String, i64)>,
    },
    Message {
        account: i64,
        message_id: i64,
        charged: i64,
    },
}

/// An operation refused for certain (not an unknown outcome).
#[derive(Debug)]
struct Refused {
    account: i64,
    key: String,
}

async fn worker(
    base: String,
    accounts: Vec<i64>,
    seed: u64,
    prefix: String,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    refused: Arc<Mutex<Vec<Refused>>>,
) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let mut rng = Rng(seed | 1);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let account = accounts[rng.below(accounts.len() as u64) as usize];
        let key = format!("{prefix}-{n}");
        if rng.below(3) == 0 {
            let body = "x".repeat(1 + rng.below(300) as usize);
            let sent = client
                .post(format!("{base}/v1/messages"))
                .insert_header(("Authorization", format!("Bearer {API_KEY}")))
                .send_json(&json!({"account_id": account, "body": body, "idempotency_key": key}))
                .await;
            let Ok(mut response) = sent else {
                return;
            };
            let Ok(answer) = response.json::<Value>().await else {
                return;
            };
            match response.status() {
                StatusCode::OK => acknowledged.lock().unwrap().push(Acknowledged::Message {
                    account,
                    message_id: answer["message"]["id"].as_i64().unwrap(),
                    charged: answer["message"]["charged_micros"].as_i64().unwrap(),
                }),
                StatusCode::PAYMENT_REQUIRED => {
                    refused.lock().unwrap().push(Refused { account, key })
                }
                _ => {}
            }
        } else {
            // Credits and debits by adjustment: signed amounts. Credit
            // added is a grant of either category, any priority, and one
            // in four expires within seconds: its expiry row lands among
            // the kills.
            let amount = rng.below(2_000_000) as i64 - 900_000;
            let mut body =
                json!({"amount_micros": amount, "reason": "crash test", "idempotency_key": key});
            if amount > 0 {
                body["category"] = json!(if rng.below(2) == 0 {
                    "paid"
                } else {
                    "promotional"
                });
                body["priority"] = json!(rng.below(101));
                if rng.below(4) == 0 {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64;
                    body["expires_at"] =
                        json!(format_rfc3339_ms(now_ms + 500 + rng.below(2_500) as i64));
                }
            }
            let sent = client
                .post(format!("{base}/v1/admin/accounts/{account}/adjustments"))
                .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
                .send_json(&body)
                .await;
            let Ok(response) = sent else {
                return;
            };
            if response.status() == StatusCode::OK {
                let terms = (amount > 0).then(|| {
                    (
                        body["category"].as_str().unwrap().to_string(),
                        body["priority"].as_i64().unwrap(),
                    )
                });
                acknowledged.lock().unwrap().push(Acknowledged::Adjustment {
                    account,
                    key,
                    amount,
                    terms,
                });
            }
        }
    }
}

on_both_stores!(acknowledged_operations_survive_sigkill);
async fn acknowledged_operations_survive_sigkill() {
    let cycles: u64 = std::env::var("SMS_CREDIT_CRASH_CYCLES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("SMS_CREDIT_CRASH_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x5EED_CAFE);
    let mut rng = Rng(seed | 1);
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let env = process_env(&twilio.base_url, None);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));

    // Accounts with some credit to spend.
    let server = ServerProcess::start(&directory, &env);
    let client = awc::Client::new();
    let mut accounts = Vec::new();
    for index in 0..4 {
        let mut created = client
            .post(server.url("/v1/admin/accounts"))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send_json(&json!({"phone": format!("+1415555390{index}")}))
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let id = created.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        let seeded = client
            .post(server.url(&format!("/v1/admin/accounts/{id}/adjustments")))
            .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send_json(
                &json!({"amount_micros": 20_000_000, "reason": "seed", "idempotency_key": "seed"}),
            )
            .await
            .unwrap();
        assert_eq!(seeded.status(), StatusCode::OK);
        accounts.push(id);
    }
    drop(server);

    let mut per_cycle = Vec::new();
    for cycle in 0..cycles {
        let server = ServerProcess::start(&directory, &env);
        let stop = Arc::new(AtomicBool::new(false));
        let before = acknowledged.lock().unwrap().len();
        let workers: Vec<_> = (0..6)
            .map(|index| {
                actix_rt::spawn(worker(
                    server.base_url.clone(),
                    accounts.clone(),
                    rng.next(),
                    format!("c{cycle}w{index}"),
                    Arc::clone(&stop),
                    Arc::clone(&acknowledged),
                    Arc::clone(&refused),
                ))
            })
            .collect();
        // The kill lands at a random moment after the first acknowledgement,
        // however slow a loaded machine makes the first requests.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "cycle {cycle}: no operation acknowledged within 30 s of the start"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(150 + rng.below(500))).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
        per_cycle.push(acknowledged.lock().unwrap().len() - before);
    }
    assert!(
        per_cycle.iter().all(|count| *count > 0),
        "every cycle got work done before the kill: {per_cycle:?}"
    );

    // Recovery runs once the killed instance counts as gone; then a clean stop.
    let server = ServerProcess::start(&directory, &env);
    let health = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = directory.number("SELECT COUNT(*) FROM messages WHERE state = 'reserved'");
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} reservations still open 20 s after the restart"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    let mut server = server;
    std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(server.child.wait().unwrap().success());

    let verified = run_cli(&directory, &["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let count_rows = |account: i64, key: &str, amount: i64| -> i64 {
        directory.number(&format!(
            "SELECT COUNT(*) FROM transactions WHERE account_id = {account} AND idempotency_key = '{key}' AND amount = {amount}"
        ))
    };
    let acknowledged = acknowledged.lock().unwrap();
    let mut messages = 0;
    for operation in acknowledged.iter() {
        match operation {
            Acknowledged::Adjustment {
                account,
                key,
                amount,
                terms,
            } => {
                assert_eq!(count_rows(*account, key, *amount), 1, "{operation:?}");
                if let Some((category, priority)) = terms {
                    let granted = directory.number(&format!(
                        "SELECT COUNT(*) FROM credit_grants g JOIN transactions t
                             ON t.account_id = g.account_id AND t.seq = g.id
                          WHERE t.account_id = {account} AND t.idempotency_key = '{key}'
                            AND g.category = '{category}' AND g.priority = {priority}
                            AND g.amount = {amount}"
                    ));
                    assert_eq!(granted, 1, "its grant, on its terms: {operation:?}");
                }
            }
            Acknowledged::Message {
                account,
                message_id,
                charged,
            } => {
                messages += 1;
                assert_eq!(
                    count_rows(*account, &format!("msg:{message_id}"), -charged),
                    1,
                    "{operation:?}"
                );
                let sent = directory.number(&format!(
                    "SELECT COUNT(*) FROM messages WHERE id = {message_id} AND state = 'sent'"
                ));
                let voids = directory.number(&format!(
                    "SELECT COUNT(*) FROM transactions WHERE account_id = {account} AND idempotency_key = 'msg-void:{message_id}'"
                ));
                assert_eq!((sent, voids), (1, 0), "{operation:?}");
            }
        }
    }
    no_debit_drew_on_expired_credit(&directory);
    for refusal in refused.lock().unwrap().iter() {
        let debited = directory.number(&format!(
            "SELECT COUNT(*) FROM messages m JOIN transactions t ON t.account_id = m.account_id AND t.idempotency_key = 'msg:' || m.id
              WHERE m.account_id = {} AND m.idempotency_key = '{}' AND m.state != 'voided'",
            refusal.account, refusal.key
        ));
        assert_eq!(debited, 0, "a refused message left a debit: {refusal:?}");
    }
    let open = directory.number("SELECT COUNT(*) FROM messages WHERE state = 'reserved'");
    assert_eq!(open, 0, "no reservation is left unresolved after recovery");
    assert!(messages > 0, "some messages were acknowledged");
}

/// No debit (a message's charge) took from a grant at or after its expiry,
/// whatever the kills interrupted (verify has checked each grant's
/// remaining against the ledger, expiry rows included).
fn no_debit_drew_on_expired_credit(directory: &crate::database::TestDatabase) {
    let expiries: std::collections::HashMap<(i64, i64), i64> = directory
        .texts(
            "SELECT account_id || ':' || id || ':' || expires_at FROM credit_grants
              WHERE expires_at IS NOT NULL",
        )
        .into_iter()
        .map(|line| {
            let line = line.unwrap();
            let parts: Vec<i64> = line.split(':').map(|part| part.parse().unwrap()).collect();
            ((parts[0], parts[1]), parts[2])
        })
        .collect();
    assert!(
        !expiries.is_empty(),
        "some credit added was to expire during the run"
    );
    for line in directory.texts(
        "SELECT account_id || '|' || seq || '|' || created_at || '|' || funded_by FROM transactions
          WHERE type = 'debit' AND funded_by IS NOT NULL",
    ) {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split('|').collect();
        let (account, created_at): (i64, i64) =
            (parts[0].parse().unwrap(), parts[2].parse().unwrap());
        for draw in parts[3].split(';') {
            let grant: i64 = draw.split(':').next().unwrap().parse().unwrap();
            if let Some(expires_at) = expiries.get(&(account, grant)) {
                assert!(
                    created_at < *expires_at,
                    "account {account} row {}: a debit at {created_at} drew on grant {grant}, expired at {expires_at}",
                    parts[1]
                );
            }
        }
    }
}

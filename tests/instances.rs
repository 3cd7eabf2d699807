//! Three server processes on one database, behind no sticky routing: 16
//! writers spread over the three instances on 8 shared accounts (signed
//! adjustments, credit of either category and any priority, and outbound
//! messages), each Stripe event delivered to every
//! instance at the same moment, each inbound `BUY` (one MessageSid) posted to
//! two instances at once, 9 sign-ups racing for a 3-use discount code, and
//! one instance SIGKILLed mid-run and started again. Clients fail over with the same idempotency key, as a load
//! balancer's retry would. At the end every acknowledged operation is in the
//! ledger exactly once, each balance is what the acknowledged operations
//! make it, `verify` is clean (every grant's remaining what the ledger says), and an admin feed on one instance saw every
//! change made through the others, in order, without a gap. And two
//! instances debiting one account at once warn of low credit once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::fake_stripe::{EventFactory, FakeStripe};
use crate::fake_twilio::FakeTwilio;
use crate::feed::{next_json, open_admin_feed};
use crate::helpers::{
    fresh_directory, process_env, run_cli, test_settings, with_twilio, ServerProcess, TestApp,
    ADMIN_TOKEN, API_KEY,
};
use crate::ledger_actors::assert_verified;
use crate::twilio::account_with_balance;

const INSTANCES: usize = 3;
const ACCOUNTS: usize = 8;
const WRITERS: usize = 16;
const OPERATIONS_PER_WRITER: usize = 60;
/// The instance that is killed and started again.
const VICTIM: usize = 1;
/// The instance whose admin feed watches everything.
const WATCHER: usize = 2;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The instances' current addresses (a restarted one listens elsewhere)
/// and whether each is up.
struct Cluster {
    urls: Mutex<Vec<String>>,
    down: Vec<AtomicBool>,
}

impl Cluster {
    fn url(&self, instance: usize) -> String {
        self.urls.lock().unwrap()[instance].clone()
    }
}

/// What one writer's operation came to.
#[derive(Debug)]
enum Done {
    Adjustment {
        account: i64,
        key: String,
        amount: i64,
        seq: i64,
    },
    Message {
        account: i64,
        message_id: i64,
        charged: i64,
    },
    /// Refused for certain: no money moved (a voided send).
    NotSent,
}

/// Sends one request to `instance`, failing over to the next instance with
/// the same body while the answer is not definitive (the instance is down,
/// the connection broke, or a send is still in progress elsewhere). A fresh
/// request to an instance that is up must succeed: anything else fails the
/// test.
async fn definitive(
    cluster: &Cluster,
    client: &awc::Client,
    mut instance: usize,
    path: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = true;
    loop {
        assert!(
            Instant::now() < deadline,
            "no definitive answer to {body} within 60 s"
        );
        let was_down = cluster.down[instance].load(Ordering::SeqCst);
        let sent = client
            .post(format!("{}{path}", cluster.url(instance)))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .send_json(body)
            .await;
        let answered = match sent {
            Ok(mut response) => {
                let json: Value = response.json().await.unwrap_or(Value::Null);
                Some((response.status(), json))
            }
            Err(_) => None,
        };
        match answered {
            Some((status, json)) if status == StatusCode::OK => return (status, json),
            Some((status, json)) if status == StatusCode::BAD_GATEWAY => return (status, json),
            // Not sent, on an earlier try of this body: as definitive.
            Some((StatusCode::CONFLICT, json))
                if json["error"]["code"] == "idempotency_key_spent" =>
            {
                return (StatusCode::CONFLICT, json)
            }
            // Reserved by an instance that died: its recovery decides.
            Some((StatusCode::CONFLICT, json)) if json["error"]["code"] == "in_progress" => {
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            other => {
                let victim_involved = was_down
                    || instance == VICTIM
                    || cluster.down[instance].load(Ordering::SeqCst)
                    || !first;
                assert!(
                    victim_involved,
                    "a request to live instance {instance} failed: {other:?} for {body}"
                );
                actix_rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
        first = false;
        instance = (instance + 1) % INSTANCES;
    }
}

async fn writer(
    cluster: Arc<Cluster>,
    accounts: Arc<Vec<i64>>,
    index: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<Done> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .finish();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (index as u64 + 1);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut done = Vec::new();
    for n in 0..OPERATIONS_PER_WRITER {
        let account = accounts[(next() % ACCOUNTS as u64) as usize];
        let instance = (index + n) % INSTANCES;
        let key = format!("w{index}-{n}");
        if next() % 3 == 0 {
            let body = "x".repeat(1 + (next() % 250) as usize);
            let (status, answer) = definitive(
                &cluster,
                &client,
                instance,
                "/v1/messages",
                API_KEY,
                &json!({"account_id": account, "body": body, "idempotency_key": key}),
            )
            .await;
            done.push(if status == StatusCode::OK {
                Done::Message {
                    account,
                    message_id: answer["message"]["id"].as_i64().unwrap(),
                    charged: answer["message"]["charged_micros"].as_i64().unwrap(),
                }
            } else {
                Done::NotSent
            });
        } else {
            let amount = (next() % 1_500_000) as i64 - 500_000;
            // Credit added is a grant of either category and any
            // priority: debits through other instances draw on them in
            // order, and verify finds each grant's remaining as the
            // ledger says.
            let mut body = json!({"amount_micros": amount, "reason": "multi-instance", "idempotency_key": key});
            if amount > 0 {
                body["category"] = json!(if next() % 2 == 0 {
                    "paid"
                } else {
                    "promotional"
                });
                body["priority"] = json!(next() % 101);
            }
            let (status, answer) = definitive(
                &cluster,
                &client,
                instance,
                &format!("/v1/admin/accounts/{account}/adjustments"),
                ADMIN_TOKEN,
                &body,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["transaction"]["amount_micros"], amount, "{answer}");
            done.push(Done::Adjustment {
                account,
                key,
                amount,
                seq: answer["transaction"]["seq"].as_i64().unwrap(),
            });
        }
        progress.fetch_add(1, Ordering::SeqCst);
    }
    done
}

type Writers = Vec<actix_rt::task::JoinHandle<Vec<Done>>>;

/// Waits until the writers have done `target` operations, collecting what
/// the writers that finish meanwhile did. A writer that failed an assertion
/// fails the test here, not after the others finish.
async fn wait_for(
    progress: &AtomicUsize,
    target: usize,
    writers: &mut Writers,
    finished: &mut Vec<Done>,
) {
    while progress.load(Ordering::SeqCst) < target {
        if let Some(index) = writers.iter().position(|writer| writer.is_finished()) {
            finished.extend(writers.remove(index).await.expect("a writer failed"));
            continue;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

on_both_stores!(three_instances_on_one_database_keep_every_promise);
async fn three_instances_on_one_database_keep_every_promise() {
    let stripe = FakeStripe::start().await;
    let twilio = FakeTwilio::start().await;
    let directory = fresh_directory();
    let mut env = process_env(&twilio.base_url, Some(&stripe.base_url));
    env.push(("SMS_CREDIT_INCLUDED_CREDIT", "5.00"));
    let mut servers: Vec<ServerProcess> = (0..INSTANCES)
        .map(|_| ServerProcess::start(&directory, &env))
        .collect();
    let apps: Vec<TestApp> = servers
        .iter()
        .map(|server| TestApp::attach(server, &directory))
        .collect();

    // The admin feed on one instance, from before the first account.
    let mut feed = open_admin_feed(&apps[WATCHER]).await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (seen, watching) = (Arc::clone(&seen), Arc::clone(&watching));
        actix_rt::spawn(async move {
            while watching.load(Ordering::SeqCst) {
                let change = next_json(&mut feed).await;
                seen.lock().unwrap().push(change);
            }
        })
    };

    // Accounts bought by Checkout on one instance; the events that
    // complete them delivered to every instance at the same moment.
    let mut events = EventFactory::new();
    let mut accounts = Vec::new();
    let mut expected: HashMap<i64, i64> = HashMap::new();
    let mut top_ups = Vec::new();
    for index in 0..ACCOUNTS {
        let app = &apps[index % INSTANCES];
        let phone = format!("+1415555{:04}", 7000 + index);
        let (status, started) = app
            .post_checkout_access(&phone, "hiker@example.com", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{started}");
        let account = started["account_id"].as_i64().unwrap();
        let order = started["order_id"].as_i64().unwrap();
        let session = app.get_orders(account).await[0]["stripe_session_id"]
            .as_str()
            .unwrap()
            .to_string();
        let customer = app.get_admin_account(account).await.1["stripe_customer_id"]
            .as_str()
            .unwrap()
            .to_string();
        let intent = format!("pi_access_{order}");
        for payload in [
            events.checkout_completed(&session, order, &customer, 2999, &intent),
            events.payment_intent_succeeded(
                &intent,
                2999,
                &customer,
                json!({"sms_credit_purpose": "checkout"}),
            ),
        ] {
            let answers =
                join_all(apps.iter().map(|app| app.deliver_at(&payload, unix_now()))).await;
            for (status, answer) in answers {
                assert_eq!(status, StatusCode::OK, "{answer}");
            }
        }
        expected.insert(account, 5_000_000);
        // A $10 top-up started, completed below while the writers run.
        let token = app.issue_token(account).await;
        let (order, session) = app.start_top_up(account, &token).await;
        top_ups.push(events.checkout_completed(
            &session,
            order,
            &customer,
            1000,
            &format!("pi_topup_{order}"),
        ));
        accounts.push((account, phone));
    }
    // A discount code with 3 uses, raced for by 9 sign-ups over the three
    // instances: exactly 3 get it.
    crate::stripe::create_code(
        &apps[0],
        json!({"code": "RACE3", "type": "percent", "percent": 50, "max_uses": 3}),
    )
    .await;
    let raced = join_all((0..9).map(|index| {
        let phone = format!("+1415555{:04}", 7100 + index);
        let app = &apps[index % INSTANCES];
        async move {
            app.post_checkout_access(&phone, "racer@example.com", Some("RACE3"))
                .await
        }
    }))
    .await;
    let won = raced
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    let lost = raced
        .iter()
        .filter(|(status, answer)| {
            *status == StatusCode::CONFLICT && answer["error"]["code"] == "discount_code_used_up"
        })
        .count();
    assert_eq!((won, lost), (3, 6), "{raced:?}");

    for (account, _) in &accounts {
        let (status, seeded) = apps[0].post_adjustment(*account, 20_000_000, "seed").await;
        assert_eq!(status, StatusCode::OK, "{seeded}");
        *expected.get_mut(account).unwrap() += 20_000_000;
    }

    let cluster = Arc::new(Cluster {
        urls: Mutex::new(
            servers
                .iter()
                .map(|server| server.base_url.clone())
                .collect(),
        ),
        down: (0..INSTANCES).map(|_| AtomicBool::new(false)).collect(),
    });
    let account_ids = Arc::new(accounts.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    let progress = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            actix_rt::spawn(writer(
                Arc::clone(&cluster),
                Arc::clone(&account_ids),
                index,
                Arc::clone(&progress),
            ))
        })
        .collect();

    // While they write: each top-up's event to every instance at once, and
    // each BUY (one MessageSid) to two instances at once, all together.
    let deliveries = join_all(top_ups.iter().flat_map(|payload| {
        apps.iter()
            .map(move |app| async move { app.deliver_at(payload, unix_now()).await })
    }));
    let buys = join_all(accounts.iter().enumerate().map(|(index, (_, phone))| {
        let apps = &apps;
        async move {
            let sid = format!("SMmulti{index}");
            join_all(
                [&apps[0], &apps[2]]
                    .iter()
                    .map(|app| app.post_twilio_sms(&sid, phone, "BUY $10")),
            )
            .await
        }
    }));
    let (delivered, bought) = futures_util::join!(deliveries, buys);
    for (status, answer) in delivered {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    for replies in bought {
        for (status, reply) in &replies {
            assert_eq!(
                *status,
                StatusCode::OK,
                "{reply}\nwhat the instances logged:\n{}",
                warnings_of(&servers)
            );
            assert!(reply.contains("$10.00 was added"), "{reply}");
        }
        assert_eq!(replies[0].1, replies[1].1, "both instances answer alike");
    }
    for (account, _) in &accounts {
        // The top-up and the BUY.
        *expected.get_mut(account).unwrap() += 20_000_000;
    }
    assert_eq!(
        stripe.charges_made(),
        ACCOUNTS as u64,
        "one charge per MessageSid"
    );

    // One instance killed mid-run, then started again.
    let total = WRITERS * OPERATIONS_PER_WRITER;
    let mut writers = writers;
    let mut done = Vec::new();
    wait_for(&progress, total / 3, &mut writers, &mut done).await;
    cluster.down[VICTIM].store(true, Ordering::SeqCst);
    let victim = servers.remove(VICTIM);
    victim.kill();
    let killed_at = progress.load(Ordering::SeqCst);
    assert!(
        killed_at < total * 2 / 3,
        "the kill came mid-run ({killed_at} of {total})"
    );
    wait_for(&progress, killed_at + total / 4, &mut writers, &mut done).await;
    let restarted = ServerProcess::start(&directory, &env);
    cluster.urls.lock().unwrap()[VICTIM] = restarted.base_url.clone();
    cluster.down[VICTIM].store(false, Ordering::SeqCst);
    servers.insert(VICTIM, restarted);

    for writer in writers {
        done.extend(writer.await.unwrap());
    }
    let mut messages = 0;
    for operation in &done {
        match operation {
            Done::Adjustment {
                account, amount, ..
            } => {
                *expected.get_mut(account).unwrap() += amount;
            }
            Done::Message {
                account, charged, ..
            } => {
                messages += 1;
                *expected.get_mut(account).unwrap() -= charged;
            }
            Done::NotSent => {}
        }
    }
    assert!(messages > 0, "some messages were sent");

    // No reservation is left once the killed instance counts as gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while directory.number("SELECT COUNT(*) FROM messages WHERE state = 'reserved'") > 0 {
        assert!(
            Instant::now() < deadline,
            "reservations still open 20 s after the kill"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }

    // Every balance is exact, whichever instance is asked.
    for (index, (account, _)) in accounts.iter().enumerate() {
        let app = TestApp::attach(&servers[index % INSTANCES], &directory);
        assert_eq!(
            app.balance_micros(*account).await,
            expected[account],
            "account {account}"
        );
    }

    // Every acknowledged operation is in the ledger exactly once.
    for operation in &done {
        match operation {
            Done::Adjustment {
                account,
                key,
                amount,
                seq,
            } => assert_eq!(
                directory.number(&format!(
                    "SELECT COUNT(*) FROM transactions WHERE account_id = {account}
                       AND idempotency_key = '{key}' AND amount = {amount} AND seq = {seq}"
                )),
                1,
                "{operation:?}"
            ),
            Done::Message {
                account,
                message_id,
                charged,
            } => assert_eq!(
                directory.number(&format!(
                    "SELECT COUNT(*) FROM transactions WHERE account_id = {account}
                       AND idempotency_key = 'msg:{message_id}' AND amount = {}",
                    -charged
                )),
                1,
                "{operation:?}"
            ),
            Done::NotSent => {}
        }
    }

    // The watcher saw every change, whichever instance made it: per account,
    // every seq from 1, in order, once, as the ledger has it.
    let ledger: Vec<(i64, i64, i64)> = {
        let rows = directory.number("SELECT COUNT(*) FROM transactions");
        let deadline = Instant::now() + Duration::from_secs(20);
        while (seen.lock().unwrap().len() as i64) < rows {
            assert!(
                Instant::now() < deadline,
                "the watcher saw {} of {rows} changes",
                seen.lock().unwrap().len()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        let mut ledger = Vec::new();
        for (account, _) in &accounts {
            let count = directory.number(&format!(
                "SELECT COUNT(*) FROM transactions WHERE account_id = {account}"
            ));
            for seq in 1..=count {
                let amount = directory.number(&format!(
                    "SELECT amount FROM transactions WHERE account_id = {account} AND seq = {seq}"
                ));
                ledger.push((*account, seq, amount));
            }
        }
        ledger
    };
    let mut by_account: BTreeMap<i64, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for change in seen.lock().unwrap().iter() {
        let account = change["account_id"].as_i64().unwrap();
        by_account.entry(account).or_default().push((
            account,
            change["seq"].as_i64().unwrap(),
            change["amount_micros"].as_i64().unwrap(),
        ));
    }
    let watched: Vec<(i64, i64, i64)> = accounts
        .iter()
        .flat_map(|(account, _)| by_account.remove(account).unwrap_or_default())
        .collect();
    assert_eq!(
        watched, ledger,
        "the watcher's feed is the ledger, in order"
    );
    assert!(
        by_account.is_empty(),
        "no change of another account: {by_account:?}"
    );
    watching.store(false, Ordering::SeqCst);
    watcher.abort();

    // A clean stop of every instance, then a clean verify.
    for server in &mut servers {
        std::process::Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(server.child.wait().unwrap().success());
    }
    let verified = run_cli(&directory, &["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

on_both_stores!(two_instances_warn_of_low_credit_once_per_cooldown);
async fn two_instances_warn_of_low_credit_once_per_cooldown() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let settings = with_twilio(test_settings(&directory), &fake.base_url);
    let first = TestApp::spawn_with(directory.clone(), settings.clone()).await;
    let second = TestApp::spawn_with(directory.clone(), settings).await;
    let account = account_with_balance(&first, "+14155552650", 2_400_000).await;
    // Both instances' actors for the account are live.
    assert_eq!(second.balance_micros(account).await, 2_400_000);

    // Twenty messages at once, half through each instance: the balance
    // crosses $2.00 once, on whichever instance, and one warning is queued.
    let sent = join_all((0..20).map(|index| {
        let app = if index % 2 == 0 { &first } else { &second };
        app.post_message(json!({
            "account_id": account,
            "body": format!("forecast {index}"),
            "idempotency_key": format!("low-{index}"),
        }))
    }))
    .await;
    for (status, answer) in &sent {
        assert_eq!(*status, StatusCode::OK, "{answer}");
    }
    let notices = first.settle_notices(account).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    second.settle_notices(account).await;
    let warnings = fake
        .sent()
        .iter()
        .filter(|sms| sms.body.contains("credit is low"))
        .count();
    assert_eq!(warnings, 1);
    first.stop().await;
    let directory = second.stop().await;
    assert_verified(&directory);
}

/// The warnings and errors the instances have logged so far (for a failed
/// assertion's message: the reason is in the server's log, not the reply).
fn warnings_of(servers: &[ServerProcess]) -> String {
    let mut lines = Vec::new();
    for server in servers {
        for line in server.log.try_iter() {
            if line.contains("WARN") || line.contains("ERROR") {
                lines.push(line);
            }
        }
    }
    lines.join("\n")
}

on_both_stores!(claims_take_no_more_than_they_ask_for_whatever_plan_the_database_picks);
/// The claims of notices, price checks and auto top-ups each take at most
/// the rows asked for. On Postgres the database is made to prefer a plan
/// it may pick under other statistics (a nested loop that scans the rows
/// to claim again for each row of the table): the claim still takes one.
async fn claims_take_no_more_than_they_ask_for_whatever_plan_the_database_picks() {
    use sms_credit_actors::billing::auto_top_up::month_key;
    use sms_credit_actors::messaging::records::MessageKind;
    let directory = fresh_directory();
    if crate::database::current_store() == crate::database::StoreKind::Postgres {
        directory.execute(
            "DO $$ BEGIN
               EXECUTE format('ALTER DATABASE %I SET enable_hashjoin = off', current_database());
               EXECUTE format('ALTER DATABASE %I SET enable_hashagg = off', current_database());
               EXECUTE format('ALTER DATABASE %I SET enable_mergejoin = off', current_database());
               EXECUTE format('ALTER DATABASE %I SET enable_material = off', current_database());
               EXECUTE format('ALTER DATABASE %I SET enable_sort = off', current_database());
             END $$",
        );
    }
    let fake = FakeTwilio::start().await;
    let clock = sms_credit_actors::clock::ManualClock::new(crate::helpers::NOW_UNIX * 1000);
    let now = crate::helpers::NOW_UNIX * 1000;
    let phones = ["+14155552720", "+14155552721", "+14155552722"];
    let (core, accounts) =
        crate::twilio::core_with_warnings(&directory, &fake, &clock, &phones).await;
    let messaging = core.messaging.clone().unwrap();
    for (index, account) in accounts.iter().enumerate() {
        messaging
            .record_service(
                Some(*account),
                phones[index],
                "Storm at 3pm",
                MessageKind::Warning,
                Some(format!("SMclaims{index}")),
                now,
            )
            .await
            .unwrap();
    }
    let mut due = Vec::new();
    for phone in ["+14155552723", "+14155552724", "+14155552725"] {
        let account = crate::auto_top_up::account_due_for_a_top_up(&core, phone).await;
        due.push(account);
        core.store
            .auto_top_up()
            .begin_auto_top_up(account, month_key(now), now)
            .await
            .unwrap();
    }
    let later = now + 3 * 24 * 3_600 * 1_000;
    let messages = core.store.messages();
    let notices = messages
        .claim_notices(later, later + 60_000, 1)
        .await
        .unwrap();
    let checks = messages
        .claim_price_checks(later, later + 60_000, 1)
        .await
        .unwrap();
    let attempts = core
        .store
        .auto_top_up()
        .claim_auto_top_ups(later, later + 60_000, 1)
        .await
        .unwrap();
    assert_eq!(
        (notices.len(), checks.len(), attempts.len()),
        (1, 1, 1),
        "one claimed of each: {notices:?} {:?} {attempts:?}",
        checks
            .iter()
            .map(|check| check.message_id)
            .collect::<Vec<_>>()
    );
    // And nothing more was taken than was answered.
    let sending: usize = {
        let mut count = 0;
        for account in &accounts {
            count += messages
                .notices_of(*account, 10)
                .await
                .unwrap()
                .iter()
                .filter(|notice| notice.state.as_str() == "sending")
                .count();
        }
        count
    };
    assert_eq!(sending, 1);
    let charging: usize = {
        let mut count = 0;
        for account in &due {
            count += core
                .store
                .auto_top_up()
                .auto_top_ups_of(*account, 10)
                .await
                .unwrap()
                .iter()
                .filter(|attempt| attempt.claim > 0)
                .count();
        }
        count
    };
    assert_eq!(charging, 1);
    core.shutdown().await;
}

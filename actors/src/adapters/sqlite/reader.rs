//! A reader thread: answers queued look-ups on its own connection, a
//! drained group of them at a time inside one read transaction.

use std::sync::mpsc::Receiver;

use rusqlite::Connection;

use super::ReadJob;

/// The most look-ups answered inside one read transaction.
const MAX_JOBS_PER_TRANSACTION: usize = 1024;

pub(super) fn run(connection: Connection, queue: Receiver<ReadJob>) {
    let mut jobs = Vec::with_capacity(MAX_JOBS_PER_TRANSACTION);
    while let Ok(first) = queue.recv() {
        jobs.push(first);
        while jobs.len() < MAX_JOBS_PER_TRANSACTION {
            match queue.try_recv() {
                Ok(next) => jobs.push(next),
                Err(_) => break,
            }
        }
        // The read transaction starts after every job in it was queued, so
        // each job sees every commit that was answered before it was asked.
        let in_transaction = execute(&connection, "BEGIN").is_ok();
        for job in jobs.drain(..) {
            job(&connection);
        }
        if in_transaction {
            let _ = execute(&connection, "COMMIT");
        }
    }
}

fn execute(connection: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

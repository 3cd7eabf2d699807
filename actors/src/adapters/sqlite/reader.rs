//! A reader thread: answers queued look-ups on its own connection, a
//! drained group of them at a time inside one read transaction.
//!
//! What a read sees must be durable before it is answered. This process's
//! commits are (the caller waits for the syncer, see `Durability`); another
//! process sharing the file may have committed without its fsync yet. Each
//! read transaction first reads who made the last commit it sees (every
//! writer notes it in its commit: `last_commit`): when that is another
//! process, and no fsync was made for that commit yet, the reader asks the
//! syncer for one that starts after the read, and its answers wait for it.
//! One fsync of the WAL makes every commit before it durable, whoever wrote
//! it: it is one file.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use rusqlite::Connection;

use super::syncer::{Durability, LastCommit, ToSyncer};
use super::ReadJob;

/// The most look-ups answered inside one read transaction.
const MAX_JOBS_PER_TRANSACTION: usize = 1024;

/// A sync a read transaction asked for: its answers wait for it.
#[derive(Clone, Debug)]
pub(super) struct AwaitedSync {
    /// The request's number (see `Durability::request`).
    pub(super) request: u64,
    /// The other process's commit it makes durable, once made (`None`
    /// when who made the last commit could not be read).
    pub(super) commit: Option<LastCommit>,
}

/// What a reader thread needs besides its connection.
pub(super) struct Reader {
    pub(super) connection: Connection,
    /// This process's name in `last_commit`.
    pub(super) origin: String,
    pub(super) durability: Arc<Durability>,
    pub(super) syncer: Sender<ToSyncer>,
}

impl Reader {
    pub(super) fn run(self, queue: Receiver<ReadJob>) {
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
            let in_transaction = execute(&self.connection, "BEGIN").is_ok();
            // Its first read fixes what the transaction sees.
            let awaited = self.sync_needed(in_transaction);
            for job in jobs.drain(..) {
                job(&self.connection, awaited.as_ref());
            }
            if in_transaction {
                let _ = execute(&self.connection, "COMMIT");
            }
        }
    }

    /// The sync the transaction's answers wait for, if the last commit it
    /// sees is another process's and not known durable (asked for here).
    fn sync_needed(&self, in_transaction: bool) -> Option<AwaitedSync> {
        let last = self
            .connection
            .prepare_cached("SELECT origin, number FROM last_commit WHERE id = 1")
            .and_then(|mut statement| {
                statement.query_row([], |row| {
                    Ok(LastCommit {
                        origin: row.get(0)?,
                        number: row.get(1)?,
                    })
                })
            });
        let commit = match last {
            // Without a transaction each job reads a commit of its own:
            // whose is not known, so a sync is asked for.
            Ok(_) if !in_transaction => None,
            Ok(last) if last.origin == self.origin || self.durability.known_durable(&last) => {
                return None;
            }
            Ok(last) => Some(last),
            Err(error) => {
                tracing::warn!(%error, "could not read who made the last commit; syncing");
                None
            }
        };
        let request = self.durability.request();
        // The syncer ends only after every reader has: it is there.
        let _ = self.syncer.send(ToSyncer::Read(request));
        Some(AwaitedSync { request, commit })
    }
}

fn execute(connection: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

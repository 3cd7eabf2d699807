//! The writer thread: takes everything queued while the last commit ran and
//! puts it into the next transaction (group commit), then hands the
//! outcome of that transaction to the syncer, which makes it durable and
//! answers each write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::syncer::{Answer, CommittedLedger, Durability, Settled, ToSyncer};
use super::{
    ledger, messages as notices, watcher, webhooks, CustomFailure, ErasedOp, ErasedValue,
    WriterMessage,
};
use crate::clock::Clock;
use crate::ledger::{AccountId, LedgerEntry, Snapshot};
use crate::store::{LedgerWrite, Shared, StoreError, WritePart};

/// How often (in batches that wrote ledger rows) old change notes are dropped.
const PRUNE_CHANGES_EVERY: u32 = 1024;
/// How long change notes are kept: far longer than any process sharing the
/// file takes to read them.
const KEEP_CHANGES_MS: i64 = 10 * 60 * 1000;

/// Why a ledger write failed.
enum WriteFailure {
    /// One of its statements failed; it left nothing (rolled back to its
    /// savepoint, or its snapshot put back), and the batch goes on.
    Statement(rusqlite::Error),
    /// The batch cannot commit (the transaction is gone, or the write
    /// could not be undone).
    Batch(String),
}

/// A write that went into the open transaction and waits for its commit.
enum Pending {
    Ledger {
        entry: LedgerEntry,
        /// Where the write leaves the account (told to other processes).
        next: Snapshot,
        grants: Arc<str>,
        generation: u64,
        queued_at: Instant,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Custom {
        value: ErasedValue,
        done: oneshot::Sender<Result<ErasedValue, CustomFailure>>,
    },
}

pub(super) struct Writer {
    connection: Connection,
    max_batch: usize,
    /// Where each batch goes once committed, to be made durable and answered.
    syncer: Sender<ToSyncer>,
    /// The commits' numbers (readers wait for them to be durable).
    durability: Arc<Durability>,
    /// Counters, the balance feed's fan-out and the test switch.
    shared: Arc<Shared>,
    /// Whether the open transaction queued notices (the notice worker is
    /// told after it commits).
    notices_queued: bool,
    /// Batches since old change notes were last dropped.
    batches_since_prune: u32,
    /// Accounts with a failed write, and the generation it failed at: later
    /// writes of that account from the same or an older generation were
    /// computed on top of the failure and are refused.
    poisoned: HashMap<AccountId, u64>,
}

impl Writer {
    pub(super) fn new(
        connection: Connection,
        max_batch: usize,
        shared: Arc<Shared>,
        syncer: Sender<ToSyncer>,
        durability: Arc<Durability>,
    ) -> Writer {
        Writer {
            connection,
            max_batch,
            syncer,
            durability,
            shared,
            notices_queued: false,
            batches_since_prune: 0,
            poisoned: HashMap::new(),
        }
    }

    pub(super) fn run(mut self, queue: Receiver<WriterMessage>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Ok(first) = queue.recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let gather = self.shared.take_gather();
            while batch.len() < gather {
                match queue.recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriterMessage>) {
        let started = Instant::now();
        let batch_size = batch.len() as u64;
        let mut pending = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        let mut flushes = Vec::new();
        let mut failure = match self.durability.failure() {
            Some(reason) => Some(reason.to_string()),
            None => self
                .execute("BEGIN IMMEDIATE")
                .err()
                .map(|error| error.to_string()),
        };

        for message in batch.drain(..) {
            match message {
                WriterMessage::Flush(done) => flushes.push(done),
                WriterMessage::Ledger(write) => {
                    if let Some(reason) = &failure {
                        self.poison(write.entry.account_id, write.generation);
                        refused.push(Answer::Ledger(
                            write.done,
                            Err(StoreError::CommitFailed(reason.clone())),
                        ));
                        continue;
                    }
                    self.apply_ledger_write(*write, &mut pending, &mut refused, &mut failure);
                }
                WriterMessage::Custom(custom) => {
                    if let Some(reason) = &failure {
                        let error = CustomFailure::Store(StoreError::CommitFailed(reason.clone()));
                        refused.push(Answer::Custom(custom.done, Err(error)));
                        continue;
                    }
                    match self.apply_custom(custom.op) {
                        Ok(Ok(value)) => pending.push(Pending::Custom {
                            value,
                            done: custom.done,
                        }),
                        Ok(Err(op_error)) => refused.push(Answer::Custom(
                            custom.done,
                            Err(CustomFailure::Op(op_error)),
                        )),
                        Err(reason) => {
                            let error =
                                CustomFailure::Store(StoreError::CommitFailed(reason.clone()));
                            refused.push(Answer::Custom(custom.done, Err(error)));
                            failure = Some(reason);
                        }
                    }
                }
            }
        }

        if failure.is_none() {
            if let Err(error) = self.record_changes(&pending) {
                failure = Some(error.to_string());
            }
        }
        let number = match failure {
            None => {
                let number = self.durability.begin();
                failure = self
                    .mark_last_commit(number)
                    .err()
                    .map(|error| error.to_string());
                let committing = Instant::now();
                if failure.is_none() {
                    failure = self.commit().err();
                }
                let commit_micros = committing.elapsed().as_micros() as u64;
                self.shared
                    .stats
                    .commit_micros
                    .fetch_add(commit_micros, Ordering::Relaxed);
                self.shared.stats.commit_latency.observe(commit_micros);
                Some(number)
            }
            Some(_) => None,
        };
        if failure.is_some() && !self.connection.is_autocommit() {
            // Best effort: the transaction may already be gone.
            let _ = self.execute("ROLLBACK");
        }

        let notices_queued = std::mem::take(&mut self.notices_queued);
        let events_inserted = super::super::take_events_inserted();
        let mut settled = Settled {
            number,
            committed: failure.is_none(),
            ledger: Vec::new(),
            answers: Vec::with_capacity(refused.len() + flushes.len()),
            batch_size: batch_size as usize,
            notices_queued,
            events_inserted,
        };
        match &failure {
            None => {
                settled.ledger.reserve(pending.len());
                for write in pending {
                    match write {
                        Pending::Ledger {
                            entry,
                            done,
                            queued_at,
                            ..
                        } => settled.ledger.push(CommittedLedger {
                            entry,
                            queued_at,
                            done,
                        }),
                        Pending::Custom { value, done } => {
                            settled.answers.push(Answer::Custom(done, Ok(value)))
                        }
                    }
                }
            }
            Some(reason) => {
                self.shared
                    .stats
                    .failed_commits
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(reason = %reason, writes = pending.len(), "group commit failed");
                for write in pending {
                    match write {
                        Pending::Ledger {
                            entry,
                            generation,
                            done,
                            ..
                        } => {
                            self.poison(entry.account_id, generation);
                            let error = StoreError::CommitFailed(reason.clone());
                            settled.answers.push(Answer::Ledger(done, Err(error)));
                        }
                        Pending::Custom { done, .. } => {
                            let error = StoreError::CommitFailed(reason.clone());
                            settled
                                .answers
                                .push(Answer::Custom(done, Err(CustomFailure::Store(error))));
                        }
                    }
                }
            }
        }
        // Answers known before the commit, sent with the batch's: whoever
        // receives one and reads the database sees the batch's outcome.
        settled.answers.extend(refused);
        settled
            .answers
            .extend(flushes.into_iter().map(Answer::Flush));
        self.shared
            .stats
            .batch_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        // The syncer makes it durable and answers; if it is gone, so is the
        // store, and the callers learn it from their dropped answers.
        let _ = self.syncer.send(ToSyncer::Batch(settled));
    }

    fn apply_ledger_write(
        &mut self,
        write: LedgerWrite,
        pending: &mut Vec<Pending>,
        refused: &mut Vec<Answer>,
        failure: &mut Option<String>,
    ) {
        let account_id = write.entry.account_id;
        if let Some(&poisoned_at) = self.poisoned.get(&account_id) {
            if write.generation <= poisoned_at {
                refused.push(Answer::Ledger(write.done, Err(StoreError::Aborted)));
                return;
            }
            self.poisoned.remove(&account_id);
        }
        let failing = self.shared.take_failing_part(&write.entry.idempotency_key);
        // A write leaves nothing if any of its statements fails (not its
        // row without its notice or events): its caller is told, and the
        // rest of the batch commits. A write with more than its snapshot and
        // row runs in a savepoint of its own. One with only those (nearly
        // every debit) does not: a savepoint costs a write 1.3 – 4 µs
        // (SQLite copies the pages it touches into the statement journal),
        // up to half its statements; its one statement after the first, the
        // row's insert, is undone by putting the snapshot back.
        let in_savepoint = write.outbox.is_some();
        let started = if in_savepoint {
            self.execute("SAVEPOINT ledger_write")
        } else {
            Ok(())
        };
        let appended = match started {
            Ok(()) => self.ledger_statements(&write, failing, in_savepoint),
            Err(error) => Err(WriteFailure::Batch(error.to_string())),
        };
        let ended = match (&appended, in_savepoint) {
            (_, false) => Ok(()),
            // The transaction is gone (below): so is the savepoint.
            _ if self.connection.is_autocommit() => Ok(()),
            (Ok(true), true) => self.execute("RELEASE ledger_write"),
            (Ok(false) | Err(_), true) => self
                .execute("ROLLBACK TO ledger_write")
                .and_then(|()| self.execute("RELEASE ledger_write")),
        };
        let appended = match (appended, ended) {
            // SQLite rolled the whole transaction back (an I/O error, a full
            // disk): nothing in this batch can commit.
            (Err(WriteFailure::Statement(error)), _) if self.connection.is_autocommit() => {
                Err(WriteFailure::Batch(error.to_string()))
            }
            (Ok(_), _) if self.connection.is_autocommit() => Err(WriteFailure::Batch(
                "a ledger write ended the transaction (I/O error?)".to_string(),
            )),
            // The savepoint could not be ended: neither can the batch.
            (Ok(_) | Err(WriteFailure::Statement(_)), Err(error)) => {
                Err(WriteFailure::Batch(error.to_string()))
            }
            (appended, _) => appended,
        };
        if let Err(WriteFailure::Batch(reason)) = &appended {
            self.poison(account_id, write.generation);
            refused.push(Answer::Ledger(
                write.done,
                Err(StoreError::CommitFailed(reason.clone())),
            ));
            *failure = Some(reason.clone());
            return;
        }
        match appended {
            Ok(true) => {
                self.notices_queued |= write.notice().is_some();
                pending.push(Pending::Ledger {
                    entry: write.entry,
                    next: write.next,
                    grants: write.grants,
                    generation: write.generation,
                    queued_at: write.submitted_at,
                    done: write.done,
                })
            }
            Ok(false) => {
                self.shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                self.poison(account_id, write.generation);
                // Where the account stands, read in this transaction (the
                // writer holds SQLite's write lock): the actor computes
                // again from it without reading it back.
                let error = match ledger::load_standing(&self.connection, account_id) {
                    Ok(Some(standing)) => StoreError::MovedOn(Box::new(standing)),
                    _ => StoreError::Conflict,
                };
                refused.push(Answer::Ledger(write.done, Err(error)));
            }
            Err(WriteFailure::Statement(error)) if ledger::is_duplicate_key(&error) => {
                // The key is used: the caller looks up what it became.
                self.poison(account_id, write.generation);
                refused.push(Answer::Ledger(write.done, Err(StoreError::DuplicateKey)));
            }
            // Answered above.
            Err(WriteFailure::Batch(_)) => {}
            Err(WriteFailure::Statement(error)) => {
                // Rolled back (to its savepoint, or its snapshot put back):
                // nothing of it commits, and its caller is told it failed
                // (not a conflict: computing it again would not help).
                self.poison(account_id, write.generation);
                tracing::warn!(%account_id, %error, "ledger write failed; rolled back alone");
                refused.push(Answer::Ledger(
                    write.done,
                    Err(StoreError::CommitFailed(format!(
                        "{error}; the write was rolled back"
                    ))),
                ));
            }
        }
    }

    /// A ledger write's statements: the guarded snapshot update and the
    /// row (`false` when the guard found the ledger moved on), then what its
    /// outbox holds. Outside a savepoint (a write without an outbox), a
    /// row that fails is undone by putting the snapshot back; if that fails
    /// too, the write is half there, and the batch fails. `failing`: the
    /// test switch's part.
    fn ledger_statements(
        &self,
        write: &LedgerWrite,
        failing: Option<WritePart>,
        in_savepoint: bool,
    ) -> Result<bool, WriteFailure> {
        let fail_at = |part: WritePart| match failing {
            Some(failing) if failing == part => Err(super::injected_failure(part)),
            _ => Ok(()),
        };
        let moved = ledger::move_snapshot(
            &self.connection,
            &write.entry,
            &write.previous,
            &write.next,
            &write.grants,
        )
        .map_err(WriteFailure::Statement)?;
        if !moved {
            return Ok(false);
        }
        let inserted = fail_at(WritePart::Row).and_then(|()| {
            ledger::insert_row(&self.connection, &write.entry, write.funded_by.as_deref())
        });
        if let Err(error) = inserted {
            if !in_savepoint && !self.connection.is_autocommit() {
                ledger::put_back_snapshot(
                    &self.connection,
                    &write.entry,
                    &write.previous,
                    &write.previous_grants,
                )
                .map_err(|undo| {
                    WriteFailure::Batch(format!(
                        "{error}; and putting the snapshot back failed: {undo}"
                    ))
                })?;
            }
            return Err(WriteFailure::Statement(error));
        }
        let outbox = || -> Result<(), rusqlite::Error> {
            if let Some(notice_id) = write.withdrawn_notice() {
                notices::withdraw(&self.connection, notice_id)?;
            }
            if let Some(notice) = write.notice() {
                fail_at(WritePart::Notice)?;
                notices::queue(&self.connection, notice)?;
            }
            if !write.events().is_empty() {
                fail_at(WritePart::Events)?;
                webhooks::insert_events(&self.connection, write.events())?;
            }
            if let Some(grant) = write.grant() {
                ledger::insert_grant(&self.connection, write.entry.account_id, grant)?;
            }
            Ok(())
        };
        outbox().map_err(WriteFailure::Statement)?;
        Ok(true)
    }

    /// Runs a custom operation in a savepoint. The outer `Err` is a store
    /// failure that ends the batch; the inner result is the operation's own.
    fn apply_custom(&mut self, op: ErasedOp) -> Result<Result<ErasedValue, ErasedValue>, String> {
        let sql_failure = |error: rusqlite::Error| error.to_string();
        self.execute("SAVEPOINT custom_write")
            .map_err(sql_failure)?;
        let outcome = op(&self.connection);
        if self.connection.is_autocommit() {
            return Err("a write operation ended the transaction (I/O error?)".to_string());
        }
        match outcome {
            Ok(value) => {
                self.execute("RELEASE custom_write").map_err(sql_failure)?;
                Ok(Ok(value))
            }
            Err(op_error) => {
                self.execute("ROLLBACK TO custom_write")
                    .map_err(sql_failure)?;
                self.execute("RELEASE custom_write").map_err(sql_failure)?;
                Ok(Err(op_error))
            }
        }
    }

    /// Notes, in the batch's transaction, which accounts it moved (for the
    /// other processes sharing the file), and now and then drops old notes.
    fn record_changes(&mut self, pending: &[Pending]) -> Result<(), rusqlite::Error> {
        let mut moved: HashMap<AccountId, (i64, Snapshot, &str)> = HashMap::new();
        for write in pending {
            if let Pending::Ledger {
                entry,
                next,
                grants,
                ..
            } = write
            {
                let (first, after, after_grants) = moved
                    .entry(entry.account_id)
                    .or_insert((entry.seq, *next, &**grants));
                *first = (*first).min(entry.seq);
                if next.seq > after.seq {
                    *after = *next;
                    *after_grants = &**grants;
                }
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        let changes = watcher::encode_changes(&moved);
        let now_ms = crate::clock::SystemClock.now_ms();
        self.connection
            .prepare_cached(
                "INSERT INTO ledger_changes (origin, changes, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(rusqlite::params![self.shared.origin, changes, now_ms])?;
        self.batches_since_prune += 1;
        if self.batches_since_prune >= PRUNE_CHANGES_EVERY {
            self.batches_since_prune = 0;
            self.connection
                .prepare_cached("DELETE FROM ledger_changes WHERE created_at < ?1")?
                .execute([now_ms - KEEP_CHANGES_MS])?;
        }
        Ok(())
    }

    /// Notes, in the batch's transaction, that this process made the last
    /// commit, and its number: a reader of another process that finds it
    /// last makes the WAL durable before it answers (see `reader`).
    fn mark_last_commit(&self, number: u64) -> Result<(), rusqlite::Error> {
        self.connection
            .prepare_cached("UPDATE last_commit SET origin = ?1, number = ?2 WHERE id = 1")?
            .execute(rusqlite::params![self.shared.origin, number as i64])?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.shared.take_injected_failure() {
            return Err("injected commit failure (test switch)".to_string());
        }
        self.execute("COMMIT").map_err(|error| error.to_string())
    }

    fn poison(&mut self, account_id: AccountId, generation: u64) {
        let entry = self.poisoned.entry(account_id).or_insert(generation);
        *entry = (*entry).max(generation);
    }

    fn execute(&self, sql: &str) -> Result<(), rusqlite::Error> {
        self.connection.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}

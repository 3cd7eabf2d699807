//! The syncer thread: makes the writer's commits durable, and only then
//! lets anything be told of them. The writer commits with
//! `synchronous=NORMAL` (SQLite writes the WAL frames but does not fsync
//! them) and hands each batch's outcome here; the syncer fsyncs the WAL
//! file once for every batch queued meanwhile, then settles the batches in
//! commit order: the acknowledgements, the balance feed, the notice and
//! webhook workers, the counters. So the writer runs the next batch's
//! statements while the disk makes the last one durable, instead of
//! waiting for it.
//!
//! Readers of this process wait for [`Durability`] before answering, so a
//! read never shows a commit that is not yet durable. Other processes
//! sharing the file see a commit when SQLite does, before that process's
//! fsync: a reader that finds another process's commit last in what it
//! read asks this syncer for an fsync that starts after its read (see
//! `last_commit` in `reader`) and answers once it is made; the watcher
//! fsyncs the WAL before it tells its feed or actors.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::{CustomFailure, ErasedValue};
use crate::ledger::LedgerEntry;
use crate::store::{Shared, StoreError};

/// How far this process's commits are durable.
#[derive(Clone, Debug)]
enum Synced {
    /// Every commit of this process up to `commits`, and every read that
    /// asked for a sync (see [`Durability::request`]) up to `requests`.
    Through { commits: u64, requests: u64 },
    /// An fsync failed: nothing written since can be trusted to be on disk,
    /// and the store takes no more writes until it is restarted.
    Failed(Arc<str>),
}

/// The numbers of the writer's commits, and how far they are durable.
pub(super) struct Durability {
    /// The last commit the writer began (numbered just before `COMMIT`, so
    /// any commit a reader can see has a number no greater than this).
    begun: AtomicU64,
    /// The last sync asked for by a read that found another process's
    /// commit last.
    requested: AtomicU64,
    /// The last commit of another process a sync was made for: reads that
    /// find it last need no other.
    external_durable: Mutex<Option<LastCommit>>,
    synced: watch::Sender<Synced>,
}

/// The last commit a read transaction found: which process made it
/// (`origin`) and its number there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LastCommit {
    pub(super) origin: String,
    pub(super) number: i64,
}

/// What a message to the syncer is.
pub(super) enum ToSyncer {
    /// A batch the writer committed (or failed).
    Batch(Settled),
    /// A read found another process's commit last: the sync it asked for
    /// (numbered by [`Durability::request`]).
    Read(u64),
}

impl Durability {
    pub(super) fn new() -> Arc<Durability> {
        Arc::new(Durability {
            begun: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            external_durable: Mutex::new(None),
            synced: watch::Sender::new(Synced::Through {
                commits: 0,
                requests: 0,
            }),
        })
    }

    /// Numbers the commit the writer is about to make.
    pub(super) fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// What a read that has just run may have seen: every commit begun.
    pub(super) fn mark(&self) -> u64 {
        self.begun.load(Ordering::SeqCst)
    }

    /// Why writes are refused, once an fsync failed.
    pub(super) fn failure(&self) -> Option<Arc<str>> {
        match &*self.synced.borrow() {
            Synced::Through { .. } => None,
            Synced::Failed(reason) => Some(Arc::clone(reason)),
        }
    }

    /// Waits until every commit up to `mark` is durable.
    pub(super) async fn wait_for(&self, mark: u64) -> Result<(), StoreError> {
        self.wait_until(|commits, _| commits >= mark).await
    }

    /// Numbers a read's request for a sync: the sync that answers it
    /// starts after this call.
    pub(super) fn request(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until a sync that started after request `request` was made.
    pub(super) async fn wait_for_request(&self, request: u64) -> Result<(), StoreError> {
        self.wait_until(|_, requests| requests >= request).await
    }

    /// Whether a sync was already made for `commit` (another process's).
    pub(super) fn known_durable(&self, commit: &LastCommit) -> bool {
        self.external_durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            == Some(commit)
    }

    /// Notes that a sync was made for `commit` (another process's).
    pub(super) fn made_durable(&self, commit: LastCommit) {
        *self
            .external_durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(commit);
    }

    async fn wait_until(&self, done: impl Fn(u64, u64) -> bool) -> Result<(), StoreError> {
        let reached = |synced: &Synced| match synced {
            Synced::Through { commits, requests } => done(*commits, *requests),
            Synced::Failed(_) => true,
        };
        if !reached(&self.synced.borrow()) {
            let mut receiver = self.synced.subscribe();
            receiver
                .wait_for(reached)
                .await
                .map_err(|_| StoreError::Closed)?;
        }
        match self.failure() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Database(reason.to_string())),
        }
    }
}

/// A ledger write that committed and waits to be made durable.
pub(super) struct CommittedLedger {
    pub(super) entry: LedgerEntry,
    pub(super) queued_at: Instant,
    pub(super) done: oneshot::Sender<Result<(), StoreError>>,
}

/// An answer decided by the writer, sent once the batch is settled.
pub(super) enum Answer {
    Ledger(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Custom(
        oneshot::Sender<Result<ErasedValue, CustomFailure>>,
        Result<ErasedValue, CustomFailure>,
    ),
    Flush(oneshot::Sender<()>),
}

impl Answer {
    fn send(self) {
        // A caller that went away needs no answer.
        match self {
            Answer::Ledger(done, outcome) => drop(done.send(outcome)),
            Answer::Custom(done, outcome) => drop(done.send(outcome)),
            Answer::Flush(done) => drop(done.send(())),
        }
    }
}

/// One batch, as the writer left it.
pub(super) struct Settled {
    /// The commit's number, when `COMMIT` was tried (readers may wait for
    /// it whether or not it succeeded).
    pub(super) number: Option<u64>,
    /// Whether it committed (and so needs the fsync).
    pub(super) committed: bool,
    /// The writes that committed (empty when the batch did not).
    pub(super) ledger: Vec<CommittedLedger>,
    /// Every other answer, in the order the writer decided them.
    pub(super) answers: Vec<Answer>,
    /// The writes the batch took, for the counters.
    pub(super) batch_size: usize,
    /// Whether its transaction queued notices or webhook events (the
    /// workers are woken if it committed).
    pub(super) notices_queued: bool,
    pub(super) events_inserted: bool,
}

impl Settled {
    /// Tells everyone of a durable batch.
    fn durable(self, shared: &Shared) {
        if self.committed {
            if self.notices_queued {
                shared.notices_ready.notify_one();
            }
            if self.events_inserted {
                shared.webhooks_ready.notify_one();
            }
            let entries: Vec<&LedgerEntry> = self.ledger.iter().map(|write| &write.entry).collect();
            let writes = self.ledger.len()
                + self
                    .answers
                    .iter()
                    .filter(|answer| matches!(answer, Answer::Custom(_, Ok(_))))
                    .count();
            shared.stats.committed(self.batch_size, writes, &entries);
        }
        // Checked after the fsync: a subscriber that arrives later reads
        // these rows from the database instead.
        let publish = !shared.feed.is_idle();
        // Test switch: the batch is durable and its answer is lost, as a
        // connection lost after the commit was sent would leave it.
        let answer = if shared.take_lost_commit_answer() {
            Err(StoreError::CommitUnknown(
                "the commit's answer was lost (a test switch)".into(),
            ))
        } else {
            Ok(())
        };
        for write in self.ledger {
            if publish {
                shared.feed.publish(Arc::new(write.entry));
            }
            let _ = write.done.send(answer.clone());
            shared
                .stats
                .ack_latency
                .observe(write.queued_at.elapsed().as_micros() as u64);
        }
        for answer in self.answers {
            answer.send();
        }
    }

    /// The batch committed but could not be made durable: its writes are
    /// answered as failed commits (the caller asks again with the same key,
    /// and finds what became of it after a restart).
    fn not_durable(self, reason: &str) {
        let failed = || StoreError::CommitFailed(reason.to_string());
        for write in self.ledger {
            let _ = write.done.send(Err(failed()));
        }
        for answer in self.answers {
            match answer {
                Answer::Custom(done, Ok(_)) => {
                    let _ = done.send(Err(CustomFailure::Store(failed())));
                }
                other => other.send(),
            }
        }
    }
}

/// Runs until the writer and the readers are gone.
pub(super) fn run(
    wal: File,
    durability: Arc<Durability>,
    shared: Arc<Shared>,
    queue: Receiver<ToSyncer>,
) {
    let mut group = Vec::new();
    // The last read's request received: the next fsync answers it.
    let mut requested = None;
    fn take(message: ToSyncer, group: &mut Vec<Settled>, requested: &mut Option<u64>) {
        match message {
            ToSyncer::Batch(batch) => group.push(batch),
            ToSyncer::Read(request) => {
                *requested = Some(requested.map_or(request, |last| last.max(request)))
            }
        }
    }
    while let Ok(first) = queue.recv() {
        take(first, &mut group, &mut requested);
        while let Ok(next) = queue.try_recv() {
            take(next, &mut group, &mut requested);
        }
        while shared.syncs_held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // What came while the syncs were held goes in this fsync too.
        while let Ok(next) = queue.try_recv() {
            take(next, &mut group, &mut requested);
        }
        let last = group.iter().filter_map(|batch| batch.number).max();
        let requests = requested.take();
        let needs_fsync = group.iter().any(|batch| batch.committed) || requests.is_some();
        let synced = match (needs_fsync, durability.failure()) {
            (_, Some(reason)) => Err(reason),
            (false, None) => Ok(()),
            (true, None) => {
                let started = Instant::now();
                let synced = if shared.fail_next_sync.swap(false, Ordering::SeqCst) {
                    Err(std::io::Error::other("injected failure (test switch)"))
                } else {
                    wal.sync_data()
                };
                shared
                    .stats
                    .sync_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                synced.map_err(|error| {
                    let reason: Arc<str> = format!(
                        "the database's write-ahead log could not be made durable (fsync: {error}); restart the server once the disk is sound"
                    )
                    .into();
                    tracing::error!(%reason, "fsync failed; the store takes no more writes");
                    durability.synced.send_replace(Synced::Failed(Arc::clone(&reason)));
                    reason
                })
            }
        };
        match synced {
            Ok(()) => {
                durability.synced.send_modify(|synced| {
                    if let Synced::Through {
                        commits,
                        requests: served,
                    } = synced
                    {
                        *commits = last.unwrap_or(*commits).max(*commits);
                        *served = requests.unwrap_or(*served).max(*served);
                    }
                });
                for batch in group.drain(..) {
                    batch.durable(&shared);
                }
            }
            Err(reason) => {
                for batch in group.drain(..) {
                    batch.not_durable(&reason);
                }
            }
        }
    }
}

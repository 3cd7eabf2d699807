//! The durable store: one writer thread that owns the SQLite write connection
//! and group-commits, and reader threads that answer look-ups.
//!
//! Blocking SQLite calls never run on an async thread: callers hand work to
//! these threads and await a oneshot answer. A write's answer is sent only
//! after the transaction that holds it has committed (or failed).

mod migrations;
pub mod queries;
mod reader;
mod writer;

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::feed::FeedHub;
use crate::ledger::{AccountId, LedgerEntry, Snapshot, TransactionKind};
use crate::stats::{Histogram, KindTotals, BATCH_SIZES, LATENCY_MICROS};

pub use migrations::{applied_migrations, MIGRATIONS};

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// The SQLite database file; created and migrated if absent.
    pub path: PathBuf,
    /// The most writes one group commit takes.
    pub max_batch: usize,
    /// How many reader threads answer look-ups.
    pub readers: usize,
}

impl StoreSettings {
    pub fn new(path: impl Into<PathBuf>) -> StoreSettings {
        StoreSettings {
            path: path.into(),
            max_batch: 8192,
            readers: 1,
        }
    }
}

/// What went wrong in the store. Cloneable, because one failed commit
/// answers every caller in its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("could not migrate the database: {0}")]
    Migration(String),
    #[error("the commit failed and nothing in it was applied: {0}")]
    CommitFailed(String),
    #[error(
        "the ledger on disk has moved on under this write (another writer?); nothing was applied"
    )]
    Conflict,
    #[error("not applied, because an earlier write of the same account failed")]
    Aborted,
    #[error("the store is shut down")]
    Closed,
    #[error("database error: {0}")]
    Database(String),
    /// A value read back that this release does not know: never read as
    /// some default, because a default could move money.
    #[error("the database holds a value this release does not know: {0}")]
    UnknownValue(UnknownValue),
}

/// A stored value outside what its column may hold, with the row it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table} row {row}: unknown {column} '{value}'")]
pub struct UnknownValue {
    pub table: &'static str,
    /// The row's key, as text (`12`, or `account 3 seq 7`).
    pub row: String,
    pub column: &'static str,
    pub value: String,
}

impl UnknownValue {
    pub fn new(
        table: &'static str,
        row: impl ToString,
        column: &'static str,
        value: impl Into<String>,
    ) -> UnknownValue {
        UnknownValue {
            table,
            row: row.to_string(),
            column,
            value: value.into(),
        }
    }

    /// As a row decoder's error, so that it travels through rusqlite and
    /// comes out as [`StoreError::UnknownValue`].
    pub fn into_sql_error(self, column_index: usize) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(
            column_index,
            rusqlite::types::Type::Text,
            Box::new(self),
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::FromSqlConversionFailure(_, _, cause) = &error {
            if let Some(unknown) = cause.downcast_ref::<UnknownValue>() {
                return StoreError::UnknownValue(unknown.clone());
            }
        }
        StoreError::Database(error.to_string())
    }
}

/// A ledger row with the snapshot it leads to, from an account actor.
pub struct LedgerWrite {
    pub entry: LedgerEntry,
    /// The snapshot this write starts from; the write applies only if the
    /// snapshot on disk is still this one.
    pub previous: Snapshot,
    /// The snapshot after this write.
    pub next: Snapshot,
    /// The writing actor's generation: once a write of this account fails,
    /// the store refuses its later writes of the same or an older
    /// generation, because they were computed on top of the failed one.
    pub generation: u64,
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

type ErasedValue = Box<dyn Any + Send>;
type ErasedOp = Box<dyn FnOnce(&Connection) -> Result<ErasedValue, ErasedValue> + Send>;

/// Why an erased custom write did not succeed.
enum CustomFailure {
    /// The operation itself refused; its savepoint was rolled back.
    Op(ErasedValue),
    /// The batch it was in did not commit.
    Store(StoreError),
}

struct CustomWrite {
    op: ErasedOp,
    done: oneshot::Sender<Result<ErasedValue, CustomFailure>>,
}

enum WriterMessage {
    /// A ledger write and when it was submitted.
    Ledger(LedgerWrite, Instant),
    Custom(CustomWrite),
    /// Answered once everything queued before it has committed.
    Flush(oneshot::Sender<()>),
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Counters of the writer, for benchmarks and metrics.
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Writes in those transactions.
    pub committed_writes: AtomicU64,
    /// Transactions that failed.
    pub failed_commits: AtomicU64,
    /// Ledger writes refused because the account's snapshot had moved on
    /// (another process or instance wrote first); their actors reload and
    /// compute them again.
    pub conflicts: AtomicU64,
    /// The largest batch seen.
    pub max_batch: AtomicU64,
    /// Total time spent on batches (statements and commit), in microseconds.
    pub batch_micros: AtomicU64,
    /// Of that, time spent in COMMIT (WAL write and fsync), in microseconds.
    pub commit_micros: AtomicU64,
    /// Writes per committed batch.
    pub batch_sizes: Histogram,
    /// Time of each COMMIT, in microseconds.
    pub commit_latency: Histogram,
    /// From a ledger write's submission to its answer, in microseconds.
    pub ack_latency: Histogram,
    /// Committed ledger rows by kind.
    pub credits: KindTotals,
    pub debits: KindTotals,
    pub refunds: KindTotals,
    pub adjustments: KindTotals,
}

impl Default for StoreStats {
    fn default() -> StoreStats {
        StoreStats {
            commits: AtomicU64::new(0),
            committed_writes: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            batch_micros: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            batch_sizes: Histogram::new(BATCH_SIZES),
            commit_latency: Histogram::new(LATENCY_MICROS),
            ack_latency: Histogram::new(LATENCY_MICROS),
            credits: KindTotals::default(),
            debits: KindTotals::default(),
            refunds: KindTotals::default(),
            adjustments: KindTotals::default(),
        }
    }
}

impl StoreStats {
    /// The totals of one kind of ledger row.
    pub fn totals(&self, kind: TransactionKind) -> &KindTotals {
        match kind {
            TransactionKind::Credit => &self.credits,
            TransactionKind::Debit => &self.debits,
            TransactionKind::Refund => &self.refunds,
            TransactionKind::Adjustment => &self.adjustments,
        }
    }
}

/// A handle to the store's threads; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    writer: mpsc::Sender<WriterMessage>,
    readers: Vec<mpsc::Sender<ReadJob>>,
    next_reader: AtomicUsize,
    next_generation: AtomicU64,
    fail_next_commits: Arc<AtomicU64>,
    stats: Arc<StoreStats>,
    feed: Arc<FeedHub>,
    path: PathBuf,
}

/// Opens a connection with the pragmas every connection of the store uses.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |error: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: error.to_string(),
    };
    let connection = Connection::open(path).map_err(open_error)?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(open_error)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(open_error)?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    connection
        .pragma_update(None, "foreign_keys", "ON")
        .map_err(open_error)?;
    connection
        .pragma_update(None, "cache_size", -65_536)
        .map_err(open_error)?;
    // Checkpoint the WAL back into the database every 64 MiB rather than
    // every 4 MiB: fewer, larger checkpoints cost the writer less per row.
    connection
        .pragma_update(None, "wal_autocheckpoint", 16_384)
        .map_err(open_error)?;
    Ok(connection)
}

/// Opens the database for a one-off command (CLI), migrated, on the calling
/// thread. The server uses [`Store::open`] instead.
pub fn open_direct(path: &Path) -> Result<Connection, StoreError> {
    let mut connection = open_connection(path)?;
    migrations::migrate(&mut connection)?;
    Ok(connection)
}

impl Store {
    /// Opens (creating and migrating if needed) the database and starts the
    /// writer and reader threads.
    pub fn open(settings: &StoreSettings) -> Result<Store, StoreError> {
        let mut write_connection = open_connection(&settings.path)?;
        migrations::migrate(&mut write_connection)?;

        let stats = Arc::new(StoreStats::default());
        let fail_next_commits = Arc::new(AtomicU64::new(0));
        let feed = FeedHub::new();

        let (writer_sender, writer_receiver) = mpsc::channel();
        let writer_state = writer::Writer::new(
            write_connection,
            settings.max_batch.max(1),
            Arc::clone(&stats),
            Arc::clone(&fail_next_commits),
            Arc::clone(&feed),
        );
        // The threads end when the last handle (and so their queue) is dropped.
        spawn_thread("store-writer", move || writer_state.run(writer_receiver))?;

        let mut readers = Vec::new();
        for index in 0..settings.readers.max(1) {
            let read_connection = open_connection(&settings.path)?;
            read_connection.pragma_update(None, "query_only", "ON")?;
            let (reader_sender, reader_receiver) = mpsc::channel();
            spawn_thread(&format!("store-reader-{index}"), move || {
                reader::run(read_connection, reader_receiver)
            })?;
            readers.push(reader_sender);
        }

        Ok(Store {
            shared: Arc::new(Shared {
                writer: writer_sender,
                readers,
                next_reader: AtomicUsize::new(0),
                next_generation: AtomicU64::new(1),
                fail_next_commits,
                stats,
                feed,
                path: settings.path.clone(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The fan-out of committed ledger rows (the balance feed).
    pub fn feed(&self) -> &Arc<FeedHub> {
        &self.shared.feed
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// A generation number never handed out before (see [`LedgerWrite::generation`]).
    pub fn next_generation(&self) -> u64 {
        self.shared.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Test-only switch: the next `count` commits fail as a full disk would,
    /// and roll back.
    pub fn fail_next_commits_for_testing(&self, count: u64) {
        self.shared.fail_next_commits.store(count, Ordering::SeqCst);
    }

    /// Queues a ledger write; its `done` is answered after its batch commits.
    pub fn submit_ledger_write(&self, write: LedgerWrite) -> Result<(), StoreError> {
        self.shared
            .writer
            .send(WriterMessage::Ledger(write, Instant::now()))
            .map_err(|_| StoreError::Closed)
    }

    /// Runs `op` inside the next group commit, in a savepoint of its own:
    /// an `Err` from `op` rolls back only `op`, and is answered at once; an
    /// `Ok` is answered once the batch has committed.
    pub async fn write<T, E, F>(&self, op: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let erased: ErasedOp = Box::new(move |connection| match op(connection) {
            Ok(value) => Ok(Box::new(value) as ErasedValue),
            Err(error) => Err(Box::new(error) as ErasedValue),
        });
        let (done, answer) = oneshot::channel();
        self.shared
            .writer
            .send(WriterMessage::Custom(CustomWrite { op: erased, done }))
            .map_err(|_| E::from(StoreError::Closed))?;
        match answer.await {
            Ok(Ok(value)) => value.downcast::<T>().map(|value| *value).map_err(|_| {
                E::from(StoreError::Database(
                    "write answered with the wrong type".into(),
                ))
            }),
            Ok(Err(CustomFailure::Op(error))) => Err(error
                .downcast::<E>()
                .map(|error| *error)
                .unwrap_or_else(|_| {
                    E::from(StoreError::Database(
                        "write failed with the wrong type".into(),
                    ))
                })),
            Ok(Err(CustomFailure::Store(error))) => Err(E::from(error)),
            Err(_) => Err(E::from(StoreError::Closed)),
        }
    }

    /// Runs `query` on a reader thread, inside a read transaction that
    /// started after the query was queued, so it sees every commit that was
    /// answered before this call. The query is queued at once; the returned
    /// future only waits for the answer.
    pub fn read<T, F>(
        &self,
        query: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |connection| {
            // The caller may have gone away; nothing to do then.
            let _ = done.send(query(connection));
        });
        let readers = &self.shared.readers;
        let index = self.shared.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        let queued = readers[index].send(job).map_err(|_| StoreError::Closed);
        async move {
            queued?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// The committed snapshot of an account, or `None` if there is no such account.
    pub fn load_snapshot(
        &self,
        account_id: AccountId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send + 'static {
        self.read(move |connection| queries::load_snapshot(connection, account_id))
    }

    /// The committed ledger row of an account with this idempotency key, if any.
    pub fn find_entry_by_key(
        &self,
        account_id: AccountId,
        key: crate::ledger::IdempotencyKey,
    ) -> impl Future<Output = Result<Option<LedgerEntry>, StoreError>> + Send + 'static {
        self.read(move |connection| {
            queries::find_entry_by_key(connection, account_id, key.as_str())
        })
    }

    /// Creates an account with a zero balance, in the next group commit.
    pub async fn create_account(
        &self,
        new_account: crate::accounts::NewAccount,
        created_at_ms: i64,
    ) -> Result<crate::accounts::Account, queries::CreateAccountError> {
        self.write(move |connection| {
            queries::insert_account(connection, &new_account, created_at_ms)
        })
        .await
    }

    /// An account with its committed balance.
    pub fn get_account(
        &self,
        account_id: AccountId,
    ) -> impl Future<Output = Result<Option<crate::accounts::Account>, StoreError>> + Send + 'static
    {
        self.read(move |connection| queries::get_account(connection, account_id))
    }

    /// Waits until everything queued before this call has committed or failed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.shared
            .writer
            .send(WriterMessage::Flush(done))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }
}

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map(drop)
        .map_err(|error| StoreError::Open {
            path: String::new(),
            reason: format!("could not start thread {name}: {error}"),
        })
}

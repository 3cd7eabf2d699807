//! The SQLite adapter: one writer thread that owns the write connection and
//! group-commits everything queued while its last commit ran, a syncer
//! thread that makes those commits durable (fsyncs the WAL) and only then
//! answers them, and reader threads that answer look-ups, each on its own
//! connection (WAL; `synchronous=FULL` everywhere but on the writer, whose
//! fsync the syncer does). Blocking SQLite calls run only on these threads:
//! callers hand them work and await a oneshot answer. A write is answered
//! only after the transaction that holds it has committed and is durable
//! (or failed); a read only after what it saw is durable.
//!
//! The SQL lives in this folder, one file per part of the port.

mod accounts;
mod auto_top_up;
mod backfill;
mod billing;
mod books;
mod copy;
mod disputes;
mod events;
mod feed_tickets;
mod grant_expiry;
mod ledger;
mod messages;
mod migrations;
mod opt_outs;
mod reader;
mod reports;
mod sign_in;
mod source;
mod stripe_refunds;
mod syncer;
mod watcher;
mod webhooks;
mod writer;

pub(crate) use copy::{check_made_by_sms_credit, foreign_tables, table_holding_rows};
pub(crate) use source::open_source;

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::{Backend, LedgerWrite, Shared, StoreError, StoreFuture, UnknownValue};

pub use migrations::applied_migrations;

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

impl UnknownValue {
    /// As a row decoder's error, so that it travels through rusqlite and
    /// comes out as [`StoreError::UnknownValue`].
    pub(crate) fn into_sql_error(self, column_index: usize) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(
            column_index,
            rusqlite::types::Type::Text,
            Box::new(self),
        )
    }
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
    /// Boxed: a ledger write (its row, both snapshots and grants) is far
    /// larger than the other messages, which would otherwise each take
    /// its room in the writer's queue.
    Ledger(Box<LedgerWrite>),
    Custom(CustomWrite),
    /// Answered once everything queued before it has committed.
    Flush(oneshot::Sender<()>),
}

type ReadJob = Box<dyn FnOnce(&Connection, Option<&reader::AwaitedSync>) + Send>;

/// The adapter: queues to its threads.
pub struct SqliteStore {
    /// The database file, for the connections a backup opens of its own.
    path: PathBuf,
    writer: mpsc::Sender<WriterMessage>,
    /// How far the writer's commits are durable: reads wait for it.
    durability: Arc<syncer::Durability>,
    /// This process's name in the change notes it leaves.
    origin: String,
    readers: Vec<mpsc::Sender<ReadJob>>,
    next_reader: AtomicUsize,
    /// The syncer's queue, for a reader of its own (`read_alone`).
    syncer: mpsc::Sender<syncer::ToSyncer>,
    /// What every adapter shares; here for the test switch that fails reads.
    shared: Arc<Shared>,
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

/// A migrated connection on the calling thread, for benchmarks that fill a
/// database in bulk and tests that tamper with one. The server and the
/// domain never use one: they go through the port.
pub fn raw_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut connection = open_connection(path)?;
    migrations::migrate(&mut connection, super::MigrateOptions::at_open(None))?;
    Ok(connection)
}

/// Leaves the database at `path`, which no other process uses, as one
/// file: its write-ahead log checkpointed into it and the file in
/// rollback-journal mode, synced. The change of mode needs every other
/// connection closed: it is asked again until they are, for `patience`.
/// For a backup's file, on a thread of the caller's.
pub fn seal_file(path: &Path, patience: Duration) -> Result<(), StoreError> {
    let connection = Connection::open(path).map_err(|error| StoreError::Open {
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    connection.busy_timeout(patience)?;
    let started = std::time::Instant::now();
    loop {
        // Refused (locked), or left as it was, while another connection is
        // open.
        let mode = connection
            .query_row("PRAGMA journal_mode = DELETE", [], |row| {
                row.get::<_, String>(0)
            })
            .map_err(StoreError::from);
        match mode {
            Ok(mode) if mode.eq_ignore_ascii_case("delete") => break,
            Ok(mode) if started.elapsed() > patience => {
                return Err(StoreError::Database(format!(
                    "{} stayed in {mode} mode: another connection holds it",
                    path.display()
                )))
            }
            Err(error) if started.elapsed() > patience => return Err(error),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    drop(connection);
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|error| StoreError::Database(format!("{}: {error}", path.display())))
}

/// Refuses a path where there is no sms-credit database (no file, or a
/// file with no migration history), touching nothing: the file is opened
/// without being created and without a change of journal mode.
fn existing_database(path: &Path) -> Result<(), StoreError> {
    let missing = |reason: String| StoreError::Missing {
        database: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        return Err(missing("the file does not exist".to_string()));
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection =
        Connection::open_with_flags(path, flags).map_err(|error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
    let tables: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' \
             AND name IN ('refinery_schema_history', 'schema_migrations')",
            [],
            |row| row.get(0),
        )
        .map_err(|error| StoreError::Open {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
    if tables == 0 {
        return Err(missing("the file holds no sms-credit tables".to_string()));
    }
    Ok(())
}

/// Applies the migrations the database has not had yet (see
/// [`super::migrate`]); answers what it did.
pub fn migrate(
    path: &Path,
    options: super::MigrateOptions,
) -> Result<super::MigrationReport, StoreError> {
    said_plainly(
        path,
        (|| {
            let mut connection = open_connection(path)?;
            migrations::migrate(&mut connection, options)
        })(),
    )
}

/// Test-only: the migrations up to `last` (inclusive), and nothing else.
pub(super) fn migrate_until_for_testing(path: &Path, last: i32) -> Result<(), StoreError> {
    let mut connection = open_connection(path)?;
    migrations::migrate_until(&mut connection, last)
}

/// What is wrong with where the database is, when that is why it could
/// not be opened: SQLite says only "unable to open database file" or names
/// its write-ahead log. `None` when the place looks usable.
pub(crate) fn unusable_location(path: &Path) -> Option<String> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !directory.is_dir() {
        return Some(format!(
            "the directory {} does not exist (sms-credit makes the database file, not its directory)",
            directory.display()
        ));
    }
    if path.exists() {
        if let Err(error) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            return Some(read_only_file(&error));
        }
    }
    let name = path.file_name().map_or_else(
        || "database".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let probe = directory.join(format!(".{name}.probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(error) => Some(format!(
            "the directory {} is not writable ({error}): SQLite makes the database and keeps \
             its write-ahead log beside it",
            directory.display()
        )),
    }
}

/// Why a database file that may not be written is refused.
fn read_only_file(error: &std::io::Error) -> String {
    format!(
        "the file is read-only ({error}): the server and every command write to the \
         database (to migrate it, and to record what they do), so it must be writable"
    )
}

/// `outcome`, with a failure to open told as what is wrong with the
/// database's place when that is the cause.
fn said_plainly<T>(path: &Path, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
    match outcome {
        Err(StoreError::Open { .. } | StoreError::Database(_) | StoreError::Migration(_)) => {
            match unusable_location(path) {
                Some(reason) => Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason,
                }),
                None => outcome,
            }
        }
        other => other,
    }
}

/// The database's write-ahead log, opened for fsyncing it (the file
/// SQLite writes beside the database in WAL mode; it exists once a
/// connection has opened the database, and lives while one stays open).
fn open_wal(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal)
        .map_err(|error| StoreError::Open {
            path: Path::new(&wal).display().to_string(),
            reason: format!("cannot open the write-ahead log: {error}"),
        })
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

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database and starts the
    /// writer and reader threads. The threads end when the adapter (and so
    /// their queues) is dropped.
    pub(crate) fn open(
        path: &Path,
        if_missing: super::IfMissing,
        checkpoints: super::Checkpoints,
        max_batch: usize,
        readers: usize,
        migrating: super::MigrateOptions,
        shared: Arc<Shared>,
    ) -> Result<SqliteStore, StoreError> {
        if if_missing == super::IfMissing::Refuse {
            existing_database(path)?;
        }
        said_plainly(
            path,
            SqliteStore::start(path, checkpoints, max_batch, readers, migrating, shared),
        )
    }

    /// Opens the connections and starts the threads (see [`SqliteStore::open`]).
    fn start(
        path: &Path,
        checkpoints: super::Checkpoints,
        max_batch: usize,
        readers: usize,
        migrating: super::MigrateOptions,
        shared: Arc<Shared>,
    ) -> Result<SqliteStore, StoreError> {
        // SQLite opens a file it may not write without a word (read-only,
        // or writing only its log, which it can then never fold back into
        // the file): refused here instead, saying why.
        if path.exists() {
            if let Err(error) = std::fs::OpenOptions::new().write(true).open(path) {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    reason: read_only_file(&error),
                });
            }
        }
        let mut write_connection = open_connection(path)?;
        migrations::migrate(&mut write_connection, migrating)?;
        // The writer's commits write the WAL without fsyncing it; the
        // syncer fsyncs it (once for every batch that committed meanwhile)
        // before anything about them is told. See `syncer`.
        write_connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Only the writer commits, so only it would checkpoint.
        if checkpoints == super::Checkpoints::Litestream {
            write_connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        }
        let (writer_sender, writer_receiver) = mpsc::channel();
        let watch_connection = open_connection(path)?;
        watch_connection.pragma_update(None, "query_only", "ON")?;
        let watched = Arc::downgrade(&shared);
        let origin = shared.origin.clone();
        let watcher_wal = open_wal(path)?;
        spawn_thread("store-watcher", move || {
            watcher::run(watch_connection, watcher_wal, watched)
        })?;
        let durability = syncer::Durability::new();
        let (syncer_sender, syncer_receiver) = mpsc::channel::<syncer::ToSyncer>();
        let wal = open_wal(path)?;
        let syncer_durability = Arc::clone(&durability);
        let syncer_shared = Arc::clone(&shared);
        spawn_thread("store-syncer", move || {
            syncer::run(wal, syncer_durability, syncer_shared, syncer_receiver)
        })?;
        let writer_state = writer::Writer::new(
            write_connection,
            max_batch,
            Arc::clone(&shared),
            syncer_sender.clone(),
            Arc::clone(&durability),
        );
        spawn_thread("store-writer", move || writer_state.run(writer_receiver))?;

        let mut reader_senders = Vec::new();
        for index in 0..readers {
            let read_connection = open_connection(path)?;
            read_connection.pragma_update(None, "query_only", "ON")?;
            let (reader_sender, reader_receiver) = mpsc::channel();
            let reader = reader::Reader {
                connection: read_connection,
                origin: origin.clone(),
                durability: Arc::clone(&durability),
                syncer: syncer_sender.clone(),
            };
            spawn_thread(&format!("store-reader-{index}"), move || {
                reader.run(reader_receiver)
            })?;
            reader_senders.push(reader_sender);
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: writer_sender,
            durability,
            origin,
            readers: reader_senders,
            next_reader: AtomicUsize::new(0),
            syncer: syncer_sender,
            shared,
        })
    }

    /// Runs `op` inside the next group commit, in a savepoint of its own:
    /// an `Err` from `op` rolls back only `op`, and is answered at once; an
    /// `Ok` is answered once the batch has committed.
    fn write<T, E, F>(&self, op: F) -> StoreFuture<T, E>
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
        let queued = self
            .writer
            .send(WriterMessage::Custom(CustomWrite { op: erased, done }))
            .map_err(|_| StoreError::Closed);
        Box::pin(async move {
            queued.map_err(E::from)?;
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
        })
    }

    /// Runs `query` on a reader thread, inside a read transaction that
    /// started after the query was queued, so it sees every commit that was
    /// answered before this call. The query is queued at once; the returned
    /// future only waits for the answer.
    fn read<T, F>(&self, query: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Box::pin(self.read_now(query))
    }

    fn read_now<T, F>(&self, query: F) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.read_on(&self.readers[index], query)
    }

    /// Runs `query` as [`SqliteStore::read`] does, on a reader of its own:
    /// a thread and a connection opened for it and closed after, so that a
    /// long read (the books of a large ledger) holds up none of the
    /// store's readers. What it shows is durable, as any read's.
    fn read_alone<T, F>(&self, name: &str, query: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (queue, jobs) = mpsc::channel::<ReadJob>();
        let answer = self.read_on(&queue, query);
        drop(queue);
        let (opened, open_failure) = oneshot::channel::<StoreError>();
        let path = self.path.clone();
        let origin = self.origin.clone();
        let durability = Arc::clone(&self.durability);
        let syncer = self.syncer.clone();
        let started = spawn_thread(name, move || {
            let connection = open_connection(&path).and_then(|connection| {
                connection.pragma_update(None, "query_only", "ON")?;
                Ok(connection)
            });
            match connection {
                Ok(connection) => reader::Reader {
                    connection,
                    origin,
                    durability,
                    syncer,
                }
                .run(jobs),
                // The job is dropped unanswered: the error is told instead.
                Err(error) => drop(opened.send(error)),
            }
        });
        Box::pin(async move {
            started?;
            match answer.await {
                Err(StoreError::Closed) => Err(open_failure.await.unwrap_or(StoreError::Closed)),
                other => other,
            }
        })
    }

    /// Queues `query` on a reader's queue; the future waits for its answer
    /// and for everything it saw to be durable.
    fn read_on<T, F>(
        &self,
        queue: &mpsc::Sender<ReadJob>,
        query: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let durability = Arc::clone(&self.durability);
        let injected = self.shared.injected_read_failure();
        let job: ReadJob = Box::new(move |connection, awaited| {
            let result = match injected {
                Some(failure) => Err(failure),
                None => query(connection),
            };
            // Taken after the query: every commit it could see is counted.
            let mark = durability.mark();
            // The caller may have gone away; nothing to do then.
            let _ = done.send((result, mark, awaited.cloned()));
        });
        let queued = queue.send(job).map_err(|_| StoreError::Closed);
        let durability = Arc::clone(&self.durability);
        async move {
            queued?;
            let (result, mark, awaited) = answer.await.map_err(|_| StoreError::Closed)?;
            // Nothing is shown before it is durable: this process's
            // commits, and another process's found last (see `reader`).
            durability.wait_for(mark).await?;
            if let Some(awaited) = awaited {
                durability.wait_for_request(awaited.request).await?;
                if let Some(commit) = awaited.commit {
                    durability.made_durable(commit);
                }
            }
            result
        }
    }

    /// Answers once everything queued before it has committed or failed.
    fn flush_writer(&self) -> StoreFuture<()> {
        let (done, answer) = oneshot::channel();
        let queued = self
            .writer
            .send(WriterMessage::Flush(done))
            .map_err(|_| StoreError::Closed);
        Box::pin(async move {
            queued?;
            answer.await.map_err(|_| StoreError::Closed)
        })
    }
}

impl Backend for SqliteStore {}

/// The error a test switch puts in place of a write's statement: SQLite's
/// own for a full disk, with the transaction still open.
pub(super) fn injected_failure(part: crate::store::WritePart) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some(format!(
            "database or disk is full (a test switch failed the write's {})",
            part.as_str()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::Checkpoints;

    /// The writer (the only connection that commits) checkpoints the log
    /// itself unless Litestream is to: with `Litestream` it never does, so
    /// that no checkpoint of the server's races Litestream's.
    #[test]
    fn the_writer_leaves_checkpoints_to_litestream_when_told() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (checkpoints, pages) in [(Checkpoints::Server, 16_384), (Checkpoints::Litestream, 0)] {
            let path = std::env::temp_dir().join(format!(
                "sms-credit-checkpoints-{}-{checkpoints:?}.db",
                std::process::id()
            ));
            let store = SqliteStore::open(
                &path,
                crate::adapters::IfMissing::Create,
                checkpoints,
                64,
                1,
                crate::adapters::MigrateOptions::at_open(None),
                Shared::new(None).unwrap(),
            )
            .unwrap();
            let autocheckpoint: i64 = runtime
                .block_on(store.write(|connection| {
                    connection
                        .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
                        .map_err(StoreError::from)
                }))
                .unwrap();
            assert_eq!(autocheckpoint, pages, "{checkpoints:?}");
            drop(store);
            for suffix in ["", "-wal", "-shm"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(name));
            }
        }
    }
}

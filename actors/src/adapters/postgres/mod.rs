//! The Postgres adapter (tokio-postgres): a writer task that owns one
//! connection and group-commits everything queued while its last commit
//! ran, a few reader connections that pipeline look-ups, and a listener
//! connection that learns, by `LISTEN/NOTIFY`, of the ledger rows other
//! instances commit. They all run on a runtime of the adapter's own, on its
//! own thread; callers on any thread await their answers. The webhook
//! claims have a connection of their own, for their short transactions. A write is
//! answered only after the `COMMIT` that holds it has returned, and the
//! server never turns `synchronous_commit` off.
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
mod listener;
mod messages;
mod migrations;
mod opt_outs;
mod reports;
mod sign_in;
mod source;
mod stripe_refunds;
mod webhooks;
mod writer;

pub(crate) use copy::{lock_for_filling, look_before_filling, FillLock, MadeTable};
pub(crate) use source::open_source;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::store::{Backend, LedgerWrite, Shared, StoreCause, StoreError, StoreFuture};

/// A Postgres URL (`postgres://` or `postgresql://`), parsed once. Its
/// password never shows: `Display` and `Debug` print the URL without it.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// The URL as given, less the parameters only this adapter reads.
    url: String,
    /// The URL with its password replaced, for messages.
    shown: String,
    /// A PEM file of the certificate authorities to trust (`sslrootcert`),
    /// instead of the public web's.
    root_certificates: Option<String>,
}

impl PostgresUrl {
    pub fn parse(text: &str) -> Result<PostgresUrl, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| "is not a postgres:// URL".to_string())?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err("is not a postgres:// URL".to_string());
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        let mut kept = Vec::new();
        let mut root_certificates = None;
        for pair in query.into_iter().flat_map(|query| query.split('&')) {
            match pair.split_once('=') {
                Some(("sslrootcert", path)) => root_certificates = Some(path.to_string()),
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            format!("{scheme}://{before_query}")
        } else {
            format!("{scheme}://{before_query}?{}", kept.join("&"))
        };
        tokio_postgres::Config::from_str(&url)
            .map_err(|error| format!("is not a Postgres URL this server can use ({error})"))?;
        // user:password@host → user:***@host
        let shown_authority = match before_query.rsplit_once('@') {
            Some((credentials, host)) => match credentials.split_once(':') {
                Some((user, _password)) => format!("{user}:***@{host}"),
                None => format!("{credentials}@{host}"),
            },
            None => before_query.to_string(),
        };
        let shown = match query {
            Some(query) => format!("{scheme}://{shown_authority}?{query}"),
            None => format!("{scheme}://{shown_authority}"),
        };
        Ok(PostgresUrl {
            url,
            shown,
            root_certificates,
        })
    }

    /// The connection settings: the URL's, with defaults for what it does
    /// not say — a connection attempt gives up after 5 s and a write the
    /// server does not acknowledge within 30 s breaks the connection (so a
    /// vanished server becomes an error, not a hang), the connections
    /// show as `sms-credit` in `pg_stat_activity`, and every commit waits
    /// for its WAL to be flushed (`synchronous_commit=on`, whatever the
    /// server's or the database's default: a write is answered only after
    /// its commit returns, and that must mean durable), unless the URL's
    /// `options` choose a level themselves.
    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config =
            tokio_postgres::Config::from_str(&self.url).map_err(|error| StoreError::Open {
                path: self.shown.clone(),
                reason: error.to_string(),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("sms-credit");
        }
        // A URL without `options` asks for none: the level is added alone.
        let options = config.get_options().unwrap_or_default();
        if !options.contains("synchronous_commit") {
            let durable = format!("{options} -c synchronous_commit=on");
            config.options(durable.trim_start());
        }
        Ok(config)
    }

    /// Whether the URL asks for TLS (`sslmode=require`).
    fn wants_tls(&self) -> Result<bool, StoreError> {
        Ok(matches!(
            self.config()?.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        ))
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.shown)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        if is_retryable(&error) {
            StoreError::Contention(describe(&error))
        } else {
            StoreError::Database(describe(&error))
        }
    }
}

/// An error with its database cause (tokio-postgres's own text says little).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Whether a failed transaction may simply be tried again: a deadlock or a
/// serialization failure between instances.
fn is_retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// Whether an error is a unique-constraint violation.
fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// How connections are made: the URL and TLS (rustls when the URL asks).
#[derive(Clone)]
struct Connector {
    url: PostgresUrl,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    runtime: tokio::runtime::Handle,
}

impl Connector {
    fn new(url: &PostgresUrl, runtime: tokio::runtime::Handle) -> Result<Connector, StoreError> {
        let tls = if url.wants_tls()? {
            let mut roots = rustls::RootCertStore::empty();
            match &url.root_certificates {
                Some(path) => {
                    use rustls::pki_types::pem::PemObject;
                    let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
                        .map_err(|error| StoreError::Open {
                            path: url.to_string(),
                            reason: format!("cannot read sslrootcert {path}: {error}"),
                        })?;
                    for certificate in certificates {
                        let certificate = certificate.map_err(|error| StoreError::Open {
                            path: url.to_string(),
                            reason: format!("cannot read sslrootcert {path}: {error}"),
                        })?;
                        roots.add(certificate).map_err(|error| StoreError::Open {
                            path: url.to_string(),
                            reason: format!("sslrootcert {path}: {error}"),
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|error| StoreError::Open {
                path: url.to_string(),
                reason: error.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(config))
        } else {
            None
        };
        Ok(Connector {
            url: url.clone(),
            tls,
            runtime,
        })
    }

    /// A new connection, driven on the adapter's runtime; with `on_message`,
    /// the connection's notifications go to it (the listener). The whole
    /// of it (TCP, TLS, start-up, authentication) is bounded: the driver's
    /// own timeout covers only the TCP connect, and a peer that accepts the
    /// socket and never answers (a proxy during a failover) would otherwise
    /// hold the attempt, and whoever waits on it, for good.
    async fn connect(
        &self,
        notifications: Option<mpsc::UnboundedSender<tokio_postgres::Notification>>,
    ) -> Result<Client, StoreError> {
        let config = self.url.config()?;
        let tls = self.tls.clone();
        let shown = self.url.to_string();
        let connected = self
            .runtime
            .spawn(async move {
                let connecting = async move {
                    match tls {
                        Some(tls) => {
                            let (client, connection) = config.connect(tls).await?;
                            tokio::spawn(drive(connection, notifications));
                            Ok::<_, tokio_postgres::Error>(client)
                        }
                        None => {
                            let (client, connection) =
                                config.connect(tokio_postgres::NoTls).await?;
                            tokio::spawn(drive(connection, notifications));
                            Ok(client)
                        }
                    }
                };
                tokio::time::timeout(CONNECT_TIMEOUT, connecting).await
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        match connected {
            Ok(connected) => connected.map_err(|error| StoreError::Open {
                path: shown,
                reason: describe(&error),
            }),
            Err(_elapsed) => Err(StoreError::Open {
                path: shown,
                reason: format!(
                    "no answer within {} s (connecting, TLS or signing in)",
                    CONNECT_TIMEOUT.as_secs()
                ),
            }),
        }
    }
}

/// Drives a connection until it closes, handing notifications on.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notifications: Option<mpsc::UnboundedSender<tokio_postgres::Notification>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        match message {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(notification))) => {
                if let Some(sender) = &notifications {
                    let _ = sender.send(notification);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::warn!(error = %describe(&error), "a Postgres connection failed");
                return;
            }
            None => return,
        }
    }
}

/// One reader connection, and who may make it again: one caller at a
/// time, so that many callers meeting a closed connection (after the
/// database restarted) make one connection, not one each; and after a
/// failed attempt, callers for a second are told that failure at once
/// instead of each waiting out another attempt.
#[derive(Default)]
struct ReaderSlot {
    client: Mutex<Option<Arc<Client>>>,
    reconnecting: tokio::sync::Mutex<Option<(Instant, StoreError)>>,
}

/// How long making a connection may take in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failed attempt to connect a reader answers for the slot.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

impl ReaderSlot {
    /// The connection, if it is there and open.
    fn open(&self) -> Option<Arc<Client>> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|client| !client.is_closed())
    }
}

/// A few reader connections, used in turn; concurrent queries on one are
/// pipelined by tokio-postgres. A closed one is replaced on next use.
struct Readers {
    connector: Connector,
    slots: Vec<ReaderSlot>,
    next: AtomicUsize,
}

impl Readers {
    /// Opens every reader connection at once.
    async fn connect_all(&self) -> Result<(), StoreError> {
        let clients = futures_util::future::try_join_all(
            self.slots.iter().map(|_| self.connector.connect(None)),
        )
        .await?;
        for (slot, client) in self.slots.iter().zip(clients) {
            *slot.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(client));
        }
        Ok(())
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        if let Some(client) = slot.open() {
            return Ok(client);
        }
        let mut reconnecting = slot.reconnecting.lock().await;
        // Another caller may have made it again while this one waited.
        if let Some(client) = slot.open() {
            return Ok(client);
        }
        if let Some((failed_at, error)) = reconnecting.as_ref() {
            if failed_at.elapsed() < RECONNECT_BACKOFF {
                return Err(error.clone());
            }
        }
        match self.connector.connect(None).await {
            Ok(client) => {
                let client = Arc::new(client);
                *slot.client.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&client));
                *reconnecting = None;
                Ok(client)
            }
            Err(error) => {
                *reconnecting = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }
}

/// A connection of its own for work that must run in a transaction of its
/// own outside the group commit (the webhook claims: an endpoint's row is
/// locked while its tries in flight are counted and claimed). Used by one
/// caller at a time; a closed one is replaced on next use.
struct Dedicated {
    connector: Connector,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Dedicated {
    /// The connection, for this caller alone until the guard is dropped.
    async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let client = self.connector.connect(None).await?;
            // A transaction left open by a caller that stopped (a frozen
            // or cut-off instance) is ended by the server, and what it held
            // with it.
            client
                .batch_execute("SET idle_in_transaction_session_timeout = '30s'")
                .await?;
            *slot = Some(client);
        }
        Ok(slot)
    }
}

type ErasedValue = Box<dyn Any + Send>;
type OpFuture<'t> = Pin<Box<dyn Future<Output = Result<ErasedValue, OpFailure>> + Send + 't>>;

/// How an erased write failed.
enum OpFailure {
    /// The operation refused (its own error, erased): only it is rolled back.
    Refused(ErasedValue),
    /// The database gave way to another instance (a deadlock, a
    /// serialization failure): the whole batch runs again.
    Contention(String),
}
/// A write of the port, run in a savepoint of the group commit's
/// transaction. `Fn`: a batch that meets a deadlock with another instance is
/// run again from the start.
type ErasedOp = Box<dyn for<'t> Fn(&'t Transaction<'_>) -> OpFuture<'t> + Send + Sync>;

/// Why an erased write did not succeed.
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
    Flush(oneshot::Sender<()>),
}

/// The adapter.
pub struct PostgresStore {
    writer: mpsc::UnboundedSender<WriterMessage>,
    /// This instance's name in the notifications it sends.
    origin: String,
    readers: Arc<Readers>,
    /// The webhook claims' connection.
    claims: Arc<Dedicated>,
    url: PostgresUrl,
    /// What every adapter shares; here for the test switch that fails reads.
    shared: Arc<Shared>,
    /// Dropped with the adapter: tells its runtime's thread to stop.
    _stop: oneshot::Sender<()>,
}

/// Starts the adapter's runtime on a thread of its own; answers its handle
/// and the sender that stops it (when dropped).
fn start_runtime() -> Result<(tokio::runtime::Handle, oneshot::Sender<()>), StoreError> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("store-postgres".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("store-postgres-io")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = handle_sender.send(Err(error.to_string()));
                    return;
                }
            };
            let _ = handle_sender.send(Ok(runtime.handle().clone()));
            runtime.block_on(async move {
                let _ = stopped.await;
            });
        })
        .map_err(|error| StoreError::Open {
            path: String::new(),
            reason: format!("could not start the Postgres thread: {error}"),
        })?;
    let handle = handle_receiver
        .recv()
        .map_err(|_| StoreError::Closed)?
        .map_err(|reason| StoreError::Open {
            path: String::new(),
            reason,
        })?;
    Ok((handle, stop))
}

/// Applies the migrations the database has not had yet (see
/// [`super::migrate`]); answers what it did.
pub fn migrate(
    url: &PostgresUrl,
    options: super::MigrateOptions,
) -> Result<super::MigrationReport, StoreError> {
    let (runtime, stop) = start_runtime()?;
    let connector = Connector::new(url, runtime.clone())?;
    let applied = block_on(&runtime, async move {
        let mut client = connector.connect(None).await?;
        migrations::migrate(&mut client, options).await
    });
    drop(stop);
    applied
}

/// Test-only: the migrations up to `last` (inclusive), and nothing else.
pub(super) fn migrate_until_for_testing(url: &PostgresUrl, last: i32) -> Result<(), StoreError> {
    let (runtime, stop) = start_runtime()?;
    let connector = Connector::new(url, runtime.clone())?;
    let done = block_on(&runtime, async move {
        let mut client = connector.connect(None).await?;
        migrations::migrate_until(&mut client, last).await
    });
    drop(stop);
    done
}

/// Runs `work` on the adapter's runtime and waits for it on this thread
/// (start-up and one-off commands only).
fn block_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (done, answer) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = done.send(work.await);
    });
    answer.recv().map_err(|_| StoreError::Closed)?
}

impl PostgresStore {
    /// Connects (migrating the database if needed, under an advisory lock
    /// so that instances starting together migrate once) and starts the
    /// writer, the readers and the listener.
    pub(crate) fn open(
        url: &PostgresUrl,
        if_missing: super::IfMissing,
        max_batch: usize,
        readers: usize,
        migrate_options: super::MigrateOptions,
        shared: Arc<Shared>,
    ) -> Result<PostgresStore, StoreError> {
        let (runtime, stop) = start_runtime()?;
        let connector = Connector::new(url, runtime.clone())?;
        let readers = Arc::new(Readers {
            connector: connector.clone(),
            slots: (0..readers.max(2)).map(|_| ReaderSlot::default()).collect(),
            next: AtomicUsize::new(0),
        });
        // Every connection is made before the server listens, so that the
        // first requests do not pay for authentication.
        let migrating = connector.clone();
        let warming = Arc::clone(&readers);
        let shown = url.to_string();
        let writer_client = block_on(&runtime, async move {
            let mut client = migrating.connect(None).await?;
            if if_missing == super::IfMissing::Refuse && !migrations::has_history(&client).await? {
                return Err(StoreError::Missing {
                    database: shown,
                    reason: "the database holds no sms-credit tables".to_string(),
                });
            }
            migrations::migrate(&mut client, migrate_options).await?;
            warming.connect_all().await?;
            let prepared = writer::Prepared::new(&client).await?;
            Ok((client, prepared))
        })?;
        let claims = Arc::new(Dedicated {
            connector: connector.clone(),
            client: tokio::sync::Mutex::new(None),
        });
        let (writer, queue) = mpsc::unbounded_channel();
        let writer_state = writer::Writer::new(
            connector.clone(),
            writer_client,
            max_batch,
            Arc::clone(&shared),
        );
        runtime.spawn(writer_state.run(queue));
        runtime.spawn(listener::run(
            connector,
            Arc::clone(&readers),
            Arc::downgrade(&shared),
        ));
        Ok(PostgresStore {
            writer,
            origin: shared.origin.clone(),
            readers,
            claims,
            url: url.clone(),
            shared,
            _stop: stop,
        })
    }

    /// Runs `op` inside the next group commit, in a savepoint of its own:
    /// an `Err` from `op` rolls back only `op`; an `Ok` is answered once the
    /// batch has committed.
    fn write<T, E, F>(&self, op: F) -> StoreFuture<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + StoreCause + Send + 'static,
        F: for<'t> Fn(
                &'t Transaction<'_>,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>
            + Send
            + Sync
            + 'static,
    {
        write_on(&self.writer, op)
    }

    /// Runs `query` on a reader connection (outside any transaction: it
    /// sees every commit answered before it started).
    fn read<T, F, Fut>(&self, query: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let injected = self.shared.injected_read_failure();
        Box::pin(async move {
            if let Some(failure) = injected {
                return Err(failure);
            }
            let client = readers.client().await?;
            query(client).await
        })
    }

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

impl Backend for PostgresStore {}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "PostgresStore({})", self.url)
    }
}

/// Boxes a write's future (the signature `PostgresStore::write` wants).
fn boxed<'t, T>(
    future: impl Future<Output = T> + Send + 't,
) -> Pin<Box<dyn Future<Output = T> + Send + 't>> {
    Box::pin(future)
}

/// [`PostgresStore::write`] on the writer's queue, for an operation that
/// reads before it decides to write.
fn write_on<T, E, F>(writer: &mpsc::UnboundedSender<WriterMessage>, op: F) -> StoreFuture<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + StoreCause + Send + 'static,
    F: for<'t> Fn(&'t Transaction<'_>) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>
        + Send
        + Sync
        + 'static,
{
    let erased: ErasedOp = Box::new(move |transaction| {
        let future = op(transaction);
        Box::pin(async move {
            match future.await {
                Ok(value) => Ok(Box::new(value) as ErasedValue),
                Err(error) => match error.store_cause() {
                    Some(StoreError::Contention(reason)) => {
                        Err(OpFailure::Contention(reason.clone()))
                    }
                    _ => Err(OpFailure::Refused(Box::new(error) as ErasedValue)),
                },
            }
        })
    });
    let (done, answer) = oneshot::channel();
    let queued = writer
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_password_never_shows() {
        let url =
            PostgresUrl::parse("postgres://app:s3cret@db.example.com:5432/credit?sslmode=require")
                .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.example.com:5432/credit?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(url.wants_tls().unwrap_or(false));
        let plain = PostgresUrl::parse("postgresql://localhost/credit")
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!plain.wants_tls().unwrap_or(true));
        let rooted =
            PostgresUrl::parse("postgres://u:p@h/d?sslmode=require&sslrootcert=/etc/ca.pem")
                .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(rooted.root_certificates.as_deref(), Some("/etc/ca.pem"));
        assert!(PostgresUrl::parse("mysql://x/y").is_err());
    }

    #[test]
    fn every_connection_waits_for_its_commits_to_be_flushed() {
        let config = |url: &str| {
            PostgresUrl::parse(url)
                .and_then(|url| url.config().map_err(|error| error.to_string()))
                .unwrap_or_else(|error| panic!("{error}"))
        };
        assert_eq!(
            config("postgres://u:p@h/d").get_options(),
            Some("-c synchronous_commit=on")
        );
        assert_eq!(
            config("postgres://u:p@h/d?options=-c%20statement_timeout%3D5000").get_options(),
            Some("-c statement_timeout=5000 -c synchronous_commit=on")
        );
        // A level the operator chose in the URL stands (remote_apply, say).
        assert_eq!(
            config("postgres://u:p@h/d?options=-c%20synchronous_commit%3Dremote_apply")
                .get_options(),
            Some("-c synchronous_commit=remote_apply")
        );
    }
}

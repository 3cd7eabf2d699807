//! The storage adapters, above the port (`crate::store`) and the domain:
//! each keeps its SQL, its migrations and its connections in its own
//! folder and imports only downward. This module picks one from where the
//! database is and opens it.

pub mod backup;
mod fill;
pub mod postgres;
pub mod sqlite;

pub(crate) use fill::check_history;
pub use fill::{open_source, FillError, FillTarget};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backfill::AccountLeft;
use crate::ledger::AccountId;
use crate::store::{running_instances_told, Backend, InstanceBeat, Shared, Store, StoreError};

/// Set by an adapter's transaction that inserted webhook events, taken by
/// its writer after the commit to wake the delivery worker at once. One
/// flag for the process: with several stores in one process (tests) a
/// worker may be woken for another's events, which costs it one look.
pub(crate) static EVENTS_INSERTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether webhook events were inserted since the last call.
pub(crate) fn take_events_inserted() -> bool {
    EVENTS_INSERTED.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Where the database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// An SQLite file, created and migrated if absent.
    Sqlite(PathBuf),
    /// A Postgres database, migrated if needed.
    Postgres(postgres::PostgresUrl),
}

impl DatabaseLocation {
    /// `postgres://…` or `postgresql://…` is Postgres; a file path,
    /// `sqlite://path` or `sqlite:path` (sqlx's spelling) is SQLite. Any
    /// other `scheme://` is refused, saying what is supported, rather than
    /// made into a file of that name; so are an SQLite URL's query string
    /// (sqlx's `?mode=rwc`: this store takes no options, and SQLite would
    /// make a file named with it) and SQLite's in-memory database (which
    /// no other process, and no write-ahead log, can share).
    pub fn parse(text: &str) -> Result<DatabaseLocation, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty".to_string());
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return postgres::PostgresUrl::parse(text).map(DatabaseLocation::Postgres);
        }
        let sqlite = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"));
        if let Some(path) = sqlite {
            if path.is_empty() {
                return Err("names no SQLite file".to_string());
            }
            if let Some((_, query)) = path.split_once('?') {
                return Err(format!(
                    "'?{query}' is a query string, which this store does not take: name the \
                     SQLite file alone (sqlite:path or sqlite://path); it is made if it does \
                     not exist"
                ));
            }
            return in_a_file(path);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            let is_scheme = scheme.starts_with(|first: char| first.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|letter| letter.is_ascii_alphanumeric() || "+-.".contains(letter));
            if is_scheme {
                return Err(format!(
                    "{scheme}:// is not supported: the database is an SQLite file (a path, \
                     sqlite:path or sqlite://path) or Postgres (postgres://user:password@host/name)"
                ));
            }
        }
        in_a_file(text)
    }

    /// The SQLite file, for commands that only work on one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            DatabaseLocation::Sqlite(path) => Some(path),
            DatabaseLocation::Postgres(_) => None,
        }
    }
}

/// An SQLite database at `path`, which must be a file: the in-memory
/// database (`:memory:`) lives and dies with one connection, and the store
/// opens several, in several processes.
fn in_a_file(path: &str) -> Result<DatabaseLocation, String> {
    if path.starts_with(":memory:") || path.starts_with("file::memory:") {
        return Err(
            "is SQLite's in-memory database, which the store cannot use: the server, its \
             commands and its write-ahead log share one database file; name a file instead \
             (sqlite:path)"
                .to_string(),
        );
    }
    Ok(DatabaseLocation::Sqlite(PathBuf::from(path)))
}

impl fmt::Display for DatabaseLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseLocation::Sqlite(path) => write!(formatter, "sqlite://{}", path.display()),
            DatabaseLocation::Postgres(url) => url.fmt(formatter),
        }
    }
}

impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// Who checkpoints SQLite's write-ahead log back into the database file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checkpoints {
    /// The server's writer, after a commit that leaves the log 64 MiB long.
    #[default]
    Server,
    /// Litestream, which replicates the log: the server never checkpoints,
    /// so that no checkpoint of its own races Litestream's (as Litestream's
    /// documentation asks of busy writers). Without Litestream running the
    /// log grows without bound.
    Litestream,
}

impl Checkpoints {
    /// `server` or `litestream`.
    pub fn parse(text: &str) -> Result<Checkpoints, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "server" => Ok(Checkpoints::Server),
            "litestream" => Ok(Checkpoints::Litestream),
            _ => Err(format!("'{text}' is not server or litestream")),
        }
    }
}

/// What opening does where there is no sms-credit database yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IfMissing {
    /// Makes one (an SQLite file, or the tables in a Postgres database)
    /// and migrates it: the server, `migrate`, and the commands that
    /// create something.
    #[default]
    Create,
    /// Refuses, naming where it looked, and leaves nothing behind: a
    /// command that only reads or changes what exists must not answer
    /// from an empty database made by mistake (a mistyped path, the
    /// wrong directory).
    Refuse,
}

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub location: DatabaseLocation,
    /// Whether a database is made where there is none.
    pub if_missing: IfMissing,
    /// Who checkpoints the write-ahead log (SQLite; Postgres ignores it).
    pub checkpoints: Checkpoints,
    /// The most writes one group commit takes.
    pub max_batch: usize,
    /// How many reader threads (or connections) answer look-ups.
    pub readers: usize,
    /// How long after its last heartbeat this process counts as gone to
    /// the others (the server's `instance_timeout_secs`): its heartbeat
    /// writes it, so that each is judged by its own.
    pub instance_timeout: Option<std::time::Duration>,
}

impl StoreSettings {
    pub fn new(location: DatabaseLocation) -> StoreSettings {
        StoreSettings {
            location,
            if_missing: IfMissing::Create,
            checkpoints: Checkpoints::Server,
            max_batch: 8192,
            readers: 1,
            instance_timeout: None,
        }
    }

    /// Settings for an SQLite file.
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreSettings {
        StoreSettings::new(DatabaseLocation::Sqlite(path.into()))
    }
}

/// Opens (creating and migrating if needed, unless `if_missing` refuses)
/// the database and starts the adapter's threads and connections.
pub fn open(settings: &StoreSettings) -> Result<Store, StoreError> {
    let shared = Shared::new(settings.instance_timeout)?;
    let migrating = MigrateOptions::at_open(settings.instance_timeout);
    let backend: Arc<dyn Backend> = match &settings.location {
        DatabaseLocation::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(
            path,
            settings.if_missing,
            settings.checkpoints,
            settings.max_batch.max(1),
            settings.readers.max(1),
            migrating,
            Arc::clone(&shared),
        )?),
        DatabaseLocation::Postgres(url) => Arc::new(postgres::PostgresStore::open(
            url,
            settings.if_missing,
            settings.max_batch.max(1),
            settings.readers.max(1),
            migrating,
            Arc::clone(&shared),
        )?),
    };
    Ok(Store::new(backend, shared))
}

/// The server's default `instance_timeout_secs`: what judges an instance
/// that does not say its own timeout where no setting is given.
pub const DEFAULT_INSTANCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How a migration treats the instances on the database and the accounts
/// an earlier release's server wrote to after the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateOptions {
    /// How long after its last heartbeat an instance that does not say its
    /// own timeout (an earlier release's) counts as gone: the setting's.
    pub instance_timeout: std::time::Duration,
    /// Whether the instances whose heartbeats the database holds write to
    /// it: not for a copy of a backup, whose heartbeats are those of the
    /// database it was taken of.
    pub instances_write_here: bool,
    /// Whether the grants of accounts an earlier release's server wrote to
    /// after they were made are made again (`sms-credit migrate`, and only
    /// while no instance is running).
    pub remake: bool,
}

impl MigrateOptions {
    /// As the store opens (the server, every command): the grants of
    /// accounts that have none are made, and nothing is made again.
    pub fn at_open(instance_timeout: Option<std::time::Duration>) -> MigrateOptions {
        MigrateOptions {
            instance_timeout: instance_timeout.unwrap_or(DEFAULT_INSTANCE_TIMEOUT),
            instances_write_here: true,
            remake: false,
        }
    }

    /// As `sms-credit migrate` runs.
    pub fn command(instance_timeout: std::time::Duration) -> MigrateOptions {
        MigrateOptions {
            instance_timeout,
            instances_write_here: true,
            remake: true,
        }
    }

    /// For a copy of a backup, which nothing but this process uses.
    pub fn backup_copy() -> MigrateOptions {
        MigrateOptions {
            instance_timeout: DEFAULT_INSTANCE_TIMEOUT,
            instances_write_here: false,
            remake: false,
        }
    }

    fn fallback_timeout_ms(&self) -> i64 {
        crate::clock::millis(self.instance_timeout)
    }
}

/// What migrating a database did.
#[derive(Debug, Default)]
pub struct MigrationReport {
    /// The migrations applied, as refinery names them (`V{n}__{name}`).
    pub applied: Vec<String>,
    /// The accounts whose credit grants were made from their ledgers.
    pub grants_made: Vec<AccountId>,
    /// The accounts left without credit grants, because their ledgers do
    /// not give them (they lead elsewhere than their balance rows, or hold
    /// a value this release does not know), and why.
    pub left_without_grants: Vec<AccountLeft>,
    /// The accounts an earlier release's server wrote to after their
    /// grants were made, whose grants were made again.
    pub grants_made_again: Vec<AccountId>,
    /// Those whose grants could not be made again, and why.
    pub not_made_again: Vec<AccountLeft>,
    /// Those whose grants were not made again because instances run.
    pub remake_waits: Option<RemakeWaits>,
}

/// Accounts whose grants `sms-credit migrate` would make again, and the
/// instances running on the database, because of which it did not.
#[derive(Debug)]
pub struct RemakeWaits {
    pub accounts: Vec<AccountId>,
    pub instances: Vec<InstanceBeat>,
    pub now_ms: i64,
    pub fallback_timeout_ms: i64,
}

impl fmt::Display for RemakeWaits {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (listed, clears_at) = running_instances_told(
            &self.instances,
            self.now_ms,
            self.fallback_timeout_ms,
            "this command's instance_timeout_secs",
        );
        let accounts: Vec<String> = self
            .accounts
            .iter()
            .map(|account| account.to_string())
            .collect();
        write!(
            formatter,
            "the credit grants of account{} {} no longer account for their ledgers (rows an \
             earlier release's server wrote after the upgrade, or grants that do not sum to the \
             balance), and are made again only while no instance runs on the database; \
             instances are running: {listed}. Stop every server, then run sms-credit migrate \
             again (a crashed one counts as gone once its own instance_timeout_secs has passed \
             since its last heartbeat: at {})",
            if accounts.len() == 1 { "" } else { "s" },
            accounts.join(", "),
            crate::clock::format_rfc3339_ms(clears_at),
        )
    }
}

/// Why the migration that makes credit grants is not applied: instances
/// (an earlier release's servers, which write rows without funding and
/// no grants) are running on the database.
fn earlier_release_running(
    migration: &str,
    instances: &[InstanceBeat],
    now_ms: i64,
    fallback_timeout_ms: i64,
) -> StoreError {
    let seconds = |ms: i64| (ms.max(0) + 999) / 1_000;
    let (listed, clears_at) = running_instances_told(
        instances,
        now_ms,
        fallback_timeout_ms,
        "this release's instance_timeout_secs",
    );
    StoreError::Migration(format!(
        "instances of an earlier release are running on the database: {listed}. Stop the \
         earlier release's servers first: {migration}, which makes every account's credit \
         grants, is not applied while they run, because what they would write after it has no \
         credit grants. Nothing was applied. If they are stopped already (a crash leaves its \
         heartbeat behind), each counts as gone once its own instance_timeout_secs has passed \
         since its last heartbeat: start this release again at {} (in {} s)",
        crate::clock::format_rfc3339_ms(clears_at),
        seconds(clears_at.saturating_sub(now_ms)),
    ))
}

/// Applies the migrations the database has not had yet, without starting
/// anything else, and, while no instance runs, makes again the grants of
/// accounts an earlier release's server wrote to after the upgrade
/// (`sms-credit migrate`, with [`MigrateOptions::command`]).
pub fn migrate(
    location: &DatabaseLocation,
    options: MigrateOptions,
) -> Result<MigrationReport, StoreError> {
    match location {
        DatabaseLocation::Sqlite(path) => sqlite::migrate(path, options),
        DatabaseLocation::Postgres(url) => postgres::migrate(url, options),
    }
}

/// Test-only: the database as an earlier release left it: its migrations
/// up to SQLite's `sqlite_last` and Postgres's `postgres_last` (inclusive),
/// and nothing after, not even the grants' backfill, to test an upgrade
/// from it.
pub fn migrate_until_for_testing(
    location: &DatabaseLocation,
    sqlite_last: i32,
    postgres_last: i32,
) -> Result<(), StoreError> {
    match location {
        DatabaseLocation::Sqlite(path) => sqlite::migrate_until_for_testing(path, sqlite_last),
        DatabaseLocation::Postgres(url) => postgres::migrate_until_for_testing(url, postgres_last),
    }
}

/// Refuses a file that is not an sms-credit SQLite database (an empty
/// file, another program's database, a newer release's), reading it only:
/// what `restore` takes as a backup.
pub fn check_backup_file(path: &Path) -> Result<(), String> {
    sqlite::check_made_by_sms_credit(path)
}

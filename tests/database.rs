//! The database a test runs on: an SQLite file in a temporary directory, or
//! a fresh Postgres database on the server named by `SMS_CREDIT_TEST_POSTGRES`
//! (default `postgres://postgres:postgres@127.0.0.1:5432/postgres`). Tests
//! written with [`on_both_stores!`] run once on each, so that every promise
//! the stores make is proven by the same test on both. Without a reachable
//! Postgres the Postgres half fails, saying how to get one; it never passes
//! by skipping.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use sms_credit_actors::adapters::DatabaseLocation;
use tempfile::TempDir;

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

thread_local! {
    /// The store the test running on this thread uses (set by `on_both_stores!`).
    static KIND: Cell<StoreKind> = const { Cell::new(StoreKind::Sqlite) };
}

/// Makes the test on this thread use `kind` (see [`on_both_stores!`]).
pub fn use_store(kind: StoreKind) {
    crate::watchdog::watch();
    KIND.with(|current| current.set(kind));
}

pub fn current_store() -> StoreKind {
    KIND.with(Cell::get)
}

/// Runs the test function `name` once on SQLite and once on Postgres, as
/// the tests `name::sqlite` and `name::postgres`. Written just above the
/// function, in place of `#[actix_rt::test]` (or, with `sync`, `#[test]`).
/// A function not listed is dead code, which the build refuses.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[actix_rt::test]
            async fn sqlite() {
                $crate::database::use_store($crate::database::StoreKind::Sqlite);
                super::$name().await
            }

            #[actix_rt::test]
            async fn postgres() {
                $crate::database::use_store($crate::database::StoreKind::Postgres);
                super::$name().await
            }
        }
    };
    (sync $name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                $crate::database::use_store($crate::database::StoreKind::Sqlite);
                super::$name()
            }

            #[test]
            fn postgres() {
                $crate::database::use_store($crate::database::StoreKind::Postgres);
                super::$name()
            }
        }
    };
}

/// A test's database; cheap to clone. A Postgres database is dropped when
/// the last clone is.
#[derive(Clone)]
pub struct TestDatabase {
    directory: Arc<TempDir>,
    kind: StoreKind,
    /// What `SMS_CREDIT_DATABASE` is set to (a Postgres URL with its password).
    url: String,
    postgres: Option<Arc<PostgresDatabase>>,
}

const DEFAULT_SERVER: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

fn server_url() -> String {
    std::env::var("SMS_CREDIT_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_string())
}

type Answer = Result<Vec<Option<String>>, String>;

/// A connection to one Postgres database, driven by a thread of its own (a
/// test may be inside a runtime already); answers the first column of each
/// row of the statements it is given. Closed when dropped.
struct Session {
    requests: std::sync::mpsc::Sender<(String, std::sync::mpsc::Sender<Answer>)>,
}

impl Session {
    fn open(url: &str) -> Result<Session, String> {
        let url = url.to_string();
        let (requests, incoming) =
            std::sync::mpsc::channel::<(String, std::sync::mpsc::Sender<Answer>)>();
        let (opened, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return drop(opened.send(Err(error.to_string()))),
            };
            runtime.block_on(async move {
                let client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        tokio::spawn(connection);
                        let _ = opened.send(Ok(()));
                        client
                    }
                    Err(error) => return drop(opened.send(Err(error.to_string()))),
                };
                while let Ok((sql, answer)) = incoming.recv() {
                    let _ = answer.send(run(&client, &sql).await);
                }
            });
        });
        ready
            .recv()
            .map_err(|_| "the Postgres helper thread stopped".to_string())??;
        Ok(Session { requests })
    }

    fn run(&self, sql: &str) -> Answer {
        let (answer, answered) = std::sync::mpsc::channel();
        self.requests
            .send((sql.to_string(), answer))
            .map_err(|_| "the Postgres helper thread stopped".to_string())?;
        answered
            .recv()
            .map_err(|_| "the Postgres helper thread stopped".to_string())?
    }
}

async fn run(client: &tokio_postgres::Client, sql: &str) -> Answer {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|error| match error.as_db_error() {
            Some(db) => db.message().to_string(),
            None => error.to_string(),
        })?;
    Ok(messages
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect())
}

/// Runs SQL once on a Postgres database, on a connection of its own.
fn postgres_run(url: &str, sql: &str) -> Answer {
    Session::open(url)?.run(sql)
}

/// A fresh database on the test server, dropped with its handle.
struct PostgresDatabase {
    name: String,
    url: String,
    /// The connection `execute` and `number` use, made on first use.
    session: std::sync::Mutex<Option<Session>>,
}

impl PostgresDatabase {
    fn run(&self, sql: &str) -> Answer {
        let mut session = self.session.lock().unwrap();
        if session.is_none() {
            *session = Some(Session::open(&self.url)?);
        }
        session.as_ref().unwrap().run(sql)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        self.session.get_mut().unwrap().take();
        let _ = postgres_run(
            &server_url(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// A transaction held open on a Postgres connection of its own (holding
/// the rows it locked) until [`HeldTransaction::end`] commits it.
pub struct HeldTransaction {
    session: Session,
}

impl HeldTransaction {
    pub fn end(self) {
        self.session.run("COMMIT").unwrap();
    }
}

impl TestDatabase {
    /// A fresh database of the store the running test uses.
    pub fn fresh() -> TestDatabase {
        TestDatabase::of(current_store())
    }

    pub fn of(kind: StoreKind) -> TestDatabase {
        let directory = Arc::new(tempfile::tempdir().unwrap());
        match kind {
            StoreKind::Sqlite => TestDatabase {
                url: directory.path().join("sms-credit.db").display().to_string(),
                directory,
                kind,
                postgres: None,
            },
            StoreKind::Postgres => {
                let server = server_url();
                let name = format!(
                    "sms_credit_test_{}",
                    sms_credit_actors::random::random_secret("")
                        .unwrap()
                        .get(..16)
                        .unwrap()
                );
                if let Err(error) = postgres_run(&server, &format!("CREATE DATABASE {name}")) {
                    panic!(
                        "The Postgres half of this test needs a PostgreSQL server at {server} \
                         (set SMS_CREDIT_TEST_POSTGRES to another one). On Debian: \
                         `sudo pg_ctlcluster 15 main start` and a password for the postgres user \
                         (`.ci/run` does both). It could not create a database: {error}"
                    );
                }
                let base = server
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .unwrap_or(&server);
                let url = format!("{base}/{name}");
                TestDatabase {
                    url: url.clone(),
                    directory,
                    kind,
                    postgres: Some(Arc::new(PostgresDatabase {
                        name,
                        url,
                        session: std::sync::Mutex::new(None),
                    })),
                }
            }
        }
    }

    /// A temporary directory that lives as long as the database (for
    /// other files a test needs).
    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// What `SMS_CREDIT_DATABASE` is set to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Postgres server's address, and the URL with another port on
    /// loopback in its place (for a proxy in between).
    pub fn postgres_address(&self) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let (_, host_port, _) = self.authority();
        host_port.to_socket_addrs().unwrap().next().unwrap()
    }

    pub fn url_through(&self, port: u16) -> String {
        let (before, _, after) = self.authority();
        format!("{before}127.0.0.1:{port}{after}")
    }

    /// The URL cut around its `host:port`.
    fn authority(&self) -> (&str, &str, &str) {
        let scheme_end = self.url.find("://").expect("a Postgres URL") + 3;
        let path = scheme_end
            + self.url[scheme_end..]
                .find('/')
                .unwrap_or(self.url.len() - scheme_end);
        let host = self.url[scheme_end..path]
            .rfind('@')
            .map_or(scheme_end, |at| scheme_end + at + 1);
        (&self.url[..host], &self.url[host..path], &self.url[path..])
    }

    pub fn location(&self) -> DatabaseLocation {
        DatabaseLocation::parse(&self.url).unwrap()
    }

    fn session(&self) -> &PostgresDatabase {
        self.postgres.as_deref().expect("a Postgres test database")
    }

    /// Runs SQL behind the store's back (to check or tamper with rows).
    pub fn execute(&self, sql: &str) {
        match self.kind {
            StoreKind::Sqlite => {
                let connection = rusqlite::Connection::open(&self.url).unwrap();
                connection.execute_batch(sql).unwrap();
            }
            StoreKind::Postgres => {
                self.session().run(sql).unwrap();
            }
        }
    }

    /// Begins a transaction on a (Postgres) connection of its own, runs
    /// `sql` in it (`SELECT … FOR UPDATE`: rows locked) and keeps it open.
    pub fn hold_transaction(&self, sql: &str) -> HeldTransaction {
        let session = Session::open(&self.session().url).unwrap();
        session.run(&format!("BEGIN; {sql}")).unwrap();
        HeldTransaction { session }
    }

    /// How many of this (Postgres) database's connections wait for a lock.
    pub fn lock_waiters(&self) -> i64 {
        self.number(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE NOT l.granted AND a.datname = current_database()",
        )
    }

    /// Lets new connections to this (Postgres) database be made, or
    /// refuses them (to superusers too); those already made stay open.
    pub fn allow_connections(&self, allowed: bool) {
        let name = &self.session().name;
        postgres_run(
            &server_url(),
            &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allowed}"),
        )
        .unwrap();
    }

    /// The first column of the first row of a query, as a whole number.
    pub fn number(&self, sql: &str) -> i64 {
        match self.kind {
            StoreKind::Sqlite => {
                let connection = rusqlite::Connection::open(&self.url).unwrap();
                connection.query_row(sql, [], |row| row.get(0)).unwrap()
            }
            StoreKind::Postgres => self.session().run(sql).unwrap()[0]
                .as_deref()
                .unwrap()
                .parse()
                .unwrap(),
        }
    }

    /// The first column of each row `sql` answers, as text.
    pub fn texts(&self, sql: &str) -> Vec<Option<String>> {
        match self.kind {
            StoreKind::Sqlite => {
                let connection = rusqlite::Connection::open(&self.url).unwrap();
                let mut statement = connection.prepare(sql).unwrap();
                let rows = statement
                    .query_map([], |row| {
                        let value: rusqlite::types::Value = row.get(0)?;
                        Ok(match value {
                            rusqlite::types::Value::Null => None,
                            rusqlite::types::Value::Integer(number) => Some(number.to_string()),
                            rusqlite::types::Value::Text(text) => Some(text),
                            other => Some(format!("{other:?}")),
                        })
                    })
                    .unwrap();
                rows.collect::<Result<_, _>>().unwrap()
            }
            StoreKind::Postgres => self.session().run(sql).unwrap(),
        }
    }

    /// The first column of the first row of a query, as text.
    pub fn text(&self, sql: &str) -> String {
        match self.kind {
            StoreKind::Sqlite => {
                let connection = rusqlite::Connection::open(&self.url).unwrap();
                connection.query_row(sql, [], |row| row.get(0)).unwrap()
            }
            StoreKind::Postgres => self.session().run(sql).unwrap()[0].clone().unwrap(),
        }
    }

    /// Which store the database is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Writes a value the schema's CHECK constraints would refuse, as a
    /// newer release (or a hand edit) might have left it in `table`.
    pub fn tamper(&self, table: &str, sql: &str) {
        match self.kind {
            StoreKind::Sqlite => self.execute(&format!(
                "PRAGMA ignore_check_constraints = ON; {sql}; PRAGMA ignore_check_constraints = OFF;"
            )),
            StoreKind::Postgres => {
                let constraints = self
                    .session()
                    .run(&format!(
                        "SELECT conname FROM pg_constraint
                          WHERE conrelid = '{table}'::regclass AND contype = 'c'"
                    ),
                )
                .unwrap();
                for name in constraints.into_iter().flatten() {
                    self.execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"));
                }
                self.execute(sql);
            }
        }
    }
}

/// The repository's migration files of a store, oldest first: version and
/// path.
pub fn migration_files(kind: StoreKind) -> Vec<(u32, std::path::PathBuf)> {
    let folder = match kind {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Postgres => "postgres",
    };
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(format!(
        "{}/migrations/{folder}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .map(|entry| entry.unwrap().path())
    .map(|path| {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let version = name[1..name.find("__").unwrap()].parse().unwrap();
        (version, path)
    })
    .collect();
    files.sort();
    files
}

/// The version of the migration before a store's last one: what the
/// release before this one left a database at.
pub fn migration_before_the_last(kind: StoreKind) -> u32 {
    let files = migration_files(kind);
    files[files.len() - 2].0
}

impl TestDatabase {
    /// A database of the current store as an earlier release left it, one
    /// whose last migration was `last`: the store's migrations up to it,
    /// applied from the repository's files, with the history refinery keeps
    /// of them (read from a database this release migrated).
    pub fn at_migration(last: u32) -> TestDatabase {
        let reference = crate::helpers::fresh_directory();
        assert!(crate::helpers::run_cli(&reference, &["migrate"])
            .status
            .success());
        let kind = reference.kind();
        let history = reference.text(&match kind {
            StoreKind::Sqlite => format!(
                "SELECT group_concat(entry, ', ') FROM (
                     SELECT printf('(%d, %Q, %Q, %Q)', version, name, applied_on, checksum) AS entry
                       FROM refinery_schema_history WHERE version <= {last} ORDER BY version)"
            ),
            StoreKind::Postgres => format!(
                "SELECT string_agg(format('(%s, %L, %L, %L)', version, name, applied_on, checksum),
                                   ', ' ORDER BY version)
                   FROM refinery_schema_history WHERE version <= {last}"
            ),
        });
        let files: Vec<_> = migration_files(kind)
            .into_iter()
            .filter(|(version, _)| *version <= last)
            .collect();
        let versions: Vec<String> = files
            .iter()
            .map(|(version, _)| version.to_string())
            .collect();
        assert_eq!(
            versions.join(","),
            reference.text(&format!(
                "SELECT {} FROM (SELECT version FROM refinery_schema_history
                                  WHERE version <= {last} ORDER BY version) AS applied",
                match kind {
                    StoreKind::Sqlite => "group_concat(version, ',')",
                    StoreKind::Postgres => "string_agg(version::text, ',' ORDER BY version)",
                }
            )),
            "the repository's migration files up to {last} are the ones this release applies"
        );
        let database = crate::helpers::fresh_directory();
        for (_, path) in files {
            database.execute(&std::fs::read_to_string(path).unwrap());
        }
        database.execute(&format!(
            "CREATE TABLE refinery_schema_history (version INT4 PRIMARY KEY, name VARCHAR(255),
                                                   applied_on VARCHAR(255), checksum VARCHAR(255));
             INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES {history};"
        ));
        database
    }
}

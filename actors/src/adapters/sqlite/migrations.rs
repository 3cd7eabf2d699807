//! The SQLite migrations (`migrations/sqlite/`), embedded in the binary and
//! applied in order by refinery, each in a transaction with its row in
//! `refinery_schema_history`, one process at a time ([`MigrationLock`]).
//! A database made before refinery (its history in `schema_migrations`) is
//! adopted as it stands, without being rebuilt.

use std::path::{Path, PathBuf};

use refinery::{Migration, Runner};
use rusqlite::{Connection, OptionalExtension};

use super::super::{MigrateOptions, MigrationReport, RemakeWaits};
use crate::clock::{format_rfc3339_ms, Clock, SystemClock};
use crate::store::{alive_at, InstanceBeat, StoreError};

/// Every migration: refinery's name (`V{version}__{name}`) and its SQL.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__core",
        include_str!("../../../../migrations/sqlite/V1__core.sql"),
    ),
    (
        "V2__billing",
        include_str!("../../../../migrations/sqlite/V2__billing.sql"),
    ),
    (
        "V3__account_tokens",
        include_str!("../../../../migrations/sqlite/V3__account_tokens.sql"),
    ),
    (
        "V4__messaging",
        include_str!("../../../../migrations/sqlite/V4__messaging.sql"),
    ),
    (
        "V5__early_statuses",
        include_str!("../../../../migrations/sqlite/V5__early_statuses.sql"),
    ),
    (
        "V6__stripe_event_status",
        include_str!("../../../../migrations/sqlite/V6__stripe_event_status.sql"),
    ),
    (
        "V7__notices",
        include_str!("../../../../migrations/sqlite/V7__notices.sql"),
    ),
    (
        "V8__ledger_changes",
        include_str!("../../../../migrations/sqlite/V8__ledger_changes.sql"),
    ),
    (
        "V9__instances_and_claims",
        include_str!("../../../../migrations/sqlite/V9__instances_and_claims.sql"),
    ),
    (
        "V10__auto_top_up",
        include_str!("../../../../migrations/sqlite/V10__auto_top_up.sql"),
    ),
    (
        "V11__notices_after_message",
        include_str!("../../../../migrations/sqlite/V11__notices_after_message.sql"),
    ),
    (
        "V12__auto_top_up_unknown",
        include_str!("../../../../migrations/sqlite/V12__auto_top_up_unknown.sql"),
    ),
    (
        "V13__sign_in",
        include_str!("../../../../migrations/sqlite/V13__sign_in.sql"),
    ),
    (
        "V14__webhooks",
        include_str!("../../../../migrations/sqlite/V14__webhooks.sql"),
    ),
    (
        "V15__refunds_and_reports",
        include_str!("../../../../migrations/sqlite/V15__refunds_and_reports.sql"),
    ),
    (
        "V16__webhook_claims",
        include_str!("../../../../migrations/sqlite/V16__webhook_claims.sql"),
    ),
    (
        "V17__feed_tickets",
        include_str!("../../../../migrations/sqlite/V17__feed_tickets.sql"),
    ),
    (
        "V18__notice_withdrawn",
        include_str!("../../../../migrations/sqlite/V18__notice_withdrawn.sql"),
    ),
    (
        "V19__refunds_once",
        include_str!("../../../../migrations/sqlite/V19__refunds_once.sql"),
    ),
    (
        "V20__worker_leases",
        include_str!("../../../../migrations/sqlite/V20__worker_leases.sql"),
    ),
    (
        "V21__disputes",
        include_str!("../../../../migrations/sqlite/V21__disputes.sql"),
    ),
    (
        "V22__stale_reservations",
        include_str!("../../../../migrations/sqlite/V22__stale_reservations.sql"),
    ),
    (
        "V23__last_commit",
        include_str!("../../../../migrations/sqlite/V23__last_commit.sql"),
    ),
    (
        "V24__backups",
        include_str!("../../../../migrations/sqlite/V24__backups.sql"),
    ),
    (
        "V25__strangers",
        include_str!("../../../../migrations/sqlite/V25__strangers.sql"),
    ),
    (
        "V26__operator",
        include_str!("../../../../migrations/sqlite/V26__operator.sql"),
    ),
    (
        "V27__refunds_by_id",
        include_str!("../../../../migrations/sqlite/V27__refunds_by_id.sql"),
    ),
    (
        "V29__strangers_second_round",
        include_str!("../../../../migrations/sqlite/V29__strangers_second_round.sql"),
    ),
    (
        "V31__strangers_third_round",
        include_str!("../../../../migrations/sqlite/V31__strangers_third_round.sql"),
    ),
    (
        "V32__legacy_refund_sweep",
        include_str!("../../../../migrations/sqlite/V32__legacy_refund_sweep.sql"),
    ),
    (
        "V33__instance_timeouts",
        include_str!("../../../../migrations/sqlite/V33__instance_timeouts.sql"),
    ),
    (
        "V34__legacy_sweep_settled",
        include_str!("../../../../migrations/sqlite/V34__legacy_sweep_settled.sql"),
    ),
    (
        "V35__credit_grants",
        include_str!("../../../../migrations/sqlite/V35__credit_grants.sql"),
    ),
    (
        "V36__order_receipts",
        include_str!("../../../../migrations/sqlite/V36__order_receipts.sql"),
    ),
    (
        "V37__grant_expiry_sweep",
        include_str!("../../../../migrations/sqlite/V37__grant_expiry_sweep.sql"),
    ),
    (
        "V38__refunds_told",
        include_str!("../../../../migrations/sqlite/V38__refunds_told.sql"),
    ),
];

const HISTORY_TABLE: &str = "refinery_schema_history";

fn migration_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Migration(error.to_string())
}

fn embedded() -> Result<Vec<Migration>, StoreError> {
    MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql).map_err(migration_error))
        .collect()
}

/// The migration that makes credit grants: not applied while an earlier
/// release's server runs on the database.
const GRANTS_MIGRATION: (i64, &str) = (35, "V35__credit_grants");

/// Applies the migrations the database has not had yet, then makes the
/// credit grants of the accounts that have none (and, with
/// `options.remake` and no instance running, makes again those an earlier
/// release's server wrote to after they were made); answers what it did.
/// Refuses a database migrated by a newer release (a migration it has
/// that this release does not know) or one whose applied migrations
/// differ from these, and applies nothing to one on which an earlier
/// release's server runs while its credit grants are still to be made.
pub(super) fn migrate(
    connection: &mut Connection,
    options: MigrateOptions,
) -> Result<MigrationReport, StoreError> {
    let migrations = embedded()?;
    let _lock = match connection.path() {
        Some(path) if !path.is_empty() => Some(MigrationLock::take(Path::new(path))?),
        _ => None,
    };
    adopt_legacy_history(connection, &migrations)?;
    if options.instances_write_here && grants_pending(connection)? {
        let now_ms = SystemClock.now_ms();
        let running = running_instances(connection, now_ms, options)?;
        if !running.is_empty() {
            return Err(super::super::earlier_release_running(
                GRANTS_MIGRATION.1,
                &running,
                now_ms,
                options.fallback_timeout_ms(),
            ));
        }
    }
    let report = Runner::new(&migrations)
        .set_abort_missing(true)
        .set_abort_divergent(true)
        .run(connection)
        .map_err(migration_error)?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(ToString::to_string)
        .collect();
    for name in &applied {
        tracing::info!(migration = %name, "applied migration");
    }
    // Accounts an earlier release left without grants get them, from
    // their ledgers (after V34; a no-op once every account has them).
    let backfilled = super::backfill::backfill(connection)?;
    let mut migrated = MigrationReport {
        applied,
        grants_made: backfilled.made,
        left_without_grants: backfilled.left,
        ..MigrationReport::default()
    };
    if options.remake {
        let off = super::backfill::accounts_off(connection)?;
        if !off.is_empty() {
            let now_ms = SystemClock.now_ms();
            let running = if options.instances_write_here {
                running_instances(connection, now_ms, options)?
            } else {
                Vec::new()
            };
            if running.is_empty() {
                let remade = super::backfill::remake_off(connection, &off)?;
                migrated.grants_made_again = remade.made;
                migrated.not_made_again = remade.left;
            } else {
                migrated.remake_waits = Some(RemakeWaits {
                    accounts: off,
                    instances: running,
                    now_ms,
                    fallback_timeout_ms: options.fallback_timeout_ms(),
                });
            }
        }
    }
    Ok(migrated)
}

/// Held while a process migrates an SQLite file, as Postgres's advisory
/// lock is: processes started together migrate one after another, the
/// first applying what is pending and the others finding it applied (each
/// migration and the grants' backfill once, and the check for an earlier
/// release's servers in the same turn as what it guards). An exclusive
/// `flock` of a file beside the database, never of the database or its
/// log: SQLite holds POSIX locks on those, which closing another
/// descriptor of the same file would drop. Its holder removes the file
/// before it lets go; one that then finds it held a removed file takes
/// the lock again.
struct MigrationLock {
    path: PathBuf,
    /// Dropped after the file is removed: the lock goes with it.
    _file: std::fs::File,
}

impl MigrationLock {
    /// Waits for the lock of the database at `database`, as long as it
    /// takes (another process's migration runs meanwhile).
    fn take(database: &Path) -> Result<MigrationLock, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let name = database.file_name().map_or_else(
            || "database".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let path = database.with_file_name(format!(".{name}.migrating"));
        let failed = |error: std::io::Error| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot take the lock that keeps migrations one at a time: {error}"),
        };
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(failed)?;
            file.lock().map_err(failed)?;
            let held = file.metadata().map_err(failed)?;
            match std::fs::metadata(&path) {
                Ok(there) if there.dev() == held.dev() && there.ino() == held.ino() => {
                    return Ok(MigrationLock { path, _file: file });
                }
                // Its holder removed it as it let go: take the new one.
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(failed(error)),
            }
        }
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the migration lock's file");
        }
    }
}

/// Whether the migration that makes credit grants is still to be applied
/// to a database that has a migration history (one without has no tables,
/// and so no instances).
fn grants_pending(connection: &Connection) -> Result<bool, StoreError> {
    if !has_history(connection)? {
        return Ok(false);
    }
    let applied: bool = connection.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {HISTORY_TABLE} WHERE version = ?1)"),
        [GRANTS_MIGRATION.0],
        |row| row.get(0),
    )?;
    Ok(!applied)
}

/// The instances alive on the database at `now_ms`, each judged by its own
/// timeout (an earlier release's, which may not say it, by the setting's),
/// as `copy` judges them. A database of a release before instances kept
/// their timeouts has the table without the column; one before instances,
/// no table.
fn running_instances(
    connection: &Connection,
    now_ms: i64,
    options: MigrateOptions,
) -> Result<Vec<InstanceBeat>, StoreError> {
    let columns: Vec<String> = connection
        .prepare("SELECT name FROM pragma_table_info('instances')")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let source = if columns.iter().any(|column| column == "timeout_ms") {
        "instances"
    } else {
        "(SELECT id, heartbeat_at, NULL AS timeout_ms FROM instances)"
    };
    let beats = super::accounts::instance_beats_from(connection, source)?;
    Ok(alive_at(beats, now_ms, options.fallback_timeout_ms()))
}

/// Test-only: the migrations up to `last` (inclusive), without the
/// grants' backfill: a database as an earlier release left it.
pub(super) fn migrate_until(connection: &mut Connection, last: i32) -> Result<(), StoreError> {
    let migrations = embedded()?;
    Runner::new(&migrations)
        .set_target(refinery::Target::Version(last))
        .run(connection)
        .map_err(migration_error)?;
    Ok(())
}

/// Before refinery, this release's own runner kept its history in
/// `schema_migrations (version, name, applied_at)`. Such a database gets
/// the same history in refinery's table (with the checksums of the same,
/// unchanged SQL), so nothing is applied twice.
fn adopt_legacy_history(
    connection: &mut Connection,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    let failed = |error: rusqlite::Error| StoreError::Migration(error.to_string());
    let legacy: Option<String> = connection
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(failed)?;
    if legacy.is_none() {
        return Ok(());
    }
    let transaction = connection.transaction().map_err(failed)?;
    transaction
        .execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
                 version INT4 PRIMARY KEY,
                 name VARCHAR(255),
                 applied_on VARCHAR(255),
                 checksum VARCHAR(255))"
        ))
        .map_err(failed)?;
    let rows: Vec<(i64, i64)> = {
        let mut statement = transaction
            .prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version")
            .map_err(failed)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(failed)?;
        rows.collect::<Result<_, _>>().map_err(failed)?
    };
    for (version, applied_at) in rows {
        let migration = migrations
            .iter()
            .find(|migration| i64::from(migration.version()) == version)
            .ok_or_else(|| {
                StoreError::Migration(format!(
                    "the database is at migration {version}, which this release does not know"
                ))
            })?;
        transaction
            .execute(
                &format!(
                    "INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (version) DO NOTHING"
                ),
                rusqlite::params![
                    version,
                    migration.name(),
                    format_rfc3339_ms(applied_at),
                    migration.checksum().to_string(),
                ],
            )
            .map_err(failed)?;
    }
    transaction
        .execute_batch("DROP TABLE schema_migrations")
        .map_err(failed)?;
    transaction.commit().map_err(failed)?;
    tracing::info!("adopted the migration history of an earlier release");
    Ok(())
}

/// This release's migrations, as refinery names them (`V{version}__{name}`).
pub(super) fn names() -> impl Iterator<Item = &'static str> {
    MIGRATIONS.iter().map(|(name, _)| *name)
}

/// Whether the database has refinery's migration history (read only).
pub(super) fn has_history(connection: &Connection) -> Result<bool, StoreError> {
    Ok(connection.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{HISTORY_TABLE}')"
        ),
        [],
        |row| row.get(0),
    )?)
}

/// Whether `version` and `name` are one of this release's migrations, as
/// refinery records it (`V{version}__{name}`).
pub(super) fn is_ours(version: i64, name: &str) -> bool {
    MIGRATIONS
        .iter()
        .any(|(ours, _)| *ours == format!("V{version}__{name}"))
}

/// The migrations recorded in a database, oldest first: version and name.
pub fn applied_migrations(connection: &Connection) -> Result<Vec<(i64, String)>, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT version, name FROM {HISTORY_TABLE} ORDER BY version"
    ))?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

//! The SQLite migrations (`migrations/sqlite/`), embedded in the binary and
//! applied in order by refinery, each in a transaction with its row in
//! `refinery_schema_history`. A database made before refinery (its history
//! in `schema_migrations`) is adopted as it stands, without being rebuilt.

use refinery::{Migration, Runner};
use rusqlite::{Connection, OptionalExtension};

use crate::clock::format_rfc3339_ms;
use crate::store::StoreError;

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

/// Applies the migrations the database has not had yet; answers their
/// names. Refuses a database migrated by a newer release (a migration it
/// has that this release does not know) or one whose applied migrations
/// differ from these.
pub(super) fn migrate(connection: &mut Connection) -> Result<Vec<String>, StoreError> {
    let migrations = embedded()?;
    adopt_legacy_history(connection, &migrations)?;
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
    super::backfill::backfill(connection)?;
    Ok(applied)
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

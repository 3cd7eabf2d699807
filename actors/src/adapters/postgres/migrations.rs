//! The Postgres migrations (`migrations/postgres/`), embedded and applied by
//! refinery, each in a transaction with its row in `refinery_schema_history`.
//! Instances that start at the same moment take a session advisory lock
//! first, so that each migration runs exactly once.

use refinery::{Migration, Runner};
use tokio_postgres::Client;

use super::super::{MigrateOptions, MigrationReport, RemakeWaits};
use crate::clock::{Clock, SystemClock};
use crate::store::{alive_at, InstanceBeat, StoreError};

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__schema",
        include_str!("../../../../migrations/postgres/V1__schema.sql"),
    ),
    (
        "V2__auto_top_up",
        include_str!("../../../../migrations/postgres/V2__auto_top_up.sql"),
    ),
    (
        "V3__notices_after_message",
        include_str!("../../../../migrations/postgres/V3__notices_after_message.sql"),
    ),
    (
        "V4__auto_top_up_unknown",
        include_str!("../../../../migrations/postgres/V4__auto_top_up_unknown.sql"),
    ),
    (
        "V5__sign_in",
        include_str!("../../../../migrations/postgres/V5__sign_in.sql"),
    ),
    (
        "V6__webhooks",
        include_str!("../../../../migrations/postgres/V6__webhooks.sql"),
    ),
    (
        "V7__refunds_and_reports",
        include_str!("../../../../migrations/postgres/V7__refunds_and_reports.sql"),
    ),
    (
        "V8__webhook_claims",
        include_str!("../../../../migrations/postgres/V8__webhook_claims.sql"),
    ),
    (
        "V9__feed_tickets",
        include_str!("../../../../migrations/postgres/V9__feed_tickets.sql"),
    ),
    (
        "V10__notice_withdrawn",
        include_str!("../../../../migrations/postgres/V10__notice_withdrawn.sql"),
    ),
    (
        "V11__refunds_once",
        include_str!("../../../../migrations/postgres/V11__refunds_once.sql"),
    ),
    (
        "V12__worker_leases",
        include_str!("../../../../migrations/postgres/V12__worker_leases.sql"),
    ),
    (
        "V13__disputes",
        include_str!("../../../../migrations/postgres/V13__disputes.sql"),
    ),
    (
        "V14__stale_reservations",
        include_str!("../../../../migrations/postgres/V14__stale_reservations.sql"),
    ),
    (
        "V15__backups",
        include_str!("../../../../migrations/postgres/V15__backups.sql"),
    ),
    (
        "V16__strangers",
        include_str!("../../../../migrations/postgres/V16__strangers.sql"),
    ),
    (
        "V17__operator",
        include_str!("../../../../migrations/postgres/V17__operator.sql"),
    ),
    (
        "V18__refunds_by_id",
        include_str!("../../../../migrations/postgres/V18__refunds_by_id.sql"),
    ),
    (
        "V20__strangers_second_round",
        include_str!("../../../../migrations/postgres/V20__strangers_second_round.sql"),
    ),
    (
        "V22__strangers_third_round",
        include_str!("../../../../migrations/postgres/V22__strangers_third_round.sql"),
    ),
    (
        "V23__legacy_refund_sweep",
        include_str!("../../../../migrations/postgres/V23__legacy_refund_sweep.sql"),
    ),
    (
        "V24__instance_timeouts",
        include_str!("../../../../migrations/postgres/V24__instance_timeouts.sql"),
    ),
    (
        "V25__legacy_sweep_settled",
        include_str!("../../../../migrations/postgres/V25__legacy_sweep_settled.sql"),
    ),
    (
        "V26__credit_grants",
        include_str!("../../../../migrations/postgres/V26__credit_grants.sql"),
    ),
    (
        "V27__order_receipts",
        include_str!("../../../../migrations/postgres/V27__order_receipts.sql"),
    ),
    (
        "V28__grant_expiry_sweep",
        include_str!("../../../../migrations/postgres/V28__grant_expiry_sweep.sql"),
    ),
    (
        "V29__refunds_told",
        include_str!("../../../../migrations/postgres/V29__refunds_told.sql"),
    ),
];

/// The advisory lock's key: "sms-credit migrations".
const LOCK: i64 = 0x736d_735f_6d69_6772;

fn migration_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Migration(error.to_string())
}

/// A migration that failed, with the database's own words: tokio-postgres
/// says only "db error", and refinery no more than that.
fn migration_failed(error: refinery::Error) -> StoreError {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        if let Some(db) = inner.downcast_ref::<tokio_postgres::error::DbError>() {
            text.push_str(&format!(": {} ({})", db.message(), db.code().code()));
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
        }
        cause = inner.source();
    }
    StoreError::Migration(text)
}

/// The migration that makes credit grants: not applied while an earlier
/// release's server runs on the database.
const GRANTS_MIGRATION: (i32, &str) = (26, "V26__credit_grants");

/// Applies the migrations the database has not had yet, then makes the
/// credit grants of the accounts that have none (and, with
/// `options.remake` and no instance running, makes again those an earlier
/// release's server wrote to after they were made), all under the
/// advisory lock; answers what it did. Applies nothing to a database on
/// which an earlier release's server runs while its credit grants are
/// still to be made (decided under the lock: instances of this release
/// starting together find them made by the first).
pub(super) async fn migrate(
    client: &mut Client,
    options: MigrateOptions,
) -> Result<MigrationReport, StoreError> {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql).map_err(migration_error))
        .collect::<Result<_, _>>()?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await
        .map_err(migration_error)?;
    let migrated = migrate_locked(client, &migrations, options).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await
        .map_err(migration_error);
    let migrated = migrated?;
    unlocked?;
    for name in &migrated.applied {
        tracing::info!(migration = %name, "applied migration");
    }
    Ok(migrated)
}

/// [`migrate`], once the advisory lock is held.
async fn migrate_locked(
    client: &mut Client,
    migrations: &[Migration],
    options: MigrateOptions,
) -> Result<MigrationReport, StoreError> {
    if options.instances_write_here && grants_pending(client).await? {
        let now_ms = SystemClock.now_ms();
        let running = running_instances(client, now_ms, options).await?;
        if !running.is_empty() {
            return Err(super::super::earlier_release_running(
                GRANTS_MIGRATION.1,
                &running,
                now_ms,
                options.fallback_timeout_ms(),
            ));
        }
    }
    let report = Runner::new(migrations)
        .set_abort_missing(true)
        .set_abort_divergent(true)
        .run_async(client)
        .await
        .map_err(migration_failed)?;
    // Accounts an earlier release left without grants get them, from
    // their ledgers (a no-op once every account has them).
    let backfilled = super::backfill::backfill(client).await?;
    let mut migrated = MigrationReport {
        applied: report
            .applied_migrations()
            .iter()
            .map(ToString::to_string)
            .collect(),
        grants_made: backfilled.made,
        left_without_grants: backfilled.left,
        ..MigrationReport::default()
    };
    if options.remake {
        let off = super::backfill::accounts_off(client).await?;
        if !off.is_empty() {
            let now_ms = SystemClock.now_ms();
            let running = if options.instances_write_here {
                running_instances(client, now_ms, options).await?
            } else {
                Vec::new()
            };
            if running.is_empty() {
                let remade = super::backfill::remake_off(client, &off).await?;
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

/// Whether the migration that makes credit grants is still to be applied
/// to a database that has a migration history (one without has no tables,
/// and so no instances).
async fn grants_pending(client: &Client) -> Result<bool, StoreError> {
    if !has_history(client).await? {
        return Ok(false);
    }
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM refinery_schema_history WHERE version = $1)",
            &[&GRANTS_MIGRATION.0],
        )
        .await?;
    Ok(!row.try_get::<_, bool>(0)?)
}

/// The instances alive on the database at `now_ms`, each judged by its own
/// timeout (an earlier release's, which may not say it, by the setting's),
/// as `copy` judges them. A database of a release before instances kept
/// their timeouts has the table without the column.
async fn running_instances(
    client: &Client,
    now_ms: i64,
    options: MigrateOptions,
) -> Result<Vec<InstanceBeat>, StoreError> {
    let columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = 'instances'",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let source = if columns.iter().any(|column| column == "timeout_ms") {
        "instances"
    } else {
        "(SELECT id, heartbeat_at, NULL::bigint AS timeout_ms FROM instances) AS instances"
    };
    let beats = super::accounts::instance_beats_from(client, source).await?;
    Ok(alive_at(beats, now_ms, options.fallback_timeout_ms()))
}

/// Test-only: the migrations up to `last` (inclusive), without the
/// grants' backfill: a database as an earlier release left it.
pub(super) async fn migrate_until(client: &mut Client, last: i32) -> Result<(), StoreError> {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql).map_err(migration_error))
        .collect::<Result<_, _>>()?;
    Runner::new(&migrations)
        .set_target(refinery::Target::Version(last))
        .run_async(client)
        .await
        .map_err(migration_error)?;
    Ok(())
}

/// This release's migrations, as refinery names them (`V{version}__{name}`).
pub(super) fn names() -> impl Iterator<Item = &'static str> {
    MIGRATIONS.iter().map(|(name, _)| *name)
}

/// The migrations recorded in the database, oldest first: version and name.
pub(super) async fn applied_migrations(client: &Client) -> Result<Vec<(i64, String)>, StoreError> {
    let rows = client
        .query(
            "SELECT version::bigint, name::text FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Whether the database has a migration history (any migration applied):
/// one without is no sms-credit database yet.
pub(super) async fn has_history(client: &Client) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

//! The numbered SQL migrations in `migrations/`, embedded in the binary and
//! applied in order at start-up.

use rusqlite::Connection;

use super::StoreError;

/// Every migration: its number, its name and its SQL.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_core",
        include_str!("../../../migrations/0001_core.sql"),
    ),
    (
        2,
        "0002_billing",
        include_str!("../../../migrations/0002_billing.sql"),
    ),
    (
        3,
        "0003_account_tokens",
        include_str!("../../../migrations/0003_account_tokens.sql"),
    ),
    (
        4,
        "0004_messaging",
        include_str!("../../../migrations/0004_messaging.sql"),
    ),
    (
        5,
        "0005_early_statuses",
        include_str!("../../../migrations/0005_early_statuses.sql"),
    ),
];

/// Applies the migrations the database has not had yet, each in a
/// transaction of its own. Refuses a database migrated by a newer release.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let failed = |error: rusqlite::Error| StoreError::Migration(error.to_string());
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT    NOT NULL,
                 applied_at INTEGER NOT NULL
             )",
        )
        .map_err(failed)?;
    let newest_applied: i64 = connection
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(failed)?;
    let newest_known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if newest_applied > newest_known {
        return Err(StoreError::Migration(format!(
            "the database is at migration {newest_applied}, newer than this release knows ({newest_known})"
        )));
    }
    for (version, name, sql) in MIGRATIONS
        .iter()
        .filter(|(version, _, _)| *version > newest_applied)
    {
        let transaction = connection.transaction().map_err(failed)?;
        transaction
            .execute_batch(sql)
            .map_err(|error| StoreError::Migration(format!("{name}: {error}")))?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at)
                 VALUES (?1, ?2, CAST(unixepoch('subsec') * 1000 AS INTEGER))",
                rusqlite::params![version, name],
            )
            .map_err(failed)?;
        transaction.commit().map_err(failed)?;
        tracing::info!(migration = name, "applied migration");
    }
    Ok(())
}

/// The migrations recorded in a database, oldest first.
pub fn applied_migrations(connection: &Connection) -> Result<Vec<(i64, String)>, StoreError> {
    let mut statement =
        connection.prepare("SELECT version, name FROM schema_migrations ORDER BY version")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

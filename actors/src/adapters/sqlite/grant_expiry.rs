//! The sweep of expired grants in SQLite: the grants that expire, read in
//! the sweep's order by the partial index `credit_grants_expiry` (never the
//! ledger), and where the sweep stands (`grant_expiry_sweep`, one row),
//! moved only forward by the writer.

use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::ledger::AccountId;
use crate::store::ports::GrantExpiry;
use crate::store::{GrantExpiryStore, StoreError, StoreFuture};

/// Where the sweep stands, as the one row holds it.
pub(super) fn load_swept_until(connection: &Connection) -> Result<Option<GrantExpiry>, StoreError> {
    let found = connection
        .prepare_cached(
            "SELECT swept_until, swept_account_id, swept_grant_id FROM grant_expiry_sweep WHERE id = 1",
        )?
        .query_row([], |row| {
            Ok((
                row.get::<_, Option<i64>>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        })
        .optional()?;
    match found {
        Some((Some(expires_at_ms), Some(account_id), Some(grant_id))) => Ok(Some(GrantExpiry {
            expires_at_ms,
            account_id: AccountId(account_id),
            grant_id,
        })),
        Some((None, None, None)) => Ok(None),
        // The migration makes the row and a CHECK keeps it whole.
        _ => Err(StoreError::Database(
            "the grant expiry sweep's row is missing or not whole; run sms-credit migrate".into(),
        )),
    }
}

impl GrantExpiryStore for SqliteStore {
    fn swept_until(&self) -> StoreFuture<Option<GrantExpiry>> {
        self.read(load_swept_until)
    }

    fn expired_grants(
        &self,
        after: Option<GrantExpiry>,
        until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<GrantExpiry>> {
        self.read(move |connection| {
            // Before the first grant: below every place.
            let after = after.unwrap_or(GrantExpiry {
                expires_at_ms: i64::MIN,
                account_id: AccountId(i64::MIN),
                grant_id: i64::MIN,
            });
            let mut statement = connection.prepare_cached(
                "SELECT expires_at, account_id, id FROM credit_grants INDEXED BY credit_grants_expiry
                  WHERE expires_at IS NOT NULL AND (expires_at, account_id, id) > (?1, ?2, ?3)
                    AND expires_at <= ?4
                  ORDER BY expires_at, account_id, id LIMIT ?5",
            )?;
            let rows = statement.query_map(
                params![
                    after.expires_at_ms,
                    after.account_id.0,
                    after.grant_id,
                    until_ms,
                    limit
                ],
                |row| {
                    Ok(GrantExpiry {
                        expires_at_ms: row.get(0)?,
                        account_id: AccountId(row.get(1)?),
                        grant_id: row.get(2)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn advance_swept_until(&self, to: GrantExpiry) -> StoreFuture<Option<GrantExpiry>> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE grant_expiry_sweep
                        SET swept_until = ?1, swept_account_id = ?2, swept_grant_id = ?3
                      WHERE id = 1
                        AND (swept_until IS NULL
                             OR (swept_until, swept_account_id, swept_grant_id) < (?1, ?2, ?3))",
                )?
                .execute(params![to.expires_at_ms, to.account_id.0, to.grant_id])?;
            load_swept_until(connection)
        })
    }
}

//! The sweep of expired grants in Postgres: the grants that expire, read in
//! the sweep's order by the partial index `credit_grants_expiry` (never the
//! ledger), and where the sweep stands (`grant_expiry_sweep`, one row),
//! moved only forward: two instances' rounds that advance it at once each
//! take the row in turn, and the one behind changes nothing.

use tokio_postgres::Row;

use super::{boxed, PostgresStore};
use crate::ledger::AccountId;
use crate::store::ports::GrantExpiry;
use crate::store::{GrantExpiryStore, StoreError, StoreFuture};

pub(super) const SWEPT_UNTIL: &str =
    "SELECT swept_until, swept_account_id, swept_grant_id FROM grant_expiry_sweep WHERE id = 1";

/// Where the sweep stands, as the one row holds it.
pub(super) fn swept_until_from(row: Option<Row>) -> Result<Option<GrantExpiry>, StoreError> {
    let found = match row {
        Some(row) => Some((
            row.try_get::<_, Option<i64>>(0)?,
            row.try_get::<_, Option<i64>>(1)?,
            row.try_get::<_, Option<i64>>(2)?,
        )),
        None => None,
    };
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

impl GrantExpiryStore for PostgresStore {
    fn swept_until(&self) -> StoreFuture<Option<GrantExpiry>> {
        self.read(move |client| async move {
            swept_until_from(client.query_opt(SWEPT_UNTIL, &[]).await?)
        })
    }

    fn expired_grants(
        &self,
        after: Option<GrantExpiry>,
        until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<GrantExpiry>> {
        self.read(move |client| async move {
            // Before the first grant: below every place.
            let after = after.unwrap_or(GrantExpiry {
                expires_at_ms: i64::MIN,
                account_id: AccountId(i64::MIN),
                grant_id: i64::MIN,
            });
            let rows = client
                .query(
                    "SELECT expires_at, account_id, id FROM credit_grants
                      WHERE expires_at IS NOT NULL AND (expires_at, account_id, id) > ($1, $2, $3)
                        AND expires_at <= $4
                      ORDER BY expires_at, account_id, id LIMIT $5",
                    &[
                        &after.expires_at_ms,
                        &after.account_id.0,
                        &after.grant_id,
                        &until_ms,
                        &limit,
                    ],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(GrantExpiry {
                        expires_at_ms: row.try_get(0)?,
                        account_id: AccountId(row.try_get(1)?),
                        grant_id: row.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn advance_swept_until(&self, to: GrantExpiry) -> StoreFuture<Option<GrantExpiry>> {
        self.write(move |transaction| {
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE grant_expiry_sweep
                            SET swept_until = $1, swept_account_id = $2, swept_grant_id = $3
                          WHERE id = 1
                            AND (swept_until IS NULL
                                 OR (swept_until, swept_account_id, swept_grant_id) < ($1, $2, $3))",
                        &[&to.expires_at_ms, &to.account_id.0, &to.grant_id],
                    )
                    .await?;
                swept_until_from(transaction.query_opt(SWEPT_UNTIL, &[]).await?)
            })
        })
    }
}

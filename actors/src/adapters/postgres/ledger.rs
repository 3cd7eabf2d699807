//! The ledger and the snapshots in Postgres: the look-ups of the account
//! actors and the feed, and the scans of `verify` (the writer has the
//! guarded append).

use tokio_postgres::{Client, Row};

use super::PostgresStore;
use crate::grants::{
    decode_remaining, Category, CreditGrant, Funding, GrantSource, Priority, Remaining,
};
use crate::ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, Standing, TransactionKind};
use crate::money::Money;
use crate::store::ports::{AccountGrants, Activation, TakenBackRows};
use crate::store::{LedgerStore, LedgerWrite, StoreError, StoreFuture, UnknownValue};
use crate::verify::{Verifier, VerifyReport, VerifyRow};

const ENTRY_COLUMNS: &str =
    "account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at, reason, funded_by";

/// A row's stored `funded_by`, read back exactly or refused.
pub(super) fn funding_from_text(
    text: Option<String>,
    row_name: impl FnOnce() -> String,
) -> Result<Funding, StoreError> {
    match text {
        None => Ok(Funding::NONE),
        Some(text) => Funding::decode(&text).map_err(|_| {
            StoreError::UnknownValue(UnknownValue::new(
                "transactions",
                row_name(),
                "funded_by",
                text,
            ))
        }),
    }
}

/// A snapshot's stored `grants` (`None`: not backfilled).
pub(super) fn remaining_from_text(
    text: Option<String>,
    account_id: AccountId,
) -> Result<Option<Vec<Remaining>>, StoreError> {
    match text {
        None => Ok(None),
        Some(text) => decode_remaining(&text).map(Some).map_err(|_| {
            StoreError::UnknownValue(UnknownValue::new(
                "account_balances",
                account_id,
                "grants",
                text,
            ))
        }),
    }
}

pub(super) const GRANT_COLUMNS: &str =
    "id, category, source, order_id, amount, priority, granted_at, expires_at";

/// A `credit_grants` row from the [`GRANT_COLUMNS`].
pub(super) fn grant_from_row(row: &Row, account_id: AccountId) -> Result<CreditGrant, StoreError> {
    let id: i64 = row.try_get(0)?;
    let unknown = |column: &'static str, value: String| {
        StoreError::UnknownValue(UnknownValue::new(
            "credit_grants",
            format!("account {account_id} grant {id}"),
            column,
            value,
        ))
    };
    let category_text: String = row.try_get(1)?;
    let category = Category::parse(&category_text)
        .ok_or_else(|| unknown("category", category_text.clone()))?;
    let source_text: String = row.try_get(2)?;
    let source =
        GrantSource::parse(&source_text).ok_or_else(|| unknown("source", source_text.clone()))?;
    let priority_value: i64 = row.try_get(5)?;
    let priority = Priority::new(priority_value)
        .map_err(|_| unknown("priority", priority_value.to_string()))?;
    Ok(CreditGrant {
        id,
        category,
        source,
        order_id: row.try_get(3)?,
        amount: Money::from_micros(row.try_get(4)?),
        priority,
        granted_at_ms: row.try_get(6)?,
        expires_at_ms: row.try_get(7)?,
    })
}

/// The lasting facts of an account's grants: those of `ids`, or all.
pub(super) async fn load_grants(
    client: &impl tokio_postgres::GenericClient,
    account_id: AccountId,
    ids: Option<&[i64]>,
) -> Result<Vec<CreditGrant>, StoreError> {
    let rows = match ids {
        Some(ids) => {
            client
                .query(
                    &format!(
                        "SELECT {GRANT_COLUMNS} FROM credit_grants
                          WHERE account_id = $1 AND id = ANY($2) ORDER BY id"
                    ),
                    &[&account_id.0, &ids],
                )
                .await?
        }
        None => {
            client
                .query(
                    &format!(
                    "SELECT {GRANT_COLUMNS} FROM credit_grants WHERE account_id = $1 ORDER BY id"
                ),
                    &[&account_id.0],
                )
                .await?
        }
    };
    rows.iter()
        .map(|row| grant_from_row(row, account_id))
        .collect()
}

fn entry_from_row(row: &Row) -> Result<LedgerEntry, StoreError> {
    entry_from_columns(row, 0)
}

/// A ledger row read from the `ENTRY_COLUMNS` that start at column `first`.
fn entry_from_columns(row: &Row, first: usize) -> Result<LedgerEntry, StoreError> {
    let account_id = AccountId(row.try_get(first)?);
    let seq: i64 = row.try_get(first + 1)?;
    let kind_text: String = row.try_get(first + 2)?;
    let kind = TransactionKind::parse(&kind_text).ok_or_else(|| {
        StoreError::UnknownValue(UnknownValue::new(
            "transactions",
            format!("account {account_id} seq {seq}"),
            "type",
            kind_text,
        ))
    })?;
    Ok(LedgerEntry {
        account_id,
        seq,
        kind,
        amount: Money::from_micros(row.try_get(first + 3)?),
        balance_after: Money::from_micros(row.try_get(first + 4)?),
        idempotency_key: row.try_get(first + 5)?,
        order_id: row.try_get(first + 6)?,
        description: row.try_get(first + 7)?,
        created_at_ms: row.try_get(first + 8)?,
        reason: row.try_get::<_, Option<String>>(first + 9)?.map(Box::new),
        funded_by: funding_from_text(row.try_get(first + 10)?, || {
            format!("account {account_id} seq {seq}")
        })?,
    })
}

fn entries(rows: &[Row]) -> Result<Vec<LedgerEntry>, StoreError> {
    rows.iter().map(entry_from_row).collect()
}

pub(super) fn snapshot_from_row(row: &Row) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        balance: Money::from_micros(row.try_get(0)?),
        seq: row.try_get(1)?,
        low_balance_warned_at_ms: row.try_get(2)?,
    })
}

async fn load_snapshot(
    client: &Client,
    account_id: AccountId,
) -> Result<Option<Snapshot>, StoreError> {
    client
        .query_opt(
            "SELECT balance, seq, low_balance_warned_at FROM account_balances WHERE account_id = $1",
            &[&account_id.0],
        )
        .await?
        .map(|row| snapshot_from_row(&row))
        .transpose()
}

/// Where an account stands: its snapshot and what is left of its grants.
async fn load_standing(
    client: &Client,
    account_id: AccountId,
) -> Result<Option<Standing>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT balance, seq, low_balance_warned_at, grants FROM account_balances
              WHERE account_id = $1",
            &[&account_id.0],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Standing {
        snapshot: snapshot_from_row(&row)?,
        grants: remaining_from_text(row.try_get(3)?, account_id)?,
    }))
}

async fn list_entries(
    client: &Client,
    account_id: AccountId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ),
            &[&account_id.0, &after_seq, &limit],
        )
        .await?;
    entries(&rows)
}

/// The rows of an account from seq `first` to `last`, in order.
pub(super) async fn entries_between(
    client: &Client,
    account_id: AccountId,
    first: i64,
    last: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    list_entries(client, account_id, first - 1, last - first + 1).await
}

/// Feeds every ledger row (with its account's snapshot), then every
/// account without rows, to a [`Verifier`], all read in one snapshot of the
/// database (a repeatable-read transaction on a connection of its own).
pub(super) async fn verify(client: &mut Client) -> Result<VerifyReport, StoreError> {
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let report = verify_in(&transaction).await?;
    transaction.commit().await?;
    Ok(report)
}

/// [`verify`] inside a transaction the caller holds (a copy's import
/// checks what it wrote before it commits).
pub(super) async fn verify_in(
    transaction: &impl tokio_postgres::GenericClient,
) -> Result<VerifyReport, StoreError> {
    let mut verifier = Verifier::new();
    let rows = transaction
        .query_raw(
            "SELECT t.account_id, t.seq, t.type, t.amount, t.balance_after, b.balance, b.seq,
                    t.funded_by, g.amount, g.category, b.grants,
                g.expires_at, t.created_at, t.order_id
               FROM transactions t
               LEFT JOIN account_balances b ON b.account_id = t.account_id
               LEFT JOIN credit_grants g ON g.account_id = t.account_id AND g.id = t.seq
              ORDER BY t.account_id, t.seq",
            std::iter::empty::<i64>(),
        )
        .await?;
    futures_util::pin_mut!(rows);
    while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
        let balance: Option<i64> = row.try_get(5)?;
        let seq: Option<i64> = row.try_get(6)?;
        let made_amount: Option<i64> = row.try_get(8)?;
        let made_category: Option<String> = row.try_get(9)?;
        verifier.row(VerifyRow {
            account_id: AccountId(row.try_get(0)?),
            seq: row.try_get(1)?,
            kind: row.try_get(2)?,
            amount: row.try_get(3)?,
            balance_after: row.try_get(4)?,
            funded_by: row.try_get(7)?,
            made: made_amount.zip(made_category),
            snapshot: balance.zip(seq),
            snapshot_grants: row.try_get(10)?,
            made_expires_at: row.try_get(11)?,
            created_at: row.try_get(12)?,
            order_id: row.try_get(13)?,
        });
    }
    let accounts = transaction
        .query(
            "SELECT a.id, b.balance, b.seq, b.grants FROM accounts a
               LEFT JOIN account_balances b ON b.account_id = a.id
              WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.account_id = a.id)
              ORDER BY a.id",
            &[],
        )
        .await?;
    for row in accounts {
        let balance: Option<i64> = row.try_get(1)?;
        let seq: Option<i64> = row.try_get(2)?;
        verifier.account_without_rows(
            AccountId(row.try_get(0)?),
            balance.zip(seq),
            row.try_get(3)?,
        );
    }
    Ok(verifier.finish())
}

impl LedgerStore for PostgresStore {
    fn submit(&self, write: LedgerWrite) -> Result<(), StoreError> {
        self.writer
            .send(super::WriterMessage::Ledger(Box::new(write)))
            .map_err(|_| StoreError::Closed)
    }

    fn snapshot(&self, account_id: AccountId) -> StoreFuture<Option<Snapshot>> {
        self.read(move |client| async move { load_snapshot(&client, account_id).await })
    }

    fn activation(&self, account_id: AccountId) -> StoreFuture<Option<Activation>> {
        // Two statements: a grant the snapshot names was inserted in the
        // transaction that named it first, so the second finds it.
        self.read(move |client| async move {
            let Some(standing) = load_standing(&client, account_id).await? else {
                return Ok(None);
            };
            let ids: Vec<i64> = standing
                .grants
                .iter()
                .flatten()
                .map(|grant| grant.grant_id)
                .filter(|id| *id != crate::grants::SHORTFALL)
                .collect();
            let facts = if ids.is_empty() {
                Vec::new()
            } else {
                load_grants(&*client, account_id, Some(&ids)).await?
            };
            // When the last row was dated, only where an expiry row may
            // follow it (a committed row never changes: any statement
            // finds it as the snapshot's).
            let seq = standing.snapshot.seq;
            let last_row_at_ms =
                if seq > 0 && facts.iter().any(|fact| fact.expires_at_ms.is_some()) {
                    let row = client
                        .query_opt(
                            "SELECT created_at FROM transactions WHERE account_id = $1 AND seq = $2",
                            &[&account_id.0, &seq],
                        )
                        .await?
                        .ok_or_else(|| {
                            StoreError::Database(format!(
                                "account {account_id}: its snapshot is at seq {seq}, but the ledger has no such row"
                            ))
                        })?;
                    Some(row.try_get::<_, i64>(0)?)
                } else {
                    None
                };
            Ok(Some(Activation {
                standing,
                facts,
                last_row_at_ms,
            }))
        })
    }

    fn grants_by_id(&self, account_id: AccountId, ids: Vec<i64>) -> StoreFuture<Vec<CreditGrant>> {
        self.read(move |client| async move { load_grants(&*client, account_id, Some(&ids)).await })
    }

    fn account_grants(&self, account_id: AccountId) -> StoreFuture<Option<AccountGrants>> {
        self.read(move |client| async move {
            let Some(standing) = load_standing(&client, account_id).await? else {
                return Ok(None);
            };
            Ok(Some(AccountGrants {
                grants: load_grants(&*client, account_id, None).await?,
                remaining: standing.grants,
            }))
        })
    }

    fn entry_by_key(
        &self,
        account_id: AccountId,
        key: IdempotencyKey,
    ) -> StoreFuture<Option<LedgerEntry>> {
        self.read(move |client| async move {
            client
                .query_opt(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = $1 AND idempotency_key = $2"
                    ),
                    &[&account_id.0, &key.as_str()],
                )
                .await?
                .map(|row| entry_from_row(&row))
                .transpose()
        })
    }

    fn entries_after(
        &self,
        account_id: AccountId,
        after_seq: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LedgerEntry>> {
        self.read(
            move |client| async move { list_entries(&client, account_id, after_seq, limit).await },
        )
    }

    fn latest_entries(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<LedgerEntry>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = $1 ORDER BY seq DESC LIMIT $2"
                    ),
                    &[&account_id.0, &limit],
                )
                .await?;
            entries(&rows)
        })
    }

    fn ever_reached(&self, account_id: AccountId, amount: Money) -> StoreFuture<bool> {
        self.read(move |client| async move {
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = $1 AND balance_after >= $2)",
                    &[&account_id.0, &amount.micros()],
                )
                .await?;
            Ok(row.try_get::<_, bool>(0)?)
        })
    }

    fn taken_back(&self, account_id: AccountId, order_id: i64) -> StoreFuture<TakenBackRows> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT seq, amount, funded_by FROM transactions
                      WHERE order_id = $2 AND account_id = $1 AND type = 'refund'
                      ORDER BY seq",
                    &[&account_id.0, &order_id],
                )
                .await?;
            let mut taken = Vec::with_capacity(rows.len());
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                let funding = funding_from_text(row.try_get(2)?, || {
                    format!("account {account_id} seq {seq}")
                })?;
                taken.push((Money::from_micros(row.try_get(1)?), funding));
            }
            TakenBackRows::of_rows(order_id, taken)
        })
    }

    fn snapshot_and_entries_after(
        &self,
        account_id: AccountId,
        after_seq: i64,
        limit: i64,
    ) -> StoreFuture<(Option<Snapshot>, Vec<LedgerEntry>)> {
        // One statement: one snapshot of the database.
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT b.balance, b.seq, b.low_balance_warned_at, t.*
                           FROM account_balances b
                           LEFT JOIN LATERAL (SELECT {ENTRY_COLUMNS} FROM transactions
                                               WHERE account_id = b.account_id AND seq > $2
                                               ORDER BY seq LIMIT $3) t ON true
                          WHERE b.account_id = $1
                          ORDER BY t.seq"
                    ),
                    &[&account_id.0, &after_seq, &limit],
                )
                .await?;
            let Some(first) = rows.first() else {
                return Ok((None, Vec::new()));
            };
            let snapshot = snapshot_from_row(first)?;
            let mut found = Vec::new();
            for row in &rows {
                if row.try_get::<_, Option<i64>>(3)?.is_none() {
                    continue;
                }
                found.push(entry_from_columns(row, 3)?);
            }
            Ok((Some(snapshot), found))
        })
    }

    fn verify(&self) -> StoreFuture<VerifyReport> {
        let connector = self.readers.connector.clone();
        Box::pin(async move {
            let mut client = connector.connect(None).await?;
            verify(&mut client).await
        })
    }

    fn flush(&self) -> StoreFuture<()> {
        self.flush_writer()
    }

    fn ping(&self) -> StoreFuture<()> {
        self.read(move |client| async move {
            client.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
    }
}

//! Disputes, and what an order's disputes and refunds claim of its credit,
//! in Postgres. A dispute is recorded by one upsert, so two
//! instances moving it at once both move it forward.

use tokio_postgres::{GenericClient, Row};

use super::{boxed, PostgresStore};
use crate::billing::disputes::{
    DisputeFunds, DisputeRecord, DisputeStatus, DisputeUpdate, OrderClaims, StoredClaim,
};
use crate::billing::stripe_refunds::RefundStanding;
use crate::ledger::AccountId;
use crate::money::Money;
use crate::reports::OpenDispute;
use crate::store::{StoreError, StoreFuture, UnknownValue};

const DISPUTE_COLUMNS: &str = "dispute_id, order_id, account_id, charge_id, amount, reason, \
                               status, funds, respond_by, created_at, updated_at";

fn status_of(row: &Row, id: &str, column: usize) -> Result<DisputeStatus, StoreError> {
    let status: String = row.try_get(column)?;
    DisputeStatus::parse(&status).ok_or_else(|| {
        StoreError::UnknownValue(UnknownValue::new("disputes", id, "status", status.clone()))
    })
}

fn dispute_from_row(row: &Row) -> Result<DisputeRecord, StoreError> {
    let dispute_id: String = row.try_get(0)?;
    let funds: String = row.try_get(7)?;
    Ok(DisputeRecord {
        order_id: row.try_get(1)?,
        account_id: AccountId(row.try_get(2)?),
        charge_id: row.try_get(3)?,
        amount: Money::from_micros(row.try_get(4)?),
        reason: row.try_get(5)?,
        status: status_of(row, &dispute_id, 6)?,
        funds: DisputeFunds::parse(&funds).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "disputes",
                &dispute_id,
                "funds",
                funds.clone(),
            ))
        })?,
        respond_by_ms: row.try_get(8)?,
        created_at_ms: row.try_get(9)?,
        updated_at_ms: row.try_get(10)?,
        dispute_id,
    })
}

/// The rank of a dispute's funds (they only move up) and of its status
/// (an inquiry, a chargeback, closed: never moved down).
fn funds_rank(column: &str) -> String {
    format!("CASE {column} WHEN 'none' THEN 0 WHEN 'withdrawn' THEN 1 ELSE 2 END")
}

fn status_rank(column: &str) -> String {
    format!(
        "CASE WHEN {column} IN ('warning_closed', 'won', 'lost', 'prevented') THEN 2 \
         WHEN {column} IN ('needs_response', 'under_review') THEN 1 ELSE 0 END"
    )
}

pub(super) async fn open_disputes(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<OpenDispute>, StoreError> {
    client
        .query(
            "SELECT dispute_id, account_id, order_id, amount, status, reason, respond_by, created_at
               FROM disputes
              WHERE status NOT IN ('warning_closed', 'won', 'lost', 'prevented')
              ORDER BY respond_by IS NULL, respond_by, created_at, dispute_id LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(|row| {
            let dispute_id: String = row.try_get(0)?;
            Ok(OpenDispute {
                account_id: row.try_get(1)?,
                order_id: row.try_get(2)?,
                amount_micros: row.try_get(3)?,
                status: status_of(row, &dispute_id, 4)?,
                reason: row.try_get(5)?,
                respond_by_ms: row.try_get(6)?,
                created_at_ms: row.try_get(7)?,
                dispute_id,
            })
        })
        .collect()
}

impl PostgresStore {
    pub(super) fn record_dispute_op(&self, update: DisputeUpdate) -> StoreFuture<DisputeRecord> {
        let sql = format!(
            "INSERT INTO disputes ({DISPUTE_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
             ON CONFLICT (dispute_id) DO UPDATE SET
                 amount = excluded.amount,
                 reason = excluded.reason,
                 respond_by = COALESCE(excluded.respond_by, disputes.respond_by),
                 status = CASE WHEN {new_status} >= {old_status}
                               THEN excluded.status ELSE disputes.status END,
                 funds = CASE WHEN {new_funds} > {old_funds}
                              THEN excluded.funds ELSE disputes.funds END,
                 updated_at = excluded.updated_at
             RETURNING {DISPUTE_COLUMNS}",
            new_status = status_rank("excluded.status"),
            old_status = status_rank("disputes.status"),
            new_funds = funds_rank("excluded.funds"),
            old_funds = funds_rank("disputes.funds"),
        );
        self.write(move |transaction| {
            let (sql, update) = (sql.clone(), update.clone());
            boxed(async move {
                let row = transaction
                    .query_one(
                        &sql,
                        &[
                            &update.dispute_id,
                            &update.order_id,
                            &update.account_id.0,
                            &update.charge_id,
                            &update.amount.micros(),
                            &update.reason,
                            &update.status.as_str(),
                            &update.funds.as_str(),
                            &update.respond_by_ms,
                            &update.now_ms,
                        ],
                    )
                    .await?;
                dispute_from_row(&row)
            })
        })
    }

    /// Every claim on an order's credit, in one statement (one moment):
    /// its refunds with their standing, its disputes with their funds, and
    /// a row that says the order exists.
    pub(super) fn claims_op(&self, order_id: i64) -> StoreFuture<Option<OrderClaims>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT 'refund', refund_id, amount, standing FROM stripe_refunds
                      WHERE order_id = $1
                     UNION ALL
                     SELECT 'dispute', dispute_id, amount, funds FROM disputes
                      WHERE order_id = $1
                     UNION ALL
                     SELECT 'order', '', 0::BIGINT, '' FROM orders WHERE id = $1",
                    &[&order_id],
                )
                .await?;
            let (mut claims, mut order_found) = (Vec::new(), false);
            for row in rows {
                let what: &str = row.try_get(0)?;
                let id: String = row.try_get(1)?;
                let amount = Money::from_micros(row.try_get(2)?);
                let value: String = row.try_get(3)?;
                let unknown = |table, column| {
                    StoreError::UnknownValue(UnknownValue::new(table, &id, column, value.clone()))
                };
                match what {
                    "refund" => claims.push(StoredClaim::Refund(
                        amount,
                        RefundStanding::parse(&value)
                            .ok_or_else(|| unknown("stripe_refunds", "standing"))?,
                    )),
                    "dispute" => claims.push(StoredClaim::Dispute(
                        amount,
                        DisputeFunds::parse(&value).ok_or_else(|| unknown("disputes", "funds"))?,
                    )),
                    _ => order_found = true,
                }
            }
            if !order_found {
                return Ok(None);
            }
            OrderClaims::of(&claims).map(Some).map_err(|error| {
                StoreError::Database(format!("order {order_id}'s claims: {error}"))
            })
        })
    }
}

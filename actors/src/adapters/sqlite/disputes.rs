//! Disputes, and what an order's disputes and refunds claim of its credit,
//! in SQLite (one writer: a dispute's upsert and its reads are never
//! interleaved with another's).

use rusqlite::{params, Connection, Row};

use super::SqliteStore;
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

fn status_of(row: &Row<'_>, id: &str, column: usize) -> rusqlite::Result<DisputeStatus> {
    let status: String = row.get(column)?;
    DisputeStatus::parse(&status).ok_or_else(|| {
        UnknownValue::new("disputes", id, "status", status.clone()).into_sql_error(column)
    })
}

fn dispute_from_row(row: &Row<'_>) -> rusqlite::Result<DisputeRecord> {
    let dispute_id: String = row.get(0)?;
    let funds: String = row.get(7)?;
    Ok(DisputeRecord {
        order_id: row.get(1)?,
        account_id: AccountId(row.get(2)?),
        charge_id: row.get(3)?,
        amount: Money::from_micros(row.get(4)?),
        reason: row.get(5)?,
        status: status_of(row, &dispute_id, 6)?,
        funds: DisputeFunds::parse(&funds).ok_or_else(|| {
            UnknownValue::new("disputes", &dispute_id, "funds", funds.clone()).into_sql_error(7)
        })?,
        respond_by_ms: row.get(8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
        dispute_id,
    })
}

/// The rank of a dispute's funds (they only move up) and of its status
/// (an inquiry, a chargeback, closed: never moved down), in SQL.
const FUNDS_RANK: &str = "CASE {} WHEN 'none' THEN 0 WHEN 'withdrawn' THEN 1 ELSE 2 END";
const STATUS_RANK: &str = "CASE WHEN {0} IN ('warning_closed', 'won', 'lost', 'prevented') THEN 2 \
                           WHEN {0} IN ('needs_response', 'under_review') THEN 1 ELSE 0 END";

/// The upsert that records a dispute or moves it forward.
fn record_dispute_sql(placeholders: [&str; 11]) -> String {
    let rank = |template: &str, column: &str| template.replace("{}", column).replace("{0}", column);
    let [id, order, account, charge, amount, reason, status, funds, respond_by, created, updated] =
        placeholders;
    format!(
        "INSERT INTO disputes ({DISPUTE_COLUMNS})
         VALUES ({id}, {order}, {account}, {charge}, {amount}, {reason}, {status}, {funds},
                 {respond_by}, {created}, {updated})
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
        new_status = rank(STATUS_RANK, "excluded.status"),
        old_status = rank(STATUS_RANK, "disputes.status"),
        new_funds = rank(FUNDS_RANK, "excluded.funds"),
        old_funds = rank(FUNDS_RANK, "disputes.funds"),
    )
}

/// Every claim on an order's credit, in one statement (one moment): its
/// refunds with their standing, its disputes with their funds, and a row
/// that says the order exists.
const CLAIMS_SQL: &str = "SELECT 'refund', refund_id, amount, standing FROM stripe_refunds
                           WHERE order_id = ?1
                          UNION ALL
                          SELECT 'dispute', dispute_id, amount, funds FROM disputes
                           WHERE order_id = ?1
                          UNION ALL
                          SELECT 'order', '', 0, '' FROM orders WHERE id = ?1";

/// The disputes not closed, the one due first first.
fn open_disputes_sql(limit: &str) -> String {
    format!(
        "SELECT dispute_id, account_id, order_id, amount, status, reason, respond_by, created_at
           FROM disputes
          WHERE status NOT IN ('warning_closed', 'won', 'lost', 'prevented')
          ORDER BY respond_by IS NULL, respond_by, created_at, dispute_id LIMIT {limit}"
    )
}

pub(super) fn open_disputes(
    connection: &Connection,
    limit: i64,
) -> Result<Vec<OpenDispute>, StoreError> {
    Ok(connection
        .prepare_cached(&open_disputes_sql("?1"))?
        .query_map([limit], |row| {
            let dispute_id: String = row.get(0)?;
            Ok(OpenDispute {
                account_id: row.get(1)?,
                order_id: row.get(2)?,
                amount_micros: row.get(3)?,
                status: status_of(row, &dispute_id, 4)?,
                reason: row.get(5)?,
                respond_by_ms: row.get(6)?,
                created_at_ms: row.get(7)?,
                dispute_id,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

impl SqliteStore {
    pub(super) fn record_dispute_op(&self, update: DisputeUpdate) -> StoreFuture<DisputeRecord> {
        self.write(move |connection| {
            let sql = record_dispute_sql([
                "?1", "?2", "?3", "?4", "?5", "?6", "?7", "?8", "?9", "?10", "?10",
            ]);
            Ok(connection.prepare_cached(&sql)?.query_row(
                params![
                    update.dispute_id,
                    update.order_id,
                    update.account_id.0,
                    update.charge_id,
                    update.amount.micros(),
                    update.reason,
                    update.status.as_str(),
                    update.funds.as_str(),
                    update.respond_by_ms,
                    update.now_ms,
                ],
                dispute_from_row,
            )?)
        })
    }

    pub(super) fn claims_op(&self, order_id: i64) -> StoreFuture<Option<OrderClaims>> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(CLAIMS_SQL)?;
            let mut rows = statement.query([order_id])?;
            let (mut claims, mut order_found) = (Vec::new(), false);
            while let Some(row) = rows.next()? {
                let what: String = row.get(0)?;
                let id: String = row.get(1)?;
                let amount = Money::from_micros(row.get(2)?);
                let value: String = row.get(3)?;
                let unknown = |table, column| {
                    StoreError::UnknownValue(UnknownValue::new(table, &id, column, value.clone()))
                };
                match what.as_str() {
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

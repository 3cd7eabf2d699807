//! Stripe's refunds of orders' payments, each recorded once by its id, in
//! SQLite (one writer: a recording and its reads are never interleaved
//! with another's), with the order's refunded figure they make.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteStore;
use crate::billing::stripe_refunds::{
    legacy_refund_id, standing_after, LegacyOrder, OrderRefunds, RecordedBy, RefundStanding,
    RefundsAsRead, RefundsSeen, StripeRefund, SweepMarks,
};
use crate::billing::BillingError;
use crate::money::Money;
use crate::store::{StoreError, StoreFuture, UnknownValue};
use crate::webhooks::NewEvent;

/// The records that make an order the legacy sweep's: a legacy record, or
/// its replacement not yet settled, that the sweep has not left.
const SWEPT: &str = "sweep_left_because IS NULL
                     AND (standing = 'legacy' OR (standing = 'replaced' AND settled_at IS NULL))";

const REFUND_COLUMNS: &str =
    "refund_id, order_id, amount, standing, stripe_status, recorded_by, recorded_at, updated_at,
     told, claimed_until, settled_at, sweep_left_because";

fn refund_from_row(row: &Row<'_>) -> rusqlite::Result<StripeRefund> {
    let refund_id: String = row.get(0)?;
    let standing: String = row.get(3)?;
    let recorded_by: String = row.get(5)?;
    let standing = RefundStanding::parse(&standing).ok_or_else(|| {
        UnknownValue::new("stripe_refunds", &refund_id, "standing", standing.clone())
            .into_sql_error(3)
    })?;
    let told: i64 = row.get(8)?;
    let told = match told {
        0 => false,
        1 => true,
        other => {
            return Err(
                UnknownValue::new("stripe_refunds", &refund_id, "told", other.to_string())
                    .into_sql_error(8),
            )
        }
    };
    let (claimed_until, settled_at, left_because): (Option<i64>, Option<i64>, Option<String>) =
        (row.get(9)?, row.get(10)?, row.get(11)?);
    let sweep = SweepMarks::read(standing, claimed_until, settled_at, left_because).map_err(
        |(column, value)| {
            let index = match column {
                "claimed_until" => 9,
                "settled_at" => 10,
                _ => 11,
            };
            UnknownValue::new("stripe_refunds", &refund_id, column, value).into_sql_error(index)
        },
    )?;
    Ok(StripeRefund {
        order_id: row.get(1)?,
        amount: Money::from_micros(row.get(2)?),
        standing,
        told,
        sweep,
        stripe_status: row.get(4)?,
        recorded_by: RecordedBy::parse(&recorded_by).ok_or_else(|| {
            UnknownValue::new(
                "stripe_refunds",
                &refund_id,
                "recorded_by",
                recorded_by.clone(),
            )
            .into_sql_error(5)
        })?,
        recorded_at_ms: row.get(6)?,
        updated_at_ms: row.get(7)?,
        refund_id,
    })
}

pub(super) fn refunds_of_order(
    connection: &Connection,
    order_id: i64,
) -> Result<Vec<StripeRefund>, StoreError> {
    Ok(connection
        .prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM stripe_refunds WHERE order_id = ?1
              ORDER BY recorded_at, rowid"
        ))?
        .query_map([order_id], refund_from_row)?
        .collect::<Result<Vec<_>, _>>()?)
}

fn refund_by_id(
    connection: &Connection,
    refund_id: &str,
) -> Result<Option<StripeRefund>, StoreError> {
    Ok(connection
        .prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM stripe_refunds WHERE refund_id = ?1"
        ))?
        .query_row([refund_id], refund_from_row)
        .optional()?)
}

/// [`crate::store::BillingStore::record_refunds`].
fn record_refunds(
    connection: &Connection,
    seen: &RefundsSeen,
) -> Result<OrderRefunds, BillingError> {
    let order_id = seen.order_id;
    let paid: Option<i64> = connection
        .prepare_cached("SELECT amount FROM orders WHERE id = ?1")
        .and_then(|mut statement| statement.query_row([order_id], |row| row.get(0)).optional())
        .map_err(StoreError::from)?;
    let paid = paid.ok_or(BillingError::OrderNotFound(order_id))?;
    let mut changed = Vec::new();
    // A legacy record replaced now: the refunds recorded with its
    // replacement that it held back are marked so.
    let mut replaced_now = false;
    if seen.replace_legacy {
        let legacy = legacy_refund_id(order_id);
        let replaced = connection
            .prepare_cached(
                "UPDATE stripe_refunds SET standing = 'replaced', updated_at = ?3
                  WHERE refund_id = ?1 AND order_id = ?2 AND standing = 'legacy'",
            )
            .and_then(|mut statement| statement.execute(params![legacy, order_id, seen.now_ms]))
            .map_err(StoreError::from)?;
        if replaced == 1 {
            changed.push(legacy);
            replaced_now = true;
        }
    }
    for refund in &seen.refunds {
        let recorded = refund_by_id(connection, &refund.refund_id)?;
        let Some(standing) = standing_after(recorded.as_ref(), refund, order_id)? else {
            continue;
        };
        let recorded_by = if replaced_now && refund.held_by_legacy {
            RecordedBy::LegacyReplacement
        } else {
            RecordedBy::Event
        };
        let written = if recorded.is_none() {
            connection
                .prepare_cached(
                    "INSERT INTO stripe_refunds (refund_id, order_id, amount, standing,
                                                 stripe_status, recorded_by, recorded_at,
                                                 updated_at, told)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        refund.refund_id,
                        order_id,
                        refund.amount.micros(),
                        standing.as_str(),
                        refund.stripe_status,
                        recorded_by.as_str(),
                        seen.now_ms,
                        i64::from(recorded_by.told_before())
                    ])
                })
        } else {
            connection
                .prepare_cached(
                    "UPDATE stripe_refunds SET standing = ?2, stripe_status = ?3, updated_at = ?4
                      WHERE refund_id = ?1",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        refund.refund_id,
                        standing.as_str(),
                        refund.stripe_status,
                        seen.now_ms
                    ])
                })
        };
        written.map_err(StoreError::from)?;
        changed.push(refund.refund_id.clone());
    }
    if !changed.is_empty() {
        // A replaced record's order is settled with the refunds recorded
        // when it was marked: one recorded (or failed) since is the
        // sweep's again, until a settling after it marks it anew.
        connection
            .prepare_cached(
                "UPDATE stripe_refunds SET settled_at = NULL
                  WHERE refund_id = ?1 AND order_id = ?2 AND standing = 'replaced'
                    AND settled_at IS NOT NULL",
            )
            .and_then(|mut statement| {
                statement.execute(params![legacy_refund_id(order_id), order_id])
            })
            .map_err(StoreError::from)?;
    }
    let refunds = OrderRefunds {
        refunds: refunds_of_order(connection, order_id)?,
        changed,
    };
    let figure = refunds
        .standing()
        .map_err(|error| StoreError::Database(format!("order {order_id}'s refunds: {error}")))?;
    set_refunded_figure(connection, order_id, figure, paid)?;
    Ok(refunds)
}

/// The order's refunded figure: what its refunds that stand come to. An
/// order refunded in full is `refunded`, and `completed` again when a
/// refund that failed brings it below.
fn set_refunded_figure(
    connection: &Connection,
    order_id: i64,
    figure: Money,
    paid: i64,
) -> Result<(), StoreError> {
    let status = if figure.micros() >= paid {
        "refunded"
    } else {
        "completed"
    };
    connection
        .prepare_cached(
            "UPDATE orders SET amount_refunded = ?2,
                    status = CASE WHEN status IN ('completed', 'refunded') THEN ?3 ELSE status END
              WHERE id = ?1",
        )?
        .execute(params![order_id, figure.micros(), status])?;
    Ok(())
}

impl SqliteStore {
    pub(super) fn record_refunds_op(
        &self,
        seen: RefundsSeen,
    ) -> StoreFuture<OrderRefunds, BillingError> {
        self.write(move |connection| record_refunds(connection, &seen))
    }

    pub(super) fn stripe_refunds_op(&self, order_id: i64) -> StoreFuture<Vec<StripeRefund>> {
        self.read(move |connection| refunds_of_order(connection, order_id))
    }

    pub(super) fn claim_legacy_orders_op(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LegacyOrder>> {
        self.write(move |connection| {
            let claimed: Vec<i64> = connection
                .prepare_cached(&format!(
                    "UPDATE stripe_refunds SET claimed_until = ?2
                      WHERE refund_id IN (SELECT refund_id FROM stripe_refunds
                                           WHERE {SWEPT}
                                             AND (claimed_until IS NULL OR claimed_until <= ?1)
                                           ORDER BY order_id LIMIT ?3)
                     RETURNING order_id"
                ))?
                .query_map(params![now_ms, lease_until_ms, limit], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut orders = Vec::with_capacity(claimed.len());
            for order_id in claimed {
                let payment_intent_id: Option<String> = connection
                    .prepare_cached("SELECT stripe_payment_intent_id FROM orders WHERE id = ?1")?
                    .query_row([order_id], |row| row.get(0))?;
                orders.push(LegacyOrder {
                    order_id,
                    payment_intent_id,
                });
            }
            orders.sort_by_key(|order| order.order_id);
            Ok(orders)
        })
    }

    pub(super) fn legacy_orders_left_op(&self) -> StoreFuture<i64> {
        self.read(|connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM stripe_refunds WHERE {SWEPT}"
                ))?
                .query_row([], |row| row.get(0))?)
        })
    }

    pub(super) fn newest_payment_intent_op(
        &self,
        excluding: Vec<i64>,
    ) -> StoreFuture<Option<String>> {
        self.read(move |connection| {
            // Newest first: the few excluded are skipped in the walk down
            // the primary key (no list of parameters to build).
            let mut newest = connection.prepare_cached(
                "SELECT id, stripe_payment_intent_id FROM orders
                  WHERE stripe_payment_intent_id IS NOT NULL
                  ORDER BY id DESC LIMIT ?1",
            )?;
            let wanted = i64::try_from(excluding.len())
                .unwrap_or(i64::MAX)
                .saturating_add(1);
            let rows = newest.query_map([wanted], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (order_id, payment_intent_id) = row?;
                if !excluding.contains(&order_id) {
                    return Ok(Some(payment_intent_id));
                }
            }
            Ok(None)
        })
    }

    pub(super) fn release_legacy_claims_op(
        &self,
        order_ids: Vec<i64>,
        lease_until_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            let mut release = connection.prepare_cached(
                "UPDATE stripe_refunds SET claimed_until = NULL
                  WHERE refund_id = ?1 AND order_id = ?2 AND claimed_until = ?3",
            )?;
            for order_id in &order_ids {
                release.execute(params![
                    legacy_refund_id(*order_id),
                    order_id,
                    lease_until_ms
                ])?;
            }
            Ok(())
        })
    }

    pub(super) fn legacy_replacement_settled_op(
        &self,
        order_id: i64,
        as_read: RefundsAsRead,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            Ok(connection
                .prepare_cached(
                    "UPDATE stripe_refunds SET settled_at = ?3, claimed_until = NULL
                      WHERE refund_id = ?1 AND order_id = ?2 AND standing = 'replaced'
                        AND settled_at IS NULL
                        AND (SELECT COUNT(*) FROM stripe_refunds r WHERE r.order_id = ?2) = ?4
                        AND (SELECT COUNT(*) FROM stripe_refunds r
                              WHERE r.order_id = ?2 AND r.standing = 'failed') = ?5",
                )?
                .execute(params![
                    legacy_refund_id(order_id),
                    order_id,
                    now_ms,
                    as_read.recorded,
                    as_read.failed
                ])?
                == 1)
        })
    }

    pub(super) fn tell_refund_op(&self, refund_id: String, event: NewEvent) -> StoreFuture<bool> {
        self.write(move |connection| {
            let marked = connection
                .prepare_cached(
                    "UPDATE stripe_refunds SET told = 1 WHERE refund_id = ?1 AND told = 0",
                )?
                .execute([&refund_id])?;
            if marked == 0 {
                return Ok(false);
            }
            super::webhooks::insert_events(connection, std::slice::from_ref(&event))?;
            Ok(true)
        })
    }

    pub(super) fn leave_legacy_record_op(
        &self,
        order_id: i64,
        because: String,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            Ok(connection
                .prepare_cached(
                    "UPDATE stripe_refunds SET sweep_left_because = ?3, claimed_until = NULL
                      WHERE refund_id = ?1 AND order_id = ?2
                        AND standing IN ('legacy', 'replaced') AND sweep_left_because IS NULL",
                )?
                .execute(params![legacy_refund_id(order_id), order_id, because])?
                == 1)
        })
    }
}

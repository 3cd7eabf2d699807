//! Stripe's refunds of orders' payments, each recorded once by its id, in
//! Postgres, with the order's refunded figure they make. A recording locks
//! the order's row first, so two instances recording refunds of one order
//! at once record them one after the other, each seeing the other's.

use tokio_postgres::{GenericClient, Row, Transaction};

use super::{boxed, PostgresStore};
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

fn refund_from_row(row: &Row) -> Result<StripeRefund, StoreError> {
    let refund_id: String = row.try_get(0)?;
    let standing: String = row.try_get(3)?;
    let recorded_by: String = row.try_get(5)?;
    let unknown = |column: &'static str, value: String| {
        StoreError::UnknownValue(UnknownValue::new(
            "stripe_refunds",
            &refund_id,
            column,
            value,
        ))
    };
    let standing =
        RefundStanding::parse(&standing).ok_or_else(|| unknown("standing", standing.clone()))?;
    let told = match row.try_get::<_, i64>(8)? {
        0 => false,
        1 => true,
        other => return Err(unknown("told", other.to_string())),
    };
    let (claimed_until, settled_at, left_because): (Option<i64>, Option<i64>, Option<String>) =
        (row.try_get(9)?, row.try_get(10)?, row.try_get(11)?);
    let sweep = SweepMarks::read(standing, claimed_until, settled_at, left_because)
        .map_err(|(column, value)| unknown(column, value))?;
    Ok(StripeRefund {
        order_id: row.try_get(1)?,
        amount: Money::from_micros(row.try_get(2)?),
        standing,
        told,
        sweep,
        stripe_status: row.try_get(4)?,
        recorded_by: RecordedBy::parse(&recorded_by).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "stripe_refunds",
                &refund_id,
                "recorded_by",
                recorded_by.clone(),
            ))
        })?,
        recorded_at_ms: row.try_get(6)?,
        updated_at_ms: row.try_get(7)?,
        refund_id,
    })
}

async fn refunds_of_order(
    client: &impl GenericClient,
    order_id: i64,
) -> Result<Vec<StripeRefund>, StoreError> {
    client
        .query(
            &format!(
                "SELECT {REFUND_COLUMNS} FROM stripe_refunds WHERE order_id = $1
                  ORDER BY recorded_at, refund_id"
            ),
            &[&order_id],
        )
        .await?
        .iter()
        .map(refund_from_row)
        .collect()
}

/// [`crate::store::BillingStore::record_refunds`].
async fn record_refunds(
    transaction: &Transaction<'_>,
    seen: &RefundsSeen,
) -> Result<OrderRefunds, BillingError> {
    let order_id = seen.order_id;
    let locked = transaction
        .query_opt(
            "SELECT amount FROM orders WHERE id = $1 FOR UPDATE",
            &[&order_id],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(BillingError::OrderNotFound(order_id))?;
    let paid: i64 = locked.try_get(0).map_err(StoreError::from)?;
    let mut changed = Vec::new();
    // A legacy record replaced now: the refunds recorded with its
    // replacement that it held back are marked so.
    let mut replaced_now = false;
    if seen.replace_legacy {
        let legacy = legacy_refund_id(order_id);
        let replaced = transaction
            .execute(
                "UPDATE stripe_refunds SET standing = 'replaced', updated_at = $3
                  WHERE refund_id = $1 AND order_id = $2 AND standing = 'legacy'",
                &[&legacy, &order_id, &seen.now_ms],
            )
            .await
            .map_err(StoreError::from)?;
        if replaced == 1 {
            changed.push(legacy);
            replaced_now = true;
        }
    }
    for refund in &seen.refunds {
        let recorded = transaction
            .query_opt(
                &format!("SELECT {REFUND_COLUMNS} FROM stripe_refunds WHERE refund_id = $1"),
                &[&refund.refund_id],
            )
            .await
            .map_err(StoreError::from)?
            .map(|row| refund_from_row(&row))
            .transpose()?;
        let Some(standing) = standing_after(recorded.as_ref(), refund, order_id)? else {
            continue;
        };
        let recorded_by = if replaced_now && refund.held_by_legacy {
            RecordedBy::LegacyReplacement
        } else {
            RecordedBy::Event
        };
        let written = if recorded.is_none() {
            transaction
                .execute(
                    "INSERT INTO stripe_refunds (refund_id, order_id, amount, standing,
                                                 stripe_status, recorded_by, recorded_at,
                                                 updated_at, told)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                    &[
                        &refund.refund_id,
                        &order_id,
                        &refund.amount.micros(),
                        &standing.as_str(),
                        &refund.stripe_status,
                        &recorded_by.as_str(),
                        &seen.now_ms,
                        &i64::from(recorded_by.told_before()),
                    ],
                )
                .await
        } else {
            transaction
                .execute(
                    "UPDATE stripe_refunds SET standing = $2, stripe_status = $3, updated_at = $4
                      WHERE refund_id = $1",
                    &[
                        &refund.refund_id,
                        &standing.as_str(),
                        &refund.stripe_status,
                        &seen.now_ms,
                    ],
                )
                .await
        };
        written.map_err(StoreError::from)?;
        changed.push(refund.refund_id.clone());
    }
    if !changed.is_empty() {
        // A replaced record's order is settled with the refunds recorded
        // when it was marked: one recorded (or failed) since is the
        // sweep's again, until a settling after it marks it anew.
        transaction
            .execute(
                "UPDATE stripe_refunds SET settled_at = NULL
                  WHERE refund_id = $1 AND order_id = $2 AND standing = 'replaced'
                    AND settled_at IS NOT NULL",
                &[&legacy_refund_id(order_id), &order_id],
            )
            .await
            .map_err(StoreError::from)?;
    }
    let refunds = OrderRefunds {
        refunds: refunds_of_order(transaction, order_id).await?,
        changed,
    };
    let figure = refunds
        .standing()
        .map_err(|error| StoreError::Database(format!("order {order_id}'s refunds: {error}")))?;
    // An order refunded in full is `refunded`, and `completed` again when a
    // refund that failed brings it below.
    let status = if figure.micros() >= paid {
        "refunded"
    } else {
        "completed"
    };
    transaction
        .execute(
            "UPDATE orders SET amount_refunded = $2,
                    status = CASE WHEN status IN ('completed', 'refunded') THEN $3 ELSE status END
              WHERE id = $1",
            &[&order_id, &figure.micros(), &status],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(refunds)
}

impl PostgresStore {
    pub(super) fn record_refunds_op(
        &self,
        seen: RefundsSeen,
    ) -> StoreFuture<OrderRefunds, BillingError> {
        self.write(move |transaction| {
            let seen = seen.clone();
            boxed(async move { record_refunds(transaction, &seen).await })
        })
    }

    pub(super) fn stripe_refunds_op(&self, order_id: i64) -> StoreFuture<Vec<StripeRefund>> {
        self.read(move |client| async move { refunds_of_order(&*client, order_id).await })
    }

    pub(super) fn claim_legacy_orders_op(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LegacyOrder>> {
        self.write(move |transaction| {
            boxed(async move {
                let rows = transaction
                    .query(
                        &format!(
                            "WITH picked AS MATERIALIZED (
                           SELECT refund_id FROM stripe_refunds
                            WHERE {SWEPT}
                              AND (claimed_until IS NULL OR claimed_until <= $1)
                            ORDER BY order_id LIMIT $3 FOR UPDATE SKIP LOCKED)
                         UPDATE stripe_refunds r SET claimed_until = $2
                           FROM picked, orders o
                          WHERE r.refund_id = picked.refund_id AND o.id = r.order_id
                         RETURNING r.order_id, o.stripe_payment_intent_id"
                        ),
                        &[&now_ms, &lease_until_ms, &limit],
                    )
                    .await?;
                let mut orders = rows
                    .iter()
                    .map(|row| {
                        Ok(LegacyOrder {
                            order_id: row.try_get(0)?,
                            payment_intent_id: row.try_get(1)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                orders.sort_by_key(|order| order.order_id);
                Ok(orders)
            })
        })
    }

    pub(super) fn legacy_orders_left_op(&self) -> StoreFuture<i64> {
        self.read(|client| async move {
            Ok(client
                .query_one(
                    &format!("SELECT COUNT(*) FROM stripe_refunds WHERE {SWEPT}"),
                    &[],
                )
                .await?
                .try_get(0)?)
        })
    }

    pub(super) fn newest_payment_intent_op(
        &self,
        excluding: Vec<i64>,
    ) -> StoreFuture<Option<String>> {
        self.read(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT stripe_payment_intent_id FROM orders
                      WHERE stripe_payment_intent_id IS NOT NULL AND id <> ALL($1)
                      ORDER BY id DESC LIMIT 1",
                    &[&excluding],
                )
                .await?;
            Ok(match row {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            })
        })
    }

    pub(super) fn release_legacy_claims_op(
        &self,
        order_ids: Vec<i64>,
        lease_until_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let order_ids = order_ids.clone();
            boxed(async move {
                let legacy_ids: Vec<String> =
                    order_ids.iter().copied().map(legacy_refund_id).collect();
                transaction
                    .execute(
                        "UPDATE stripe_refunds SET claimed_until = NULL
                          WHERE refund_id = ANY($1) AND order_id = ANY($2)
                            AND claimed_until = $3",
                        &[&legacy_ids, &order_ids, &lease_until_ms],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    pub(super) fn legacy_replacement_settled_op(
        &self,
        order_id: i64,
        as_read: RefundsAsRead,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            boxed(async move {
                // The order's row, as a recording of its refunds locks it
                // first: one in progress commits before the counts are
                // read, or starts after the mark.
                transaction
                    .query_opt(
                        "SELECT 1 FROM orders WHERE id = $1 FOR UPDATE",
                        &[&order_id],
                    )
                    .await?;
                Ok(transaction
                    .execute(
                        "UPDATE stripe_refunds SET settled_at = $3, claimed_until = NULL
                          WHERE refund_id = $1 AND order_id = $2 AND standing = 'replaced'
                            AND settled_at IS NULL
                            AND (SELECT COUNT(*) FROM stripe_refunds r WHERE r.order_id = $2) = $4
                            AND (SELECT COUNT(*) FROM stripe_refunds r
                                  WHERE r.order_id = $2 AND r.standing = 'failed') = $5",
                        &[
                            &legacy_refund_id(order_id),
                            &order_id,
                            &now_ms,
                            &as_read.recorded,
                            &as_read.failed,
                        ],
                    )
                    .await?
                    == 1)
            })
        })
    }

    pub(super) fn tell_refund_op(&self, refund_id: String, event: NewEvent) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let (refund_id, event) = (refund_id.clone(), event.clone());
            boxed(async move {
                let marked = transaction
                    .execute(
                        "UPDATE stripe_refunds SET told = 1 WHERE refund_id = $1 AND told = 0",
                        &[&refund_id],
                    )
                    .await?;
                if marked == 0 {
                    return Ok(false);
                }
                super::webhooks::insert_events(transaction, std::slice::from_ref(&event)).await?;
                Ok(true)
            })
        })
    }

    pub(super) fn leave_legacy_record_op(
        &self,
        order_id: i64,
        because: String,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let because = because.clone();
            boxed(async move {
                Ok(transaction
                    .execute(
                        "UPDATE stripe_refunds SET sweep_left_because = $3, claimed_until = NULL
                          WHERE refund_id = $1 AND order_id = $2
                            AND standing IN ('legacy', 'replaced') AND sweep_left_because IS NULL",
                        &[&legacy_refund_id(order_id), &order_id, &because],
                    )
                    .await?
                    == 1)
            })
        })
    }
}

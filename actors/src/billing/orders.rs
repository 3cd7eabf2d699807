//! Orders: what was sold to whom, at what price and mode, and where its
//! Stripe payment stands.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::ledger::AccountId;
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    InitialAccess,
    TopUp,
}

impl OrderType {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::InitialAccess => "initial_access",
            OrderType::TopUp => "top_up",
        }
    }

    pub fn parse(text: &str) -> Option<OrderType> {
        match text {
            "initial_access" => Some(OrderType::InitialAccess),
            "top_up" => Some(OrderType::TopUp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Completed,
    Failed,
    Refunded,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Completed => "completed",
            OrderStatus::Failed => "failed",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Option<OrderStatus> {
        match text {
            "pending" => Some(OrderStatus::Pending),
            "completed" => Some(OrderStatus::Completed),
            "failed" => Some(OrderStatus::Failed),
            "refunded" => Some(OrderStatus::Refunded),
            "expired" => Some(OrderStatus::Expired),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Order {
    pub id: i64,
    pub account_id: AccountId,
    pub order_type: OrderType,
    /// Expected while pending; what Stripe says was paid once completed.
    #[serde(rename = "amount_micros")]
    pub amount: Money,
    #[serde(rename = "list_price_micros")]
    pub list_price: Money,
    pub pricing_mode: Option<String>,
    pub stripe_session_id: Option<String>,
    pub stripe_payment_intent_id: Option<String>,
    pub discount_code_id: Option<i64>,
    #[serde(rename = "amount_refunded_micros")]
    pub amount_refunded: Money,
    pub status: OrderStatus,
    pub created_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

/// An order to be created.
pub struct NewOrder<'a> {
    pub account_id: AccountId,
    pub order_type: OrderType,
    pub amount: Money,
    pub list_price: Money,
    pub pricing_mode: Option<&'a str>,
    pub discount_code_id: Option<i64>,
    pub charge_key: Option<&'a str>,
}

const COLUMNS: &str = "id, account_id, order_type, amount, list_price, pricing_mode, stripe_session_id,
                       stripe_payment_intent_id, discount_code_id, amount_refunded, status, created_at, completed_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Order> {
    let id: i64 = row.get(0)?;
    let unknown = |index: usize, column: &'static str, value: String| {
        UnknownValue::new("orders", id, column, value).into_sql_error(index)
    };
    let order_type: String = row.get(2)?;
    let status: String = row.get(10)?;
    Ok(Order {
        id,
        account_id: AccountId(row.get(1)?),
        order_type: OrderType::parse(&order_type)
            .ok_or_else(|| unknown(2, "order_type", order_type.clone()))?,
        amount: Money::from_micros(row.get(3)?),
        list_price: Money::from_micros(row.get(4)?),
        pricing_mode: row.get(5)?,
        stripe_session_id: row.get(6)?,
        stripe_payment_intent_id: row.get(7)?,
        discount_code_id: row.get(8)?,
        amount_refunded: Money::from_micros(row.get(9)?),
        status: OrderStatus::parse(&status).ok_or_else(|| unknown(10, "status", status.clone()))?,
        created_at_ms: row.get(11)?,
        completed_at_ms: row.get(12)?,
    })
}

pub fn insert(
    connection: &Connection,
    order: &NewOrder<'_>,
    now_ms: i64,
) -> Result<Order, StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO orders (account_id, order_type, amount, list_price, pricing_mode, discount_code_id,
                                 charge_key, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
        )?
        .execute(params![
            order.account_id.0,
            order.order_type.as_str(),
            order.amount.micros(),
            order.list_price.micros(),
            order.pricing_mode,
            order.discount_code_id,
            order.charge_key,
            now_ms,
        ])?;
    let id = connection.last_insert_rowid();
    get(connection, id)?.ok_or_else(|| StoreError::Database("inserted order vanished".into()))
}

fn find_by(
    connection: &Connection,
    column: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<Order>, StoreError> {
    let order = connection
        .prepare_cached(&format!("SELECT {COLUMNS} FROM orders WHERE {column} = ?1"))?
        .query_row([value], from_row)
        .optional()?;
    Ok(order)
}

pub fn get(connection: &Connection, id: i64) -> Result<Option<Order>, StoreError> {
    find_by(connection, "id", &id)
}

pub fn find_by_session(
    connection: &Connection,
    session_id: &str,
) -> Result<Option<Order>, StoreError> {
    find_by(connection, "stripe_session_id", &session_id)
}

pub fn find_by_payment_intent(
    connection: &Connection,
    payment_intent_id: &str,
) -> Result<Option<Order>, StoreError> {
    find_by(connection, "stripe_payment_intent_id", &payment_intent_id)
}

pub fn find_by_charge_key(
    connection: &Connection,
    charge_key: &str,
) -> Result<Option<Order>, StoreError> {
    find_by(connection, "charge_key", &charge_key)
}

pub fn list_for_account(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Vec<Order>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM orders WHERE account_id = ?1 ORDER BY id"
    ))?;
    let orders = statement
        .query_map([account_id.0], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(orders)
}

pub fn set_session(connection: &Connection, id: i64, session_id: &str) -> Result<(), StoreError> {
    connection
        .prepare_cached("UPDATE orders SET stripe_session_id = ?2 WHERE id = ?1")?
        .execute(params![id, session_id])?;
    Ok(())
}

pub fn set_payment_intent(
    connection: &Connection,
    id: i64,
    payment_intent_id: &str,
) -> Result<(), StoreError> {
    connection
        .prepare_cached("UPDATE orders SET stripe_payment_intent_id = ?2 WHERE id = ?1 AND stripe_payment_intent_id IS NULL")?
        .execute(params![id, payment_intent_id])?;
    Ok(())
}

/// Marks an order paid with what Stripe says was paid. Idempotent.
pub fn complete(
    connection: &Connection,
    id: i64,
    amount_paid: Money,
    payment_intent_id: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE orders SET status = 'completed', amount = ?2,
                    stripe_payment_intent_id = COALESCE(stripe_payment_intent_id, ?3),
                    completed_at = COALESCE(completed_at, ?4)
              WHERE id = ?1 AND status IN ('pending', 'failed', 'expired')",
        )?
        .execute(params![id, amount_paid.micros(), payment_intent_id, now_ms])?;
    Ok(())
}

/// Ends a pending order as failed or expired.
pub fn end_pending(
    connection: &Connection,
    id: i64,
    status: OrderStatus,
) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached("UPDATE orders SET status = ?2 WHERE id = ?1 AND status = 'pending'")?
        .execute(params![id, status.as_str()])?;
    Ok(changed == 1)
}

/// Records the cumulative refunded amount (only ever upwards).
pub fn record_refunded(
    connection: &Connection,
    id: i64,
    cumulative: Money,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE orders SET amount_refunded = ?2,
                    status = CASE WHEN ?2 >= amount THEN 'refunded' ELSE status END
              WHERE id = ?1 AND amount_refunded < ?2",
        )?
        .execute(params![id, cumulative.micros()])?;
    Ok(())
}

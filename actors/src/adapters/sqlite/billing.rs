//! Pricing, discount codes and orders in SQLite. The compound operations
//! (opening an order with its account and discount use) run in one write,
//! so that a code's use limit holds under any concurrency.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::accounts::{
    activate, find_account_by_phone, get_account, insert_account, set_stripe_customer,
};
use super::SqliteStore;
use crate::accounts::{Account, AccountStatus, Card, NewAccount};
use crate::billing::discounts::{Discount, DiscountCode};
use crate::billing::disputes::{DisputeRecord, DisputeUpdate, OrderClaims};
use crate::billing::orders::{DailyCap, NewOrder, Order, OrderStatus, OrderType};
use crate::billing::pricing::{Pricing, PricingMode};
use crate::billing::refunds::{refundable, OpenRefund, Opened, RefundRequest, RefundStatus};
use crate::billing::stripe_refunds::{
    LegacyOrder, OrderRefunds, RefundsAsRead, RefundsSeen, StripeRefund,
};
use crate::billing::BillingError;
use crate::ledger::AccountId;
use crate::money::Money;
use crate::store::{
    AccessOrderRequest, BillingStore, CreateAccountError, OrderCompletion, StoreError, StoreFuture,
    UnknownValue,
};
use crate::webhooks::NewEvent;

fn load_pricing(connection: &Connection) -> Result<Pricing, StoreError> {
    let (mode, sale_price): (String, Option<i64>) = connection
        .prepare_cached("SELECT mode, sale_price FROM pricing WHERE id = 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let mode = PricingMode::parse(&mode)
        .ok_or_else(|| StoreError::UnknownValue(UnknownValue::new("pricing", 1, "mode", mode)))?;
    Ok(Pricing {
        mode,
        sale_price: sale_price.map(Money::from_micros),
    })
}

fn save_pricing(connection: &Connection, pricing: &Pricing, now_ms: i64) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE pricing SET mode = ?1, sale_price = ?2, updated_at = ?3 WHERE id = 1",
        )?
        .execute(params![
            pricing.mode.as_str(),
            pricing.sale_price.map(Money::micros),
            now_ms
        ])?;
    Ok(())
}

const CODE_COLUMNS: &str =
    "id, code, discount_type, value, max_uses, current_uses, active, stripe_coupon_id, created_at";

fn code_from_row(row: &Row<'_>) -> rusqlite::Result<DiscountCode> {
    let id: i64 = row.get(0)?;
    let kind: String = row.get(2)?;
    let value: i64 = row.get(3)?;
    let discount = match kind.as_str() {
        "percent" => Discount::Percent { percent: value },
        "fixed" => Discount::Fixed {
            amount: Money::from_micros(value),
        },
        _ => {
            return Err(
                UnknownValue::new("discount_codes", id, "discount_type", kind).into_sql_error(2),
            )
        }
    };
    Ok(DiscountCode {
        id,
        code: row.get(1)?,
        discount,
        max_uses: row.get(4)?,
        current_uses: row.get(5)?,
        active: row.get::<_, i64>(6)? == 1,
        stripe_coupon_id: row.get(7)?,
        created_at_ms: row.get(8)?,
    })
}

/// Creates a code; `Ok(None)` if the code exists already.
fn create_code(
    connection: &Connection,
    code: &str,
    discount: Discount,
    max_uses: Option<i64>,
    now_ms: i64,
) -> Result<Option<DiscountCode>, StoreError> {
    let (kind, value) = match discount {
        Discount::Percent { percent } => ("percent", percent),
        Discount::Fixed { amount } => ("fixed", amount.micros()),
    };
    let inserted = connection
        .prepare_cached(
            "INSERT INTO discount_codes (code, discount_type, value, max_uses, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (code) DO NOTHING",
        )?
        .execute(params![code, kind, value, max_uses, now_ms])?;
    if inserted == 0 {
        return Ok(None);
    }
    find_code(connection, code)
}

fn find_code(connection: &Connection, code: &str) -> Result<Option<DiscountCode>, StoreError> {
    let found = connection
        .prepare_cached(&format!(
            "SELECT {CODE_COLUMNS} FROM discount_codes WHERE code = ?1"
        ))?
        .query_row([code], code_from_row)
        .optional()?;
    Ok(found)
}

fn list_codes(connection: &Connection) -> Result<Vec<DiscountCode>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {CODE_COLUMNS} FROM discount_codes ORDER BY code"
    ))?;
    let codes = statement
        .query_map([], code_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(codes)
}

/// Turns a code on or off; `false` if there is no such code.
fn set_code_active(connection: &Connection, code: &str, active: bool) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached("UPDATE discount_codes SET active = ?2 WHERE code = ?1")?
        .execute(params![code, i64::from(active)])?;
    Ok(changed == 1)
}

/// Takes one use of a code, refusing unknown, inactive and used-up codes
/// with distinct errors. Runs inside a store write, so no two checkouts can
/// take the last use.
fn reserve_code(connection: &Connection, code: &str) -> Result<DiscountCode, BillingError> {
    let reserved = connection
        .prepare_cached(
            "UPDATE discount_codes SET current_uses = current_uses + 1
              WHERE code = ?1 AND active = 1 AND (max_uses IS NULL OR current_uses < max_uses)",
        )
        .and_then(|mut statement| statement.execute([code]))
        .map_err(StoreError::from)?;
    let found = find_code(connection, code)?;
    match found {
        Some(discount_code) if reserved == 1 => Ok(discount_code),
        Some(discount_code) if !discount_code.active => {
            Err(BillingError::InactiveDiscountCode(code.to_string()))
        }
        Some(_) => Err(BillingError::DiscountCodeUsedUp(code.to_string())),
        None => Err(BillingError::UnknownDiscountCode(code.to_string())),
    }
}

/// Gives back the use an order reserved, once.
fn release_code_of_order(connection: &Connection, order_id: i64) -> Result<(), StoreError> {
    let claimed = connection
        .prepare_cached(
            "UPDATE orders SET discount_released = 1
              WHERE id = ?1 AND discount_code_id IS NOT NULL AND discount_released = 0",
        )?
        .execute([order_id])?;
    if claimed == 1 {
        connection
            .prepare_cached(
                "UPDATE discount_codes SET current_uses = current_uses - 1
                  WHERE id = (SELECT discount_code_id FROM orders WHERE id = ?1) AND current_uses > 0",
            )?
            .execute([order_id])?;
    }
    Ok(())
}

const ORDER_COLUMNS: &str = "id, account_id, order_type, amount, list_price, pricing_mode, stripe_session_id,
                       stripe_payment_intent_id, discount_code_id, amount_refunded, status, created_at, completed_at,
                       receipt_url, receipt_asked_at";

use crate::billing::receipts::is_receipt_link as receipt_link;

fn order_from_row(row: &Row<'_>) -> rusqlite::Result<Order> {
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
        pricing_mode: match row.get::<_, Option<String>>(5)? {
            Some(mode) => Some(
                PricingMode::parse(&mode)
                    .ok_or_else(|| unknown(5, "pricing_mode", mode.clone()))?,
            ),
            None => None,
        },
        stripe_session_id: row.get(6)?,
        stripe_payment_intent_id: row.get(7)?,
        discount_code_id: row.get(8)?,
        amount_refunded: Money::from_micros(row.get(9)?),
        status: OrderStatus::parse(&status).ok_or_else(|| unknown(10, "status", status.clone()))?,
        created_at_ms: row.get(11)?,
        completed_at_ms: row.get(12)?,
        receipt_url: match row.get::<_, Option<String>>(13)? {
            Some(url) if !receipt_link(&url) => return Err(unknown(13, "receipt_url", url)),
            url => url,
        },
        receipt_asked_at_ms: row.get(14)?,
    })
}

fn insert_order(
    connection: &Connection,
    order: &NewOrder,
    charge_key: Option<&str>,
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
            order.pricing_mode.map(PricingMode::as_str),
            order.discount_code_id,
            charge_key,
            now_ms,
        ])?;
    let id = connection.last_insert_rowid();
    get_order(connection, id)?.ok_or_else(|| StoreError::Database("inserted order vanished".into()))
}

fn find_by(
    connection: &Connection,
    column: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<Order>, StoreError> {
    let order = connection
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE {column} = ?1"
        ))?
        .query_row([value], order_from_row)
        .optional()?;
    Ok(order)
}

fn get_order(connection: &Connection, id: i64) -> Result<Option<Order>, StoreError> {
    find_by(connection, "id", &id)
}

fn order_by_session(
    connection: &Connection,
    session_id: &str,
) -> Result<Option<Order>, StoreError> {
    find_by(connection, "stripe_session_id", &session_id)
}

fn order_by_payment_intent(
    connection: &Connection,
    payment_intent_id: &str,
) -> Result<Option<Order>, StoreError> {
    find_by(connection, "stripe_payment_intent_id", &payment_intent_id)
}

fn order_by_charge_key(
    connection: &Connection,
    charge_key: &str,
) -> Result<Option<Order>, StoreError> {
    find_by(connection, "charge_key", &charge_key)
}

fn orders_of(connection: &Connection, account_id: AccountId) -> Result<Vec<Order>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE account_id = ?1 ORDER BY id"
    ))?;
    let orders = statement
        .query_map([account_id.0], order_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(orders)
}

fn set_session(connection: &Connection, id: i64, session_id: &str) -> Result<(), StoreError> {
    connection
        .prepare_cached("UPDATE orders SET stripe_session_id = ?2 WHERE id = ?1")?
        .execute(params![id, session_id])?;
    Ok(())
}

fn set_payment_intent(
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
fn complete(
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
fn end_pending(connection: &Connection, id: i64, status: OrderStatus) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached("UPDATE orders SET status = ?2 WHERE id = ?1 AND status = 'pending'")?
        .execute(params![id, status.as_str()])?;
    Ok(changed == 1)
}

impl BillingStore for SqliteStore {
    fn pricing(&self) -> StoreFuture<Pricing> {
        self.read(load_pricing)
    }

    fn set_pricing(&self, pricing: Pricing, now_ms: i64) -> StoreFuture<()> {
        self.write(move |connection| save_pricing(connection, &pricing, now_ms))
    }

    fn create_discount_code(
        &self,
        code: String,
        discount: Discount,
        max_uses: Option<i64>,
        now_ms: i64,
    ) -> StoreFuture<Option<DiscountCode>> {
        self.write(move |connection| create_code(connection, &code, discount, max_uses, now_ms))
    }

    fn discount_codes(&self) -> StoreFuture<Vec<DiscountCode>> {
        self.read(list_codes)
    }

    fn set_discount_code_active(
        &self,
        code: String,
        active: bool,
    ) -> StoreFuture<Option<DiscountCode>> {
        self.write(move |connection| {
            if set_code_active(connection, &code, active)? {
                find_code(connection, &code)
            } else {
                Ok(None)
            }
        })
    }

    fn open_access_order(
        &self,
        request: AccessOrderRequest,
    ) -> StoreFuture<(Account, Order), BillingError> {
        self.write(move |connection| {
            let account = match find_account_by_phone(connection, &request.phone)? {
                Some(account) if account.status == AccountStatus::Active => {
                    return Err(BillingError::AlreadyActive(account.id))
                }
                Some(account) => account,
                None => {
                    let new_account = NewAccount {
                        phone: request.phone,
                        email: Some(request.email),
                        status: AccountStatus::Pending,
                    };
                    insert_account(connection, &new_account, request.now_ms).map_err(|error| {
                        match error {
                            CreateAccountError::Store(store) => BillingError::Store(store),
                            other => BillingError::Invalid(other.to_string()),
                        }
                    })?
                }
            };
            let pricing = load_pricing(connection)?;
            let reserved = match &request.discount_code {
                Some(code) => Some(reserve_code(connection, code)?),
                None => None,
            };
            // A refusal here rolls the reservation back with the rest.
            let (list_price, amount) =
                (request.price)(&pricing, reserved.as_ref().map(|code| code.discount))?;
            let order = insert_order(
                connection,
                &NewOrder {
                    account_id: account.id,
                    order_type: OrderType::InitialAccess,
                    amount,
                    list_price,
                    pricing_mode: Some(pricing.mode),
                    discount_code_id: reserved.map(|code| code.id),
                },
                None,
                request.now_ms,
            )?;
            Ok((account, order))
        })
    }

    fn open_order(
        &self,
        order: NewOrder,
        now_ms: i64,
    ) -> StoreFuture<(Account, Order), BillingError> {
        self.write(move |connection| {
            let account = get_account(connection, order.account_id)?
                .ok_or(BillingError::AccountNotFound(order.account_id))?;
            if account.status != AccountStatus::Active {
                return Err(BillingError::Invalid(
                    "only an active account can top up; buy access first".into(),
                ));
            }
            let order = insert_order(connection, &order, None, now_ms)?;
            Ok((account, order))
        })
    }

    fn open_off_session_order(
        &self,
        order: NewOrder,
        charge_key: String,
        cap: Option<DailyCap>,
        now_ms: i64,
    ) -> StoreFuture<(Account, Order), BillingError> {
        self.write(move |connection| {
            let account = get_account(connection, order.account_id)?
                .ok_or(BillingError::AccountNotFound(order.account_id))?;
            if account.stripe_customer_id.is_none() || account.stripe_payment_method_id.is_none() {
                return Err(BillingError::NoSavedCard);
            }
            let order = match order_by_charge_key(connection, &charge_key)? {
                Some(existing) => existing,
                None => {
                    if let Some(cap) = &cap {
                        let charged: i64 = connection
                            .prepare_cached(
                                "SELECT COALESCE(SUM(amount), 0) FROM orders
                                  WHERE account_id = ?1 AND charge_key LIKE ?2 || '%'
                                    AND status IN ('pending', 'completed') AND created_at >= ?3",
                            )
                            .and_then(|mut statement| {
                                statement.query_row(
                                    params![order.account_id.0, cap.key_prefix, cap.since_ms],
                                    |row| row.get(0),
                                )
                            })
                            .map_err(StoreError::from)?;
                        if charged.saturating_add(order.amount.micros()) > cap.limit.micros() {
                            return Err(BillingError::DailyLimit(cap.limit));
                        }
                    }
                    insert_order(connection, &order, Some(&charge_key), now_ms)?
                }
            };
            Ok((account, order))
        })
    }

    fn set_order_session(&self, order_id: i64, session_id: String) -> StoreFuture<()> {
        self.write(move |connection| set_session(connection, order_id, &session_id))
    }

    fn set_order_payment_intent(
        &self,
        order_id: i64,
        payment_intent_id: String,
    ) -> StoreFuture<()> {
        self.write(move |connection| set_payment_intent(connection, order_id, &payment_intent_id))
    }

    fn claim_receipt_ask(
        &self,
        order_id: i64,
        asked_at_ms: i64,
        last_asked_by_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            let claimed = connection
                .prepare_cached(
                    "UPDATE orders SET receipt_asked_at = ?2
                      WHERE id = ?1 AND receipt_url IS NULL
                        AND (receipt_asked_at IS NULL OR receipt_asked_at <= ?3)",
                )?
                .execute(params![order_id, asked_at_ms, last_asked_by_ms])?;
            Ok(claimed == 1)
        })
    }

    fn record_receipt(&self, order_id: i64, receipt_url: String) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE orders SET receipt_url = COALESCE(receipt_url, ?2) WHERE id = ?1",
                )?
                .execute(params![order_id, receipt_url])?;
            Ok(())
        })
    }

    fn end_unopened_orders(&self, opened_before_ms: i64, limit: i64) -> StoreFuture<Vec<i64>> {
        self.write(move |connection| {
            let ids = connection
                .prepare_cached(
                    "SELECT id FROM orders
                      WHERE status = 'pending' AND stripe_session_id IS NULL
                        AND discount_code_id IS NOT NULL AND discount_released = 0
                        AND created_at < ?1
                      ORDER BY id LIMIT ?2",
                )?
                .query_map(params![opened_before_ms, limit], |row| row.get(0))?
                .collect::<Result<Vec<i64>, _>>()?;
            for &id in &ids {
                if end_pending(connection, id, OrderStatus::Failed)? {
                    release_code_of_order(connection, id)?;
                }
            }
            Ok(ids)
        })
    }

    fn end_order(
        &self,
        order_id: i64,
        status: OrderStatus,
        event: Option<NewEvent>,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            // Only an order that was still pending gives its code's use
            // back: a completed one used it.
            let ended = end_pending(connection, order_id, status)?;
            if ended {
                release_code_of_order(connection, order_id)?;
            }
            if let (true, Some(event)) = (ended, &event) {
                super::webhooks::insert_events(connection, std::slice::from_ref(event))?;
            }
            Ok(ended)
        })
    }

    fn complete_order(&self, completion: OrderCompletion) -> StoreFuture<()> {
        self.write(move |connection| {
            complete(
                connection,
                completion.order_id,
                completion.paid,
                completion.payment_intent_id.as_deref(),
                completion.now_ms,
            )?;
            if let Some((account_id, customer_id)) = &completion.customer {
                set_stripe_customer(connection, *account_id, customer_id)?;
            }
            if let Some(account_id) = completion.activate {
                activate(connection, account_id)?;
            }
            Ok(())
        })
    }

    fn refund_failed_later(
        &self,
        request_id: i64,
        stripe_refund_id: String,
        error: String,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE order_refunds SET status = 'failed',
                            stripe_refund_id = COALESCE(stripe_refund_id, ?2),
                            error = ?3, updated_at = ?4
                      WHERE id = ?1
                        AND (status = 'requested'
                             OR (status = 'succeeded'
                                 AND (stripe_refund_id IS NULL OR stripe_refund_id = ?2)))",
                )?
                .execute(params![request_id, stripe_refund_id, error, now_ms])?;
            refund_where(connection, "id = ?1", [request_id])?.ok_or_else(|| {
                StoreError::Database(format!("refund request {request_id} vanished"))
            })
        })
    }

    fn record_refunds(&self, seen: RefundsSeen) -> StoreFuture<OrderRefunds, BillingError> {
        self.record_refunds_op(seen)
    }

    fn stripe_refunds(&self, order_id: i64) -> StoreFuture<Vec<StripeRefund>> {
        self.stripe_refunds_op(order_id)
    }

    fn claim_legacy_orders(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LegacyOrder>> {
        self.claim_legacy_orders_op(now_ms, lease_until_ms, limit)
    }

    fn legacy_orders_left(&self) -> StoreFuture<i64> {
        self.legacy_orders_left_op()
    }

    fn newest_payment_intent(&self, excluding: Vec<i64>) -> StoreFuture<Option<String>> {
        self.newest_payment_intent_op(excluding)
    }

    fn release_legacy_claims(&self, order_ids: Vec<i64>, lease_until_ms: i64) -> StoreFuture<()> {
        self.release_legacy_claims_op(order_ids, lease_until_ms)
    }

    fn legacy_replacement_settled(
        &self,
        order_id: i64,
        as_read: RefundsAsRead,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        self.legacy_replacement_settled_op(order_id, as_read, now_ms)
    }

    fn tell_refund(&self, refund_id: String, event: NewEvent) -> StoreFuture<bool> {
        self.tell_refund_op(refund_id, event)
    }

    fn leave_legacy_record(&self, order_id: i64, because: String) -> StoreFuture<bool> {
        self.leave_legacy_record_op(order_id, because)
    }

    fn record_dispute(&self, update: DisputeUpdate) -> StoreFuture<DisputeRecord> {
        self.record_dispute_op(update)
    }

    fn claims(&self, order_id: i64) -> StoreFuture<Option<OrderClaims>> {
        self.claims_op(order_id)
    }

    fn order(&self, order_id: i64) -> StoreFuture<Option<Order>> {
        self.read(move |connection| get_order(connection, order_id))
    }

    fn open_refund(&self, refund: OpenRefund) -> StoreFuture<Opened, BillingError> {
        self.open_refund_op(refund)
    }

    fn refund_settled(
        &self,
        refund_id: i64,
        outcome: Result<String, String>,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest> {
        self.refund_settled_op(refund_id, outcome, now_ms)
    }

    fn refunds_of(&self, order_id: i64) -> StoreFuture<Vec<RefundRequest>> {
        self.refunds_of_op(order_id)
    }

    fn order_by_session(&self, session_id: String) -> StoreFuture<Option<Order>> {
        self.read(move |connection| order_by_session(connection, &session_id))
    }

    fn order_by_payment_intent(&self, payment_intent_id: String) -> StoreFuture<Option<Order>> {
        self.read(move |connection| order_by_payment_intent(connection, &payment_intent_id))
    }

    fn orders_of(&self, account_id: AccountId) -> StoreFuture<Vec<Order>> {
        self.read(move |connection| orders_of(connection, account_id))
    }

    fn save_card(
        &self,
        customer_id: String,
        payment_method_id: String,
        card: Option<Card>,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            match &card {
                Some(card) => connection
                    .prepare_cached(
                        "UPDATE accounts SET stripe_payment_method_id = ?2, card_brand = ?3,
                                card_last4 = ?4, card_exp_month = ?5, card_exp_year = ?6
                          WHERE stripe_customer_id = ?1
                            AND forgotten_payment_method_id IS NOT ?2",
                    )?
                    .execute(params![
                        customer_id,
                        payment_method_id,
                        card.brand,
                        card.last4,
                        card.exp_month,
                        card.exp_year
                    ])?,
                // Another method without details: the old details go.
                None => connection
                    .prepare_cached(
                        "UPDATE accounts SET card_brand = CASE WHEN stripe_payment_method_id IS ?2
                                                 THEN card_brand END,
                                card_last4 = CASE WHEN stripe_payment_method_id IS ?2 THEN card_last4 END,
                                card_exp_month = CASE WHEN stripe_payment_method_id IS ?2
                                                     THEN card_exp_month END,
                                card_exp_year = CASE WHEN stripe_payment_method_id IS ?2
                                                    THEN card_exp_year END,
                                stripe_payment_method_id = ?2
                          WHERE stripe_customer_id = ?1
                            AND forgotten_payment_method_id IS NOT ?2",
                    )?
                    .execute(params![customer_id, payment_method_id])?,
            };
            Ok(())
        })
    }
}

const REFUND_COLUMNS: &str =
    "id, order_id, n, idempotency_key, amount, reason, status, stripe_refund_id, created_at";

fn refund_from_row(row: &Row<'_>) -> rusqlite::Result<RefundRequest> {
    let id: i64 = row.get(0)?;
    let status: String = row.get(6)?;
    Ok(RefundRequest {
        id,
        order_id: row.get(1)?,
        n: row.get(2)?,
        idempotency_key: row.get(3)?,
        amount: Money::from_micros(row.get(4)?),
        reason: row.get(5)?,
        status: RefundStatus::parse(&status).ok_or_else(|| {
            UnknownValue::new("order_refunds", id, "status", status.clone()).into_sql_error(6)
        })?,
        stripe_refund_id: row.get(7)?,
        created_at_ms: row.get(8)?,
    })
}

fn refund_where(
    connection: &Connection,
    condition: &str,
    parameters: impl rusqlite::Params,
) -> Result<Option<RefundRequest>, StoreError> {
    Ok(connection
        .prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM order_refunds WHERE {condition}"
        ))?
        .query_row(parameters, refund_from_row)
        .optional()?)
}

fn open_refund(connection: &Connection, refund: &OpenRefund) -> Result<Opened, BillingError> {
    if let Some(known) = refund_where(
        connection,
        "order_id = ?1 AND idempotency_key = ?2",
        params![refund.order_id, refund.idempotency_key],
    )? {
        return Ok(Opened::Known(known));
    }
    let order = get_order(connection, refund.order_id)?
        .ok_or(BillingError::OrderNotFound(refund.order_id))?;
    if !refundable(order.status) || order.stripe_payment_intent_id.is_none() {
        return Err(BillingError::NotRefundable(format!(
            "order {} is {}: only a paid order can be refunded",
            order.id,
            order.status.as_str()
        )));
    }
    // What the order's refunds that stand come to (its figure: a refund
    // that failed is not in it), or what was asked and not failed, if more.
    let (asked, last_n): (i64, i64) = connection
        .prepare_cached(
            "SELECT COALESCE(SUM(CASE WHEN status <> 'failed' THEN amount ELSE 0 END), 0),
                    COALESCE(MAX(n), 0)
               FROM order_refunds WHERE order_id = ?1",
        )
        .and_then(|mut statement| {
            statement.query_row([refund.order_id], |row| Ok((row.get(0)?, row.get(1)?)))
        })
        .map_err(StoreError::from)?;
    let remaining = order.amount.micros() - order.amount_refunded.micros().max(asked);
    let amount = refund.amount.map_or(remaining, Money::micros);
    if remaining <= 0 {
        return Err(BillingError::NotRefundable(format!(
            "order {} has been refunded in full already",
            order.id
        )));
    }
    if amount > remaining {
        return Err(BillingError::NotRefundable(format!(
            "order {} has {} left to refund, less than {}",
            order.id,
            Money::from_micros(remaining),
            Money::from_micros(amount)
        )));
    }
    connection
        .prepare_cached(
            "INSERT INTO order_refunds (order_id, n, idempotency_key, amount, reason, status,
                                        created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'requested', ?6, ?6)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                refund.order_id,
                last_n + 1,
                refund.idempotency_key,
                amount,
                refund.reason,
                refund.now_ms
            ])
        })
        .map_err(StoreError::from)?;
    let id = connection.last_insert_rowid();
    refund_where(connection, "id = ?1", [id])?
        .map(Opened::New)
        .ok_or_else(|| StoreError::Database("the refund just recorded vanished".into()).into())
}

fn settle_refund(
    connection: &Connection,
    refund_id: i64,
    outcome: &Result<String, String>,
    now_ms: i64,
) -> Result<RefundRequest, StoreError> {
    let (status, stripe_refund_id, error) = match outcome {
        Ok(id) => ("succeeded", Some(id.as_str()), None),
        Err(error) => ("failed", None, Some(error.as_str())),
    };
    connection
        .prepare_cached(
            "UPDATE order_refunds SET status = ?2, stripe_refund_id = COALESCE(?3, stripe_refund_id),
                    error = ?4, updated_at = ?5
              WHERE id = ?1 AND status = 'requested'",
        )?
        .execute(params![refund_id, status, stripe_refund_id, error, now_ms])?;
    refund_where(connection, "id = ?1", [refund_id])?
        .ok_or_else(|| StoreError::Database(format!("refund request {refund_id} vanished")))
}

impl SqliteStore {
    pub(super) fn open_refund_op(&self, refund: OpenRefund) -> StoreFuture<Opened, BillingError> {
        self.write(move |connection| open_refund(connection, &refund))
    }

    pub(super) fn refund_settled_op(
        &self,
        refund_id: i64,
        outcome: Result<String, String>,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest> {
        self.write(move |connection| settle_refund(connection, refund_id, &outcome, now_ms))
    }

    pub(super) fn refunds_of_op(&self, order_id: i64) -> StoreFuture<Vec<RefundRequest>> {
        self.read(move |connection| {
            let refunds = connection
                .prepare_cached(&format!(
                    "SELECT {REFUND_COLUMNS} FROM order_refunds WHERE order_id = ?1 ORDER BY n"
                ))?
                .query_map([order_id], refund_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(refunds)
        })
    }
}

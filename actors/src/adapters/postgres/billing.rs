//! Pricing, discount codes and orders in Postgres. The compound operations
//! (opening an order with its account and discount use) run in one write,
//! so that a code's use limit holds however many instances race for it.

use tokio_postgres::{GenericClient, Row};

use super::accounts::{
    activate, find_account_by_phone, get_account, insert_account, set_stripe_customer,
};
use super::{boxed, PostgresStore};
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

async fn load_pricing(client: &impl GenericClient) -> Result<Pricing, StoreError> {
    let row = client
        .query_one("SELECT mode, sale_price FROM pricing WHERE id = 1", &[])
        .await?;
    let mode: String = row.try_get(0)?;
    let sale_price: Option<i64> = row.try_get(1)?;
    let mode = PricingMode::parse(&mode)
        .ok_or_else(|| StoreError::UnknownValue(UnknownValue::new("pricing", 1, "mode", mode)))?;
    Ok(Pricing {
        mode,
        sale_price: sale_price.map(Money::from_micros),
    })
}

const CODE_COLUMNS: &str =
    "id, code, discount_type, value, max_uses, current_uses, active, stripe_coupon_id, created_at";

fn code_from_row(row: &Row) -> Result<DiscountCode, StoreError> {
    let id: i64 = row.try_get(0)?;
    let kind: String = row.try_get(2)?;
    let value: i64 = row.try_get(3)?;
    let discount = match kind.as_str() {
        "percent" => Discount::Percent { percent: value },
        "fixed" => Discount::Fixed {
            amount: Money::from_micros(value),
        },
        _ => {
            return Err(StoreError::UnknownValue(UnknownValue::new(
                "discount_codes",
                id,
                "discount_type",
                kind,
            )))
        }
    };
    Ok(DiscountCode {
        id,
        code: row.try_get(1)?,
        discount,
        max_uses: row.try_get(4)?,
        current_uses: row.try_get(5)?,
        active: row.try_get::<_, i64>(6)? == 1,
        stripe_coupon_id: row.try_get(7)?,
        created_at_ms: row.try_get(8)?,
    })
}

async fn find_code(
    client: &impl GenericClient,
    code: &str,
) -> Result<Option<DiscountCode>, StoreError> {
    client
        .query_opt(
            &format!("SELECT {CODE_COLUMNS} FROM discount_codes WHERE code = $1"),
            &[&code],
        )
        .await?
        .map(|row| code_from_row(&row))
        .transpose()
}

/// Takes one use of a code, refusing unknown, inactive and used-up codes
/// with distinct errors; the conditional update is atomic, so no two
/// checkouts on any instances can take the last use.
async fn reserve_code(
    client: &impl GenericClient,
    code: &str,
) -> Result<DiscountCode, BillingError> {
    let reserved = client
        .execute(
            "UPDATE discount_codes SET current_uses = current_uses + 1
              WHERE code = $1 AND active = 1 AND (max_uses IS NULL OR current_uses < max_uses)",
            &[&code],
        )
        .await
        .map_err(StoreError::from)?;
    match find_code(client, code).await? {
        Some(discount_code) if reserved == 1 => Ok(discount_code),
        Some(discount_code) if !discount_code.active => {
            Err(BillingError::InactiveDiscountCode(code.to_string()))
        }
        Some(_) => Err(BillingError::DiscountCodeUsedUp(code.to_string())),
        None => Err(BillingError::UnknownDiscountCode(code.to_string())),
    }
}

async fn release_code_of_order(
    client: &impl GenericClient,
    order_id: i64,
) -> Result<(), StoreError> {
    let claimed = client
        .execute(
            "UPDATE orders SET discount_released = 1
              WHERE id = $1 AND discount_code_id IS NOT NULL AND discount_released = 0",
            &[&order_id],
        )
        .await?;
    if claimed == 1 {
        client
            .execute(
                "UPDATE discount_codes SET current_uses = current_uses - 1
                  WHERE id = (SELECT discount_code_id FROM orders WHERE id = $1) AND current_uses > 0",
                &[&order_id],
            )
            .await?;
    }
    Ok(())
}

const ORDER_COLUMNS: &str = "id, account_id, order_type, amount, list_price, pricing_mode, stripe_session_id,
                       stripe_payment_intent_id, discount_code_id, amount_refunded, status, created_at, completed_at,
                       receipt_url, receipt_asked_at";

fn order_from_row(row: &Row) -> Result<Order, StoreError> {
    let id: i64 = row.try_get(0)?;
    let unknown = |column: &'static str, value: String| {
        StoreError::UnknownValue(UnknownValue::new("orders", id, column, value))
    };
    let order_type: String = row.try_get(2)?;
    let status: String = row.try_get(10)?;
    let pricing_mode: Option<String> = row.try_get(5)?;
    Ok(Order {
        id,
        account_id: AccountId(row.try_get(1)?),
        order_type: OrderType::parse(&order_type)
            .ok_or_else(|| unknown("order_type", order_type.clone()))?,
        amount: Money::from_micros(row.try_get(3)?),
        list_price: Money::from_micros(row.try_get(4)?),
        pricing_mode: match pricing_mode {
            Some(mode) => Some(
                PricingMode::parse(&mode).ok_or_else(|| unknown("pricing_mode", mode.clone()))?,
            ),
            None => None,
        },
        stripe_session_id: row.try_get(6)?,
        stripe_payment_intent_id: row.try_get(7)?,
        discount_code_id: row.try_get(8)?,
        amount_refunded: Money::from_micros(row.try_get(9)?),
        status: OrderStatus::parse(&status).ok_or_else(|| unknown("status", status.clone()))?,
        created_at_ms: row.try_get(11)?,
        completed_at_ms: row.try_get(12)?,
        receipt_url: match row.try_get::<_, Option<String>>(13)? {
            Some(url) if !crate::billing::receipts::is_receipt_link(&url) => {
                return Err(unknown("receipt_url", url))
            }
            url => url,
        },
        receipt_asked_at_ms: row.try_get(14)?,
    })
}

async fn insert_order(
    client: &impl GenericClient,
    order: &NewOrder,
    charge_key: Option<&str>,
    now_ms: i64,
) -> Result<Order, StoreError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO orders (account_id, order_type, amount, list_price, pricing_mode, discount_code_id,
                                     charge_key, status, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8) RETURNING {ORDER_COLUMNS}"
            ),
            &[
                &order.account_id.0,
                &order.order_type.as_str(),
                &order.amount.micros(),
                &order.list_price.micros(),
                &order.pricing_mode.map(PricingMode::as_str),
                &order.discount_code_id,
                &charge_key,
                &now_ms,
            ],
        )
        .await?;
    order_from_row(&row)
}

async fn order_where(
    client: &impl GenericClient,
    condition: &str,
    value: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<Option<Order>, StoreError> {
    client
        .query_opt(
            &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE {condition} = $1"),
            &[value],
        )
        .await?
        .map(|row| order_from_row(&row))
        .transpose()
}

/// Refuses a new order that would take the day's charges of its kind past
/// the cap. The account's row is locked first, so two instances opening
/// charges of one account at once are decided one after the other; an
/// order that exists already (its key again) is never refused.
async fn within_daily_cap(
    transaction: &tokio_postgres::Transaction<'_>,
    order: &NewOrder,
    charge_key: &str,
    cap: &DailyCap,
) -> Result<(), BillingError> {
    transaction
        .execute(
            "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE",
            &[&order.account_id.0],
        )
        .await
        .map_err(StoreError::from)?;
    if order_where(transaction, "charge_key", &charge_key)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let charged: i64 = transaction
        .query_one(
            "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM orders
              WHERE account_id = $1 AND charge_key LIKE $2 || '%'
                AND status IN ('pending', 'completed') AND created_at >= $3",
            &[&order.account_id.0, &cap.key_prefix, &cap.since_ms],
        )
        .await
        .map_err(StoreError::from)?
        .try_get(0)
        .map_err(StoreError::from)?;
    if charged.saturating_add(order.amount.micros()) > cap.limit.micros() {
        return Err(BillingError::DailyLimit(cap.limit));
    }
    Ok(())
}

impl BillingStore for PostgresStore {
    fn pricing(&self) -> StoreFuture<Pricing> {
        self.read(move |client| async move { load_pricing(&*client).await })
    }

    fn set_pricing(&self, pricing: Pricing, now_ms: i64) -> StoreFuture<()> {
        self.write(move |transaction| {
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE pricing SET mode = $1, sale_price = $2, updated_at = $3 WHERE id = 1",
                        &[
                            &pricing.mode.as_str(),
                            &pricing.sale_price.map(Money::micros),
                            &now_ms,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn create_discount_code(
        &self,
        code: String,
        discount: Discount,
        max_uses: Option<i64>,
        now_ms: i64,
    ) -> StoreFuture<Option<DiscountCode>> {
        self.write(move |transaction| {
            let code = code.clone();
            boxed(async move {
                let (kind, value) = match discount {
                    Discount::Percent { percent } => ("percent", percent),
                    Discount::Fixed { amount } => ("fixed", amount.micros()),
                };
                let inserted = transaction
                    .execute(
                        "INSERT INTO discount_codes (code, discount_type, value, max_uses, created_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO NOTHING",
                        &[&code, &kind, &value, &max_uses, &now_ms],
                    )
                    .await?;
                if inserted == 0 {
                    return Ok(None);
                }
                find_code(transaction, &code).await
            })
        })
    }

    fn discount_codes(&self) -> StoreFuture<Vec<DiscountCode>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!("SELECT {CODE_COLUMNS} FROM discount_codes ORDER BY code"),
                    &[],
                )
                .await?;
            rows.iter().map(code_from_row).collect()
        })
    }

    fn set_discount_code_active(
        &self,
        code: String,
        active: bool,
    ) -> StoreFuture<Option<DiscountCode>> {
        self.write(move |transaction| {
            let code = code.clone();
            boxed(async move {
                let changed = transaction
                    .execute(
                        "UPDATE discount_codes SET active = $2 WHERE code = $1",
                        &[&code, &i64::from(active)],
                    )
                    .await?;
                if changed == 1 {
                    find_code(transaction, &code).await
                } else {
                    Ok(None)
                }
            })
        })
    }

    fn open_access_order(
        &self,
        request: AccessOrderRequest,
    ) -> StoreFuture<(Account, Order), BillingError> {
        self.write(move |transaction| {
            let phone = request.phone.clone();
            let email = request.email.clone();
            let discount_code = request.discount_code.clone();
            let price = request.price;
            let now_ms = request.now_ms;
            boxed(async move {
                let account = match find_account_by_phone(transaction, &phone).await? {
                    Some(account) if account.status == AccountStatus::Active => {
                        return Err(BillingError::AlreadyActive(account.id))
                    }
                    Some(account) => account,
                    None => {
                        let new_account = NewAccount {
                            phone,
                            email: Some(email),
                            status: AccountStatus::Pending,
                        };
                        insert_account(transaction, &new_account, now_ms)
                            .await
                            .map_err(|error| match error {
                                CreateAccountError::Store(store) => BillingError::Store(store),
                                other => BillingError::Invalid(other.to_string()),
                            })?
                    }
                };
                let pricing = load_pricing(transaction).await?;
                let reserved = match &discount_code {
                    Some(code) => Some(reserve_code(transaction, code).await?),
                    None => None,
                };
                let (list_price, amount) =
                    price(&pricing, reserved.as_ref().map(|code| code.discount))?;
                let order = insert_order(
                    transaction,
                    &NewOrder {
                        account_id: account.id,
                        order_type: OrderType::InitialAccess,
                        amount,
                        list_price,
                        pricing_mode: Some(pricing.mode),
                        discount_code_id: reserved.map(|code| code.id),
                    },
                    None,
                    now_ms,
                )
                .await?;
                Ok((account, order))
            })
        })
    }

    fn open_order(
        &self,
        order: NewOrder,
        now_ms: i64,
    ) -> StoreFuture<(Account, Order), BillingError> {
        self.write(move |transaction| {
            let order = order.clone();
            boxed(async move {
                let account = get_account(transaction, order.account_id)
                    .await?
                    .ok_or(BillingError::AccountNotFound(order.account_id))?;
                if account.status != AccountStatus::Active {
                    return Err(BillingError::Invalid(
                        "only an active account can top up; buy access first".into(),
                    ));
                }
                let order = insert_order(transaction, &order, None, now_ms).await?;
                Ok((account, order))
            })
        })
    }

    fn open_off_session_order(
        &self,
        order: NewOrder,
        charge_key: String,
        cap: Option<DailyCap>,
        now_ms: i64,
    ) -> StoreFuture<(Account, Order), BillingError> {
        self.write(move |transaction| {
            let order = order.clone();
            let charge_key = charge_key.clone();
            let cap = cap.clone();
            boxed(async move {
                let account = get_account(transaction, order.account_id)
                    .await?
                    .ok_or(BillingError::AccountNotFound(order.account_id))?;
                if account.stripe_customer_id.is_none()
                    || account.stripe_payment_method_id.is_none()
                {
                    return Err(BillingError::NoSavedCard);
                }
                if let Some(cap) = &cap {
                    within_daily_cap(transaction, &order, &charge_key, cap).await?;
                }
                // Another instance may open the same charge at the same
                // moment: the key is unique, and the loser reads the winner's.
                let inserted = transaction
                    .query_opt(
                        "INSERT INTO orders (account_id, order_type, amount, list_price, charge_key, status, created_at)
                         VALUES ($1, $2, $3, $4, $5, 'pending', $6)
                         ON CONFLICT (charge_key) DO NOTHING RETURNING id",
                        &[
                            &order.account_id.0,
                            &order.order_type.as_str(),
                            &order.amount.micros(),
                            &order.list_price.micros(),
                            &charge_key,
                            &now_ms,
                        ],
                    )
                    .await
                    .map_err(StoreError::from)?;
                let _ = inserted;
                let found = order_where(transaction, "charge_key", &charge_key)
                    .await?
                    .ok_or_else(|| StoreError::Database("the charge's order vanished".into()))?;
                Ok((account, found))
            })
        })
    }

    fn set_order_session(&self, order_id: i64, session_id: String) -> StoreFuture<()> {
        self.write(move |transaction| {
            let session_id = session_id.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE orders SET stripe_session_id = $2 WHERE id = $1",
                        &[&order_id, &session_id],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn set_order_payment_intent(
        &self,
        order_id: i64,
        payment_intent_id: String,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let payment_intent_id = payment_intent_id.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE orders SET stripe_payment_intent_id = $2
                          WHERE id = $1 AND stripe_payment_intent_id IS NULL",
                        &[&order_id, &payment_intent_id],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn claim_receipt_ask(
        &self,
        order_id: i64,
        asked_at_ms: i64,
        last_asked_by_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            boxed(async move {
                // The row's lock decides between listings at once: the
                // second re-reads the row the first updated, and finds it
                // claimed.
                let claimed = transaction
                    .execute(
                        "UPDATE orders SET receipt_asked_at = $2
                          WHERE id = $1 AND receipt_url IS NULL
                            AND (receipt_asked_at IS NULL OR receipt_asked_at <= $3)",
                        &[&order_id, &asked_at_ms, &last_asked_by_ms],
                    )
                    .await?;
                Ok(claimed == 1)
            })
        })
    }

    fn record_receipt(&self, order_id: i64, receipt_url: String) -> StoreFuture<()> {
        self.write(move |transaction| {
            let receipt_url = receipt_url.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE orders SET receipt_url = COALESCE(receipt_url, $2) WHERE id = $1",
                        &[&order_id, &receipt_url],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn end_unopened_orders(&self, opened_before_ms: i64, limit: i64) -> StoreFuture<Vec<i64>> {
        self.write(move |transaction| {
            boxed(async move {
                let rows = transaction
                    .query(
                        "SELECT id FROM orders
                          WHERE status = 'pending' AND stripe_session_id IS NULL
                            AND discount_code_id IS NOT NULL AND discount_released = 0
                            AND created_at < $1
                          ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                        &[&opened_before_ms, &limit],
                    )
                    .await?;
                let mut ended = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: i64 = row.try_get(0)?;
                    let changed = transaction
                        .execute(
                            "UPDATE orders SET status = 'failed' WHERE id = $1 AND status = 'pending'",
                            &[&id],
                        )
                        .await?;
                    if changed == 1 {
                        release_code_of_order(transaction, id).await?;
                        ended.push(id);
                    }
                }
                Ok(ended)
            })
        })
    }

    fn end_order(
        &self,
        order_id: i64,
        status: OrderStatus,
        event: Option<NewEvent>,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let event = event.clone();
            boxed(async move {
                let ended = transaction
                    .execute(
                        "UPDATE orders SET status = $2 WHERE id = $1 AND status = 'pending'",
                        &[&order_id, &status.as_str()],
                    )
                    .await?;
                // Only an order that was still pending gives its code's use
                // back: a completed one used it.
                if ended == 1 {
                    release_code_of_order(transaction, order_id).await?;
                }
                if let (1, Some(event)) = (ended, &event) {
                    super::webhooks::insert_events(transaction, std::slice::from_ref(event))
                        .await?;
                }
                Ok(ended == 1)
            })
        })
    }

    fn complete_order(&self, completion: OrderCompletion) -> StoreFuture<()> {
        self.write(move |transaction| {
            let payment_intent_id = completion.payment_intent_id.clone();
            let customer = completion.customer.clone();
            let (order_id, paid, activate_account, now_ms) = (
                completion.order_id,
                completion.paid,
                completion.activate,
                completion.now_ms,
            );
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE orders SET status = 'completed', amount = $2,
                                stripe_payment_intent_id = COALESCE(stripe_payment_intent_id, $3),
                                completed_at = COALESCE(completed_at, $4)
                          WHERE id = $1 AND status IN ('pending', 'failed', 'expired')",
                        &[&order_id, &paid.micros(), &payment_intent_id, &now_ms],
                    )
                    .await?;
                if let Some((account_id, customer_id)) = &customer {
                    set_stripe_customer(transaction, *account_id, customer_id).await?;
                }
                if let Some(account_id) = activate_account {
                    activate(transaction, account_id).await?;
                }
                Ok(())
            })
        })
    }

    fn refund_failed_later(
        &self,
        request_id: i64,
        stripe_refund_id: String,
        error: String,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest> {
        self.write(move |transaction| {
            let (stripe_refund_id, error) = (stripe_refund_id.clone(), error.clone());
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE order_refunds SET status = 'failed',
                                stripe_refund_id = COALESCE(stripe_refund_id, $2),
                                error = $3, updated_at = $4
                          WHERE id = $1
                            AND (status = 'requested'
                                 OR (status = 'succeeded'
                                     AND (stripe_refund_id IS NULL OR stripe_refund_id = $2)))",
                        &[&request_id, &stripe_refund_id, &error, &now_ms],
                    )
                    .await?;
                refund_by_id(transaction, request_id).await
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
        self.read(move |client| async move { order_where(&*client, "id", &order_id).await })
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
        self.read(move |client| async move {
            order_where(&*client, "stripe_session_id", &session_id).await
        })
    }

    fn order_by_payment_intent(&self, payment_intent_id: String) -> StoreFuture<Option<Order>> {
        self.read(move |client| async move {
            order_where(&*client, "stripe_payment_intent_id", &payment_intent_id).await
        })
    }

    fn orders_of(&self, account_id: AccountId) -> StoreFuture<Vec<Order>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {ORDER_COLUMNS} FROM orders WHERE account_id = $1 ORDER BY id"
                    ),
                    &[&account_id.0],
                )
                .await?;
            rows.iter().map(order_from_row).collect()
        })
    }

    fn save_card(
        &self,
        customer_id: String,
        payment_method_id: String,
        card: Option<Card>,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let (customer_id, payment_method_id, card) =
                (customer_id.clone(), payment_method_id.clone(), card.clone());
            boxed(async move {
                match &card {
                    Some(card) => transaction
                        .execute(
                            "UPDATE accounts SET stripe_payment_method_id = $2, card_brand = $3,
                                        card_last4 = $4, card_exp_month = $5, card_exp_year = $6
                                  WHERE stripe_customer_id = $1
                                    AND forgotten_payment_method_id IS DISTINCT FROM $2",
                            &[
                                &customer_id,
                                &payment_method_id,
                                &card.brand,
                                &card.last4,
                                &card.exp_month,
                                &card.exp_year,
                            ],
                        )
                        .await?,
                    // Another method without details: the old details go.
                    None => {
                        transaction
                            .execute(
                                "UPDATE accounts
                                    SET card_brand = CASE WHEN stripe_payment_method_id = $2
                                                          THEN card_brand END,
                                        card_last4 = CASE WHEN stripe_payment_method_id = $2
                                                          THEN card_last4 END,
                                        card_exp_month = CASE WHEN stripe_payment_method_id = $2
                                                              THEN card_exp_month END,
                                        card_exp_year = CASE WHEN stripe_payment_method_id = $2
                                                             THEN card_exp_year END,
                                        stripe_payment_method_id = $2
                                  WHERE stripe_customer_id = $1
                                    AND forgotten_payment_method_id IS DISTINCT FROM $2",
                                &[&customer_id, &payment_method_id],
                            )
                            .await?
                    }
                };
                Ok(())
            })
        })
    }
}

const REFUND_COLUMNS: &str =
    "id, order_id, n, idempotency_key, amount, reason, status, stripe_refund_id, created_at";

fn refund_from_row(row: &Row) -> Result<RefundRequest, StoreError> {
    let id: i64 = row.try_get(0)?;
    let status: String = row.try_get(6)?;
    Ok(RefundRequest {
        id,
        order_id: row.try_get(1)?,
        n: row.try_get(2)?,
        idempotency_key: row.try_get(3)?,
        amount: Money::from_micros(row.try_get(4)?),
        reason: row.try_get(5)?,
        status: RefundStatus::parse(&status).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "order_refunds",
                id,
                "status",
                status.clone(),
            ))
        })?,
        stripe_refund_id: row.try_get(7)?,
        created_at_ms: row.try_get(8)?,
    })
}

async fn refund_by_id(client: &impl GenericClient, id: i64) -> Result<RefundRequest, StoreError> {
    let row = client
        .query_one(
            &format!("SELECT {REFUND_COLUMNS} FROM order_refunds WHERE id = $1"),
            &[&id],
        )
        .await?;
    refund_from_row(&row)
}

/// [`BillingStore::open_refund`]: the order's row is locked first, so two
/// requests for its last cents are decided one after the other.
async fn open_refund(
    transaction: &tokio_postgres::Transaction<'_>,
    refund: &OpenRefund,
) -> Result<Opened, BillingError> {
    let locked = transaction
        .query_opt(
            "SELECT id FROM orders WHERE id = $1 FOR UPDATE",
            &[&refund.order_id],
        )
        .await
        .map_err(StoreError::from)?;
    if locked.is_none() {
        return Err(BillingError::OrderNotFound(refund.order_id));
    }
    let known = transaction
        .query_opt(
            &format!(
                "SELECT {REFUND_COLUMNS} FROM order_refunds WHERE order_id = $1 AND idempotency_key = $2"
            ),
            &[&refund.order_id, &refund.idempotency_key],
        )
        .await
        .map_err(StoreError::from)?;
    if let Some(row) = known {
        return Ok(Opened::Known(refund_from_row(&row)?));
    }
    let order = order_where(transaction, "id", &refund.order_id)
        .await?
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
    let totals = transaction
        .query_one(
            "SELECT COALESCE(SUM(CASE WHEN status <> 'failed' THEN amount ELSE 0 END), 0)::BIGINT,
                    COALESCE(MAX(n), 0)::BIGINT
               FROM order_refunds WHERE order_id = $1",
            &[&refund.order_id],
        )
        .await
        .map_err(StoreError::from)?;
    let asked: i64 = totals.try_get(0).map_err(StoreError::from)?;
    let last_n: i64 = totals.try_get(1).map_err(StoreError::from)?;
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
    let row = transaction
        .query_one(
            &format!(
                "INSERT INTO order_refunds (order_id, n, idempotency_key, amount, reason, status,
                                            created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'requested', $6, $6) RETURNING {REFUND_COLUMNS}"
            ),
            &[
                &refund.order_id,
                &(last_n + 1),
                &refund.idempotency_key,
                &amount,
                &refund.reason,
                &refund.now_ms,
            ],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(Opened::New(refund_from_row(&row)?))
}

impl PostgresStore {
    pub(super) fn open_refund_op(&self, refund: OpenRefund) -> StoreFuture<Opened, BillingError> {
        self.write(move |transaction| {
            let refund = refund.clone();
            boxed(async move { open_refund(transaction, &refund).await })
        })
    }

    pub(super) fn refund_settled_op(
        &self,
        refund_id: i64,
        outcome: Result<String, String>,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest> {
        self.write(move |transaction| {
            let outcome = outcome.clone();
            boxed(async move {
                let (status, stripe_refund_id, error) = match &outcome {
                    Ok(id) => ("succeeded", Some(id.as_str()), None),
                    Err(error) => ("failed", None, Some(error.as_str())),
                };
                transaction
                    .execute(
                        "UPDATE order_refunds SET status = $2,
                                stripe_refund_id = COALESCE($3, stripe_refund_id),
                                error = $4, updated_at = $5
                          WHERE id = $1 AND status = 'requested'",
                        &[&refund_id, &status, &stripe_refund_id, &error, &now_ms],
                    )
                    .await?;
                refund_by_id(transaction, refund_id).await
            })
        })
    }

    pub(super) fn refunds_of_op(&self, order_id: i64) -> StoreFuture<Vec<RefundRequest>> {
        self.read(move |client| async move {
            client
                .query(
                    &format!(
                        "SELECT {REFUND_COLUMNS} FROM order_refunds WHERE order_id = $1 ORDER BY n"
                    ),
                    &[&order_id],
                )
                .await?
                .iter()
                .map(refund_from_row)
                .collect()
        })
    }
}

//! `/v1/admin/accounts/{id}/orders`: an account's orders;
//! `/v1/admin/orders/{id}`: one order, with what is unspent of its credit;
//! and `/v1/admin/orders/{id}/refund(s)`: refund a paid order through
//! Stripe.

use actix_web::{web, HttpResponse};
use sms_credit_actors::billing::orders::Order;
use sms_credit_actors::billing::refunds::{self, RefundRequest, Refunded};
use sms_credit_actors::grants::{GrantLine, GrantStatus};
use sms_credit_actors::{AccountId, LedgerError, Money};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// An account's orders.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Orders {
    orders: Vec<OrderLine>,
}

/// One of an account's orders, and what is unspent of its credit.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OrderLine {
    #[serde(flatten)]
    order: Order,
    /// As in `GET /v1/admin/orders/{id}`.
    unspent_credit_micros: i64,
}

/// An account's orders: what was sold at what price and mode, and where
/// each payment stands.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/orders", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = Orders)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let found = state.store.billing().orders_of(account_id).await?;
    if found.is_empty() {
        return Ok(HttpResponse::Ok().json(Orders { orders: Vec::new() }));
    }
    let lines = lines_of(&state, account_id, found[0].id).await?;
    let orders = found
        .into_iter()
        .map(|order| {
            Ok(OrderLine {
                unspent_credit_micros: unspent_of(&lines, order.id)?.micros(),
                order,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(HttpResponse::Ok().json(Orders { orders }))
}

/// The grants of an order's account, with what is left of each. An order's
/// account always has its balance row: one missing is a damaged database,
/// never "nothing unspent".
async fn lines_of(
    state: &AppState,
    account_id: AccountId,
    order_id: i64,
) -> Result<Vec<GrantLine>, ApiError> {
    super::credit_grants::grant_lines(state, account_id)
        .await?
        .ok_or_else(|| {
            ApiError::from(sms_credit_actors::StoreError::Database(format!(
                "order {order_id}'s account {account_id} has no balance row"
            )))
        })
}

/// What is left of the grants `order_id` made that have not expired.
fn unspent_of(lines: &[GrantLine], order_id: i64) -> Result<Money, ApiError> {
    let mut unspent = Money::ZERO;
    for line in lines {
        if line.grant.order_id == Some(order_id) && line.status == GrantStatus::Active {
            unspent = unspent
                .checked_add(line.remaining)
                .map_err(LedgerError::from)?;
        }
    }
    Ok(unspent)
}

/// One order, and what is unspent of the credit it bought.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OrderDetail {
    order: Order,
    /// What is left of the grants the order made that have not expired:
    /// what a refund takes back first (see the README's *Credit grants*).
    /// 0 for an order that credited nothing yet.
    unspent_credit_micros: i64,
}

/// One order, and what is unspent of its credit.
#[utoipa::path(get, path = "/v1/admin/orders/{id}", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The order")),
    responses((status = 200, body = OrderDetail)))]
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path.into_inner();
    let Some(order) = state.store.billing().order(order_id).await? else {
        return Err(ApiError::NotFound(format!(
            "order {order_id} does not exist"
        )));
    };
    let lines = lines_of(&state, order.account_id, order_id).await?;
    let unspent = unspent_of(&lines, order_id)?;
    Ok(HttpResponse::Ok().json(OrderDetail {
        order,
        unspent_credit_micros: unspent.micros(),
    }))
}

/// A refund to ask Stripe for.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Whole cents; without it, everything not refunded yet.
    #[schema(minimum = 10_000, multiple_of = 10_000)]
    amount_micros: Option<i64>,
    /// Why (kept with the refund).
    reason: String,
    /// The same key again is the same refund (a double click, a retry);
    /// without one, the amount and the reason make it.
    idempotency_key: Option<String>,
}

/// An order's refund requests.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Refunds {
    order_id: i64,
    refunds: Vec<RefundRequest>,
}

impl Refunds {
    /// The API's answer, and `orders refunds --json`'s.
    pub fn new(order_id: i64, refunds: Vec<RefundRequest>) -> Refunds {
        Refunds { order_id, refunds }
    }
}

/// Asks Stripe to refund (part of) a paid order, once per idempotency key
/// (Stripe's own key is made from the order and the refund's number). The
/// credit comes off when Stripe's refund event arrives, as for a refund
/// made in Stripe's dashboard; it may take the balance below zero. Never
/// more than was paid and not refunded or asked already (`409
/// not_refundable`); Stripe refusing is `409 refund_refused` and Stripe
/// not answering `502`, with nothing refunded (the same request may be
/// sent again).
#[utoipa::path(post, path = "/v1/admin/orders/{id}/refund", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The order")),
    request_body = RefundBody,
    responses((status = 200, body = Refunded)))]
pub async fn refund(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    body: web::Json<RefundBody>,
) -> Result<HttpResponse, ApiError> {
    let billing = crate::routes::checkout::billing(&state)?;
    let body = body.into_inner();
    let amount = body.amount_micros.map(Money::from_micros);
    let key = body
        .idempotency_key
        .clone()
        .unwrap_or_else(|| refunds::default_key(amount, &body.reason));
    let refunded = billing
        .refund_order(
            path.into_inner(),
            amount,
            &body.reason,
            &key,
            state.clock.now_ms(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(refunded))
}

/// An order's refund requests, oldest first.
#[utoipa::path(get, path = "/v1/admin/orders/{id}/refunds", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The order")),
    responses((status = 200, body = Refunds)))]
pub async fn refunds(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path.into_inner();
    if state.store.billing().order(order_id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "order {order_id} does not exist"
        )));
    }
    let refunds = state.store.billing().refunds_of(order_id).await?;
    Ok(HttpResponse::Ok().json(Refunds { order_id, refunds }))
}

//! `/v1/admin/accounts/{id}/orders`: an account's orders.

use actix_web::{web, HttpResponse};
use sms_credit_actors::billing::orders::Order;
use sms_credit_actors::AccountId;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// An account's orders.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Orders {
    orders: Vec<Order>,
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
    Ok(HttpResponse::Ok().json(Orders { orders: found }))
}

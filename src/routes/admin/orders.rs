//! `/v1/admin/accounts/{id}/orders`: an account's orders.

use actix_web::{web, HttpResponse};
use serde_json::json;
use sms_credit_actors::AccountId;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let found = state.store.billing().orders_of(account_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "orders": found })))
}

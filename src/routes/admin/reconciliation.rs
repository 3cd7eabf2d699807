//! `/v1/admin/reconciliation`: what messages were charged against what
//! Twilio actually charged, per country and overall; and a way to look up
//! the prices that are due now.

use actix_web::{web, HttpResponse};
use sms_credit_actors::messaging::reconcile;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// How many prices were found.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PricesFound {
    prices_found: usize,
}

/// What messages were charged against what Twilio actually charged, per
/// country and overall; service messages apart; every mismatch.
#[utoipa::path(get, path = "/v1/admin/reconciliation", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = sms_credit_actors::messaging::reconcile::ReconciliationReport)))]
pub async fn show(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = reconcile::report_from(&state.store).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Looks up Twilio's prices of the messages that are due, now.
#[utoipa::path(post, path = "/v1/admin/reconciliation/check-prices", tag = "admin",
    security(("adminToken" = [])),
    responses((status = 200, body = PricesFound)))]
pub async fn check_prices(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let messaging = state.messaging.as_ref().ok_or(ApiError::NotConfigured {
        code: "twilio_not_configured",
        // What to set goes to the log (`variable`), not to the console.
        message: "Twilio is not configured on this server, so prices cannot be checked",
        variable: "SMS_CREDIT_TWILIO_ACCOUNT_SID",
    })?;
    let found = messaging.check_prices(state.clock.now_ms()).await?;
    Ok(HttpResponse::Ok().json(PricesFound {
        prices_found: found,
    }))
}

//! `/v1/admin/pricing`: the pricing mode of access (launch $29.99, rrp
//! $49.99, or sale at a given price), read and changed at run time.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::billing::pricing::{Pricing, PricingMode};
use sms_credit_actors::Money;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The pricing mode to set.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPricing {
    #[schema(value_type = PricingMode)]
    mode: String,
    /// With `sale` only: a positive price in whole cents.
    #[schema(minimum = 10_000, multiple_of = 10_000)]
    sale_price_micros: Option<i64>,
}

/// The pricing of access.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PricingView {
    mode: PricingMode,
    sale_price_micros: Option<i64>,
    /// What access costs now.
    price_micros: i64,
}

/// The API's answer, and `pricing --json`'s.
pub fn view(pricing: &Pricing) -> PricingView {
    PricingView {
        mode: pricing.mode,
        sale_price_micros: pricing.sale_price.map(Money::micros),
        price_micros: pricing.price().micros(),
    }
}

/// The pricing mode of access and its price.
#[utoipa::path(get, path = "/v1/admin/pricing", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = PricingView)))]
pub async fn show(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let current = state.store.billing().pricing().await?;
    Ok(HttpResponse::Ok().json(view(&current)))
}

/// Sets the pricing mode: `launch` ($29.99), `rrp` ($49.99) or `sale` at a
/// price given; orders record the mode and price they were sold at.
#[utoipa::path(put, path = "/v1/admin/pricing", tag = "admin", security(("adminToken" = [])),
    request_body = SetPricing,
    responses((status = 200, body = PricingView)))]
pub async fn update(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<SetPricing>,
) -> Result<HttpResponse, ApiError> {
    let mode = PricingMode::parse(&body.mode).ok_or_else(|| {
        ApiError::invalid("invalid_pricing_mode", "the mode is launch, rrp or sale")
    })?;
    let new_pricing = Pricing::new(mode, body.sale_price_micros.map(Money::from_micros))
        .map_err(|message| ApiError::invalid("invalid_pricing_mode", message))?;
    let now_ms = state.clock.now_ms();
    state
        .store
        .billing()
        .set_pricing(new_pricing, now_ms)
        .await?;
    tracing::info!(mode = %new_pricing.mode, "pricing mode changed");
    Ok(HttpResponse::Ok().json(view(&new_pricing)))
}

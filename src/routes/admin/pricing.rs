//! `/v1/admin/pricing`: the pricing mode of access (launch $29.99, rrp
//! $49.99, or sale at a given price), read and changed at run time.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use sms_credit_actors::billing::pricing::{Pricing, PricingMode};
use sms_credit_actors::Money;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPricing {
    mode: String,
    sale_price_micros: Option<i64>,
}

fn view(pricing: &Pricing) -> serde_json::Value {
    json!({
        "mode": pricing.mode,
        "sale_price_micros": pricing.sale_price.map(Money::micros),
        "price_micros": pricing.price().micros(),
    })
}

pub async fn show(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let current = state.store.billing().pricing().await?;
    Ok(HttpResponse::Ok().json(view(&current)))
}

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

//! `/v1/admin/discount-codes`: create, list, and turn codes on or off.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use sms_credit_actors::billing::discounts::{normalize_code, Discount};
use sms_credit_actors::Money;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCode {
    code: String,
    /// `percent` or `fixed`.
    #[serde(rename = "type")]
    kind: String,
    /// For `percent`.
    percent: Option<i64>,
    /// For `fixed`.
    amount_micros: Option<i64>,
    max_uses: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCode {
    active: bool,
}

pub async fn create(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<CreateCode>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let invalid = |message: String| ApiError::invalid("invalid_discount_code", message);
    let code = normalize_code(&request.code).map_err(invalid)?;
    let discount = match (
        request.kind.as_str(),
        request.percent,
        request.amount_micros,
    ) {
        ("percent", Some(percent), None) => Discount::new_percent(percent),
        ("fixed", None, Some(amount)) => Discount::new_fixed(Money::from_micros(amount)),
        _ => Err(
            "give type \"percent\" with percent, or type \"fixed\" with amount_micros".to_string(),
        ),
    }
    .map_err(invalid)?;
    if request.max_uses.is_some_and(|uses| uses < 1) {
        return Err(invalid("max_uses must be at least 1".to_string()));
    }
    let now_ms = state.clock.now_ms();
    let created = state
        .store
        .billing()
        .create_discount_code(code.clone(), discount, request.max_uses, now_ms)
        .await?;
    match created {
        Some(created) => Ok(HttpResponse::Created().json(created)),
        None => Err(ApiError::invalid(
            "discount_code_exists",
            format!("the code {code} exists already"),
        )),
    }
}

pub async fn list(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let codes = state.store.billing().discount_codes().await?;
    Ok(HttpResponse::Ok().json(json!({ "discount_codes": codes })))
}

pub async fn update(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<UpdateCode>,
) -> Result<HttpResponse, ApiError> {
    let code = normalize_code(&path.into_inner())
        .map_err(|message| ApiError::invalid("invalid_discount_code", message))?;
    let found = state
        .store
        .billing()
        .set_discount_code_active(code.clone(), body.active)
        .await?;
    let updated =
        found.ok_or_else(|| ApiError::NotFound(format!("there is no discount code {code}")))?;
    Ok(HttpResponse::Ok().json(updated))
}

//! `/v1/admin/discount-codes`: create, list, and turn codes on or off.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::billing::discounts::{normalize_code, Discount, DiscountCode};
use sms_credit_actors::Money;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// What a code takes off (for the document: the request reads it as text,
/// so that an unknown type gets this route's own error).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
enum DiscountType {
    Percent,
    Fixed,
}

/// A discount code to create.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCode {
    /// Letters, digits, '-' and '_'; stored upper-case.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", examples("SPRING"))]
    code: String,
    /// `percent` (with `percent`) or `fixed` (with `amount_micros`).
    #[serde(rename = "type")]
    #[schema(value_type = DiscountType)]
    kind: String,
    /// For `percent`: 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    percent: Option<i64>,
    /// For `fixed`: a positive amount in whole cents.
    #[schema(minimum = 10_000, multiple_of = 10_000)]
    amount_micros: Option<i64>,
    /// How many checkouts may use it; unlimited without.
    #[schema(minimum = 1)]
    max_uses: Option<i64>,
}

/// Turns a code on or off.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCode {
    active: bool,
}

/// The discount codes.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DiscountCodes {
    discount_codes: Vec<DiscountCode>,
}

impl DiscountCodes {
    /// The API's list, and `discount-codes list --json`'s.
    pub fn new(discount_codes: Vec<DiscountCode>) -> DiscountCodes {
        DiscountCodes { discount_codes }
    }
}

/// Creates a code, percent or fixed, optionally limited in uses.
#[utoipa::path(post, path = "/v1/admin/discount-codes", tag = "admin", security(("adminToken" = [])),
    request_body = CreateCode,
    responses((status = 201, body = DiscountCode)))]
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
    let price_now = state.store.billing().pricing().await?.price();
    let discount = discount.fits(price_now).map_err(invalid)?;
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

/// Every code with its uses.
#[utoipa::path(get, path = "/v1/admin/discount-codes", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = DiscountCodes)))]
pub async fn list(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let codes = state.store.billing().discount_codes().await?;
    Ok(HttpResponse::Ok().json(DiscountCodes {
        discount_codes: codes,
    }))
}

/// Turns a code on or off.
#[utoipa::path(patch, path = "/v1/admin/discount-codes/{code}", tag = "admin", security(("adminToken" = [])),
    params(("code" = String, Path, description = "The code")),
    request_body = UpdateCode,
    responses((status = 200, body = DiscountCode)))]
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

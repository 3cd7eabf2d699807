//! `/v1/accounts/{id}/auto-top-up` (the account's own token) and
//! `/v1/admin/accounts/{id}/auto-top-up` (the admin token): see and change
//! an account's auto top-up — the setting, the saved card, the consent it
//! was turned on with, this month's total and the last attempts.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::billing::auto_charge::AutoTopUpView;
use sms_credit_actors::billing::auto_top_up::{ConsentVia, SettingRequest};
use sms_credit_actors::{AccountId, Money};

use crate::auth::{AccountHolder, Admin};
use crate::error::ApiError;
use crate::routes::account::own_account;
use crate::routes::checkout::billing;
use crate::state::AppState;

/// A change of the setting; absent fields keep their value (the defaults
/// when first turned on: threshold $2.00, amount $10, cap $50).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoTopUpChange {
    /// Turning it on records the holder's consent; off is always possible.
    enabled: Option<bool>,
    /// A top-up starts when a debit leaves the balance below this (whole cents).
    #[schema(minimum = 10_000, examples(2_000_000))]
    threshold_micros: Option<i64>,
    /// Charged each time: whole dollars, at least $10.
    #[schema(minimum = 10_000_000, multiple_of = 1_000_000.0, examples(10_000_000))]
    amount_micros: Option<i64>,
    /// The most auto top-ups may charge in a calendar month (UTC), at least the amount.
    #[schema(minimum = 10_000_000, examples(50_000_000))]
    monthly_cap_micros: Option<i64>,
}

impl AutoTopUpChange {
    fn request(self) -> SettingRequest {
        SettingRequest {
            enabled: self.enabled,
            threshold: self.threshold_micros.map(Money::from_micros),
            amount: self.amount_micros.map(Money::from_micros),
            monthly_cap: self.monthly_cap_micros.map(Money::from_micros),
        }
    }
}

async fn view(state: &AppState, account_id: AccountId) -> Result<HttpResponse, ApiError> {
    let shown: AutoTopUpView = billing(state)?
        .auto_top_up_view(account_id, state.clock.now_ms())
        .await?;
    Ok(HttpResponse::Ok().json(shown))
}

async fn change(
    state: &AppState,
    account_id: AccountId,
    body: AutoTopUpChange,
    via: ConsentVia,
) -> Result<HttpResponse, ApiError> {
    billing(state)?
        .set_auto_top_up(account_id, body.request(), via, state.clock.now_ms())
        .await?;
    view(state, account_id).await
}

/// The account's auto top-up (the token's own account only).
#[utoipa::path(get, path = "/v1/accounts/{id}/auto-top-up", tag = "account holders",
    security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = AutoTopUpView)))]
pub async fn show(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    view(&state, account_id).await
}

/// Changes the account's auto top-up; turning it on needs a saved card and
/// an active account, and records the consent (`via` web).
#[utoipa::path(put, path = "/v1/accounts/{id}/auto-top-up", tag = "account holders",
    security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    request_body = AutoTopUpChange,
    responses((status = 200, body = AutoTopUpView)))]
pub async fn update(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    body: web::Json<AutoTopUpChange>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    change(&state, account_id, body.into_inner(), ConsentVia::Web).await
}

/// Any account's auto top-up.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/auto-top-up", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = AutoTopUpView)))]
pub async fn admin_show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    view(&state, AccountId(path.into_inner())).await
}

/// Changes any account's auto top-up (consent recorded `via` admin).
#[utoipa::path(put, path = "/v1/admin/accounts/{id}/auto-top-up", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    request_body = AutoTopUpChange,
    responses((status = 200, body = AutoTopUpView)))]
pub async fn admin_update(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    body: web::Json<AutoTopUpChange>,
) -> Result<HttpResponse, ApiError> {
    change(
        &state,
        AccountId(path.into_inner()),
        body.into_inner(),
        ConsentVia::Admin,
    )
    .await
}

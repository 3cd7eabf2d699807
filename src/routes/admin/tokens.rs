//! `/v1/admin/accounts/{id}/tokens`: issue an account token (shown once,
//! stored as a hash), revoke all of an account's tokens, or rotate (revoke
//! all and issue one, in one transaction).

use actix_web::{web, HttpResponse};
use serde_json::json;
use sms_credit_actors::{access_tokens, AccountId};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

fn no_such_account(account_id: AccountId) -> ApiError {
    ApiError::NotFound(format!("account {account_id} does not exist"))
}

pub async fn issue(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let token = access_tokens::issue(&state.store, account_id, state.clock.now_ms())
        .await?
        .ok_or_else(|| no_such_account(account_id))?;
    Ok(HttpResponse::Created().json(json!({ "account_id": account_id, "token": token })))
}

pub async fn revoke(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let revoked = state
        .store
        .tokens()
        .revoke_all(account_id, state.clock.now_ms())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "account_id": account_id, "revoked": revoked })))
}

/// `POST /v1/admin/accounts/{id}/tokens/rotate`.
pub async fn rotate(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let (revoked, token) = access_tokens::rotate(&state.store, account_id, state.clock.now_ms())
        .await?
        .ok_or_else(|| no_such_account(account_id))?;
    Ok(HttpResponse::Created()
        .json(json!({ "account_id": account_id, "token": token, "revoked": revoked })))
}

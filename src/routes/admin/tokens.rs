//! `/v1/admin/accounts/{id}/tokens`: issue an account token (shown once,
//! stored as a hash), revoke all of an account's tokens, or rotate (revoke
//! all and issue one, in one transaction).

use actix_web::{web, HttpResponse};
use serde_json::json;
use sms_credit_actors::store::queries;
use sms_credit_actors::{access_tokens, AccountId, StoreError};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

pub async fn issue(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let now_ms = state.clock.now_ms();
    let token = state
        .store
        .write(move |connection| {
            if queries::get_account(connection, account_id)?.is_none() {
                return Ok(None);
            }
            access_tokens::issue(connection, account_id, now_ms).map(Some)
        })
        .await
        .map_err(|error: StoreError| ApiError::Store(error))?;
    let token =
        token.ok_or_else(|| ApiError::NotFound(format!("account {account_id} does not exist")))?;
    Ok(HttpResponse::Created().json(json!({ "account_id": account_id, "token": token })))
}

pub async fn revoke(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let now_ms = state.clock.now_ms();
    let revoked = state
        .store
        .write(move |connection| access_tokens::revoke_all(connection, account_id, now_ms))
        .await
        .map_err(|error: StoreError| ApiError::Store(error))?;
    Ok(HttpResponse::Ok().json(json!({ "account_id": account_id, "revoked": revoked })))
}

/// `POST /v1/admin/accounts/{id}/tokens/rotate`.
pub async fn rotate(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let now_ms = state.clock.now_ms();
    let rotated = state
        .store
        .write(move |connection| {
            if queries::get_account(connection, account_id)?.is_none() {
                return Ok(None);
            }
            let revoked = access_tokens::revoke_all(connection, account_id, now_ms)?;
            let token = access_tokens::issue(connection, account_id, now_ms)?;
            Ok(Some((revoked, token)))
        })
        .await
        .map_err(|error: StoreError| ApiError::Store(error))?;
    let (revoked, token) = rotated
        .ok_or_else(|| ApiError::NotFound(format!("account {account_id} does not exist")))?;
    Ok(HttpResponse::Created()
        .json(json!({ "account_id": account_id, "token": token, "revoked": revoked })))
}

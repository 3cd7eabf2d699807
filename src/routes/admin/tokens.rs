//! `/v1/admin/accounts/{id}/tokens`: list an account's tokens (what is
//! known of them, never the token), issue one (shown once, stored as a
//! hash), revoke all, or rotate (revoke all and issue one, in one
//! transaction). Tokens made by signing in by phone are among them.

use actix_web::{web, HttpResponse};
use sms_credit_actors::{access_tokens, AccountId};

use super::no_such_account;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// A token, shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    account_id: AccountId,
    #[schema(examples("sct_4f1c…"))]
    token: String,
}

impl IssuedToken {
    /// The API's answer, and `accounts token issue --json`'s.
    pub fn new(account_id: AccountId, token: String) -> IssuedToken {
        IssuedToken { account_id, token }
    }
}

/// Tokens revoked (and, on rotation, the new one).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RevokedTokens {
    account_id: AccountId,
    revoked: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl RevokedTokens {
    /// The API's answer, and `accounts token revoke|rotate --json`'s.
    pub fn new(account_id: AccountId, revoked: usize, token: Option<String>) -> RevokedTokens {
        RevokedTokens {
            account_id,
            revoked,
            token,
        }
    }
}

/// An account's tokens, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TokenList {
    account_id: AccountId,
    tokens: Vec<access_tokens::TokenRecord>,
}

/// Lists an account's tokens: who made each, when, until when, and whether
/// it was revoked (never the token itself).
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/tokens", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = TokenList)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    super::existing_account(&state, account_id).await?;
    let tokens = state.store.tokens().list(account_id).await?;
    Ok(HttpResponse::Ok().json(TokenList { account_id, tokens }))
}

/// Issues an account token (shown once, stored as its SHA-256).
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/tokens", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 201, body = IssuedToken)))]
pub async fn issue(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let token = access_tokens::issue(&state.store, account_id, state.clock.now_ms())
        .await?
        .ok_or_else(|| no_such_account(account_id))?;
    Ok(HttpResponse::Created().json(IssuedToken { account_id, token }))
}

/// Revokes every token of an account.
#[utoipa::path(delete, path = "/v1/admin/accounts/{id}/tokens", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = RevokedTokens)))]
pub async fn revoke(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let revoked = access_tokens::revoke_all(&state.store, account_id, state.clock.now_ms()).await?;
    Ok(HttpResponse::Ok().json(RevokedTokens {
        account_id,
        revoked,
        token: None,
    }))
}

/// Revokes every token of an account and issues one, in one transaction.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/tokens/rotate", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 201, body = RevokedTokens)))]
pub async fn rotate(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let (revoked, token) = access_tokens::rotate(&state.store, account_id, state.clock.now_ms())
        .await?
        .ok_or_else(|| no_such_account(account_id))?;
    Ok(HttpResponse::Created().json(RevokedTokens {
        account_id,
        revoked,
        token: Some(token),
    }))
}

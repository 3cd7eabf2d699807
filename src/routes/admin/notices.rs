//! `/v1/admin/accounts/{id}/notices`: the SMS notices the service queued
//! for an account (low-balance warnings, …), newest first, with where each
//! stands: pending, sending, sent, failed, or unknown (its sender stopped
//! mid-send; never sent again). And `/v1/admin/accounts/{id}/messages`:
//! the account's messages.

use actix_web::{web, HttpResponse};
use sms_credit_actors::messaging::notices::Notice;
use sms_credit_actors::AccountId;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// An account's notices.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Notices {
    notices: Vec<Notice>,
}

/// The SMS notices queued for an account, newest first, and where each stands.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/notices", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = Notices)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let notices = state.store.messages().notices_of(account_id, 100).await?;
    Ok(HttpResponse::Ok().json(Notices { notices }))
}

/// An account's messages.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountMessages {
    messages: Vec<sms_credit_actors::messaging::records::MessageRecord>,
}

/// The account's messages, newest first (100 at most): charged ones and
/// the service's own (replies, warnings), what each cost and where it
/// stands, with Twilio's actual price once known.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/messages", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = AccountMessages)))]
pub async fn messages(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    super::existing_account(&state, account_id).await?;
    let messages = state.store.messages().messages_of(account_id, 100).await?;
    Ok(HttpResponse::Ok().json(AccountMessages { messages }))
}

//! `/v1/accounts/...`: what an account holder may see with an account
//! token: their account, their ledger, a ticket for their feed. A token
//! opens only its own account; any other id is answered as not found.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sms_credit_actors::AccountId;

use crate::auth::AccountHolder;
use crate::error::ApiError;
use crate::feed::{FeedScope, TICKET_LIFETIME};
use crate::routes::admin::transactions::TransactionView;
use crate::startup::AppState;

/// An account as its holder sees it.
#[derive(Serialize)]
struct HolderView {
    id: AccountId,
    phone: String,
    status: sms_credit_actors::accounts::AccountStatus,
    balance_micros: i64,
    balance: String,
    seq: i64,
}

/// The account in the path, if the token is for it.
fn own_account(holder: &AccountHolder, path_id: i64) -> Result<AccountId, ApiError> {
    if holder.0 == AccountId(path_id) {
        Ok(holder.0)
    } else {
        // Not 403: whether another account exists is not this caller's business.
        Err(ApiError::NotFound(format!(
            "account {path_id} does not exist"
        )))
    }
}

async fn view(state: &AppState, account_id: AccountId) -> Result<HttpResponse, ApiError> {
    let account = state
        .store
        .accounts()
        .get(account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {account_id} does not exist")))?;
    Ok(HttpResponse::Ok().json(HolderView {
        id: account.id,
        phone: account.phone.as_str().to_string(),
        status: account.status,
        balance_micros: account.balance.micros(),
        balance: account.balance.to_string(),
        seq: account.seq,
    }))
}

/// `GET /v1/accounts/me`: the token's own account.
pub async fn me(
    holder: AccountHolder,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    view(&state, holder.0).await
}

/// `GET /v1/accounts/{id}`.
pub async fn show(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    view(&state, account_id).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsQuery {
    /// Rows after this seq, oldest first.
    after_seq: Option<i64>,
    /// The newest rows, newest first (instead of `after_seq`).
    latest: Option<i64>,
    /// At most this many rows (1 to 1000, default 100).
    limit: Option<i64>,
}

/// `GET /v1/accounts/{id}/transactions`.
pub async fn transactions(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    query: web::Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    let query = query.into_inner();
    let limit = query.latest.or(query.limit).unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit and latest must be between 1 and 1000",
        ));
    }
    let newest_first = query.latest.is_some();
    let after_seq = query.after_seq.unwrap_or(0);
    let ledger = state.store.ledger();
    let entries = if newest_first {
        ledger.latest_entries(account_id, limit).await?
    } else {
        ledger.entries_after(account_id, after_seq, limit).await?
    };
    let rows: Vec<TransactionView> = entries.iter().map(TransactionView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "transactions": rows })))
}

/// `POST /v1/accounts/{id}/feed-tickets`: a single-use ticket to open the
/// feed from a browser.
pub async fn feed_ticket(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    let ticket = state
        .tickets
        .issue(FeedScope::Account(account_id), state.clock.now_ms())?;
    Ok(HttpResponse::Created().json(json!({
        "ticket": ticket,
        "expires_in_secs": TICKET_LIFETIME.as_secs(),
    })))
}

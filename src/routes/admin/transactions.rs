//! `/v1/admin/accounts/{id}/transactions`: an account's ledger, oldest
//! first, as JSON pages or (`.csv`) the whole ledger as CSV.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::AccountId;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;
pub use crate::views::TransactionView;

/// Ledger rows.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Transactions {
    pub transactions: Vec<TransactionView>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only rows after this ledger position.
    #[serde(default)]
    after_seq: i64,
    /// At most this many rows (1 to 1000, default 100).
    limit: Option<i64>,
}

/// An account's ledger, oldest first.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/transactions", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account"), ListQuery),
    responses((status = 200, body = Transactions)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let ListQuery { after_seq, limit } = query.into_inner();
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let (snapshot, entries) = state
        .store
        .ledger()
        .snapshot_and_entries_after(account_id, after_seq, limit)
        .await?;
    if snapshot.is_none() {
        return Err(super::no_such_account(account_id));
    }
    Ok(HttpResponse::Ok().json(Transactions {
        transactions: entries.iter().map(TransactionView::from).collect(),
    }))
}

/// The whole ledger as CSV (amounts in micro-dollars and in dollars; text a
/// spreadsheet would run as a formula is defused), read in pages.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/transactions.csv", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, description = "The ledger", content_type = "text/csv", body = String)))]
pub async fn export_csv(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    super::existing_account(&state, account_id).await?;
    let mut csv = String::from(sms_credit_actors::export::CSV_HEADER);
    let mut after_seq = 0;
    loop {
        let page = state
            .store
            .ledger()
            .entries_after(account_id, after_seq, 1000)
            .await?;
        for entry in &page {
            csv.push_str(&sms_credit_actors::export::csv_row(entry));
            after_seq = entry.seq;
        }
        if page.len() < 1000 {
            break;
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"account-{account_id}-ledger.csv\""),
        ))
        .body(csv))
}

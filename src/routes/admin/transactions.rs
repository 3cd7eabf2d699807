//! `/v1/admin/accounts/{id}/transactions`: an account's ledger, oldest
//! first, as JSON pages or (`.csv`) the whole ledger as CSV.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::account_actor::ADJUSTMENT_DESCRIPTION;
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::{AccountId, LedgerEntry, TransactionKind};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// A ledger row as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TransactionView {
    account_id: AccountId,
    seq: i64,
    #[serde(rename = "type")]
    kind: TransactionKind,
    amount_micros: i64,
    balance_after_micros: i64,
    /// What names the change; not shown to the account holder for an
    /// adjustment (the operator's own words).
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    order_id: Option<i64>,
    /// What the account holder reads of the row.
    description: String,
    /// The operator's reason for an adjustment: in the admin API only,
    /// never shown to the account holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
}

/// Ledger rows.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Transactions {
    pub transactions: Vec<TransactionView>,
}

impl TransactionView {
    /// The row as its account holder reads it: nothing of an adjustment
    /// that is the operator's own words (its reason, its key), and its
    /// description only when the row was written with its reason apart.
    /// A server of the release before (during a rolling upgrade) writes the
    /// operator's reason as the description and no reason: the holder
    /// reads the neutral description for such a row.
    pub fn for_holder(entry: &LedgerEntry) -> TransactionView {
        let adjustment = entry.kind == TransactionKind::Adjustment;
        let description = if adjustment && entry.reason.is_none() {
            ADJUSTMENT_DESCRIPTION.to_string()
        } else {
            entry.description.clone()
        };
        TransactionView {
            reason: None,
            idempotency_key: (!adjustment).then(|| entry.idempotency_key.clone()),
            description,
            ..TransactionView::from(entry)
        }
    }
}

/// The row as the operator reads it.
impl From<&LedgerEntry> for TransactionView {
    fn from(entry: &LedgerEntry) -> TransactionView {
        TransactionView {
            account_id: entry.account_id,
            seq: entry.seq,
            kind: entry.kind,
            amount_micros: entry.amount.micros(),
            balance_after_micros: entry.balance_after.micros(),
            idempotency_key: Some(entry.idempotency_key.clone()),
            order_id: entry.order_id,
            description: entry.description.clone(),
            reason: entry.reason.as_deref().cloned(),
            created_at: format_rfc3339_ms(entry.created_at_ms),
        }
    }
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

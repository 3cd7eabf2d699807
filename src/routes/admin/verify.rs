//! `GET /v1/admin/verify`: recomputes every account from its ledger (as
//! `sms-credit verify`) on a reader thread; `clean` says whether all agree.

use actix_web::{web, HttpResponse};
use sms_credit_actors::verify::VerifyReport;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// What a verification found.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// No problem at all.
    clean: bool,
    report: VerifyReport,
}

/// Recomputes every account from its ledger, as `sms-credit verify`.
#[utoipa::path(get, path = "/v1/admin/verify", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = Verification)))]
pub async fn show(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = state.store.ledger().verify().await?;
    Ok(HttpResponse::Ok().json(Verification {
        clean: report.is_clean(),
        report,
    }))
}

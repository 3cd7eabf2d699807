//! `GET /v1/admin/verify`: recomputes every account from its ledger (as
//! `sms-credit verify`) on a reader thread; `clean` says whether all agree.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

pub async fn show(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = state.store.ledger().verify().await?;
    Ok(HttpResponse::Ok().json(json!({
        "clean": report.is_clean(),
        "report": report,
    })))
}

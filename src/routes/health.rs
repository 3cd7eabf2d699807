//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the
//! store answers a read).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::startup::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ledger().ping().await?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}

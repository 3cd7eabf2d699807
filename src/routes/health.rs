//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the
//! store answers a read).

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// How the server is.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (it answers) or `ready` (its store answers too).
    #[schema(examples("ok"))]
    status: &'static str,
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The store answers a read (503 while it cannot).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ledger().ping().await?;
    Ok(HttpResponse::Ok().json(Health { status: "ready" }))
}

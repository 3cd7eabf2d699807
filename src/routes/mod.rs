//! The HTTP routes, one resource per file.

mod admin;
mod health;
mod quote;

use actix_web::{web, HttpResponse};

use crate::error::ApiError;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/v1/quote", web::post().to(quote::create))
        .service(web::scope("/v1/admin").configure(admin::configure))
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".to_string()))
}

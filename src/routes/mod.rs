//! The HTTP routes, one resource per file.

mod admin;
pub mod checkout;
mod health;
mod messages;
mod quote;
mod webhooks;

use actix_web::{web, HttpResponse};

use crate::error::ApiError;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/v1/quote", web::post().to(quote::create))
        .route("/v1/checkout/access", web::post().to(checkout::access))
        .route("/v1/checkout/topup", web::post().to(checkout::top_up))
        .route("/v1/messages", web::post().to(messages::create))
        .service(
            web::resource("/webhooks/twilio/sms")
                .app_data(web::PayloadConfig::new(64 * 1024))
                .route(web::post().to(webhooks::twilio::inbound_sms)),
        )
        .service(
            web::resource("/webhooks/twilio/status")
                .app_data(web::PayloadConfig::new(64 * 1024))
                .route(web::post().to(webhooks::twilio::status)),
        )
        .service(
            web::resource("/webhooks/stripe")
                .app_data(web::PayloadConfig::new(1024 * 1024))
                .route(web::post().to(webhooks::stripe::receive)),
        )
        .service(web::scope("/v1/admin").configure(admin::configure))
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".to_string()))
}

//! The HTTP routes, one resource per file.

pub(crate) mod account;
pub(crate) mod admin;
pub(crate) mod auto_top_up;
pub(crate) mod checkout;
pub(crate) mod feed;
pub(crate) mod health;
pub(crate) mod messages;
pub(crate) mod metrics;
pub mod openapi;
pub(crate) mod page;
pub(crate) mod quote;
pub(crate) mod sign_in;
pub(crate) mod webhooks;

use actix_web::web;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/account", web::get().to(page::account_page))
        .route("/account.js", web::get().to(page::account_script))
        .route("/admin", web::get().to(page::admin_page))
        .route("/admin.js", web::get().to(page::admin_script))
        .route("/checkout/success", web::get().to(page::checkout_success))
        .route("/checkout/cancel", web::get().to(page::checkout_cancel))
        .route("/checkout.js", web::get().to(page::checkout_script))
        .route("/docs", web::get().to(page::docs_page))
        .route("/docs.js", web::get().to(page::docs_script))
        .route(
            "/v1/checkout/sessions/{session_id}",
            web::get().to(checkout::session_status),
        )
        .route("/metrics", web::get().to(metrics::metrics_with_token))
        .route("/openapi.json", web::get().to(openapi::serve))
        .route("/v1/quote", web::post().to(quote::create))
        .route("/v1/sign-in/code", web::post().to(sign_in::request_code))
        .route("/v1/sign-in", web::post().to(sign_in::sign_in))
        .route("/v1/checkout/access", web::post().to(checkout::access))
        .route("/v1/checkout/topup", web::post().to(checkout::top_up))
        .route("/v1/messages", web::post().to(messages::create))
        .route("/v1/accounts/me", web::get().to(account::me))
        .route("/v1/accounts/{id}", web::get().to(account::show))
        .route(
            "/v1/accounts/{id}/transactions",
            web::get().to(account::transactions),
        )
        .route(
            "/v1/accounts/{id}/credit-grants",
            web::get().to(account::credit_grants),
        )
        .route(
            "/v1/accounts/{id}/payments",
            web::get().to(account::payments),
        )
        .route(
            "/v1/accounts/{id}/feed-tickets",
            web::post().to(account::feed_ticket),
        )
        .route("/v1/accounts/{id}/feed", web::get().to(feed::account_feed))
        .route(
            "/v1/accounts/{id}/auto-top-up",
            web::get().to(auto_top_up::show),
        )
        .route(
            "/v1/accounts/{id}/auto-top-up",
            web::put().to(auto_top_up::update),
        )
        .route("/v1/admin/feed", web::get().to(feed::admin_feed))
        .route("/v1/admin/feed-tickets", web::post().to(feed::admin_ticket))
        .route(
            "/webhooks/twilio/sms",
            web::post().to(webhooks::twilio::inbound_sms),
        )
        .route(
            "/webhooks/twilio/status",
            web::post().to(webhooks::twilio::status),
        )
        .route(
            "/webhooks/stripe",
            web::post().to(webhooks::stripe::receive),
        )
        .service(web::scope("/v1/admin").configure(admin::configure))
        // A path that is a route, with another method: 405 and Allow; else 404.
        .default_service(web::to(openapi::unrouted));
}

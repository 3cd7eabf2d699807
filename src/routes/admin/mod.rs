//! The admin API under `/v1/admin`: every route takes the admin bearer token.

mod accounts;
mod adjustments;
mod transactions;

use actix_web::web;

pub use transactions::TransactionView;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/accounts", web::post().to(accounts::create))
        .route("/accounts/{id}", web::get().to(accounts::show))
        .route(
            "/accounts/{id}/adjustments",
            web::post().to(adjustments::create),
        )
        .route(
            "/accounts/{id}/transactions",
            web::get().to(transactions::list),
        );
}

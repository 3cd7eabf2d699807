//! The admin API under `/v1/admin`: every route takes the admin bearer token.

pub(crate) mod accounts;
pub(crate) mod adjustments;
pub(crate) mod books;
pub(crate) mod credit_grants;
pub(crate) mod discount_codes;
pub(crate) mod notices;
pub(crate) mod orders;
pub(crate) mod overview;
pub(crate) mod pricing;
pub(crate) mod reconciliation;
pub(crate) mod reports;
pub(crate) mod sign_in;
pub(crate) mod stripe_events;
pub(crate) mod tokens;
pub(crate) mod transactions;
pub(crate) mod verify;
pub(crate) mod webhooks;

use actix_web::web;
use sms_credit_actors::accounts::Account;
use sms_credit_actors::AccountId;

use crate::error::ApiError;
use crate::state::AppState;

/// The `404` of an account that does not exist.
pub(crate) fn no_such_account(account_id: AccountId) -> ApiError {
    ApiError::NotFound(format!("account {account_id} does not exist"))
}

/// The account, or its `404`.
pub(crate) async fn existing_account(
    state: &AppState,
    account_id: AccountId,
) -> Result<Account, ApiError> {
    state
        .store
        .accounts()
        .get(account_id)
        .await?
        .ok_or_else(|| no_such_account(account_id))
}

pub use transactions::TransactionView;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/accounts", web::post().to(accounts::create))
        .route("/accounts", web::get().to(accounts::list))
        .route("/accounts/{id}", web::get().to(accounts::show))
        .route(
            "/accounts/{id}/adjustments",
            web::post().to(adjustments::create),
        )
        .route(
            "/accounts/{id}/transactions",
            web::get().to(transactions::list),
        )
        .route(
            "/accounts/{id}/credit-grants",
            web::get().to(credit_grants::list),
        )
        .route(
            "/accounts/{id}/transactions.csv",
            web::get().to(transactions::export_csv),
        )
        .route("/accounts/{id}/orders", web::get().to(orders::list))
        .route(
            "/accounts/{id}/auto-top-up",
            web::get().to(crate::routes::auto_top_up::admin_show),
        )
        .route(
            "/accounts/{id}/auto-top-up",
            web::put().to(crate::routes::auto_top_up::admin_update),
        )
        .route("/accounts/{id}/notices", web::get().to(notices::list))
        .route("/accounts/{id}/messages", web::get().to(notices::messages))
        .route("/accounts/{id}/tokens", web::get().to(tokens::list))
        .route("/accounts/{id}/tokens", web::post().to(tokens::issue))
        .route("/accounts/{id}/tokens", web::delete().to(tokens::revoke))
        .route(
            "/accounts/{id}/tokens/rotate",
            web::post().to(tokens::rotate),
        )
        .route("/overview", web::get().to(overview::show))
        .route("/reports", web::get().to(reports::show))
        .route("/reports/credit", web::get().to(books::show))
        .route("/reports/credit.csv", web::get().to(books::export_csv))
        .route("/attention", web::get().to(reports::attention))
        .route("/verify", web::get().to(verify::show))
        .route("/sign-in/lift", web::post().to(sign_in::lift))
        .route("/pricing", web::get().to(pricing::show))
        .route("/pricing", web::put().to(pricing::update))
        .route("/discount-codes", web::post().to(discount_codes::create))
        .route("/discount-codes", web::get().to(discount_codes::list))
        .route(
            "/discount-codes/{code}",
            web::patch().to(discount_codes::update),
        )
        .route("/stripe-events", web::get().to(stripe_events::list))
        .route("/reconciliation", web::get().to(reconciliation::show))
        .route(
            "/reconciliation/check-prices",
            web::post().to(reconciliation::check_prices),
        )
        .route("/orders/{id}", web::get().to(orders::show))
        .route("/orders/{id}/refund", web::post().to(orders::refund))
        .route("/orders/{id}/refunds", web::get().to(orders::refunds))
        .route("/webhook-endpoints", web::post().to(webhooks::create))
        .route("/webhook-endpoints", web::get().to(webhooks::list))
        .route("/webhook-endpoints/{id}", web::get().to(webhooks::show))
        .route("/webhook-endpoints/{id}", web::patch().to(webhooks::update))
        .route(
            "/webhook-endpoints/{id}",
            web::delete().to(webhooks::remove),
        )
        .route(
            "/webhook-endpoints/{id}/rotate-secret",
            web::post().to(webhooks::rotate_secret),
        )
        .route(
            "/webhook-endpoints/{id}/deliveries",
            web::get().to(webhooks::deliveries),
        )
        .route(
            "/webhook-endpoints/{id}/replay",
            web::post().to(webhooks::replay),
        )
        .route(
            "/webhook-endpoints/{id}/test",
            web::post().to(webhooks::test),
        );
}

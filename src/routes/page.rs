//! The pages, static HTML and JavaScript built into the binary (no build
//! step), each under the one Content-Security-Policy: `GET /account`, the
//! account holder's page (signs in with an account token and shows the
//! live balance from the feed); `GET /admin`, the operator's console; the
//! pages Checkout sends payers back to; and `GET /docs`, the API reference
//! rendered in the browser from the server's own `/openapi.json`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::state::AppState;

const ACCOUNT_PAGE: &str = include_str!("../web/account.html");
const ACCOUNT_SCRIPT: &str = include_str!("../web/account.js");

/// The pages' policy: scripts only from this server's own files (none
/// inline), nothing framed, no other base, forms only to this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Text made safe to put in HTML.
fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The account holder's web page (sign in with a token; live balance),
/// titled with the service's name (`SMS_CREDIT_SERVICE_NAME`).
#[utoipa::path(get, path = "/account", tag = "account holders",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn account_page(state: web::Data<AppState>) -> HttpResponse {
    let page = ACCOUNT_PAGE.replace(
        "{{SERVICE_NAME}}",
        &escape_html(&state.settings.server.service_name),
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(page)
}

const ADMIN_PAGE: &str = include_str!("../web/admin.html");
const ADMIN_SCRIPT: &str = include_str!("../web/admin.js");

/// The operator's console: the business at a glance, every account one
/// click away (signed in with the admin token, kept for the tab only).
#[utoipa::path(get, path = "/admin", tag = "admin",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn admin_page(state: web::Data<AppState>) -> HttpResponse {
    page(ADMIN_PAGE, &state, &[])
}

/// The console's script.
#[utoipa::path(get, path = "/admin.js", tag = "admin",
    responses((status = 200, description = "The console's script", content_type = "text/javascript", body = String)))]
pub async fn admin_script() -> HttpResponse {
    script(ADMIN_SCRIPT)
}

const CHECKOUT_PAGE: &str = include_str!("../web/checkout.html");
const CHECKOUT_SCRIPT: &str = include_str!("../web/checkout.js");

/// A page in the pages' own style, with its words filled in (escaped).
fn page(template: &str, state: &AppState, words: &[(&str, &str)]) -> HttpResponse {
    let mut page = template.replace(
        "{{SERVICE_NAME}}",
        &escape_html(&state.settings.server.service_name),
    );
    for (name, text) in words {
        page = page.replace(&format!("{{{{{name}}}}}"), &escape_html(text));
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(page)
}

/// Where Stripe Checkout sends a payer after paying: follows the order
/// until the payment is applied.
#[utoipa::path(get, path = "/checkout/success", tag = "selling",
    params(("session_id" = Option<String>, Query, description = "Stripe's Checkout Session id")),
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn checkout_success(state: web::Data<AppState>) -> HttpResponse {
    page(
        CHECKOUT_PAGE,
        &state,
        &[
            ("OUTCOME", "success"),
            ("FIRST_WORDS", "Waiting for Stripe to confirm your payment…"),
            ("NEXT", "Go to your account"),
            (
                "HINT",
                "Your balance on your account page shows the payment as soon as it is confirmed.",
            ),
        ],
    )
}

/// Where Stripe Checkout sends a payer who gave up: nothing was charged.
#[utoipa::path(get, path = "/checkout/cancel", tag = "selling",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn checkout_cancel(state: web::Data<AppState>) -> HttpResponse {
    page(
        CHECKOUT_PAGE,
        &state,
        &[
            ("OUTCOME", "cancel"),
            (
                "FIRST_WORDS",
                "You left the payment page: nothing was charged.",
            ),
            ("NEXT", "Try again"),
            (
                "HINT",
                "You can start again from your account page whenever you like.",
            ),
        ],
    )
}

/// The checkout pages' script.
#[utoipa::path(get, path = "/checkout.js", tag = "selling",
    responses((status = 200, description = "The checkout pages' script", content_type = "text/javascript", body = String)))]
pub async fn checkout_script() -> HttpResponse {
    script(CHECKOUT_SCRIPT)
}

/// A page's script, from the binary.
fn script(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The account page's script.
#[utoipa::path(get, path = "/account.js", tag = "account holders",
    responses((status = 200, description = "The page's script", content_type = "text/javascript", body = String)))]
pub async fn account_script() -> HttpResponse {
    script(ACCOUNT_SCRIPT)
}

const DOCS_PAGE: &str = include_str!("../web/docs.html");
const DOCS_SCRIPT: &str = include_str!("../web/docs.js");

/// The API reference: every operation of `/openapi.json`, rendered in the
/// browser by the page's own script (no library, nothing from elsewhere).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn docs_page(state: web::Data<AppState>) -> HttpResponse {
    page(DOCS_PAGE, &state, &[])
}

/// The API reference's script: its renderer of the OpenAPI document.
#[utoipa::path(get, path = "/docs.js", tag = "operations",
    responses((status = 200, description = "The API reference's script", content_type = "text/javascript", body = String)))]
pub async fn docs_script() -> HttpResponse {
    script(DOCS_SCRIPT)
}

//! `GET /account`: the account holder's page, static HTML and JavaScript
//! built into the binary (no build step). It signs in with an account token
//! and shows the live balance from the feed.

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

/// The account page's script.
#[utoipa::path(get, path = "/account.js", tag = "account holders",
    responses((status = 200, description = "The page's script", content_type = "text/javascript", body = String)))]
pub async fn account_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(ACCOUNT_SCRIPT)
}

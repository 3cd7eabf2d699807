//! `GET /account`: the account holder's page, static HTML and JavaScript
//! built into the binary (no build step). It signs in with an account token
//! and shows the live balance from the feed.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::state::AppState;

const ACCOUNT_PAGE: &str = include_str!("../web/account.html");

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
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(page)
}

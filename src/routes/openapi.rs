//! `GET /openapi.json`: the OpenAPI 3.1 document, derived by utoipa from the
//! handlers' own request, query and response types (each handler carries
//! its `#[utoipa::path]`), so it describes what the code does; a test holds
//! it to the routes that are registered. The same document tells which
//! methods a path allows, for the `405 Method Not Allowed` every route
//! answers to another method.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use super::{
    account, admin, auto_top_up, checkout, feed, health, messages, metrics, page, quote, sign_in,
    webhooks,
};
use crate::error::{ApiError, ErrorBody};

/// The document's root: every operation of the server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sms-credit",
        description = "Sells and spends prepaid SMS credit. Amounts are integer micro-dollars in fields named *_micros; every error is {\"error\": {\"code\", \"message\"}}."
    ),
    paths(
        health::healthz,
        health::readyz,
        page::account_page,
        page::account_script,
        page::admin_page,
        page::admin_script,
        page::checkout_success,
        page::checkout_cancel,
        page::checkout_script,
        page::docs_page,
        page::docs_script,
        checkout::session_status,
        metrics::metrics_with_token,
        serve,
        quote::create,
        sign_in::request_code,
        sign_in::sign_in,
        checkout::access,
        checkout::top_up,
        messages::create,
        account::me,
        account::show,
        account::transactions,
        account::credit_grants,
        account::payments,
        account::feed_ticket,
        auto_top_up::show,
        auto_top_up::update,
        auto_top_up::admin_show,
        auto_top_up::admin_update,
        feed::account_feed,
        feed::admin_feed,
        feed::admin_ticket,
        webhooks::twilio::inbound_sms,
        webhooks::twilio::status,
        webhooks::stripe::receive,
        admin::accounts::create,
        admin::accounts::list,
        admin::accounts::show,
        admin::adjustments::create,
        admin::transactions::list,
        admin::transactions::export_csv,
        admin::credit_grants::list,
        admin::orders::list,
        admin::orders::show,
        admin::orders::refund,
        admin::overview::show,
        admin::reports::show,
        admin::reports::attention,
        admin::books::show,
        admin::books::export_csv,
        admin::orders::refunds,
        admin::notices::list,
        admin::notices::messages,
        admin::tokens::list,
        admin::tokens::issue,
        admin::tokens::revoke,
        admin::tokens::rotate,
        admin::verify::show,
        admin::sign_in::lift,
        admin::pricing::show,
        admin::pricing::update,
        admin::discount_codes::create,
        admin::discount_codes::list,
        admin::discount_codes::update,
        admin::reconciliation::show,
        admin::reconciliation::check_prices,
        admin::stripe_events::list,
        admin::webhooks::create,
        admin::webhooks::list,
        admin::webhooks::show,
        admin::webhooks::update,
        admin::webhooks::remove,
        admin::webhooks::rotate_secret,
        admin::webhooks::deliveries,
        admin::webhooks::replay,
        admin::webhooks::test,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security, &Errors)
)]
pub struct ApiDoc;

/// The ways callers prove who they are.
struct Security;

impl Modify for Security {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        let schemes = [
            ("adminToken", bearer("SMS_CREDIT_ADMIN_TOKEN")),
            ("apiKey", bearer("SMS_CREDIT_API_KEY (the host application)")),
            (
                "accountToken",
                bearer("An account token (sct_…); on the feed also as a websocket subprotocol next to sms-credit-feed"),
            ),
            ("metricsToken", bearer("SMS_CREDIT_METRICS_TOKEN")),
            (
                "feedTicket",
                SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                    "ticket",
                    "A single-use feed ticket",
                ))),
            ),
            (
                "twilioSignature",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-Twilio-Signature",
                    "Twilio's signature over the public URL and every form field",
                ))),
            ),
            (
                "stripeSignature",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "Stripe-Signature",
                    "Stripe's signature over the raw body",
                ))),
            ),
        ];
        for (name, scheme) in schemes {
            components.add_security_scheme(name, scheme);
        }
    }
}

/// Every operation may answer an error, in the one error body.
struct Errors;

impl Modify for Errors {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            RefOr::T(
                utoipa::openapi::ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in document.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                let responses = &mut operation.responses.responses;
                responses
                    .entry("4XX".to_string())
                    .or_insert_with(|| error("The request was refused"));
                responses.entry("5XX".to_string()).or_insert_with(|| {
                    error("The server or a service it needs failed; nothing was done")
                });
            }
        }
    }
}

/// The operations of a path item, to edit.
fn operations_mut(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The document, built once.
pub fn document() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document = ApiDoc::openapi();
        document.info.version = env!("CARGO_PKG_VERSION").to_string();
        serde_json::to_value(document).unwrap_or_default()
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// Whether a request path matches a documented path template.
fn matches(template: &str, path: &str) -> bool {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(want), Some(have)) => {
                let variable = want.starts_with('{') && want.ends_with('}');
                if !(variable && !have.is_empty() || want == have) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The methods the document allows on a path, upper-case; empty if the
/// path is not one of the server's.
pub fn allowed_methods(path: &str) -> Vec<String> {
    let Some(paths) = document()["paths"].as_object() else {
        return Vec::new();
    };
    let mut methods: Vec<String> = paths
        .iter()
        .filter(|(template, _)| matches(template, path))
        .flat_map(|(_, item)| {
            item.as_object()
                .map(|operations| operations.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .filter(|method| ["get", "put", "post", "delete", "patch"].contains(&method.as_str()))
        .map(|method| method.to_uppercase())
        .collect();
    methods.sort();
    methods.dedup();
    methods
}

/// What no route takes: `405` with `Allow` when the path is one of the
/// server's (another method would do), `404` otherwise; both in the one
/// error body.
pub async fn unrouted(request: HttpRequest) -> HttpResponse {
    let allowed = allowed_methods(request.path());
    if allowed.is_empty() {
        return ApiError::NotFound("no such route".to_string()).error_response();
    }
    let allow = allowed.join(", ");
    let mut response = ApiError::MethodNotAllowed(allow.clone()).error_response();
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_templates() {
        assert!(matches("/v1/accounts/{id}", "/v1/accounts/7"));
        assert!(!matches("/v1/accounts/{id}", "/v1/accounts/"));
        assert!(!matches("/v1/accounts/{id}", "/v1/accounts/7/feed"));
        assert!(matches("/healthz", "/healthz"));
        assert_eq!(allowed_methods("/v1/admin/accounts"), vec!["GET", "POST"]);
        assert_eq!(
            allowed_methods("/v1/admin/accounts/3/tokens"),
            vec!["DELETE", "GET", "POST"]
        );
        assert!(allowed_methods("/nope").is_empty());
    }
}

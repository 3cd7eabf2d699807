//! Who is calling: request guards (extractors) for each kind of caller:
//! the administrator (bearer token from config) and an account holder
//! (an account token, stored only as a hash).

use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use sms_credit_actors::{access_tokens, AccountId};

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::RequestSpan;

/// The application's state: always there in a server built by
/// `Application::build`, so its absence is the server's fault (500).
fn app_state(request: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    request
        .app_data::<web::Data<AppState>>()
        .ok_or_else(missing_state)
}

fn missing_state() -> ApiError {
    ApiError::Internal("the request has no application state".into())
}

/// Proof that the request carries the host application's API key.
pub struct HostApplication;

impl FromRequest for HostApplication {
    type Error = ApiError;
    type Future = Ready<Result<HostApplication, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(check_host_application(request))
    }
}

fn check_host_application(request: &HttpRequest) -> Result<HostApplication, ApiError> {
    let state = app_state(request)?;
    let Some(expected) = &state.settings.access.api_key else {
        return Err(ApiError::NotConfigured {
            code: "api_key_not_configured",
            message: "the host application API is not available on this server",
            variable: "SMS_CREDIT_API_KEY",
        });
    };
    presents(request, state, expected.expose()).map(|()| HostApplication)
}

/// Proof that the request carries a live token of this account, with the
/// token's hash (what a feed opened with it checks after a revocation).
pub struct AccountHolder(pub AccountId, pub String);

impl FromRequest for AccountHolder {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<AccountHolder, ApiError>>>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(request).map(str::to_string);
        let span = RequestSpan::of(request);
        Box::pin(async move {
            let state = state.ok_or_else(missing_state)?;
            let token = token.ok_or(ApiError::Unauthorized)?;
            let now_ms = state.clock.now_ms();
            let live = access_tokens::account_of(&state.store, &token, now_ms).await?;
            let live = live.ok_or(ApiError::Unauthorized)?;
            if let Some(span) = span {
                span.record_account(live.account_id);
            }
            Ok(AccountHolder(live.account_id, access_tokens::hash(&token)))
        })
    }
}

/// Proof that the request carries the admin bearer token.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(check_admin(request))
    }
}

fn check_admin(request: &HttpRequest) -> Result<Admin, ApiError> {
    let state = app_state(request)?;
    let Some(expected) = &state.settings.access.admin_token else {
        return Err(ApiError::NotConfigured {
            code: "admin_not_configured",
            message: "the admin API is not available on this server",
            variable: "SMS_CREDIT_ADMIN_TOKEN",
        });
    };
    presents(request, state, expected.expose()).map(|()| Admin)
}

/// Proof that the request may read `/metrics` on the main address (which
/// reports the ledger's money totals): it carries the metrics token.
pub struct MetricsReader;

impl FromRequest for MetricsReader {
    type Error = ApiError;
    type Future = Ready<Result<MetricsReader, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(check_metrics_reader(request))
    }
}

fn check_metrics_reader(request: &HttpRequest) -> Result<MetricsReader, ApiError> {
    let state = app_state(request)?;
    let Some(expected) = &state.settings.access.metrics_token else {
        return Err(ApiError::NotConfigured {
            code: "metrics_not_configured",
            message: "metrics are not published on this address",
            variable: "SMS_CREDIT_METRICS_TOKEN or SMS_CREDIT_METRICS_BIND",
        });
    };
    presents(request, state, expected.expose()).map(|()| MetricsReader)
}

/// Whether the request's bearer token is `expected`. An address that sent
/// too many wrong tokens is refused (`429`) before its token is looked at,
/// so guessing gains nothing by going faster.
fn presents(request: &HttpRequest, state: &AppState, expected: &str) -> Result<(), ApiError> {
    if let Some(wait) = state.limits.guessing_wait(request) {
        return Err(ApiError::TooManyAttempts(wait));
    }
    // No token at all is no guess.
    let presented = bearer_token(request).ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return Ok(());
    }
    Err(state.limits.wrong_guess(request, ApiError::Unauthorized))
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(request: &HttpRequest) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}

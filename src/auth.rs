//! Who is calling: request guards (extractors) for each kind of caller:
//! the administrator (bearer token from config) and an account holder
//! (an account token, stored only as a hash).
//!
//! Every credential the server judges — these tokens, feed tickets,
//! sign-up tokens, sign-in codes, Checkout Session ids, webhook
//! signatures — is judged between [`before_judging`] and [`judged_wrong`]:
//! an address that guessed too often waits before what it presents is
//! looked at, and each wrong one counts against its address, in the one
//! limiter (`Limits`), whatever the route.

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
        let request = request.clone();
        Box::pin(async move {
            let state = state.ok_or_else(missing_state)?;
            // No token at all is no guess.
            let token = token.ok_or(ApiError::Unauthorized)?;
            before_judging(&state, &request)?;
            let now_ms = state.clock.now_ms();
            let live = access_tokens::account_of(&state.store, &token, now_ms).await?;
            let Some(live) = live else {
                return Err(judged_wrong(&state, &request, ApiError::Unauthorized));
            };
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

/// Whether the request's bearer token is `expected`.
fn presents(request: &HttpRequest, state: &AppState, expected: &str) -> Result<(), ApiError> {
    // No token at all is no guess.
    let presented = bearer_token(request).ok_or(ApiError::Unauthorized)?;
    before_judging(state, request)?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return Ok(());
    }
    Err(judged_wrong(state, request, ApiError::Unauthorized))
}

/// Called before a presented credential is looked at: an address that
/// presented too many wrong ones is refused (`429 too_many_attempts`)
/// without looking, so guessing gains nothing by going faster, on any
/// route.
pub fn before_judging(state: &AppState, request: &HttpRequest) -> Result<(), ApiError> {
    match state.limits.guessing_wait(request) {
        Some(wait) => Err(ApiError::TooManyAttempts(wait)),
        None => Ok(()),
    }
}

/// A presented credential was wrong (unknown, expired, revoked, another
/// door's): it counts against the request's address, and the answer is
/// `answer`, or `429 too_many_attempts` once the address has guessed too
/// often.
pub fn judged_wrong(state: &AppState, request: &HttpRequest, answer: ApiError) -> ApiError {
    state.limits.wrong_guess(request, answer)
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

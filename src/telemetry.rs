//! Operations: a request id on every request (taken from a sane
//! `X-Request-Id` or made up, echoed back, and on every log line of the
//! request through its span, with the account it acts on once known),
//! per-route request counters, and `/metrics` in Prometheus text format.
//! Paths are logged without their query strings, so feed tickets and other
//! secrets never reach the logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, Error, HttpMessage, HttpRequest};
use dashmap::DashMap;
use sms_credit_actors::AccountId;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sign-in codes asked for on this instance, by the destination's country
/// and what became of each (`sent`; `opted_out` and `refused`: Twilio would
/// not text the number). A number's country is one of the few the
/// numbering plan knows, so the counters stay few.
#[derive(Default)]
pub struct SignInCodeCounts {
    counted: DashMap<(String, &'static str), AtomicU64>,
}

impl SignInCodeCounts {
    /// One more code for `country` that ended `outcome`.
    pub fn count(&self, country: &str, outcome: &'static str) {
        self.counted
            .entry((country.to_string(), outcome))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Every (country, outcome) counted and how often, sorted.
    pub fn counted(&self) -> Vec<(String, &'static str, u64)> {
        let mut counted: Vec<(String, &'static str, u64)> = self
            .counted
            .iter()
            .map(|entry| {
                let (country, outcome) = entry.key();
                (
                    country.clone(),
                    *outcome,
                    entry.value().load(Ordering::Relaxed),
                )
            })
            .collect();
        counted.sort();
        counted
    }
}

/// Requests answered, by route pattern and status.
pub struct HttpMetrics {
    answered: DashMap<(String, u16), AtomicU64>,
    id_prefix: String,
    next_id: AtomicU64,
}

impl HttpMetrics {
    /// Every (route, status) answered so far and how often, sorted.
    pub fn answered(&self) -> Vec<(String, u16, u64)> {
        let mut answered: Vec<(String, u16, u64)> = self
            .answered
            .iter()
            .map(|entry| {
                let count = entry.value().load(Ordering::Relaxed);
                (entry.key().0.clone(), entry.key().1, count)
            })
            .collect();
        answered.sort();
        answered
    }

    pub fn new() -> HttpMetrics {
        let prefix = sms_credit_actors::random::random_secret("")
            .map(|secret| secret[..8].to_string())
            .unwrap_or_else(|_| "req".to_string());
        HttpMetrics {
            answered: DashMap::new(),
            id_prefix: prefix,
            next_id: AtomicU64::new(1),
        }
    }

    fn count(&self, route: &str, status: u16) {
        if let Some(counter) = self.answered.get(&(route.to_string(), status)) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.answered
            .entry((route.to_string(), status))
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    fn request_id(&self, request: &ServiceRequest) -> String {
        let given = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        match given {
            Some(id) => id.to_string(),
            None => format!(
                "{}-{}",
                self.id_prefix,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        HttpMetrics::new()
    }
}

/// The request's span, kept in the request's extensions so that what learns
/// the account later (the account holder's token) can name it there.
#[derive(Clone)]
pub struct RequestSpan(tracing::Span);

impl RequestSpan {
    /// The span of `request` (none outside the middleware, as in a unit test).
    pub fn of(request: &HttpRequest) -> Option<RequestSpan> {
        request.extensions().get::<RequestSpan>().cloned()
    }

    /// Names the account the request acts on: every line it logs from then
    /// on carries `account_id` (its `answered` line too).
    pub fn record_account(&self, account: AccountId) {
        self.0.record("account_id", account.0);
    }
}

/// The account an admin route's path names (`/v1/admin/accounts/{id}…`),
/// known before the route runs.
fn admin_account_in_path(path: &str) -> Option<i64> {
    let rest = path.strip_prefix("/v1/admin/accounts/")?;
    rest.split('/').next()?.parse().ok()
}

/// The middleware: a span per request, the id echoed, the outcome counted.
pub fn observe<S, B>(
    request: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    let metrics = request
        .app_data::<web::Data<HttpMetrics>>()
        .map(|metrics| metrics.clone().into_inner());
    let request_id = metrics
        .as_ref()
        .map_or_else(|| "-".to_string(), |metrics| metrics.request_id(&request));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.path(),
        account_id = tracing::field::Empty,
    );
    if let Some(account) = admin_account_in_path(request.path()) {
        span.record("account_id", account);
    }
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let started = Instant::now();
    let response = span.in_scope(|| service.call(request));
    async move {
        let mut response = response.await?;
        let status = response.status().as_u16();
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        if let Some(metrics) = &metrics {
            metrics.count(&route, status);
        }
        tracing::info!(
            status,
            elapsed_us = started.elapsed().as_micros() as u64,
            "answered"
        );
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        Ok(response)
    }
    .instrument(span)
}

//! Operations: a request id on every request (taken from a sane
//! `X-Request-Id` or made up, echoed back, and on every log line of the
//! request through its span), per-route request counters, and `/metrics`
//! in Prometheus text format. Paths are logged without their query strings,
//! so feed tickets and other secrets never reach the logs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, Error, HttpResponse};
use dashmap::DashMap;
use sms_credit_actors::TransactionKind;
use tracing::Instrument;

use crate::startup::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Requests answered, by route pattern and status.
pub struct HttpMetrics {
    answered: DashMap<(String, u16), AtomicU64>,
    id_prefix: String,
    next_id: AtomicU64,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let prefix = sms_credit_actors::access_tokens::random_secret("")
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

/// The middleware: a span per request, the id echoed, the outcome counted.
pub fn observe<S, B>(
    request: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|state| state.http_metrics.clone());
    let request_id = metrics
        .as_ref()
        .map_or_else(|| "-".to_string(), |metrics| metrics.request_id(&request));
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        method = %request.method(),
        path = %request.path()
    );
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

/// `GET /metrics` on the main address: with the metrics token only.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("metricsToken" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics_with_token(
    _reader: crate::auth::MetricsReader,
    state: web::Data<AppState>,
) -> HttpResponse {
    metrics(state).await
}

/// `GET /metrics` on the metrics address (`SMS_CREDIT_METRICS_BIND`).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&state))
}

fn render(state: &AppState) -> String {
    let stats = state.store.stats();
    let mut out = String::new();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);

    out.push_str("# HELP sms_credit_ledger_rows_total Ledger rows committed, by type.\n");
    out.push_str("# TYPE sms_credit_ledger_rows_total counter\n");
    let kinds = [
        TransactionKind::Credit,
        TransactionKind::Debit,
        TransactionKind::Refund,
        TransactionKind::Adjustment,
    ];
    for kind in kinds {
        let _ = writeln!(
            out,
            "sms_credit_ledger_rows_total{{type=\"{kind}\"}} {}",
            load(&stats.totals(kind).count)
        );
    }
    out.push_str("# HELP sms_credit_ledger_amount_micros Net amount of the ledger rows committed since start, by type (debits negative).\n");
    out.push_str("# TYPE sms_credit_ledger_amount_micros gauge\n");
    for kind in kinds {
        let _ = writeln!(
            out,
            "sms_credit_ledger_amount_micros{{type=\"{kind}\"}} {}",
            stats.totals(kind).sum_micros.load(Ordering::Relaxed)
        );
    }

    out.push_str("# HELP sms_credit_http_requests_total Requests answered, by route and status (webhook outcomes included).\n");
    out.push_str("# TYPE sms_credit_http_requests_total counter\n");
    let mut answered: Vec<(String, u16, u64)> = state
        .http_metrics
        .answered
        .iter()
        .map(|entry| (entry.key().0.clone(), entry.key().1, load(entry.value())))
        .collect();
    answered.sort();
    for (route, status, count) in answered {
        let route = route.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "sms_credit_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
        );
    }

    let gauges = [
        (
            "sms_credit_active_account_actors",
            "Account actors in memory.",
            state.registry.active_count() as u64,
        ),
        (
            "sms_credit_feed_subscribers",
            "Open balance-feed subscriptions.",
            state.store.feed().subscriber_count() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let counters = [
        (
            "sms_credit_feed_dropped_slow_total",
            "Feed clients dropped for falling behind.",
            state.store.feed().dropped_slow(),
        ),
        (
            "sms_credit_commits_total",
            "Group commits.",
            load(&stats.commits),
        ),
        (
            "sms_credit_failed_commits_total",
            "Group commits that failed.",
            load(&stats.failed_commits),
        ),
        (
            "sms_credit_ledger_conflicts_total",
            "Ledger writes refused because another process or instance wrote the account first (computed again).",
            load(&stats.conflicts),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    stats.batch_sizes.render(
        "sms_credit_commit_batch_size",
        "Writes per group commit.",
        1,
        &mut out,
    );
    stats.commit_latency.render(
        "sms_credit_commit_seconds",
        "Time of each COMMIT (WAL write and fsync).",
        1_000_000,
        &mut out,
    );
    stats.ack_latency.render(
        "sms_credit_ack_seconds",
        "From a ledger write's submission to its acknowledgement after commit.",
        1_000_000,
        &mut out,
    );
    out
}

//! `GET /metrics`: the ledger's money totals, requests and actors, in
//! Prometheus's text format (with the metrics token, or on an address of
//! its own).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{web, HttpResponse};
use sms_credit_actors::TransactionKind;

use crate::state::AppState;

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
    let mut body = render(&state);
    render_webhooks(&state, &mut body).await;
    render_backup(&state, &mut body).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

/// When the last backup's snapshot was read (0: none yet), so that an
/// alert can fire when backups stop. Left out when the store does not
/// answer: a missing gauge is better than a wrong one.
async fn render_backup(state: &AppState, out: &mut String) {
    if let Ok(last) = state.store.backups().last_backup().await {
        let seconds = last.map_or(0, |backup| backup.taken_at_ms / 1000);
        let _ = writeln!(
            out,
            "# HELP sms_credit_last_backup_timestamp_seconds When the last backup (sms-credit backup) read its snapshot, in Unix seconds; 0 when none was taken.\n# TYPE sms_credit_last_backup_timestamp_seconds gauge\nsms_credit_last_backup_timestamp_seconds {seconds}"
        );
    }
}

/// Webhook deliveries by outcome (this instance), and what waits (the
/// database's, all instances).
async fn render_webhooks(state: &AppState, out: &mut String) {
    let metrics = &state.webhook_metrics;
    out.push_str("# HELP sms_credit_webhook_deliveries_total Webhook tries by this instance, by outcome (retried: failed and to be tried again; failed: given up; late: ended after another claim took the delivery, so recorded and nothing more).\n");
    out.push_str("# TYPE sms_credit_webhook_deliveries_total counter\n");
    for (outcome, counter) in [
        ("delivered", &metrics.delivered),
        ("retried", &metrics.retried),
        ("failed", &metrics.failed),
        ("late", &metrics.late),
    ] {
        let _ = writeln!(
            out,
            "sms_credit_webhook_deliveries_total{{outcome=\"{outcome}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sms_credit_webhook_endpoints_disabled_total Endpoints this instance disabled (410 Gone, or failing for three days).\n# TYPE sms_credit_webhook_endpoints_disabled_total counter\nsms_credit_webhook_endpoints_disabled_total {}",
        metrics.endpoints_disabled.load(Ordering::Relaxed)
    );
    // Only when the store answers: a missing gauge is better than a wrong one.
    if let Ok(pending) = state.store.webhooks().delivery_stats().await {
        let oldest_seconds = pending
            .oldest_pending_ms
            .map_or(0, |oldest| (state.clock.now_ms() - oldest).max(0) / 1000);
        let _ = writeln!(
            out,
            "# HELP sms_credit_webhook_pending Webhook deliveries not yet made (all instances).\n# TYPE sms_credit_webhook_pending gauge\nsms_credit_webhook_pending {}\n# HELP sms_credit_webhook_oldest_pending_seconds Age of the oldest delivery not yet made.\n# TYPE sms_credit_webhook_oldest_pending_seconds gauge\nsms_credit_webhook_oldest_pending_seconds {oldest_seconds}",
            pending.pending
        );
    }
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
    for (route, status, count) in state.http_metrics.answered() {
        let route = route.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "sms_credit_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
        );
    }

    out.push_str("# HELP sms_credit_sign_in_codes_total Sign-in codes asked for on this instance, by the priced destination and outcome (sent; opted_out and refused: not texted, the number opted out or Twilio would not text it; failed: Twilio did not take the text; capped: a cap of the hour for phones without an account held it back; unpriced: the rate table does not price the country, the number's own here); every caller but unpriced was answered as every other.\n");
    out.push_str("# TYPE sms_credit_sign_in_codes_total counter\n");
    for (country, outcome, count) in state.sign_in_codes.counted() {
        let _ = writeln!(
            out,
            "sms_credit_sign_in_codes_total{{country=\"{country}\",outcome=\"{outcome}\"}} {count}"
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
            "Feeds closed because their client did not read in time (too slow).",
            state.store.feed().dropped_slow(),
        ),
        (
            "sms_credit_feed_queue_overflows_total",
            "Feed queues that filled while their client was waited for; each feed read what it missed from the ledger.",
            state.store.feed().overflowed(),
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
        "Time of each COMMIT (SQLite: the WAL write, its fsync follows on the syncer; Postgres: the last round trip, which carries the last statements, the COMMIT and its flush).",
        1_000_000,
        &mut out,
    );
    stats.ack_latency.render(
        "sms_credit_ack_seconds",
        "From a ledger write's submission to its acknowledgement once its commit is durable.",
        1_000_000,
        &mut out,
    );
    out
}

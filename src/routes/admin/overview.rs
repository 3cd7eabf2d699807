//! `GET /v1/admin/overview`: the business at a glance for the operator's
//! console: what is owed to customers, who is low, and what needs
//! attention (Stripe events waiting or failed, webhook deliveries waiting,
//! endpoints the server disabled, no backup for more than a day).

use actix_web::{web, HttpResponse};
use sms_credit_actors::billing::event_log::EventStatus;
use sms_credit_actors::store::backup::BackupRecord;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The figures of the console's overview.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// The sum of positive balances: prepaid credit not yet spent.
    credit_owed_micros: i64,
    /// Accounts whose balance is below the low-balance threshold.
    accounts_below_threshold: i64,
    low_balance_threshold_micros: i64,
    /// Stripe events waiting for what they need (at most 1 000 counted).
    stripe_events_waiting: usize,
    /// Stripe events that could not be applied (at most 1 000 counted).
    stripe_events_failed: usize,
    /// Webhook deliveries not yet made.
    webhook_deliveries_pending: i64,
    /// Endpoints the server disabled (410, or failing for three days).
    webhook_endpoints_disabled: usize,
    /// The backup taken last (`sms-credit backup`), if any.
    last_backup: Option<BackupRecord>,
    /// No backup was taken in the last day (or none ever).
    backup_overdue: bool,
}

/// The business at a glance.
#[utoipa::path(get, path = "/v1/admin/overview", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = Overview)))]
pub async fn show(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let threshold = state.settings.messages.low_balance_threshold;
    let (owed, below) = state.store.accounts().balance_totals(threshold).await?;
    let events = state.store.events();
    let waiting = events.list(Some(EventStatus::Waiting), 1000).await?.len();
    let failed = events.list(Some(EventStatus::Failed), 1000).await?.len();
    let pending = state.store.webhooks().delivery_stats().await?.pending;
    let disabled = state
        .store
        .webhooks()
        .endpoints()
        .await?
        .iter()
        .filter(|endpoint| !endpoint.enabled && endpoint.disabled_reason.is_some())
        .count();
    let last_backup = state.store.backups().last_backup().await?;
    let now_ms = state.clock.now_ms();
    let backup_overdue = last_backup
        .as_ref()
        .is_none_or(|backup| backup.is_overdue(now_ms));
    Ok(HttpResponse::Ok().json(Overview {
        credit_owed_micros: owed.micros(),
        accounts_below_threshold: below,
        low_balance_threshold_micros: threshold.micros(),
        stripe_events_waiting: waiting,
        stripe_events_failed: failed,
        webhook_deliveries_pending: pending,
        webhook_endpoints_disabled: disabled,
        last_backup,
        backup_overdue,
    }))
}

//! `/v1/admin/stripe-events`: the Stripe events received, newest first,
//! with what became of each: applied, ignored, waiting (and for what),
//! expired (given up after Stripe's 3-day retry horizon) or failed (could
//! not be read).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::billing::events::{EventRecord, EventStatus};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only events of this status.
    #[param(value_type = Option<EventStatus>)]
    status: Option<String>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<i64>,
}

/// Stripe events.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StripeEvents {
    events: Vec<EventRecord>,
}

/// The Stripe events received, newest first, and what became of each.
#[utoipa::path(get, path = "/v1/admin/stripe-events", tag = "admin", security(("adminToken" = [])),
    params(ListQuery),
    responses((status = 200, body = StripeEvents)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let status = query
        .status
        .as_deref()
        .map(|text| {
            EventStatus::parse(text).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_status",
                    "status is received, applied, ignored, waiting, expired or failed",
                )
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let events = state.store.events().list(status, limit).await?;
    Ok(HttpResponse::Ok().json(StripeEvents { events }))
}

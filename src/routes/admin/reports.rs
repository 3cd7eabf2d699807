//! `GET /v1/admin/reports`: what the console charts. Payments, refunds,
//! messages and segments by hour since a moment (the page sums them into
//! the operator's own days), and each destination country's messages since
//! another (the operator's month): charged against the carrier's price.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::reports::{Attention, CountryMargin, HourFigures};
use sms_credit_actors::sign_in::{unusual_rates, CodeRate};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest span a report covers.
const LONGEST_MS: i64 = 400 * 86_400_000;

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    /// Hours from here (Unix milliseconds; default 30 days ago).
    since_ms: Option<i64>,
    /// Countries' messages from here (Unix milliseconds; default the
    /// start of this UTC month).
    month_since_ms: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Reports {
    since_ms: i64,
    /// Hours with something in them, oldest first.
    hours: Vec<HourFigures>,
    month_since_ms: i64,
    margins: Vec<CountryMargin>,
}

/// Payments, refunds and messages by hour, and the margin per country.
#[utoipa::path(get, path = "/v1/admin/reports", tag = "admin", security(("adminToken" = [])),
    params(ReportQuery),
    responses((status = 200, body = Reports)))]
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    let now_ms = state.clock.now_ms();
    let since_ms = query.since_ms.unwrap_or(now_ms - 30 * 86_400_000);
    let month_since_ms = query.month_since_ms.unwrap_or_else(|| {
        let (year, month, _) =
            sms_credit_actors::clock::civil_from_days(now_ms.div_euclid(86_400_000));
        sms_credit_actors::clock::days_from_civil(year, month, 1) * 86_400_000
    });
    for (name, value) in [("since_ms", since_ms), ("month_since_ms", month_since_ms)] {
        // A moment ahead of the server's clock is allowed (it finds nothing).
        if now_ms - value > LONGEST_MS {
            return Err(ApiError::invalid(
                "invalid_query",
                format!("{name}: within the last 400 days"),
            ));
        }
    }
    let hours = state.store.reports().activity(since_ms).await?;
    let margins = state.store.reports().margins(month_since_ms).await?;
    Ok(HttpResponse::Ok().json(Reports {
        since_ms,
        hours,
        month_since_ms,
        margins,
    }))
}

/// How long a reservation may stay open before it needs a look.
const RESERVED_FOR_LONG_MS: i64 = 10 * 60_000;

/// What needs the operator's attention, with the sign-in codes of the last
/// hour when their rate is unusual.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttentionView {
    #[serde(flatten)]
    attention: Attention,
    /// Sign-in codes of the last hour to phones without an account at half
    /// their cap or more (or held back by a cap): all of them, or a priced
    /// destination's (someone may be texting codes at the service's
    /// expense).
    sign_in_codes: Vec<CodeRate>,
}

/// What needs the operator's attention: the lists behind the overview's
/// figures (balances below the threshold, auto top-ups off, notices not
/// sent, messages reserved for more than ten minutes), 50 of each at most,
/// and an unusual rate of sign-in codes.
#[utoipa::path(get, path = "/v1/admin/attention", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = AttentionView)))]
pub async fn attention(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now_ms = state.clock.now_ms();
    let attention = state
        .store
        .reports()
        .attention(
            state.settings.messages.low_balance_threshold,
            now_ms - RESERVED_FOR_LONG_MS,
            50,
        )
        .await?;
    let codes = state
        .store
        .sign_in()
        .codes_by_country(now_ms - 3_600_000)
        .await?;
    Ok(HttpResponse::Ok().json(AttentionView {
        attention,
        sign_in_codes: unusual_rates(&codes, &state.settings.access.sign_in.limits),
    }))
}

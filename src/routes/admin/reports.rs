//! `GET /v1/admin/reports`: what the console charts. Payments, refunds,
//! messages and segments by hour since a moment (the page sums them into
//! the operator's own days), and each destination country's messages since
//! another (the operator's month): charged against the carrier's price.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::reports::{Attention, CountryMargin, HourFigures};
use sms_credit_actors::sign_in::{unusual_phones, unusual_rates, CodeRate, PhoneRate};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest span a report covers.
const LONGEST_MS: i64 = 400 * 86_400_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Hours from here (RFC 3339; default 30 days ago).
    #[param(example = "2026-11-01T00:00:00Z")]
    since: Option<String>,
    /// Countries' messages from here (RFC 3339; default the start of this
    /// UTC month).
    #[param(example = "2026-12-01T00:00:00Z")]
    month_since: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Reports {
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "sms_credit_actors::clock::rfc3339::serialize")]
    since: i64,
    /// Hours with something in them, oldest first.
    hours: Vec<HourFigures>,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "sms_credit_actors::clock::rfc3339::serialize")]
    month_since: i64,
    margins: Vec<CountryMargin>,
}

/// A moment of the query, RFC 3339.
fn moment(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    text.map(|text| {
        sms_credit_actors::clock::parse_rfc3339_ms(text).ok_or_else(|| {
            ApiError::invalid(
                "invalid_query",
                format!("{name}: '{text}' is not an RFC 3339 time (2026-12-01T00:00:00Z)"),
            )
        })
    })
    .transpose()
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
    let since_ms = moment("since", query.since.as_deref())?.unwrap_or(now_ms - 30 * 86_400_000);
    let month_since_ms = match moment("month_since", query.month_since.as_deref())? {
        Some(moment) => moment,
        None => {
            let (year, month, _) =
                sms_credit_actors::clock::civil_from_days(now_ms.div_euclid(86_400_000));
            sms_credit_actors::clock::days_from_civil(year, month, 1) * 86_400_000
        }
    };
    for (name, value) in [("since", since_ms), ("month_since", month_since_ms)] {
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
        since: since_ms,
        hours,
        month_since: month_since_ms,
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
    /// Sign-in codes of the last hour at half their cap or more (every
    /// code counts, customers' too), with those a cap held back: all of
    /// them, or a priced destination's (someone may be texting codes at the
    /// service's expense).
    sign_in_codes: Vec<CodeRate>,
    /// Phones sent codes at half their total of the hour or of the day, or
    /// more, customers' included (someone may be texting one number at the
    /// service's expense, or keeping a customer from signing in), the most
    /// of the day first, 20 at most.
    sign_in_phones: Vec<PhoneRate>,
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
    let limits = &state.settings.access.sign_in.limits;
    let phones = unusual_phones(&state.store, limits, now_ms).await?;
    Ok(HttpResponse::Ok().json(AttentionView {
        attention,
        sign_in_codes: unusual_rates(&codes, limits),
        sign_in_phones: phones,
    }))
}

//! `GET /v1/admin/reports/credit`: the books of a period — each category
//! of credit's opening balance, what was granted, consumed, expired and
//! refunded, and its closing balance — as JSON, or (`.csv`) one line per
//! category. Read from the whole ledger before the period's end, in one
//! moment of it, on a reader of the store (see `sms_credit_actors::books`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::books::{self, CreditBooks, Period};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    /// The period's start, included: RFC 3339 to the millisecond, or a
    /// date (its midnight UTC). With `to`; not with `month`.
    #[param(example = "2026-11-01T00:00:00Z")]
    from: Option<String>,
    /// The period's end, not included (as `from`; not before it).
    #[param(example = "2026-12-01T00:00:00Z")]
    to: Option<String>,
    /// A calendar month in UTC, `YYYY-MM`: in place of `from` and `to`.
    #[param(example = "2026-11")]
    month: Option<String>,
}

impl PeriodQuery {
    /// The period asked for, by the rules the command line checks too.
    pub fn period(&self) -> Result<Period, ApiError> {
        Period::parse(
            self.from.as_deref(),
            self.to.as_deref(),
            self.month.as_deref(),
        )
        .map_err(|refused| ApiError::invalid("invalid_period", refused.to_string()))
    }
}

/// The books of a period, by category (`paid`, `promotional`, `owed`) and
/// in total: opening + granted − consumed − expired − refunded = closing,
/// exactly, in micro-dollars. The closing `paid` balance is what customers
/// have paid for and not yet used; the total's closing is what every
/// account's balance came to at `to`. `as_of` is when they were read;
/// `closed` says whether the period could still change then (not ended,
/// ended less than 5 s before, or expiries the sweep has not written yet:
/// `open_because`), its closing balances being what they are so far.
#[utoipa::path(get, path = "/v1/admin/reports/credit", tag = "admin", security(("adminToken" = [])),
    params(PeriodQuery),
    responses((status = 200, body = CreditBooks),
        (status = 503, description = "`books_busy`: this server is reading as many books as it reads at once (2); `Retry-After` says when to try again")))]
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    answer_books(&state, &query, |_, books| HttpResponse::Ok().json(books)).await
}

/// Reads the books of the asked period, as one of the reads this server
/// makes at once (else `books_busy`, nothing read), and answers them with
/// `answer` while the read is still counted.
async fn answer_books(
    state: &AppState,
    query: &PeriodQuery,
    answer: impl FnOnce(Period, CreditBooks) -> HttpResponse,
) -> Result<HttpResponse, ApiError> {
    let period = query.period()?;
    let _reading = state.books_reads.start()?;
    let books = state
        .store
        .reports()
        .credit_books(period, state.clock.now_ms())
        .await?;
    Ok(answer(period, books))
}

/// The same books as CSV: a header, then one line per category and the
/// total, each figure in micro-dollars and in dollars (exactly), then
/// `as_of`, `closed` and `open_because` (empty once closed).
#[utoipa::path(get, path = "/v1/admin/reports/credit.csv", tag = "admin",
    security(("adminToken" = [])),
    params(PeriodQuery),
    responses((status = 200, description = "The books", content_type = "text/csv", body = String),
        (status = 503, description = "`books_busy`: this server is reading as many books as it reads at once (2); `Retry-After` says when to try again")))]
pub async fn export_csv(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    answer_books(&state, &query, |period, books| {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                actix_web::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"credit-{}.csv\"", period.label()),
            ))
            .body(books::csv(&books))
    })
    .await
}

//! `POST /v1/quote`: what a message to a number will cost, before it is sent.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::rating::{quote, QuoteRequest};

use crate::error::ApiError;
use crate::state::AppState;

/// A message to price.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    /// The destination in international form.
    #[schema(format = "e164", examples("+14155551234"))]
    to: String,
    /// The text, at most 1600 characters.
    body: String,
    /// Quote it as sent after replacing look-alikes with GSM-7 characters.
    #[serde(default)]
    smart_encoding: bool,
}

/// What a message to a number will cost: segments × the destination's rate.
#[utoipa::path(post, path = "/v1/quote", tag = "rating", request_body = QuoteBody,
    responses((status = 200, body = sms_credit_actors::rating::Quote)))]
pub async fn create(
    state: web::Data<AppState>,
    http: HttpRequest,
    request: web::Json<QuoteBody>,
) -> Result<HttpResponse, ApiError> {
    state.limits.anonymous_call(&http)?;
    let quoted = quote(
        QuoteRequest {
            to: &request.to,
            body: &request.body,
            smart_encoding: request.smart_encoding,
        },
        &state.settings.messages.rates,
    )?;
    Ok(HttpResponse::Ok().json(quoted))
}

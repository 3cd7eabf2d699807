//! `POST /v1/quote`: what a message to a number will cost, before it is sent.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::rating::{quote, QuoteRequest};

use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    to: String,
    body: String,
    #[serde(default)]
    smart_encoding: bool,
}

pub async fn create(
    state: web::Data<AppState>,
    request: web::Json<QuoteBody>,
) -> Result<HttpResponse, ApiError> {
    let quoted = quote(
        QuoteRequest {
            to: &request.to,
            body: &request.body,
            smart_encoding: request.smart_encoding,
        },
        &state.settings.rates,
    )?;
    Ok(HttpResponse::Ok().json(quoted))
}

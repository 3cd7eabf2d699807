//! Webhooks from the outside services, each verified on its raw body.

use actix_web::web;

use crate::error::ApiError;

pub mod stripe;
pub mod twilio;

/// Reads a webhook's raw body, refusing one larger than `limit` bytes with
/// the common JSON error (413) rather than buffering it.
async fn raw_body(payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(error)) => Err(ApiError::invalid(
            "invalid_body",
            format!("could not read the body: {error}"),
        )),
        Err(_) => Err(ApiError::PayloadTooLarge),
    }
}

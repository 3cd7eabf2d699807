//! `POST /v1/messages`: the host application sends a charged SMS to an
//! account: quoted, reserved (402 if the balance cannot cover it), sent
//! through Twilio, and the reservation resolved exactly once.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::messaging::OutboundRequest;
use sms_credit_actors::AccountId;

use crate::auth::HostApplication;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    account_id: Option<i64>,
    to: Option<String>,
    body: String,
    idempotency_key: String,
}

pub async fn create(
    _host: HostApplication,
    state: web::Data<AppState>,
    request: web::Json<SendMessage>,
) -> Result<HttpResponse, ApiError> {
    let messaging = state.messaging.as_ref().ok_or(ApiError::NotConfigured {
        code: "twilio_not_configured",
        message: "Twilio is not configured on this server (set SMS_CREDIT_TWILIO_ACCOUNT_SID and _AUTH_TOKEN)",
    })?;
    let request = request.into_inner();
    let sent = messaging
        .send_outbound(
            OutboundRequest {
                account_id: request.account_id.map(AccountId),
                to: request.to,
                body: request.body,
                idempotency_key: request.idempotency_key,
            },
            state.clock.now_ms(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(sent))
}

//! `POST /v1/messages`: the host application sends a charged SMS to an
//! account: quoted, reserved (402 if the balance cannot cover it), sent
//! through Twilio, and the reservation resolved exactly once.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::messaging::OutboundRequest;
use sms_credit_actors::AccountId;

use crate::auth::HostApplication;
use crate::error::ApiError;
use crate::state::AppState;

/// A message to send to an account (by id, by number, or both if they agree).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    account_id: Option<i64>,
    #[schema(format = "e164", examples("+14155551234"))]
    to: Option<String>,
    body: String,
    /// Names this message: the same key again answers the same message and sends nothing.
    #[schema(pattern = "^[!-~]{1,255}$")]
    idempotency_key: String,
}

/// Sends an SMS charged to an account: quoted, its cost reserved (402 if the
/// balance cannot cover it), sent through Twilio, and the reservation kept
/// as the debit or given back, once. When Twilio may have taken the message
/// without saying so, the answer is 504 `send_outcome_unknown`: the same
/// key answers `409 in_progress` until the outcome is settled (within about
/// ten minutes), then the message (`replayed`) or `409
/// idempotency_key_spent` (not sent, its cost given back). A key whose
/// message was not sent answers `409 idempotency_key_spent` ever after:
/// sending it needs a new key.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("apiKey" = [])),
    request_body = SendMessage,
    responses(
        (status = 200, body = sms_credit_actors::messaging::SentMessage),
        (status = 409, description = "`in_progress`: a message with this key is still being sent, or its outcome is not settled yet; ask again with the same key. `idempotency_key_spent`: the key's message was not sent and its cost was given back; the key is spent: send again with a new key", body = crate::error::ErrorBody),
        (status = 502, description = "`twilio_error`: Twilio did not take the message; its cost was given back; to try again, use a new key", body = crate::error::ErrorBody),
        (status = 504, description = "`send_outcome_unknown`: Twilio may have taken the message but did not say so; it stays charged until settled (within about ten minutes), then the same key answers the message, or 409 `idempotency_key_spent` with its cost given back. Never resend with a new key before that", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    _host: HostApplication,
    state: web::Data<AppState>,
    request: web::Json<SendMessage>,
) -> Result<HttpResponse, ApiError> {
    let messaging = state.messaging.as_ref().ok_or(ApiError::NotConfigured {
        code: "twilio_not_configured",
        message: "text messages are not available on this server",
        variable: "SMS_CREDIT_TWILIO_ACCOUNT_SID",
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

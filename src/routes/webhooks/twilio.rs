//! `POST /webhooks/twilio/sms` and `/webhooks/twilio/status`: verify
//! `X-Twilio-Signature` over the public URL and every form field, parse, and
//! hand over: inbound commands to the SMS supervisor (its reply rendered as
//! TwiML), status callbacks to messaging.

use actix_web::{web, HttpRequest, HttpResponse};
use sms_credit_actors::messaging::StatusCallback;
use sms_credit_actors::supervisor::InboundSms;

use crate::auth::judged_wrong;
use crate::error::ApiError;
use crate::state::AppState;
use crate::twilio::requests::{self, NotTwilios};
use crate::twilio::{form, signature, twiml};

/// The largest form accepted: an SMS body is at most 1 600 characters, and
/// Twilio's other fields are short.
const BODY_LIMIT: usize = 64 * 1024;

/// The verified form fields of a Twilio request, and the account they
/// must name.
struct SignedForm {
    fields: Vec<(String, String)>,
    account_sid: String,
}

/// A signed form that is not one Twilio sends: refused, and told to the
/// log (a signed body sent again, cut into other fields, looks like this).
fn not_twilios(request: &HttpRequest, reason: NotTwilios) -> ApiError {
    tracing::warn!(path = request.path(), %reason, "a signed Twilio request that Twilio would not send");
    ApiError::invalid("invalid_form", format!("not a form Twilio sends: {reason}"))
}

/// Checks Twilio is configured, parses the form and verifies the signature
/// over every field received.
fn verify(state: &AppState, request: &HttpRequest, body: &[u8]) -> Result<SignedForm, ApiError> {
    let twilio = state
        .settings
        .twilio
        .as_ref()
        .ok_or(ApiError::NotConfigured {
            code: "twilio_not_configured",
            message: "text messages are not available on this server",
            variable: "SMS_CREDIT_TWILIO_ACCOUNT_SID",
        })?;
    let content_type = request
        .headers()
        .get("Content-Type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::invalid(
            "unsupported_content_type",
            "Twilio webhooks are application/x-www-form-urlencoded",
        ));
    }
    let fields = form::parse(body).map_err(|error| {
        ApiError::invalid(
            "invalid_form",
            format!("the form could not be read: {error}"),
        )
    })?;
    let presented = request
        .headers()
        .get("X-Twilio-Signature")
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::Forbidden)?;
    let query = request.query_string();
    let url = if query.is_empty() {
        format!("{}{}", state.settings.public_base_url(), request.path())
    } else {
        format!(
            "{}{}?{query}",
            state.settings.public_base_url(),
            request.path()
        )
    };
    // A good signature is never refused for its address's guesses: nobody
    // can forge one, and Twilio may share an address with a stranger. A
    // wrong one counts against the address like any wrong credential.
    if !signature::is_valid(twilio.auth_token.expose(), &url, &fields, presented) {
        return Err(judged_wrong(state, request, ApiError::Forbidden));
    }
    Ok(SignedForm {
        fields,
        account_sid: twilio.account_sid.clone(),
    })
}

/// An inbound SMS from Twilio (`BALANCE`, `BUY $10`, `HELP`), answered in
/// TwiML once its effects are committed; a MessageSid has one effect.
#[utoipa::path(post, path = "/webhooks/twilio/sms", tag = "webhooks", security(("twilioSignature" = [])),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "Twilio's form: MessageSid, From, Body, …"),
    responses((status = 200, description = "The reply", content_type = "text/xml", body = String)))]
pub async fn inbound_sms(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::raw_body(payload, BODY_LIMIT).await?;
    let form = verify(&state, &request, &body)?;
    let message = requests::inbound(&form.fields, &form.account_sid)
        .map_err(|reason| not_twilios(&request, reason))?;
    let inbound = InboundSms {
        message_sid: message.message_sid,
        from: message.from,
        body: message.body,
        received_at_ms: state.clock.now_ms(),
    };
    let reply = state
        .sms_supervisor
        .send(inbound)
        .await
        .map_err(|_| ApiError::Stopping)??;
    Ok(HttpResponse::Ok()
        .content_type(twiml::CONTENT_TYPE)
        .body(twiml::render(reply.as_deref())))
}

/// A Twilio status callback for a message sent; a message that `failed`
/// before leaving Twilio is refunded once, and one that failed because its
/// number opted out (`ErrorCode` 21610) records the opt-out, unless the
/// number opted back in after the message was sent (a callback replayed
/// or late).
#[utoipa::path(post, path = "/webhooks/twilio/status", tag = "webhooks", security(("twilioSignature" = [])),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "Twilio's form: MessageSid, MessageStatus, …"),
    responses((status = 200, description = "An empty reply", content_type = "text/xml", body = String)))]
pub async fn status(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::raw_body(payload, BODY_LIMIT).await?;
    let form = verify(&state, &request, &body)?;
    let report = requests::status(&form.fields, &form.account_sid)
        .map_err(|reason| not_twilios(&request, reason))?;
    if let Some(messaging) = &state.messaging {
        let service_number = state
            .settings
            .twilio
            .as_ref()
            .and_then(|twilio| twilio.from.as_deref());
        messaging
            .handle_status_callback(
                StatusCallback {
                    sid: &report.message_sid,
                    status: &report.status,
                    error_code: report.error_code.as_deref(),
                    to: report.to.as_deref(),
                    from: report.from.as_deref(),
                },
                service_number,
                state.clock.now_ms(),
            )
            .await?;
    }
    Ok(HttpResponse::Ok()
        .content_type(twiml::CONTENT_TYPE)
        .body(twiml::render(None)))
}

//! `POST /webhooks/stripe`: verifies the signature on the raw body and
//! parses the event; the Stripe supervisor does the rest (deduplication,
//! routing, ordering). Answers 200 only once the event's effects are
//! committed, so Stripe retries anything that failed.

use actix_web::{web, HttpRequest, HttpResponse};
use sms_credit_actors::supervisor::HandleStripeEvent;

use crate::auth::judged_wrong;
use crate::error::ApiError;
use crate::routes::checkout::billing;
use crate::state::AppState;
use crate::stripe::{verify_and_parse, WebhookFailure};

/// The largest event accepted (Stripe's events are a few KiB).
const BODY_LIMIT: usize = 512 * 1024;

/// What the webhook answers about an event.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    received: bool,
    event_id: String,
    result: sms_credit_actors::billing::events::EventOutcome,
}

/// A Stripe event, verified on its raw body; 200 only once its effects are
/// committed (Stripe retries anything else). Each event id takes effect once.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks", security(("stripeSignature" = [])),
    request_body(content = String, content_type = "application/json", description = "Stripe's event"),
    responses((status = 200, body = WebhookAnswer)))]
pub async fn receive(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    billing(&state)?;
    let body = super::raw_body(payload, BODY_LIMIT).await?;
    // Configured together with the secret key (the configuration refuses one without the other).
    let secret = state
        .settings
        .stripe
        .as_ref()
        .map(|stripe| &stripe.webhook_secret)
        .ok_or(ApiError::NotConfigured {
            code: "stripe_not_configured",
            message: "payments are not available on this server",
            variable: "SMS_CREDIT_STRIPE_WEBHOOK_SECRET",
        })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("invalid_body", "the body is not UTF-8"))?;
    let signature = request
        .headers()
        .get("Stripe-Signature")
        .and_then(|value| value.to_str().ok());
    let now_unix = state.clock.now_ms().div_euclid(1000);
    // A good signature is never refused for its address's guesses (as for
    // Twilio's); a wrong one counts against the address.
    let verified =
        verify_and_parse(text, signature, secret.expose(), now_unix).map_err(|failure| {
            match failure {
                WebhookFailure::BadSignature(reason) if signature.is_some() => {
                    judged_wrong(&state, &request, ApiError::BadSignature(reason))
                }
                WebhookFailure::BadSignature(reason) => ApiError::BadSignature(reason),
                WebhookFailure::Unparseable(reason) => ApiError::invalid("invalid_event", reason),
            }
        })?;
    let outcome = state
        .stripe_supervisor
        .send(HandleStripeEvent {
            event_id: verified.id.clone(),
            event_type: verified.event_type.clone(),
            event: verified.event,
            received_at_ms: state.clock.now_ms(),
        })
        .await
        .map_err(|_| ApiError::Stopping)??;
    tracing::info!(event_id = %verified.id, event_type = %verified.event_type, ?outcome, "stripe event");
    Ok(HttpResponse::Ok().json(WebhookAnswer {
        received: true,
        event_id: verified.id,
        result: outcome,
    }))
}

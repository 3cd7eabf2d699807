//! `/v1/sign-in`: a customer proves their phone with a texted code and gets
//! an account token (the phone has access) or a sign-up token (it has
//! not). Anonymous routes: both answer alike for every phone, whether or
//! not it is a customer's.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::accounts::PhoneNumber;
use sms_credit_actors::messaging::{Messaging, MessagingError};
use sms_credit_actors::sign_in::{self, CodeAsked, CodeOutcome, PendingCode, SignInError};

use crate::auth::{before_judging, judged_wrong};
use crate::code_texts::{Attempt, Tried};
use crate::error::ApiError;
use crate::state::AppState;

/// A phone to text a code to.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    #[schema(format = "e164", examples("+14155551234"))]
    phone: String,
}

/// A code was texted (the same answer for every valid number).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CodeSent {
    /// How many digits the code has.
    code_length: u8,
    /// How long the code works.
    expires_in_seconds: i64,
}

/// A phone and what proves it: the texted code, or the sign-up token this
/// phone got earlier (once the phone has access, it is exchanged for an
/// account token).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    #[schema(format = "e164", examples("+14155551234"))]
    phone: String,
    /// The six digits texted to the phone.
    code: Option<String>,
    /// A sign-up token (`sup_…`) this phone got earlier.
    sign_up_token: Option<String>,
}

fn phone(text: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(text).map_err(|error| ApiError::invalid("invalid_phone", error.to_string()))
}

/// Where the caller is, for the per-address limit: its address, or an IPv6
/// client's /64 (`unknown` when the connection has no address, as in a
/// test).
fn address_of(state: &AppState, request: &HttpRequest) -> String {
    state
        .limits
        .client_address(request)
        .map_or_else(|| "unknown".to_string(), crate::limits::counted_as)
}

/// Texts a six-digit sign-in code to the phone. Answers `202` for every
/// valid number, whether or not it has an account: the request is stored
/// (the same work for every number), and the code is texted after the
/// answer; a number that opted out is not texted, nor one past the caps of
/// the hour for phones without an account.
#[utoipa::path(post, path = "/v1/sign-in/code", tag = "account holders", request_body = CodeRequest,
    responses((status = 202, body = CodeSent),
        (status = 422, description = "`unsupported_destination`: the rate table does not price the phone's country"),
        (status = 429, description = "Too many codes for this phone from this address, for this phone in all (of the hour or of the day), or from this address; `Retry-After` says when"),
        (status = 503, description = "Sign-in by text message is not available on this server")))]
pub async fn request_code(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<CodeRequest>,
) -> Result<HttpResponse, ApiError> {
    state.limits.anonymous_call(&request)?;
    let phone = phone(&body.phone)?;
    let messaging = state.messaging.as_ref().ok_or(ApiError::NotConfigured {
        code: "sign_in_not_configured",
        message: "signing in with a text message is not available on this server",
        variable: "SMS_CREDIT_TWILIO_ACCOUNT_SID, SMS_CREDIT_TWILIO_AUTH_TOKEN and SMS_CREDIT_TWILIO_FROM",
    })?;
    let asked = sign_in::request_code(
        &state.store,
        &messaging.rates,
        &phone,
        &address_of(&state, &request),
        state.settings.access.sign_in.limits,
        state.clock.now_ms(),
    )
    .await;
    match asked {
        Ok(CodeAsked::ToText(pending)) => text_after_answer(&state, messaging, pending),
        Ok(CodeAsked::Capped { destination }) => {
            // Answered as any other: the answer tells nobody who is a
            // customer. The log, the metrics and Needs attention say it.
            tracing::warn!(country = %destination, "a cap on sign-in codes was reached: a code was not texted");
            state.sign_in_codes.count(destination.as_str(), "capped");
        }
        Err(SignInError::Destination(rating)) => {
            let region = phone
                .country()
                .map_or_else(|| "unknown".to_string(), |country| country.to_string());
            state.sign_in_codes.count(&region, "unpriced");
            return Err(ApiError::Rating(rating));
        }
        Err(error) => return Err(error.into()),
    }
    Ok(HttpResponse::Accepted().json(CodeSent {
        code_length: 6,
        expires_in_seconds: sign_in::CODE_LIFETIME_MS / 1000,
    }))
}

/// Texts a stored code after the answer (`AppState::code_texts`: so many
/// at once, tried again while Twilio is briefly unavailable, within a
/// minute). What became of it goes to the log and the metrics only: a
/// number Twilio will not text is answered as every other (its refusal
/// would tell that the phone once used the service).
fn text_after_answer(state: &web::Data<AppState>, messaging: &Messaging, pending: PendingCode) {
    let country = pending.destination().to_string();
    let now_ms = state.clock.now_ms();
    let pending = Arc::new(pending);
    let (texting, messaging, to) = (state.clone(), messaging.clone(), country.clone());
    let attempt: Attempt = Box::new(move || {
        let (state, messaging, pending, country) = (
            texting.clone(),
            messaging.clone(),
            Arc::clone(&pending),
            to.clone(),
        );
        Box::pin(async move {
            let sent = sign_in::send_code(
                &state.store,
                &messaging,
                &state.settings.server.service_name,
                &pending,
                now_ms,
            )
            .await;
            match sent {
                Ok(CodeOutcome::Sent) => Tried::Settled("sent"),
                Ok(CodeOutcome::Refused { opted_out, detail }) => {
                    tracing::warn!(%country, opted_out, %detail, "Twilio would not text a sign-in code");
                    Tried::Settled(if opted_out { "opted_out" } else { "refused" })
                }
                Err(SignInError::NotSent(MessagingError::Unavailable(detail))) => {
                    Tried::Unavailable(detail)
                }
                Err(error) => {
                    tracing::error!(%country, %error, "a sign-in code was not texted");
                    Tried::Settled("failed")
                }
            }
        })
    });
    state.code_texts.send(country, attempt);
}

/// Signs in with the texted code: an account token (`sct_…`, expiring) for
/// a phone with access, a sign-up token (30 minutes) for one without. A
/// wrong code is `401 invalid_code`; after five from one address, that
/// address can no longer sign the phone in for the hour: `429
/// too_many_wrong_codes` with `Retry-After`, whatever it presents.
#[utoipa::path(post, path = "/v1/sign-in", tag = "account holders", request_body = SignInRequest,
    responses((status = 200, body = sms_credit_actors::sign_in::SignedIn),
        (status = 401, description = "`invalid_code`: wrong, used, expired or replaced"),
        (status = 429, description = "`too_many_wrong_codes`: this address tried too many wrong codes for the phone; `Retry-After` says when it may try again (a new code does not help)"),
        (status = 409, description = "`no_access_yet`: a sign-up token whose phone has not paid yet")))]
pub async fn sign_in(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<SignInRequest>,
) -> Result<HttpResponse, ApiError> {
    state.limits.anonymous_call(&request)?;
    let body = body.into_inner();
    let phone = phone(&body.phone)?;
    let proof = match (body.code.as_deref().map(str::trim), body.sign_up_token) {
        (Some(code), None) if code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()) => {
            code.to_string()
        }
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "invalid_code_format",
                "the code is the six digits in the text message",
            ))
        }
        (None, Some(token)) => token,
        _ => {
            return Err(ApiError::invalid(
                "proof_required",
                "give either the texted code or a sign-up token",
            ))
        }
    };
    before_judging(&state, &request)?;
    let now_ms = state.clock.now_ms();
    match sign_in::sign_in(
        &state.store,
        &phone,
        &proof,
        &address_of(&state, &request),
        &state.settings.access.sign_in,
        now_ms,
    )
    .await
    {
        Ok(signed_in) => Ok(HttpResponse::Ok().json(signed_in)),
        // Wrong codes count with wrong tokens against the address.
        Err(SignInError::InvalidCode) => Err(judged_wrong(
            &state,
            &request,
            SignInError::InvalidCode.into(),
        )),
        Err(error) => Err(error.into()),
    }
}

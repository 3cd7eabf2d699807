//! `/v1/checkout`: start paying by Stripe Checkout, for access (anyone, by
//! phone and email, with an optional discount code) or a $10 top-up (an
//! account holder).

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::accounts::{Email, PhoneNumber};
use sms_credit_actors::billing::checkout::Billing;
use sms_credit_actors::billing::discounts::normalize_code;
use sms_credit_actors::billing::BillingError;
use sms_credit_actors::sign_in;

use crate::auth::{bearer_token, before_judging, judged_wrong, AccountHolder, HostApplication};
use crate::error::ApiError;
use crate::state::AppState;

/// Who is buying access.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// The phone that will receive the messages, in international form.
    #[schema(format = "e164", examples("+14155551234"))]
    phone: String,
    #[schema(format = Email)]
    email: String,
    /// A discount code (letters, digits, '-' and '_'; case does not matter).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    discount_code: Option<String>,
    /// The sign-up token `POST /v1/sign-in` gave for this phone: required
    /// unless the host application's API key is presented.
    sign_up_token: Option<String>,
}

/// The billing flows, or `503 stripe_not_configured`.
pub fn billing(state: &AppState) -> Result<&Billing, ApiError> {
    state.billing.as_ref().ok_or(ApiError::NotConfigured {
        code: "stripe_not_configured",
        message: "payments are not available on this server",
        variable: "SMS_CREDIT_STRIPE_SECRET_KEY",
    })
}

/// The answer to an anonymous caller who has not proved the phone: the
/// same for every phone, so it tells nobody who is a customer.
fn sign_up_required() -> ApiError {
    ApiError::SignUpRequired
}

/// Starts a Stripe Checkout for initial access at the current pricing mode's
/// price, less a discount code; a pending account is made for the phone.
/// The caller has proved the phone (a sign-up token from `/v1/sign-in`)
/// or is the host application (its API key), which proves phones its own way.
#[utoipa::path(post, path = "/v1/checkout/access", tag = "selling", request_body = AccessRequest,
    security((), ("apiKey" = [])),
    responses((status = 200, body = sms_credit_actors::billing::checkout::CheckoutStarted),
        (status = 401, description = "`sign_up_required`: no sign-up token for this phone (the same for every phone)"),
        (status = 409, description = "`discount_code_unusable` (anonymous callers): the discount code does not exist, is inactive, is used up or takes the price below Stripe's smallest charge, which is not told; each counts as a wrong guess, against the address and the sign-up token (the tenth uses the token up). The host application is told which: `404 unknown_discount_code`, `409 inactive_discount_code`, `409 discount_code_used_up`, `422 below_minimum_charge`")))]
pub async fn access(
    state: web::Data<AppState>,
    http: HttpRequest,
    body: web::Json<AccessRequest>,
) -> Result<HttpResponse, ApiError> {
    // Nothing here depends on who owns the phone: a stranger learns only
    // what any caller would.
    let billing = billing(&state)?;
    let request = body.into_inner();
    let phone = PhoneNumber::parse(&request.phone)
        .map_err(|error| ApiError::invalid("invalid_phone", error.to_string()))?;
    let email = Email::parse(&request.email)
        .map_err(|error| ApiError::invalid("invalid_email", error.to_string()))?;
    let discount_code = request
        .discount_code
        .as_deref()
        .filter(|code| !code.trim().is_empty())
        .map(normalize_code)
        .transpose()
        .map_err(|message| ApiError::invalid("invalid_discount_code", message))?;
    // An anonymous buyer's sign-up token; the host application has none.
    let sign_up_token = match bearer_token(&http) {
        Some(_) => {
            HostApplication::extract(&http).await?;
            None
        }
        None => {
            state.limits.anonymous_call(&http)?;
            let token = request
                .sign_up_token
                .as_deref()
                .ok_or_else(sign_up_required)?;
            before_judging(&state, &http)?;
            let proved = sign_in::proved_phone(&state.store, token, state.clock.now_ms()).await?;
            if proved.as_ref() != Some(&phone) {
                // A sign-up token that does not prove this phone is a guess.
                return Err(judged_wrong(&state, &http, sign_up_required()));
            }
            Some(token)
        }
    };
    let with_code = discount_code.is_some();
    let started = billing
        .start_access_checkout(phone, email, discount_code, state.clock.now_ms())
        .await;
    match (started, sign_up_token) {
        (Ok(started), _) => Ok(HttpResponse::Ok().json(started)),
        // A discount code is a secret of sorts: an anonymous buyer is told
        // only that it cannot be used, whether it does not exist, is
        // inactive, is used up or takes the price below what can be
        // charged (which would tell that it exists), and each one counts
        // as a wrong guess: against the address, and against the sign-up
        // token, which so many use up (rotating addresses gets a stranger
        // no more guesses).
        (
            Err(
                BillingError::UnknownDiscountCode(_)
                | BillingError::InactiveDiscountCode(_)
                | BillingError::DiscountCodeUsedUp(_),
            ),
            Some(token),
        ) => Err(unusable_code(&state, &http, token).await),
        (Err(BillingError::BelowMinimumCharge(_)), Some(token)) if with_code => {
            Err(unusable_code(&state, &http, token).await)
        }
        (Err(error), _) => Err(error.into()),
    }
}

/// An anonymous buyer's discount code could not be used: counted against
/// the sign-up token (used up at the tenth) and the address, and answered
/// alike whatever the reason.
async fn unusable_code(state: &AppState, http: &HttpRequest, sign_up_token: &str) -> ApiError {
    match sign_in::wrong_discount_code(&state.store, sign_up_token).await {
        Ok(used_up) => {
            if used_up {
                tracing::warn!("a sign-up token was used up by wrong discount codes");
            }
            judged_wrong(state, http, discount_code_unusable())
        }
        Err(error) => error.into(),
    }
}

/// The answer to an anonymous caller whose discount code cannot be used,
/// the same whatever the reason.
fn discount_code_unusable() -> ApiError {
    ApiError::Conflict {
        code: "discount_code_unusable",
        message: "this discount code cannot be used".to_string(),
    }
}

/// Starts a Stripe Checkout for a $10 top-up (the card is saved for `BUY $10`).
#[utoipa::path(post, path = "/v1/checkout/topup", tag = "selling", security(("accountToken" = [])),
    responses((status = 200, body = sms_credit_actors::billing::checkout::CheckoutStarted)))]
pub async fn top_up(
    state: web::Data<AppState>,
    holder: AccountHolder,
) -> Result<HttpResponse, ApiError> {
    let billing = billing(&state)?;
    let started = billing
        .start_top_up_checkout(holder.0, state.clock.now_ms())
        .await?;
    Ok(HttpResponse::Ok().json(started))
}

/// What a payer returning from Checkout may know of their order: where it
/// stands and what it buys, nothing about the account.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SessionStatus {
    /// `pending` until Stripe's confirmation is applied, then `completed`
    /// (or `failed`, `expired`, `refunded`).
    status: String,
    /// `initial_access` or `top_up`.
    order_type: String,
}

/// Where the order a Checkout Session pays for stands (for the page Stripe
/// sends the payer back to). The session id is Stripe's unguessable one; an
/// unknown id is `404`.
#[utoipa::path(get, path = "/v1/checkout/sessions/{session_id}", tag = "selling",
    params(("session_id" = String, Path, description = "Stripe's Checkout Session id (cs_…)")),
    responses((status = 200, body = SessionStatus)))]
pub async fn session_status(
    state: web::Data<AppState>,
    http: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.limits.anonymous_call(&http)?;
    let session_id = path.into_inner();
    let well_formed = session_id.starts_with("cs_")
        && session_id.len() <= 255
        && session_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(ApiError::invalid(
            "invalid_session_id",
            "a Checkout Session id looks like cs_…",
        ));
    }
    let order = state.store.billing().order_by_session(session_id).await?;
    let Some(order) = order else {
        // An unknown id is a guess: it counts with wrong tokens.
        let not_found = ApiError::NotFound("no such checkout".to_string());
        return Err(judged_wrong(&state, &http, not_found));
    };
    Ok(HttpResponse::Ok().json(SessionStatus {
        status: order.status.as_str().to_string(),
        order_type: order.order_type.as_str().to_string(),
    }))
}

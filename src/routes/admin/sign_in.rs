//! `POST /v1/admin/sign-in/lift`: lifts a phone's sign-in limits, for a
//! customer strangers locked out (the phone's codes of the hour used up
//! from several addresses) or who mistyped their code too often.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::accounts::PhoneNumber;
use sms_credit_actors::sign_in;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The phone whose limits to lift.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftRequest {
    #[schema(format = "e164", examples("+14155551234"))]
    phone: String,
}

/// What was lifted.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Lifted {
    phone: String,
    /// The phone's codes that no longer count against it.
    codes_lifted: i64,
}

/// Lifts a phone's sign-in limits: the codes it was sent so far no longer
/// count against its totals (of the hour and of the day), so the customer
/// may ask for a code at once, and its live codes end. What each address
/// did still counts against that address: the codes it asked for, and its
/// wrong codes (a stranger's addresses do not start again), but an address
/// that mistyped may sign the phone in with a code it asks for after the
/// lift. The caps of the hour still count the codes.
#[utoipa::path(post, path = "/v1/admin/sign-in/lift", tag = "admin", security(("adminToken" = [])),
    request_body = LiftRequest,
    responses((status = 200, body = Lifted)))]
pub async fn lift(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<LiftRequest>,
) -> Result<HttpResponse, ApiError> {
    let phone = PhoneNumber::parse(&body.phone)
        .map_err(|error| ApiError::invalid("invalid_phone", error.to_string()))?;
    let codes_lifted = sign_in::lift_limits(&state.store, &phone, state.clock.now_ms()).await?;
    tracing::info!(codes_lifted, "a phone's sign-in limits lifted by the admin");
    Ok(HttpResponse::Ok().json(Lifted {
        phone: phone.as_str().to_string(),
        codes_lifted,
    }))
}

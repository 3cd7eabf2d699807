//! `/v1/admin/accounts/{id}/adjustments`: an administrator's signed
//! correction of a balance, answered once it is committed.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::grants::adjustment_terms;
use sms_credit_actors::{AccountId, Adjust, IdempotencyKey, Money, Receipt};

use super::TransactionView;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest reason kept with an adjustment, in characters.
const MAX_REASON_CHARS: usize = 500;

/// A signed correction of a balance.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    /// Signed; may take the balance below zero. Not zero.
    amount_micros: i64,
    /// Why, for the operator: 1 to 500 characters, kept with the ledger
    /// row and never shown to the account holder.
    reason: String,
    /// What the account holder reads of the row (1 to 500 characters);
    /// without it, the neutral "Balance adjustment".
    description: Option<String>,
    /// Names the adjustment: the same key again answers the original row.
    /// The service's own prefixes (`stripe-order:`, `msg:`, …) are refused.
    #[schema(pattern = "^[!-~]{1,255}$")]
    idempotency_key: String,
    /// A positive adjustment makes a credit grant of this category:
    /// `promotional` (the default: given away) or `paid` (money received
    /// outside Stripe). Refused on a negative adjustment.
    category: Option<String>,
    /// 0 to 100, lower spent first (default 50). Refused on a negative
    /// adjustment.
    #[schema(minimum = 0, maximum = 100)]
    priority: Option<i64>,
    /// When what is left of the grant expires (RFC 3339, in the future);
    /// none never expires. Refused on a negative adjustment.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// The adjustment's ledger row.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AdjustmentResponse {
    transaction: TransactionView,
    /// True when this idempotency key had already been applied.
    replayed: bool,
}

/// An administrator's signed correction of a balance, answered once committed.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/adjustments", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    request_body = AdjustmentRequest,
    responses((status = 200, body = AdjustmentResponse)))]
pub async fn create(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    body: web::Json<AdjustmentRequest>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let request = body.into_inner();
    let adjustment = checked(
        Money::from_micros(request.amount_micros),
        state.settings.access.max_adjustment,
        &request.reason,
        request.description.as_deref(),
        &request.idempotency_key,
        AskedTerms {
            category: request.category.as_deref(),
            priority: request.priority,
            expires_at: request.expires_at.as_deref(),
        },
    )?;
    let receipt = state.registry.send(account_id, adjustment).await?;
    Ok(HttpResponse::Ok().json(AdjustmentResponse::new(&receipt)))
}

/// The terms of the grant a positive adjustment makes, as the operator
/// wrote them (none on a negative one). Whether the expiry is still to come
/// is judged by the account's actor after the key (a retry is answered from
/// its row, whenever it comes), not here.
pub struct AskedTerms<'a> {
    pub category: Option<&'a str>,
    pub priority: Option<i64>,
    pub expires_at: Option<&'a str>,
}

/// An adjustment as the operator asks for it, checked by the same rules
/// whichever door it comes through (this API, `accounts adjust`, the
/// console): a reason of 1 to 500 characters and a description, when
/// given, of 1 to 500, both trimmed; an amount within this server's limit
/// either way; a key of the caller's own; its grant's terms
/// ([`adjustment_terms`]).
pub fn checked(
    amount: Money,
    limit: Money,
    reason: &str,
    description: Option<&str>,
    idempotency_key: &str,
    terms: AskedTerms<'_>,
) -> Result<Adjust, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "invalid_reason",
            "a reason of 1 to 500 characters is required",
        ));
    }
    let description = match description.map(str::trim) {
        None => None,
        Some(text) if text.is_empty() || text.chars().count() > MAX_REASON_CHARS => {
            return Err(ApiError::invalid(
                "invalid_description",
                "a description, when given, is 1 to 500 characters",
            ))
        }
        Some(text) => Some(text.to_string()),
    };
    if amount.micros().unsigned_abs() > limit.micros().unsigned_abs() {
        return Err(ApiError::invalid(
            "adjustment_too_large",
            format!("an adjustment may be at most {limit} either way (this server's limit)"),
        ));
    }
    let idempotency_key = IdempotencyKey::from_caller(idempotency_key)
        .map_err(|error| ApiError::invalid("invalid_idempotency_key", error.to_string()))?;
    let (category, priority, expires_at_ms) =
        adjustment_terms(amount, terms.category, terms.priority, terms.expires_at).map_err(
            |refused| {
                let code = match refused.field {
                    "category" => "invalid_category",
                    "priority" => "invalid_priority",
                    _ => "invalid_expires_at",
                };
                ApiError::invalid(code, refused.message)
            },
        )?;
    Ok(Adjust {
        amount,
        idempotency_key,
        reason: reason.to_string(),
        description,
        category,
        priority,
        expires_at_ms,
    })
}

impl AdjustmentResponse {
    /// The answer to an adjustment: the API's and `accounts adjust --json`'s.
    pub fn new(receipt: &Receipt) -> AdjustmentResponse {
        AdjustmentResponse {
            transaction: TransactionView::from(&receipt.entry),
            replayed: receipt.replayed,
        }
    }
}

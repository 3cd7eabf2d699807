//! `/v1/admin/accounts/{id}/credit-grants` (and the holder's own,
//! `/v1/accounts/{id}/credit-grants`): an account's grants, newest first,
//! with what is left of each.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::grants::{self, Category, GrantLine, GrantSource, GrantStatus, SHORTFALL};
use sms_credit_actors::AccountId;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// One grant: credit an account was given or paid for, and what is left.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreditGrantView {
    /// The ledger position of the row that made it (0: what the account
    /// owes, listed only while it owes).
    id: i64,
    category: Category,
    source: GrantSource,
    order_id: Option<i64>,
    amount_micros: i64,
    /// Below zero only for grant 0.
    remaining_micros: i64,
    /// 0 to 100: lower is spent first.
    priority: u8,
    /// None for grant 0.
    #[schema(format = DateTime)]
    granted_at: Option<String>,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    status: GrantStatus,
}

/// An account's grants, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreditGrants {
    pub credit_grants: Vec<CreditGrantView>,
}

impl From<&GrantLine> for CreditGrantView {
    fn from(line: &GrantLine) -> CreditGrantView {
        let grant = &line.grant;
        CreditGrantView {
            id: grant.id,
            category: grant.category,
            source: grant.source,
            order_id: grant.order_id,
            amount_micros: grant.amount.micros(),
            remaining_micros: line.remaining.micros(),
            priority: grant.priority.value(),
            granted_at: (grant.id != SHORTFALL).then(|| format_rfc3339_ms(grant.granted_at_ms)),
            expires_at: grant.expires_at_ms.map(format_rfc3339_ms),
            status: line.status,
        }
    }
}

/// An account's grants as the listings show them; `None` if there is no
/// such account. Grants not made yet (a database `migrate` has not
/// finished) are an error, never an empty list.
pub async fn grant_lines(
    state: &AppState,
    account_id: AccountId,
) -> Result<Option<Vec<GrantLine>>, ApiError> {
    let Some(found) = state.store.ledger().account_grants(account_id).await? else {
        return Ok(None);
    };
    let remaining = found.remaining.ok_or_else(|| {
        ApiError::from(sms_credit_actors::StoreError::Database(format!(
            "the credit grants of account {account_id} are not made yet (run sms-credit migrate)"
        )))
    })?;
    Ok(Some(grants::lines(
        &found.grants,
        &remaining,
        state.clock.now_ms(),
    )))
}

/// An account's credit grants, newest first, with what is left of each.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/credit-grants", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = CreditGrants)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let lines = grant_lines(&state, account_id)
        .await?
        .ok_or_else(|| super::no_such_account(account_id))?;
    Ok(HttpResponse::Ok().json(CreditGrants {
        credit_grants: lines.iter().map(CreditGrantView::from).collect(),
    }))
}

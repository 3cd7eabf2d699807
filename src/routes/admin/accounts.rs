//! `/v1/admin/accounts`: create an active account, read one with its balance.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::accounts::{Account, AccountStatus, Email, NewAccount, PhoneNumber};
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::AccountId;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    phone: String,
    email: Option<String>,
}

/// An account as the admin API shows it.
#[derive(Serialize)]
pub struct AccountView {
    id: AccountId,
    phone: String,
    email: Option<String>,
    status: AccountStatus,
    balance_micros: i64,
    /// The balance for people, rounded toward zero to the cent.
    balance: String,
    seq: i64,
    stripe_customer_id: Option<String>,
    low_balance_warned_at: Option<String>,
    created_at: String,
}

impl From<&Account> for AccountView {
    fn from(account: &Account) -> AccountView {
        AccountView {
            id: account.id,
            phone: account.phone.as_str().to_string(),
            email: account
                .email
                .as_ref()
                .map(|email| email.as_str().to_string()),
            status: account.status,
            balance_micros: account.balance.micros(),
            balance: account.balance.to_string(),
            seq: account.seq,
            stripe_customer_id: account.stripe_customer_id.clone(),
            low_balance_warned_at: account.low_balance_warned_at_ms.map(format_rfc3339_ms),
            created_at: format_rfc3339_ms(account.created_at_ms),
        }
    }
}

pub async fn create(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<CreateAccountRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let phone = PhoneNumber::parse(&request.phone)
        .map_err(|error| ApiError::invalid("invalid_phone", error.to_string()))?;
    let email = request
        .email
        .as_deref()
        .map(Email::parse)
        .transpose()
        .map_err(|error| ApiError::invalid("invalid_email", error.to_string()))?;
    let new_account = NewAccount {
        phone,
        email,
        status: AccountStatus::Active,
    };
    let account = state
        .store
        .create_account(new_account, state.clock.now_ms())
        .await?;
    tracing::info!(account_id = %account.id, "account created");
    Ok(HttpResponse::Created().json(AccountView::from(&account)))
}

pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let account = state
        .store
        .get_account(account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {account_id} does not exist")))?;
    Ok(HttpResponse::Ok().json(AccountView::from(&account)))
}

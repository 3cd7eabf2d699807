//! `/v1/admin/accounts`: create an active account, list and search them,
//! read one with its balance.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::accounts::{Account, AccountStatus, Email, NewAccount, PhoneNumber};
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::{AccountId, Store, StoreError};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// An account to create (active, with a zero balance).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// In international form.
    #[schema(format = "e164", examples("+14155551234"))]
    phone: String,
    #[schema(format = Email)]
    email: Option<String>,
}

/// An account as the admin API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub(crate) id: AccountId,
    #[schema(format = "e164", examples("+14155551234"))]
    pub(crate) phone: String,
    #[schema(format = Email)]
    pub(crate) email: Option<String>,
    pub(crate) status: AccountStatus,
    pub(crate) balance_micros: i64,
    /// The balance for people, exactly (`$2.35`, `-$82.266`).
    pub(crate) balance: String,
    pub(crate) seq: i64,
    pub(crate) stripe_customer_id: Option<String>,
    /// When the last low-balance warning was queued.
    #[schema(format = DateTime)]
    pub(crate) low_balance_warned_at: Option<String>,
    #[schema(format = DateTime)]
    pub(crate) created_at: String,
    /// The number opted out of texts (null: it has not): nothing is sent
    /// to it, warnings included, until it texts START.
    opt_out: Option<crate::routes::account::OptOutView>,
}

/// A new account, and what the operator should know about it (messages
/// to its number that cannot be priced yet).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedAccount {
    #[serde(flatten)]
    account: AccountView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A page of accounts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountList {
    pub(crate) accounts: Vec<AccountRow>,
    /// The `after_id` of the next page, when this one is full.
    pub(crate) next_after_id: Option<i64>,
}

/// An account in the list, with what the list shows beside it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountRow {
    #[serde(flatten)]
    pub(crate) account: AccountView,
    /// Whether auto top-up is on.
    pub(crate) auto_top_up: bool,
    /// When its balance last changed (or it was made).
    #[schema(format = DateTime)]
    pub(crate) last_activity_at: Option<String>,
}

impl CreatedAccount {
    /// The answer to a creation, the API's and `accounts create --json`'s.
    pub fn new(account: &Account, warnings: Vec<String>) -> CreatedAccount {
        CreatedAccount {
            account: AccountView::from(account),
            warnings,
        }
    }
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
            opt_out: account
                .opt_out
                .as_ref()
                .map(crate::routes::account::OptOutView::from),
        }
    }
}

/// Creates an active account with a zero balance.
#[utoipa::path(post, path = "/v1/admin/accounts", tag = "admin", security(("adminToken" = [])),
    request_body = CreateAccountRequest,
    responses((status = 201, body = CreatedAccount)))]
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
        .accounts()
        .create(new_account, state.clock.now_ms())
        .await?;
    tracing::info!(account_id = account.id.0, "account created");
    let warnings = state
        .settings
        .messages
        .rates
        .pricing_gap(&account.phone)
        .into_iter()
        .collect();
    Ok(HttpResponse::Created().json(CreatedAccount::new(&account, warnings)))
}

/// An account with its committed balance.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}", tag = "admin", security(("adminToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = AccountView)))]
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let account = super::existing_account(&state, account_id).await?;
    Ok(HttpResponse::Ok().json(AccountView::from(&account)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Part of a phone number or email, or an account id.
    q: Option<String>,
    /// Accounts after this id (paging).
    #[serde(default)]
    after_id: i64,
    /// At most this many (1 to 1000, default 100).
    limit: Option<i64>,
}

/// Accounts in id order, or those whose phone or email contains `q` (or
/// whose id it is); `next_after_id` pages.
#[utoipa::path(get, path = "/v1/admin/accounts", tag = "admin", security(("adminToken" = [])),
    params(ListQuery),
    responses((status = 200, body = AccountList)))]
pub async fn list(
    _admin: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let search = query.q.filter(|text| !text.trim().is_empty());
    let page = page(&state.store, search, query.after_id, limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// A page of accounts (in id order, or found by `search`), with what the
/// list shows beside each: the API's answer and `accounts list --json`'s.
pub async fn page(
    store: &Store,
    search: Option<String>,
    after_id: i64,
    limit: i64,
) -> Result<AccountList, StoreError> {
    let accounts = store.accounts().list(search, after_id, limit).await?;
    let next_after_id = (accounts.len() as i64 == limit)
        .then(|| accounts.last().map(|account| account.id.0))
        .flatten();
    let ids = accounts.iter().map(|account| account.id.0).collect();
    let activity = store.reports().account_activity(ids).await?;
    let rows = accounts
        .iter()
        .map(|account| {
            let found = activity.iter().find(|row| row.account_id == account.id.0);
            AccountRow {
                account: AccountView::from(account),
                auto_top_up: found.is_some_and(|row| row.auto_top_up),
                last_activity_at: found.map(|row| format_rfc3339_ms(row.last_activity_ms)),
            }
        })
        .collect();
    Ok(AccountList {
        accounts: rows,
        next_after_id,
    })
}

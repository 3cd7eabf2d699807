//! `/v1/accounts/...`: what an account holder may see with an account
//! token: their account, their ledger, a ticket for their feed. A token
//! opens only its own account; any other id is answered as not found.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use sms_credit_actors::billing::orders::OrderType;
use sms_credit_actors::billing::receipts;
use sms_credit_actors::opt_outs::{OptOut, OptOutVia};
use sms_credit_actors::{feed_tickets, AccountId};

use crate::auth::AccountHolder;
use crate::error::ApiError;
use crate::feed::{FeedScope, TICKET_LIFETIME};
use crate::routes::admin::credit_grants::{grant_lines, CreditGrantView, CreditGrants};
use crate::routes::admin::transactions::{TransactionView, Transactions};
use crate::state::AppState;

/// An account as its holder sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HolderView {
    id: AccountId,
    #[schema(format = "e164", examples("+14155551234"))]
    phone: String,
    status: sms_credit_actors::accounts::AccountStatus,
    balance_micros: i64,
    /// The balance for people, exactly: two decimals, more only for a part
    /// less than a cent (`$4.35`, `-$82.266`).
    #[schema(examples("$4.35"))]
    balance: String,
    /// The ledger position the balance is at.
    seq: i64,
    /// What one SMS segment to this account's own number costs (null if
    /// its country has no rate).
    rate_micros_per_segment: Option<i64>,
    /// About how many one-segment messages the balance buys at that rate.
    messages_estimate: Option<i64>,
    /// Whether payments (top-ups, auto top-up) are offered on this server.
    payments_available: bool,
    /// The number opted out of texts (null: it has not).
    opt_out: Option<OptOutView>,
}

/// A number that opted out of texts: nothing is sent to it but the
/// replies to START, HELP and the STOP itself, until it texts START.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OptOutView {
    #[schema(format = DateTime)]
    opted_out_at: String,
    /// `keyword`: it texted an opt-out word; `carrier`: Twilio refused to
    /// text it because it had opted out (error 21610).
    via: OptOutVia,
    /// The word it texted (`STOP`, `UNSUBSCRIBE`, …).
    keyword: Option<String>,
}

impl From<&OptOut> for OptOutView {
    fn from(opt_out: &OptOut) -> OptOutView {
        OptOutView {
            opted_out_at: sms_credit_actors::clock::format_rfc3339_ms(opt_out.opted_out_at_ms),
            via: opt_out.via,
            keyword: opt_out.keyword.clone(),
        }
    }
}

/// A single-use ticket for the balance feed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FeedTicket {
    /// Put it in the feed URL as `?ticket=…` within `expires_in_secs`.
    ticket: String,
    expires_in_secs: u64,
}

impl FeedTicket {
    pub fn new(ticket: &feed_tickets::FeedTicket) -> FeedTicket {
        FeedTicket {
            ticket: ticket.expose().to_string(),
            expires_in_secs: TICKET_LIFETIME.as_secs(),
        }
    }
}

/// The account in the path, if the token is for it.
pub(crate) fn own_account(holder: &AccountHolder, path_id: i64) -> Result<AccountId, ApiError> {
    if holder.0 == AccountId(path_id) {
        Ok(holder.0)
    } else {
        // Not 403: whether another account exists is not this caller's business.
        Err(ApiError::NotFound(format!(
            "account {path_id} does not exist"
        )))
    }
}

async fn view(state: &AppState, account_id: AccountId) -> Result<HttpResponse, ApiError> {
    let account = state
        .store
        .accounts()
        .get(account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {account_id} does not exist")))?;
    let rate = account
        .phone
        .country()
        .and_then(|country| state.settings.messages.rates.rate_for(country))
        .map(|rate| rate.customer_rate.micros())
        .filter(|rate| *rate > 0);
    Ok(HttpResponse::Ok().json(HolderView {
        rate_micros_per_segment: rate,
        payments_available: state.billing.is_some(),
        messages_estimate: rate.map(|rate| account.balance.micros().max(0) / rate),
        id: account.id,
        phone: account.phone.as_str().to_string(),
        status: account.status,
        balance_micros: account.balance.micros(),
        balance: account.balance.to_string(),
        seq: account.seq,
        opt_out: account.opt_out.as_ref().map(OptOutView::from),
    }))
}

/// The token's own account and its balance.
#[utoipa::path(get, path = "/v1/accounts/me", tag = "account holders", security(("accountToken" = [])),
    responses((status = 200, body = HolderView)))]
pub async fn me(
    holder: AccountHolder,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    view(&state, holder.0).await
}

/// An account and its balance (the token's own account only; any other id
/// is answered as not found).
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "account holders", security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = HolderView)))]
pub async fn show(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    view(&state, account_id).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TransactionsQuery {
    /// Rows after this seq, oldest first.
    after_seq: Option<i64>,
    /// The newest rows, newest first (instead of `after_seq`).
    latest: Option<i64>,
    /// At most this many rows (1 to 1000, default 100).
    limit: Option<i64>,
}

/// The account's ledger: rows after `after_seq` oldest first, or the
/// `latest` N newest first.
#[utoipa::path(get, path = "/v1/accounts/{id}/transactions", tag = "account holders",
    security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account"), TransactionsQuery),
    responses((status = 200, body = Transactions)))]
pub async fn transactions(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
    query: web::Query<TransactionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    let query = query.into_inner();
    let limit = query.latest.or(query.limit).unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit and latest must be between 1 and 1000",
        ));
    }
    let newest_first = query.latest.is_some();
    let after_seq = query.after_seq.unwrap_or(0);
    let ledger = state.store.ledger();
    let entries = if newest_first {
        ledger.latest_entries(account_id, limit).await?
    } else {
        ledger.entries_after(account_id, after_seq, limit).await?
    };
    Ok(HttpResponse::Ok().json(Transactions {
        transactions: entries.iter().map(TransactionView::for_holder).collect(),
    }))
}

/// The account's credit grants, newest first, with what is left of each
/// and when it expires.
#[utoipa::path(get, path = "/v1/accounts/{id}/credit-grants", tag = "account holders",
    security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = CreditGrants)))]
pub async fn credit_grants(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    let lines = grant_lines(&state, account_id)
        .await?
        .ok_or_else(|| crate::routes::admin::no_such_account(account_id))?;
    Ok(HttpResponse::Ok().json(CreditGrants {
        credit_grants: lines.iter().map(CreditGrantView::from).collect(),
    }))
}

/// One of the account's payments, as its holder sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    /// The order the payment paid for.
    id: i64,
    order_type: OrderType,
    /// What was paid.
    amount_micros: i64,
    /// What of it was refunded (refunds that stand).
    amount_refunded_micros: i64,
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "sms_credit_actors::clock::rfc3339::serialize")]
    completed_at: i64,
    /// Stripe's receipt of the payment; `null` until Stripe has given it
    /// (asked again when the payments are next listed).
    receipt_url: Option<String>,
}

/// The account's payments.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Payments {
    payments: Vec<PaymentView>,
}

/// The account's payments, newest first, each with Stripe's receipt link
/// once Stripe has given it (a few are asked of Stripe per listing, the
/// newest first, and kept).
#[utoipa::path(get, path = "/v1/accounts/{id}/payments", tag = "account holders",
    security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 200, body = Payments)))]
pub async fn payments(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    let gateway = state
        .billing
        .as_ref()
        .map(|billing| billing.gateway.as_ref());
    let found =
        receipts::payments_of(&state.store, gateway, account_id, state.clock.now_ms()).await?;
    let payments = found
        .into_iter()
        .map(|order| {
            let completed_at = order.completed_at_ms.ok_or_else(|| {
                ApiError::from(sms_credit_actors::StoreError::Database(format!(
                    "order {} is paid but has no completion time",
                    order.id
                )))
            })?;
            Ok(PaymentView {
                id: order.id,
                order_type: order.order_type,
                amount_micros: order.amount.micros(),
                amount_refunded_micros: order.amount_refunded.micros(),
                completed_at,
                receipt_url: order.receipt_url,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(HttpResponse::Ok().json(Payments { payments }))
}

/// A single-use ticket (valid 30 s) to open the account's balance feed
/// from a browser without putting the token in the URL.
#[utoipa::path(post, path = "/v1/accounts/{id}/feed-tickets", tag = "account holders",
    security(("accountToken" = [])),
    params(("id" = i64, Path, description = "The account")),
    responses((status = 201, body = FeedTicket)))]
pub async fn feed_ticket(
    holder: AccountHolder,
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let account_id = own_account(&holder, path.into_inner())?;
    let ticket = feed_tickets::issue(
        &state.store,
        FeedScope::Account(account_id),
        Some(holder.1.clone()),
        state.clock.now_ms(),
    )
    .await?;
    Ok(HttpResponse::Created().json(FeedTicket::new(&ticket)))
}

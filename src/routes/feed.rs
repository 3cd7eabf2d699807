//! `GET /v1/accounts/{id}/feed` and `GET /v1/admin/feed`: the websocket
//! balance feeds. The caller proves who it is by a ticket (`?ticket=`, from
//! a `POST …/feed-tickets`), by an account token offered as a websocket
//! subprotocol next to `sms-credit-feed` (browsers cannot set headers), or
//! by an `Authorization: Bearer` header; never by a long-lived token in the URL.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::{access_tokens, feed_tickets, AccountId};

use crate::auth::{bearer_token, before_judging, constant_time_eq, judged_wrong, Admin};
use crate::error::ApiError;
use crate::feed::{self, FeedScope, FeedStart};
use crate::state::AppState;

/// The subprotocol the server answers with.
pub const PROTOCOL: &str = "sms-credit-feed";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Replay the changes after this ledger position, then go live.
    since: Option<i64>,
    /// A single-use feed ticket (instead of a token).
    ticket: Option<String>,
}

/// An account token offered as a subprotocol.
fn protocol_token(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|item| item.starts_with("sct_"))
        .map(str::to_string)
}

/// Who is opening the feed, and the hash of the account token that lets
/// them (`None` for the admin): a ticket (redeemed in the store, whichever
/// instance sold it) works only while the token it was bought with is live.
/// A wrong ticket or token counts against the address like any other
/// (`auth::judged_wrong`).
async fn caller(
    state: &AppState,
    request: &HttpRequest,
    ticket: Option<&str>,
) -> Result<(FeedScope, Option<String>), ApiError> {
    if let Some(ticket) = ticket {
        before_judging(state, request)?;
        let redeemed = feed_tickets::redeem(&state.store, ticket, state.clock.now_ms()).await?;
        let Some(redeemed) = redeemed else {
            return Err(judged_wrong(state, request, ApiError::Unauthorized));
        };
        return Ok((redeemed.scope, redeemed.token_hash));
    }
    let presented = protocol_token(request).or_else(|| bearer_token(request).map(str::to_string));
    // No credential at all is no guess.
    let presented = presented.ok_or(ApiError::Unauthorized)?;
    before_judging(state, request)?;
    if let Some(admin_token) = &state.settings.access.admin_token {
        if constant_time_eq(presented.as_bytes(), admin_token.expose().as_bytes()) {
            return Ok((FeedScope::Admin, None));
        }
    }
    let live = access_tokens::account_of(&state.store, &presented, state.clock.now_ms()).await?;
    let Some(live) = live else {
        return Err(judged_wrong(state, request, ApiError::Unauthorized));
    };
    Ok((
        FeedScope::Account(live.account_id),
        Some(access_tokens::hash(&presented)),
    ))
}

fn start_session(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    scope: FeedScope,
    token_hash: Option<String>,
    since: Option<i64>,
) -> Result<HttpResponse, ApiError> {
    let (response, session, incoming) =
        actix_ws::handle_with_protocols(request, payload, &[PROTOCOL]).map_err(|error| {
            ApiError::invalid(
                "not_a_websocket",
                format!("the feed is a websocket: {error}"),
            )
        })?;
    let slot = match scope {
        FeedScope::Account(account_id) => Some(
            state
                .feed_slots
                .take(account_id, state.settings.feed.max_per_account)
                .ok_or(ApiError::TooManyFeeds(state.settings.feed.max_per_account))?,
        ),
        FeedScope::Admin => None,
    };
    let subscription = feed::subscribe(&state.store, scope, state.settings.feed.queue);
    let start = FeedStart {
        scope,
        token_hash,
        slot,
        since,
        store: state.store.clone(),
        clock: state.clock.clone(),
        heartbeat: state.settings.feed.heartbeat,
        queue: state.settings.feed.queue,
        stopping: state.stopping.clone(),
    };
    actix_rt::spawn(feed::run(start, subscription, session, incoming));
    Ok(response)
}

/// The account's balance as a websocket feed: the snapshot, then every
/// committed change in `seq` order (`?since=N` replays what came after N
/// first). Authenticate with the account token as a subprotocol next to
/// `sms-credit-feed`, a ticket, or a bearer header.
#[utoipa::path(get, path = "/v1/accounts/{id}/feed", tag = "account holders",
    security(("accountToken" = []), ("feedTicket" = []), ("adminToken" = [])),
    params(("id" = i64, Path, description = "The account"), FeedQuery),
    responses((status = 101, description = "Switching to the websocket protocol `sms-credit-feed`")))]
pub async fn account_feed(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    path: web::Path<i64>,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = AccountId(path.into_inner());
    let query = query.into_inner();
    let (scope, token_hash) = caller(&state, &request, query.ticket.as_deref()).await?;
    let allowed = match scope {
        FeedScope::Admin => true,
        FeedScope::Account(own) => own == account_id,
    };
    let exists = state.store.accounts().get(account_id).await?.is_some();
    if !allowed || !exists {
        return Err(ApiError::NotFound(format!(
            "account {account_id} does not exist"
        )));
    }
    start_session(
        &state,
        &request,
        payload,
        FeedScope::Account(account_id),
        token_hash,
        query.since,
    )
}

/// Every account's changes as they commit (live only), for the admin.
#[utoipa::path(get, path = "/v1/admin/feed", tag = "admin",
    security(("adminToken" = []), ("feedTicket" = [])),
    params(FeedQuery),
    responses((status = 101, description = "Switching to the websocket protocol `sms-credit-feed`")))]
pub async fn admin_feed(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if query.since.is_some() {
        return Err(ApiError::invalid(
            "invalid_query",
            "the admin feed is live only; replay one account with its own feed",
        ));
    }
    match caller(&state, &request, query.ticket.as_deref()).await? {
        (FeedScope::Admin, _) => {
            start_session(&state, &request, payload, FeedScope::Admin, None, None)
        }
        // An account's credential is the wrong one for this door.
        (FeedScope::Account(_), _) => Err(judged_wrong(&state, &request, ApiError::Unauthorized)),
    }
}

/// A single-use ticket (valid 30 s) to open the admin feed from a browser.
#[utoipa::path(post, path = "/v1/admin/feed-tickets", tag = "admin", security(("adminToken" = [])),
    responses((status = 201, body = crate::routes::account::FeedTicket)))]
pub async fn admin_ticket(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ticket =
        feed_tickets::issue(&state.store, FeedScope::Admin, None, state.clock.now_ms()).await?;
    Ok(HttpResponse::Created().json(crate::routes::account::FeedTicket::new(&ticket)))
}

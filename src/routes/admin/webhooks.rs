//! `/v1/admin/webhook-endpoints`: the host application's endpoints. Add
//! (the signing secret is shown this once), list, show, change, remove,
//! rotate the secret (the old one signs beside the new for 24 h), read the
//! tries, replay events since a moment, and send a test event.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use sms_credit_actors::clock::parse_rfc3339_ms;
use sms_credit_actors::webhooks::manage::{self, Change};
use sms_credit_actors::webhooks::{AttemptRecord, Endpoint, EventType, SigningSecret};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// A new endpoint.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpointRequest {
    /// `https://` and a public address (unless private addresses are
    /// allowed, for development).
    #[schema(examples("https://forecasts.example.com/hooks/sms-credit"))]
    url: Option<String>,
    /// Event types, or `["*"]` (the default) for every one.
    #[schema(schema_with = event_types, examples(json!(["balance.low", "payment.disputed"])))]
    events: Option<Vec<String>>,
    description: Option<String>,
}

/// The event types an endpoint may take: the code's own list, and `*`.
fn event_types() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let names = EventType::ALL.iter().map(|kind| kind.as_str()).chain(["*"]);
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names)),
        )
        .build()
}

/// A change to an endpoint; what is left out stays.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    url: Option<String>,
    #[schema(schema_with = event_types)]
    events: Option<Vec<String>>,
    description: Option<String>,
    /// Enabling also forgets the failures that disabled it, and sends the
    /// events made from then on; disabling ends every delivery not yet
    /// made (its deliveries list says so).
    enabled: Option<bool>,
}

/// An endpoint with its signing secret: answered only when the secret is
/// made (creation, rotation).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    endpoint: Endpoint,
    /// `whsec_…`: keep it; it is not shown again.
    secret: String,
    /// What the operator should know of it (`webhooks add` on the command
    /// line: a URL only servers with `webhooks_allow_private` deliver to).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

impl EndpointWithSecret {
    /// The API's answer, and the command line's `--json`.
    pub fn new(
        endpoint: Endpoint,
        secret: &SigningSecret,
        warnings: Vec<String>,
    ) -> EndpointWithSecret {
        EndpointWithSecret {
            endpoint,
            secret: secret.expose().to_string(),
            warnings,
        }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    endpoints: Vec<Endpoint>,
}

impl EndpointList {
    pub fn new(endpoints: Vec<Endpoint>) -> EndpointList {
        EndpointList { endpoints }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    endpoint_id: String,
    /// The latest first.
    attempts: Vec<AttemptRecord>,
}

impl AttemptList {
    pub fn new(endpoint_id: String, attempts: Vec<AttemptRecord>) -> AttemptList {
        AttemptList {
            endpoint_id,
            attempts,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct AttemptQuery {
    /// How many (1–500, default 100).
    limit: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// RFC 3339: events created at or after it are sent again.
    #[schema(examples("2026-12-01T00:00:00Z"))]
    since: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    endpoint_id: String,
    /// Events queued again, with their first ids.
    replayed: usize,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Removed {
    id: String,
    removed: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TestSent {
    endpoint_id: String,
    event_id: String,
}

/// Adds an endpoint; answers it with its signing secret (shown once).
#[utoipa::path(post, path = "/v1/admin/webhook-endpoints", tag = "admin", security(("adminToken" = [])),
    request_body = NewEndpointRequest,
    responses((status = 201, body = EndpointWithSecret)))]
pub async fn create(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<NewEndpointRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    // A missing URL is an empty one, which `add` refuses as required,
    // naming the field.
    let (endpoint, secret) = manage::add(
        &state.store,
        body.url.as_deref().unwrap_or_default(),
        body.events.as_deref(),
        body.description,
        state.settings.webhooks.allow_private,
        state.clock.now_ms(),
    )
    .await?;
    Ok(HttpResponse::Created().json(EndpointWithSecret::new(
        endpoint.flagged(state.settings.webhooks.allow_private),
        &secret,
        Vec::new(),
    )))
}

/// Every endpoint (never a secret).
#[utoipa::path(get, path = "/v1/admin/webhook-endpoints", tag = "admin", security(("adminToken" = [])),
    responses((status = 200, body = EndpointList)))]
pub async fn list(_admin: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let allow_private = state.settings.webhooks.allow_private;
    let endpoints = state.store.webhooks().endpoints().await?;
    // Each flagged when this server will not deliver to it (added by a
    // process whose setting allows what this one's does not).
    let endpoints = endpoints
        .into_iter()
        .map(|endpoint| endpoint.flagged(allow_private))
        .collect();
    Ok(HttpResponse::Ok().json(EndpointList::new(endpoints)))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/admin/webhook-endpoints/{id}", tag = "admin", security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses((status = 200, body = Endpoint)))]
pub async fn show(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = manage::get(&state.store, &path).await?;
    Ok(HttpResponse::Ok().json(endpoint.flagged(state.settings.webhooks.allow_private)))
}

/// Changes an endpoint's URL, events, description or whether it is enabled.
#[utoipa::path(patch, path = "/v1/admin/webhook-endpoints/{id}", tag = "admin", security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    request_body = EndpointPatch,
    responses((status = 200, body = Endpoint)))]
pub async fn update(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<EndpointPatch>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let endpoint = manage::change(
        &state.store,
        &path,
        Change {
            url: body.url,
            events: body.events,
            description: body.description,
            enabled: body.enabled,
        },
        state.settings.webhooks.allow_private,
        state.clock.now_ms(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(endpoint.flagged(state.settings.webhooks.allow_private)))
}

/// Removes an endpoint: nothing more goes to it, and the deliveries it had
/// not taken yet end.
#[utoipa::path(delete, path = "/v1/admin/webhook-endpoints/{id}", tag = "admin", security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses((status = 200, body = Removed)))]
pub async fn remove(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    manage::remove(&state.store, &path, state.clock.now_ms()).await?;
    Ok(HttpResponse::Ok().json(Removed {
        id: path.into_inner(),
        removed: true,
    }))
}

/// A new signing secret (shown once); the old one keeps signing beside it
/// for 24 hours, so receivers can switch without losing an event.
#[utoipa::path(post, path = "/v1/admin/webhook-endpoints/{id}/rotate-secret", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses((status = 200, body = EndpointWithSecret)))]
pub async fn rotate_secret(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (endpoint, secret) =
        manage::rotate_secret(&state.store, &path, state.clock.now_ms()).await?;
    Ok(HttpResponse::Ok().json(EndpointWithSecret::new(
        endpoint.flagged(state.settings.webhooks.allow_private),
        &secret,
        Vec::new(),
    )))
}

/// The endpoint's tries: event, status code, error and time taken; a
/// delivery ended unsent (the endpoint was disabled) shows as one entry
/// without a status, saying so.
#[utoipa::path(get, path = "/v1/admin/webhook-endpoints/{id}/deliveries", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint"), AttemptQuery),
    responses((status = 200, body = AttemptList)))]
pub async fn deliveries(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<AttemptQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("invalid_limit", "limit: from 1 to 500"));
    }
    let endpoint = manage::get(&state.store, &path).await?;
    let attempts = state
        .store
        .webhooks()
        .attempts_of(endpoint.id.clone(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(AttemptList::new(endpoint.id, attempts)))
}

/// Sends again, with the same ids, the events created since a moment that
/// the endpoint takes.
#[utoipa::path(post, path = "/v1/admin/webhook-endpoints/{id}/replay", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    request_body = ReplayRequest,
    responses((status = 202, body = Replayed),
        (status = 409, description = "`endpoint_disabled`: enable the endpoint first")))]
pub async fn replay(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let since = body
        .since
        .as_deref()
        .ok_or_else(|| ApiError::invalid("invalid_since", "since: is required (RFC 3339)"))?;
    let since_ms = parse_rfc3339_ms(since).ok_or_else(|| {
        ApiError::invalid(
            "invalid_since",
            "since: is not an RFC 3339 timestamp (2026-12-01T00:00:00Z)",
        )
    })?;
    let replayed = manage::replay(&state.store, &path, since_ms, state.clock.now_ms()).await?;
    Ok(HttpResponse::Accepted().json(Replayed {
        endpoint_id: path.into_inner(),
        replayed,
    }))
}

/// Sends a `webhook_endpoint.test` event to this endpoint only.
#[utoipa::path(post, path = "/v1/admin/webhook-endpoints/{id}/test", tag = "admin",
    security(("adminToken" = [])),
    params(("id" = String, Path, description = "The endpoint")),
    responses((status = 202, body = TestSent),
        (status = 409, description = "`endpoint_disabled`: enable the endpoint first")))]
pub async fn test(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let event_id = manage::send_test(&state.store, &path, state.clock.now_ms()).await?;
    Ok(HttpResponse::Accepted().json(TestSent {
        endpoint_id: path.into_inner(),
        event_id,
    }))
}

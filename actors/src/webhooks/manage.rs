//! What the admin does with endpoints (the API and the CLI share it):
//! add, change, remove, rotate the secret, send a test event, replay.
//! Every input is checked here, and a refusal names its field.

use serde_json::json;

use super::endpoints::{check_url, endpoint_id, UrlRefused};
use super::events::data;
use super::{
    Endpoint, EndpointChange, EventFilter, EventType, ForEnabled, NewEndpoint, NewEvent,
    SigningSecret,
};
use crate::store::{Store, StoreError};

/// How long the secret before a rotation keeps signing beside the new one.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field is missing or wrong: `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("webhook endpoint {0} does not exist")]
    NotFound(String),
    /// Only an enabled endpoint takes a test or a replay.
    #[error("webhook endpoint {0} is disabled: enable it first")]
    Disabled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid {
        field,
        message: message.into(),
    }
}

fn checked_url(url: &str, allow_private: bool) -> Result<String, WebhookError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(invalid("url", "is required"));
    }
    check_url(url, allow_private).map_err(|refused| {
        let hint = match refused {
            UrlRefused::Scheme | UrlRefused::Private if !allow_private => {
                " (http:// and private addresses are for local development only: the \
                 setting webhooks_allow_private allows them, where the endpoint is added and \
                 in every server that delivers)"
            }
            _ => "",
        };
        invalid("url", format!("{refused}{hint}"))
    })?;
    Ok(url.to_string())
}

fn checked_events(events: Option<&[String]>) -> Result<EventFilter, WebhookError> {
    match events {
        None => Ok(EventFilter::All),
        Some(names) => EventFilter::parse(names).map_err(|message| invalid("events", message)),
    }
}

fn checked_description(description: Option<String>) -> Result<Option<String>, WebhookError> {
    match description {
        Some(text) if text.chars().count() > 500 => {
            Err(invalid("description", "is longer than 500 characters"))
        }
        other => Ok(other),
    }
}

/// A new endpoint and its secret (the one time it is shown).
pub async fn add(
    store: &Store,
    url: &str,
    events: Option<&[String]>,
    description: Option<String>,
    allow_private: bool,
    now_ms: i64,
) -> Result<(Endpoint, SigningSecret), WebhookError> {
    let url = checked_url(url, allow_private)?;
    let filter = checked_events(events)?;
    // The description is the operator's optional note: none is stored as
    // an empty one, which is what the API shows for "no description".
    let description = checked_description(description)?.unwrap_or_default();
    let secret = SigningSecret::generate()?;
    let endpoint = store
        .webhooks()
        .create_endpoint(NewEndpoint {
            id: endpoint_id()?,
            url,
            filter,
            description,
            enabled: true,
            secret: secret.clone(),
            created_at_ms: now_ms,
        })
        .await?;
    tracing::info!(endpoint = %endpoint.id, url = %endpoint.url, "webhook endpoint added");
    Ok((endpoint, secret))
}

/// What may change of an endpoint, unchecked.
#[derive(Debug, Default)]
pub struct Change {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// Changes an endpoint; disabling it ends the deliveries it had not taken
/// yet, at `now_ms`.
pub async fn change(
    store: &Store,
    id: &str,
    change: Change,
    allow_private: bool,
    now_ms: i64,
) -> Result<Endpoint, WebhookError> {
    let checked = EndpointChange {
        url: change
            .url
            .as_deref()
            .map(|url| checked_url(url, allow_private))
            .transpose()?,
        filter: change
            .events
            .as_deref()
            .map(|names| checked_events(Some(names)))
            .transpose()?,
        description: checked_description(change.description)?,
        enabled: change.enabled,
    };
    let disabling = checked.enabled == Some(false);
    let endpoint = store
        .webhooks()
        .update_endpoint(id.to_string(), checked, now_ms)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
    if disabling {
        tracing::info!(endpoint = %id, "webhook endpoint disabled by the admin; its pending deliveries ended");
    }
    Ok(endpoint)
}

/// Removes an endpoint, ending the deliveries it had not taken yet.
pub async fn remove(store: &Store, id: &str, now_ms: i64) -> Result<(), WebhookError> {
    if store
        .webhooks()
        .remove_endpoint(id.to_string(), now_ms)
        .await?
    {
        tracing::info!(endpoint = %id, "webhook endpoint removed");
        Ok(())
    } else {
        Err(WebhookError::NotFound(id.to_string()))
    }
}

pub async fn get(store: &Store, id: &str) -> Result<Endpoint, WebhookError> {
    store
        .webhooks()
        .endpoint(id.to_string())
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_string()))
}

/// A new secret (shown this once); the old one signs beside it for
/// [`ROTATION_OVERLAP_MS`].
pub async fn rotate_secret(
    store: &Store,
    id: &str,
    now_ms: i64,
) -> Result<(Endpoint, SigningSecret), WebhookError> {
    let secret = SigningSecret::generate()?;
    let endpoint = store
        .webhooks()
        .rotate_secret(id.to_string(), secret.clone(), now_ms + ROTATION_OVERLAP_MS)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
    tracing::info!(endpoint = %id, "webhook secret rotated");
    Ok((endpoint, secret))
}

/// Sends a `webhook_endpoint.test` event to one endpoint; answers its id.
pub async fn send_test(store: &Store, id: &str, now_ms: i64) -> Result<String, WebhookError> {
    let event = NewEvent::new(
        EventType::EndpointTest,
        None,
        format!("webhook_endpoint.test:{}", super::events::event_id()?),
        data([("endpoint_id", json!(id))]),
        now_ms,
    )?;
    let event_id = event.id.clone();
    match store
        .webhooks()
        .record_test_event(id.to_string(), event)
        .await?
    {
        ForEnabled::Done(()) => {}
        ForEnabled::Disabled => return Err(WebhookError::Disabled(id.to_string())),
        ForEnabled::NotFound => return Err(WebhookError::NotFound(id.to_string())),
    }
    store.webhooks_ready().notify_one();
    Ok(event_id)
}

/// Delivers again, with their ids, the events since `since_ms` that the
/// endpoint takes (still kept: see the retention); answers how many. An
/// endpoint must be enabled to take a replay (or a test event).
pub async fn replay(
    store: &Store,
    id: &str,
    since_ms: i64,
    now_ms: i64,
) -> Result<usize, WebhookError> {
    if since_ms > now_ms {
        return Err(invalid("since", "is in the future"));
    }
    let made = match store
        .webhooks()
        .replay(id.to_string(), since_ms, now_ms)
        .await?
    {
        ForEnabled::Done(made) => made,
        ForEnabled::Disabled => return Err(WebhookError::Disabled(id.to_string())),
        ForEnabled::NotFound => return Err(WebhookError::NotFound(id.to_string())),
    };
    store.webhooks_ready().notify_one();
    Ok(made)
}

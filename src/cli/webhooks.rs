//! `sms-credit webhooks`: the host application's endpoints, as the admin
//! API manages them: add (the secret is printed once), list, show, the
//! tries, replay, rotate the secret, enable, disable, remove, test.

use clap::Subcommand;
use serde_json::json;
use sms_credit_actors::clock::{format_rfc3339_ms, parse_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::webhooks::manage::{self, Change};
use sms_credit_actors::webhooks::{AttemptRecord, Endpoint};
use sms_credit_actors::Store;

use super::output::{print_json, with_store_if};
use crate::config::Settings;
use crate::routes::admin::webhooks::{AttemptList, EndpointList, EndpointWithSecret};
use sms_credit_actors::adapters::IfMissing;

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Add an endpoint (https:// and a public address); prints its signing secret once.
    Add {
        /// Where deliveries are posted: https:// to a public address.
        url: String,
        /// Event types, comma-separated (every one when left out).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// A note for the operator (up to 500 characters).
        #[arg(long)]
        description: Option<String>,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// List the endpoints.
    List {
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint.
    Show {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// The endpoint's latest tries: event, status, error, time taken.
    Deliveries {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// How many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Send again, with their ids, the events created since a moment.
    Replay {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// RFC 3339, for example 2026-12-01T00:00:00Z.
        #[arg(long)]
        since: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// A new signing secret (printed once); the old one signs beside it for 24 h.
    RotateSecret {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Deliver to the endpoint again (its failures are forgotten).
    Enable {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Stop delivering to the endpoint (events still wait for it).
    Disable {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Remove the endpoint (its history stays).
    Remove {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
    /// Send a webhook_endpoint.test event to the endpoint.
    Test {
        /// The endpoint (we_…, as `webhooks list` shows it).
        id: String,
        /// Print JSON (for programs) instead of a summary for people.
        #[arg(long)]
        json: bool,
    },
}

fn when(at_ms: Option<i64>) -> String {
    at_ms.map_or("-".to_string(), format_rfc3339_ms)
}

fn print_endpoint(endpoint: &Endpoint) {
    let state = match (endpoint.enabled, &endpoint.disabled_reason) {
        (true, _) => "enabled".to_string(),
        (false, Some(reason)) => format!("disabled: {reason}"),
        (false, None) => "disabled".to_string(),
    };
    say!("{}  {}", endpoint.id, endpoint.url);
    say!("  events:  {}", endpoint.events.join(", "));
    say!("  state:   {state}");
    if let Some(since) = endpoint.failing_since_ms {
        say!("  failing since {}", format_rfc3339_ms(since));
    }
    if !endpoint.description.is_empty() {
        say!("  about:   {}", endpoint.description);
    }
    if let Some(undeliverable) = &endpoint.undeliverable {
        say!("  warning: {undeliverable}");
    }
}

fn print_attempt(attempt: &AttemptRecord) {
    say!(
        "{}  {:<28} {:<26} {:>4}  {:>6} ms  {}",
        format_rfc3339_ms(attempt.at_ms),
        attempt.event_id,
        attempt.event_type,
        attempt
            .status_code
            .map_or("-".to_string(), |code| code.to_string()),
        attempt.duration_ms,
        attempt.error.as_deref().unwrap_or("delivered"),
    );
}

impl WebhooksCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let allow_private = settings.webhooks.allow_private;
        let now_ms = SystemClock.now_ms();
        // Adding an endpoint creates something, so it may make the database.
        let if_missing = if matches!(self, WebhooksCommand::Add { .. }) {
            IfMissing::Create
        } else {
            IfMissing::Refuse
        };
        with_store_if(settings, if_missing, |store| async move {
            let store = &store;
            match self {
                WebhooksCommand::Add {
                    url,
                    events,
                    description,
                    json,
                } => {
                    let endpoint = NewEndpoint {
                        url,
                        events,
                        description,
                        allow_private,
                    };
                    add(store, endpoint, now_ms, json).await
                }
                WebhooksCommand::List { json } => list(store, allow_private, json).await,
                WebhooksCommand::Show { id, json } => show(store, &id, allow_private, json).await,
                WebhooksCommand::Deliveries { id, limit, json } => {
                    deliveries(store, &id, limit, json).await
                }
                WebhooksCommand::Replay { id, since, json } => {
                    replay(store, &id, &since, now_ms, json).await
                }
                WebhooksCommand::RotateSecret { id, json } => {
                    rotate_secret(store, &id, now_ms, json).await
                }
                WebhooksCommand::Enable { id, json } => {
                    set_enabled(store, &id, true, allow_private, now_ms, json).await
                }
                WebhooksCommand::Disable { id, json } => {
                    set_enabled(store, &id, false, allow_private, now_ms, json).await
                }
                WebhooksCommand::Remove { id, json } => remove(store, &id, now_ms, json).await,
                WebhooksCommand::Test { id, json } => send_test(store, &id, now_ms, json).await,
            }
        })
    }
}

/// The refusals of `manage`, as the command line prints them: the
/// setting a refusal names, with the variable an operator sets it by.
fn refused(error: manage::WebhookError) -> String {
    error.to_string().replace(
        "setting webhooks_allow_private",
        "setting webhooks_allow_private (SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE=true)",
    )
}

/// Said when an endpoint is added that only a server with
/// `webhooks_allow_private` delivers to: the setting is each process's
/// own, and a server without it refuses every delivery (and logs each).
fn private_warning(endpoint: &Endpoint, allow_private: bool) -> Option<String> {
    let needs_setting = endpoint.clone().flagged(false).undeliverable.is_some();
    (allow_private && needs_setting).then(|| {
        "only servers whose setting webhooks_allow_private (SMS_CREDIT_WEBHOOKS_ALLOW_PRIVATE) \
         is on deliver to this URL; one without it refuses every delivery, logs each, and \
         flags the endpoint on the console"
            .to_string()
    })
}

/// What `webhooks add` was given.
struct NewEndpoint {
    url: String,
    events: Option<Vec<String>>,
    description: Option<String>,
    /// `http://` and private addresses allowed (the server's setting).
    allow_private: bool,
}

async fn add(
    store: &Store,
    endpoint: NewEndpoint,
    now_ms: i64,
    as_json: bool,
) -> Result<(), String> {
    let allow_private = endpoint.allow_private;
    let (endpoint, secret) = manage::add(
        store,
        &endpoint.url,
        endpoint.events.as_deref(),
        endpoint.description,
        allow_private,
        now_ms,
    )
    .await
    .map_err(refused)?;
    let warning = private_warning(&endpoint, allow_private);
    if as_json {
        let warnings: Vec<String> = warning.into_iter().collect();
        return print_json(&EndpointWithSecret::new(endpoint, &secret, warnings));
    }
    print_endpoint(&endpoint);
    say!("  secret:  {}  (shown this once: keep it)", secret.expose());
    if let Some(warning) = warning {
        say!("warning: {warning}");
    }
    Ok(())
}

async fn list(store: &Store, allow_private: bool, as_json: bool) -> Result<(), String> {
    let endpoints: Vec<Endpoint> = store
        .webhooks()
        .endpoints()
        .await
        .map_err(|error| error.to_string())?
        .into_iter()
        .map(|endpoint| endpoint.flagged(allow_private))
        .collect();
    if as_json {
        return print_json(&EndpointList::new(endpoints));
    }
    if endpoints.is_empty() {
        say!("no webhook endpoints");
    }
    endpoints.iter().for_each(print_endpoint);
    Ok(())
}

async fn show(store: &Store, id: &str, allow_private: bool, as_json: bool) -> Result<(), String> {
    let endpoint = manage::get(store, id)
        .await
        .map_err(refused)?
        .flagged(allow_private);
    if as_json {
        return print_json(&endpoint);
    }
    print_endpoint(&endpoint);
    Ok(())
}

async fn deliveries(store: &Store, id: &str, limit: i64, as_json: bool) -> Result<(), String> {
    if !(1..=500).contains(&limit) {
        return Err("--limit is from 1 to 500".into());
    }
    let endpoint = manage::get(store, id).await.map_err(refused)?;
    let attempts = store
        .webhooks()
        .attempts_of(endpoint.id.clone(), limit)
        .await
        .map_err(|error| error.to_string())?;
    if as_json {
        return print_json(&AttemptList::new(endpoint.id, attempts));
    }
    if attempts.is_empty() {
        say!("no tries yet");
    }
    attempts.iter().for_each(print_attempt);
    Ok(())
}

async fn replay(
    store: &Store,
    id: &str,
    since: &str,
    now_ms: i64,
    as_json: bool,
) -> Result<(), String> {
    let since_ms = parse_rfc3339_ms(since).ok_or_else(|| {
        format!("--since {since:?} is not an RFC 3339 time (2026-12-01T00:00:00Z)")
    })?;
    let replayed = manage::replay(store, id, since_ms, now_ms)
        .await
        .map_err(refused)?;
    if as_json {
        return print_json(&json!({"endpoint_id": id, "replayed": replayed}));
    }
    say!(
        "{replayed} events since {} queued again for {id}",
        when(Some(since_ms))
    );
    Ok(())
}

async fn rotate_secret(store: &Store, id: &str, now_ms: i64, as_json: bool) -> Result<(), String> {
    let (endpoint, secret) = manage::rotate_secret(store, id, now_ms)
        .await
        .map_err(refused)?;
    if as_json {
        return print_json(&EndpointWithSecret::new(endpoint, &secret, Vec::new()));
    }
    say!(
        "new secret for {id}: {}  (shown this once: keep it)",
        secret.expose()
    );
    say!(
        "the old one signs beside it until {}",
        when(endpoint.previous_secret_until_ms)
    );
    Ok(())
}

async fn remove(store: &Store, id: &str, now_ms: i64, as_json: bool) -> Result<(), String> {
    manage::remove(store, id, now_ms).await.map_err(refused)?;
    if as_json {
        return print_json(&json!({"id": id, "removed": true}));
    }
    say!("removed {id}");
    Ok(())
}

async fn send_test(store: &Store, id: &str, now_ms: i64, as_json: bool) -> Result<(), String> {
    let event_id = manage::send_test(store, id, now_ms)
        .await
        .map_err(refused)?;
    if as_json {
        return print_json(&json!({"endpoint_id": id, "event_id": event_id}));
    }
    say!("test event {event_id} queued for {id}");
    Ok(())
}

async fn set_enabled(
    store: &Store,
    id: &str,
    enabled: bool,
    allow_private: bool,
    now_ms: i64,
    as_json: bool,
) -> Result<(), String> {
    let change = Change {
        enabled: Some(enabled),
        ..Change::default()
    };
    let endpoint = manage::change(store, id, change, allow_private, now_ms)
        .await
        .map_err(|error| error.to_string())?;
    if as_json {
        return print_json(&endpoint);
    }
    print_endpoint(&endpoint);
    Ok(())
}

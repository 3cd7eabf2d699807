//! The delivery worker: claims due deliveries (each by one instance, under
//! a lease), tries each in a task of its own, and records what came of it.
//! A slow or dead endpoint holds at most [`PER_ENDPOINT`] tries at a time
//! (across instances), so it never delays another's deliveries, and no
//! request path waits for any of this. A commit that made deliveries wakes
//! it at once; otherwise it looks every [`POLL`] (other instances' events,
//! retries that are due, leases that ran out when an instance died
//! mid-try). A try that ends after its claim was taken over is recorded as
//! a try and decides nothing (logged).
//!
//! Beside it, the upkeep: every [`UPKEEP_EVERY_MS`] of the clock it ends
//! deliveries that wait for an endpoint disabled or removed meanwhile, and
//! prunes what is older than the retention, in batches of [`BATCH`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sms_credit_actors::clock::Clock;
use sms_credit_actors::webhooks::delivery::{
    decide, Attempted, DeliveryOutcome, TryRecorded, TryResult,
};
use sms_credit_actors::webhooks::events::data;
use sms_credit_actors::webhooks::{ClaimedDelivery, EventType, NewEvent};
use sms_credit_actors::Store;
use tokio::sync::Notify;

use super::sender::WebhookSender;

/// How often due deliveries are looked for when nothing wakes the worker.
const POLL: Duration = Duration::from_secs(1);
/// Tries in flight on one instance.
const MAX_IN_FLIGHT: i64 = 1024;
/// Tries in flight to one endpoint (across instances).
pub const PER_ENDPOINT: i64 = 64;
/// How long a claimed delivery is this instance's: longer than a try.
const LEASE_MS: i64 = 15_000;
/// How often (by the clock) the upkeep runs.
pub const UPKEEP_EVERY_MS: i64 = 60_000;
/// Rows a statement of the upkeep ends or removes at most.
pub const BATCH: i64 = 1_000;
/// Batches one upkeep runs at most before it leaves the rest to the next:
/// it shares the store with requests (Postgres's readers, SQLite's writer),
/// so a long history is worked off a little each minute (10 000 rows a
/// minute, 14 million a day), never in one burst.
const MAX_BATCHES: usize = 10;
/// The pause between two batches, for the requests' statements.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Deliveries by outcome, for `/metrics`.
#[derive(Default)]
pub struct WebhookMetrics {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub endpoints_disabled: AtomicU64,
    /// Tries that ended after their claim was taken over: recorded, and
    /// nothing more.
    pub late: AtomicU64,
    /// Tries in flight on this instance.
    pub in_flight: AtomicI64,
}

/// Starts the worker, and the upkeep that prunes what is older than
/// `retention`, on the current actix runtime.
pub fn start_delivery_worker(
    store: Store,
    sender: Arc<WebhookSender>,
    clock: Arc<dyn Clock>,
    metrics: Arc<WebhookMetrics>,
    retention: Duration,
) {
    start_upkeep(
        store.clone(),
        Arc::clone(&clock),
        sms_credit_actors::clock::millis(retention),
    );
    actix_rt::spawn(async move {
        let slot_freed = Arc::new(Notify::new());
        loop {
            let free = MAX_IN_FLIGHT - metrics.in_flight.load(Ordering::Relaxed);
            if free > 0 {
                let now_ms = clock.now_ms();
                let claimed = store
                    .webhooks()
                    .claim_deliveries(
                        now_ms,
                        now_ms + LEASE_MS,
                        PER_ENDPOINT,
                        free,
                        store.instance_id().to_string(),
                    )
                    .await;
                match claimed {
                    Ok(deliveries) => {
                        for delivery in deliveries {
                            metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                            let (store, sender, clock, metrics, slot_freed) = (
                                store.clone(),
                                Arc::clone(&sender),
                                Arc::clone(&clock),
                                Arc::clone(&metrics),
                                Arc::clone(&slot_freed),
                            );
                            actix_rt::spawn(async move {
                                try_once(&store, &sender, &*clock, &metrics, delivery).await;
                                metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                                slot_freed.notify_one();
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not claim webhook deliveries"),
                }
            }
            let ready = store.webhooks_ready().notified();
            let freed = slot_freed.notified();
            let _ = actix_rt::time::timeout(POLL, async {
                tokio::select! {
                    () = ready => {}
                    () = freed => {}
                }
            })
            .await;
        }
    });
}

/// Tries one delivery and records it.
async fn try_once(
    store: &Store,
    sender: &WebhookSender,
    clock: &dyn Clock,
    metrics: &WebhookMetrics,
    delivery: ClaimedDelivery,
) {
    let started = Instant::now();
    let result = sender.send(&delivery, clock.now_ms()).await;
    let duration_ms = started.elapsed().as_millis() as i64;
    let now_ms = clock.now_ms();
    let decided = decide(&delivery, &result, now_ms);
    let endpoint = &delivery.endpoint;
    let disable = match decided.disable {
        Some(reason) => {
            let event = NewEvent::new(
                EventType::EndpointDisabled,
                None,
                format!("webhook_endpoint.disabled:{}:{now_ms}", endpoint.id),
                data([
                    ("endpoint_id", serde_json::json!(endpoint.id)),
                    ("url", serde_json::json!(endpoint.url)),
                    ("reason", serde_json::json!(reason)),
                ]),
                now_ms,
            );
            match event {
                Ok(event) => Some((reason, event)),
                Err(error) => {
                    tracing::warn!(%error, "could not make the endpoint's disabled event");
                    None
                }
            }
        }
        None => None,
    };
    let (status_code, error) = match result {
        TryResult::Answered(status) if (200..300).contains(&status) => (Some(status), None),
        TryResult::Answered(status) => (Some(status), Some(format!("answered {status}"))),
        TryResult::NoAnswer(reason) => (None, Some(reason)),
    };
    let outcome = decided.outcome.clone();
    let attempted = Attempted {
        delivery_id: delivery.id,
        claim: delivery.attempts,
        endpoint_id: endpoint.id.clone(),
        at_ms: now_ms,
        status_code,
        error,
        duration_ms,
        outcome: decided.outcome,
        disable,
    };
    let disabling = attempted.disable.as_ref().map(|(reason, _)| reason.clone());
    match store.webhooks().attempted(attempted).await {
        Ok(TryRecorded::Applied) => {
            match outcome {
                DeliveryOutcome::Delivered => metrics.delivered.fetch_add(1, Ordering::Relaxed),
                DeliveryOutcome::Retry { .. } => metrics.retried.fetch_add(1, Ordering::Relaxed),
                DeliveryOutcome::GaveUp => metrics.failed.fetch_add(1, Ordering::Relaxed),
            };
            if let Some(reason) = disabling {
                tracing::warn!(
                    endpoint = %endpoint.id,
                    url = %endpoint.url,
                    %reason,
                    "webhook endpoint disabled; its pending deliveries ended"
                );
                metrics.endpoints_disabled.fetch_add(1, Ordering::Relaxed);
                store.webhooks_ready().notify_one();
            }
        }
        Ok(TryRecorded::Late) => {
            // Its lease ran out and another claim took the delivery (or the
            // endpoint was disabled meanwhile): that claim decides.
            metrics.late.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoint = %endpoint.id,
                delivery = delivery.id,
                claim = delivery.attempts,
                ?outcome,
                "a webhook try ended after its claim was lost: recorded as a try, nothing more"
            );
        }
        // The lease runs out and the delivery is tried again: at least once.
        Err(error) => {
            tracing::warn!(%error, delivery = delivery.id, "could not record a webhook try")
        }
    }
}

/// Ends the deliveries of endpoints disabled or removed meanwhile, and
/// removes what is older than `retention_ms`: every [`UPKEEP_EVERY_MS`] of
/// the clock (looked at every [`POLL`]), in batches of [`BATCH`] rows,
/// at most [`MAX_BATCHES`] at a time. Every instance runs it; they skip
/// each other's rows.
fn start_upkeep(store: Store, clock: Arc<dyn Clock>, retention_ms: i64) {
    actix_rt::spawn(async move {
        let mut last = i64::MIN;
        loop {
            let now_ms = clock.now_ms();
            if now_ms.saturating_sub(last) >= UPKEEP_EVERY_MS {
                last = now_ms;
                upkeep(&store, now_ms, now_ms - retention_ms).await;
            }
            actix_rt::time::sleep(POLL).await;
        }
    });
}

/// One upkeep.
async fn upkeep(store: &Store, now_ms: i64, before_ms: i64) {
    for _ in 0..MAX_BATCHES {
        match store
            .webhooks()
            .end_deliveries_of_disabled(now_ms, BATCH)
            .await
        {
            Ok(0) => break,
            Ok(ended) => {
                tracing::info!(ended, "ended webhook deliveries of disabled endpoints");
                if (ended as i64) < BATCH {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not end the deliveries of disabled endpoints");
                break;
            }
        }
    }
    for _ in 0..MAX_BATCHES {
        match store.webhooks().prune(before_ms, BATCH).await {
            Ok(pruned) => {
                if pruned.deliveries + pruned.events > 0 {
                    tracing::debug!(
                        deliveries = pruned.deliveries,
                        events = pruned.events,
                        "pruned old webhook deliveries and events"
                    );
                }
                if (pruned.deliveries as i64) < BATCH && (pruned.events as i64) < BATCH {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not prune old webhook deliveries");
                break;
            }
        }
        // Others' statements go between the batches.
        actix_rt::time::sleep(BATCH_PAUSE).await;
    }
}

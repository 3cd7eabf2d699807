//! Webhook endpoints, the events outbox and deliveries in Postgres.
//! [`insert_events`] is what every write that causes an event calls inside
//! its own transaction. Claims skip rows another instance has locked, so
//! each delivery is tried by one instance at a time; they run in a
//! transaction of their own that locks each endpoint's row before its
//! tries in flight are counted and claimed, so the cap per endpoint holds
//! across instances. A try's outcome is written only where the delivery
//! is still under the try's claim.

use tokio_postgres::{GenericClient, Row};

use super::{boxed, PostgresStore};
use crate::store::{StoreError, StoreFuture, UnknownValue, WebhookStore};
use crate::webhooks::delivery::{Attempted, DeliveryOutcome, ENDED_DISABLED};
use crate::webhooks::{
    AttemptRecord, ClaimedDelivery, DeliveryStats, Endpoint, EndpointChange, EventFilter,
    ForEnabled, NewEndpoint, NewEvent, Pruned, SigningSecret, TryRecorded,
};

const ENDPOINT_COLUMNS: &str = "id, url, events, description, enabled, disabled_reason, secret,
     previous_secret, previous_secret_until, failing_since, created_at";

/// Commits events (each once per dedupe key) and one delivery per enabled
/// endpoint that takes it, in the caller's transaction. Answers whether
/// any delivery was made.
pub(super) async fn insert_events(
    client: &impl GenericClient,
    events: &[NewEvent],
) -> Result<bool, StoreError> {
    Ok(insert_event_rows(client, events.iter()).await?)
}

/// [`insert_events`] with the driver's error, for the writer's ledger path:
/// every event of a batch in one statement (none: no statement).
pub(super) async fn insert_event_rows<'e>(
    client: &impl GenericClient,
    events: impl Iterator<Item = &'e NewEvent>,
) -> Result<bool, tokio_postgres::Error> {
    let mut ids = Vec::new();
    let mut kinds = Vec::new();
    let mut accounts: Vec<Option<i64>> = Vec::new();
    let mut dedupe_keys = Vec::new();
    let mut payloads = Vec::new();
    let mut created = Vec::new();
    for event in events {
        ids.push(event.id.as_str());
        kinds.push(event.kind.as_str());
        accounts.push(event.account_id.map(|id| id.0));
        dedupe_keys.push(event.dedupe_key.as_str());
        payloads.push(event.payload());
        created.push(event.created_at_ms);
    }
    if ids.is_empty() {
        return Ok(false);
    }
    let deliveries = client
        .execute(
            "WITH inserted AS (
               INSERT INTO webhook_events (id, type, account_id, dedupe_key, payload, created_at)
               SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[])
               ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, type, created_at)
             INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at, created_at)
             SELECT e.id, inserted.id, 'pending', inserted.created_at, inserted.created_at
               FROM inserted JOIN webhook_endpoints e
                 ON e.enabled = 1 AND e.deleted = 0
                AND (e.events = '*' OR strpos(e.events, ',' || inserted.type || ',') > 0)",
            &[&ids, &kinds, &accounts, &dedupe_keys, &payloads, &created],
        )
        .await?;
    super::super::EVENTS_INSERTED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(deliveries > 0)
}

fn endpoint_from_row(row: &Row) -> Result<Endpoint, StoreError> {
    let id: String = row.try_get(0)?;
    let events: String = row.try_get(2)?;
    let filter = EventFilter::from_stored(&events).ok_or_else(|| {
        StoreError::UnknownValue(UnknownValue::new(
            "webhook_endpoints",
            &id,
            "events",
            events.clone(),
        ))
    })?;
    Ok(Endpoint {
        url: row.try_get(1)?,
        events: filter.names(),
        filter,
        description: row.try_get(3)?,
        enabled: row.try_get::<_, i64>(4)? == 1,
        disabled_reason: row.try_get(5)?,
        secret: SigningSecret::from_stored(row.try_get(6)?),
        previous_secret: row
            .try_get::<_, Option<String>>(7)?
            .map(SigningSecret::from_stored),
        previous_secret_until_ms: row.try_get(8)?,
        failing_since_ms: row.try_get(9)?,
        created_at_ms: row.try_get(10)?,
        undeliverable: None,
        id,
    })
}

async fn endpoint<C: GenericClient + Sync>(
    client: &C,
    id: &str,
) -> Result<Option<Endpoint>, StoreError> {
    client
        .query_opt(
            &format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND deleted = 0"
            ),
            &[&id],
        )
        .await?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()
}

/// Ends every delivery of the endpoint not yet made, at `now_ms`; with
/// `why`, each is listed among the endpoint's tries, saying so.
async fn end_deliveries(
    client: &impl GenericClient,
    endpoint_id: &str,
    now_ms: i64,
    why: Option<&str>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "WITH ended AS (
               UPDATE webhook_deliveries
                  SET state = 'failed', claimed_until = NULL, finished_at = $2
                WHERE endpoint_id = $1 AND state IN ('pending', 'sending')
                RETURNING id, endpoint_id)
             INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
             SELECT id, endpoint_id, $2, NULL, $3, 0 FROM ended
              WHERE $3::TEXT IS NOT NULL ORDER BY id",
            &[&endpoint_id, &now_ms, &why],
        )
        .await?)
}

/// The state of a delivery's record, and its next try, for an outcome.
fn recorded_state(outcome: &DeliveryOutcome) -> (&'static str, Option<i64>) {
    match outcome {
        DeliveryOutcome::Delivered => ("delivered", None),
        DeliveryOutcome::Retry { at_ms } => ("pending", Some(*at_ms)),
        DeliveryOutcome::GaveUp => ("failed", None),
    }
}

fn status_code(value: Option<i64>, delivery: i64) -> Result<Option<u16>, StoreError> {
    value
        .map(|code| {
            u16::try_from(code).map_err(|_| {
                StoreError::UnknownValue(UnknownValue::new(
                    "webhook_attempts",
                    delivery,
                    "status_code",
                    code.to_string(),
                ))
            })
        })
        .transpose()
}

/// A count of rows the database gave, as a `usize`: one it could not be
/// (negative, or past the platform's width) is an error, never a default.
fn row_count<N>(count: N) -> Result<usize, StoreError>
where
    N: TryInto<usize> + Copy + std::fmt::Display,
{
    count
        .try_into()
        .map_err(|_| StoreError::Database(format!("a count of {count} rows")))
}

/// The class of the advisory locks that guard an endpoint's claims (a hash
/// of the endpoint's id is the other half of the key; two endpoints that
/// share a hash only take turns): "webh".
const CLAIM_LOCK_CLASS: i32 = 0x7765_6268;

impl WebhookStore for PostgresStore {
    fn create_endpoint(&self, new: NewEndpoint) -> StoreFuture<Endpoint> {
        let new = std::sync::Arc::new(new);
        self.write(move |transaction| {
            let new = std::sync::Arc::clone(&new);
            boxed(async move {
                transaction
                    .execute(
                        "INSERT INTO webhook_endpoints (id, url, events, description, enabled, secret, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[
                            &new.id,
                            &new.url,
                            &new.filter.stored(),
                            &new.description,
                            &i64::from(new.enabled),
                            &new.secret.expose(),
                            &new.created_at_ms,
                        ],
                    )
                    .await?;
                endpoint(transaction, &new.id)
                    .await?
                    .ok_or(StoreError::Database("the new endpoint was not found".into()))
            })
        })
    }

    fn endpoints(&self) -> StoreFuture<Vec<Endpoint>> {
        self.read(move |client| async move {
            client
                .query(
                    &format!(
                        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted = 0
                          ORDER BY created_at, id"
                    ),
                    &[],
                )
                .await?
                .iter()
                .map(endpoint_from_row)
                .collect()
        })
    }

    fn endpoint(&self, id: String) -> StoreFuture<Option<Endpoint>> {
        self.read(move |client| async move { endpoint(&*client, &id).await })
    }

    fn update_endpoint(
        &self,
        id: String,
        change: EndpointChange,
        now_ms: i64,
    ) -> StoreFuture<Option<Endpoint>> {
        let change = std::sync::Arc::new(change);
        self.write(move |transaction| {
            let (id, change) = (id.clone(), std::sync::Arc::clone(&change));
            boxed(async move {
                let stored = change.filter.as_ref().map(EventFilter::stored);
                let enabled = change.enabled.map(i64::from);
                let updated = transaction
                    .execute(
                        "UPDATE webhook_endpoints
                            SET url = COALESCE($2, url),
                                events = COALESCE($3, events),
                                description = COALESCE($4, description),
                                enabled = COALESCE($5, enabled),
                                disabled_reason = CASE WHEN $5 IS NULL THEN disabled_reason END,
                                failing_since = CASE WHEN $5 = 1 THEN NULL ELSE failing_since END
                          WHERE id = $1 AND deleted = 0",
                        &[&id, &change.url, &stored, &change.description, &enabled],
                    )
                    .await?;
                if updated == 0 {
                    return Ok(None);
                }
                if change.enabled == Some(false) {
                    end_deliveries(transaction, &id, now_ms, Some(ENDED_DISABLED)).await?;
                }
                endpoint(transaction, &id).await
            })
        })
    }

    fn remove_endpoint(&self, id: String, now_ms: i64) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let id = id.clone();
            boxed(async move {
                let removed = transaction
                    .execute(
                        "UPDATE webhook_endpoints SET deleted = 1, enabled = 0
                          WHERE id = $1 AND deleted = 0",
                        &[&id],
                    )
                    .await?
                    == 1;
                if removed {
                    end_deliveries(transaction, &id, now_ms, None).await?;
                }
                Ok(removed)
            })
        })
    }

    fn rotate_secret(
        &self,
        id: String,
        secret: SigningSecret,
        previous_until_ms: i64,
    ) -> StoreFuture<Option<Endpoint>> {
        self.write(move |transaction| {
            let (id, secret) = (id.clone(), secret.clone());
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,
                                previous_secret_until = $3 WHERE id = $1 AND deleted = 0",
                        &[&id, &secret.expose(), &previous_until_ms],
                    )
                    .await?;
                endpoint(transaction, &id).await
            })
        })
    }

    fn record_event(&self, event: NewEvent) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let event = event.clone();
            boxed(async move {
                let known = transaction
                    .query_opt(
                        "SELECT 1 FROM webhook_events WHERE dedupe_key = $1",
                        &[&event.dedupe_key],
                    )
                    .await?;
                if known.is_some() {
                    return Ok(false);
                }
                insert_events(transaction, std::slice::from_ref(&event)).await?;
                Ok(true)
            })
        })
    }

    fn record_test_event(
        &self,
        endpoint_id: String,
        event: NewEvent,
    ) -> StoreFuture<ForEnabled<()>> {
        self.write(move |transaction| {
            let (endpoint_id, event) = (endpoint_id.clone(), event.clone());
            boxed(async move {
                match endpoint(transaction, &endpoint_id).await? {
                    None => return Ok(ForEnabled::NotFound),
                    Some(found) if !found.enabled => return Ok(ForEnabled::Disabled),
                    Some(_) => {}
                }
                transaction
                    .execute(
                        "INSERT INTO webhook_events (id, type, account_id, dedupe_key, payload, created_at)
                         VALUES ($1, $2, NULL, $3, $4, $5)",
                        &[
                            &event.id,
                            &event.kind.as_str(),
                            &event.dedupe_key,
                            &event.payload(),
                            &event.created_at_ms,
                        ],
                    )
                    .await?;
                transaction
                    .execute(
                        "INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at, created_at)
                         VALUES ($1, $2, 'pending', $3, $3)",
                        &[&endpoint_id, &event.id, &event.created_at_ms],
                    )
                    .await?;
                Ok(ForEnabled::Done(()))
            })
        })
    }

    fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        per_endpoint: i64,
        limit: i64,
        instance: String,
    ) -> StoreFuture<Vec<ClaimedDelivery>> {
        // Not in the ledger writer's queue: on the claims' connection, one
        // short transaction per endpoint. Each takes the endpoint's claim
        // lock (a transaction-scoped advisory lock: no writer ever waits
        // for it, and it goes with the transaction) before its tries in
        // flight are counted, and lets it go with the claims' commit: under
        // READ COMMITTED the count, a statement after the lock, sees every
        // other instance's claims, so the cap holds across instances. An
        // endpoint another instance is claiming for is skipped this time
        // (no one waits, and no two instances wait on each other).
        let claims = std::sync::Arc::clone(&self.claims);
        Box::pin(async move {
            let mut slot = claims.lock().await?;
            let client = slot.as_mut().ok_or(StoreError::Closed)?;
            // Only endpoints with something due (each probe one partial
            // index lookup): a poll with nothing to send costs one query,
            // not a transaction per endpoint.
            let endpoints = client
                .query(
                    &format!(
                        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e
                          WHERE enabled = 1 AND deleted = 0
                            AND (EXISTS (SELECT 1 FROM webhook_deliveries d
                                          WHERE d.endpoint_id = e.id AND d.state = 'pending'
                                            AND d.next_attempt_at <= $1)
                                 OR EXISTS (SELECT 1 FROM webhook_deliveries d
                                             WHERE d.endpoint_id = e.id AND d.state = 'sending'
                                               AND d.claimed_until < $1))
                          ORDER BY id"
                    ),
                    &[&now_ms],
                )
                .await?
                .iter()
                .map(endpoint_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let mut deliveries = Vec::new();
            // Start at a different endpoint each time, so that a full
            // instance does not always serve the same ones first.
            let start = now_ms.rem_euclid(endpoints.len().max(1) as i64) as usize;
            for endpoint in endpoints.iter().cycle().skip(start).take(endpoints.len()) {
                if deliveries.len() as i64 >= limit {
                    break;
                }
                let transaction = client.transaction().await?;
                let locked: bool = transaction
                    .query_one(
                        "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                        &[&CLAIM_LOCK_CLASS, &endpoint.id],
                    )
                    .await?
                    .try_get(0)?;
                if !locked {
                    continue;
                }
                let busy: i64 = transaction
                    .query_one(
                        "SELECT COUNT(*) FROM webhook_deliveries
                          WHERE endpoint_id = $1 AND state = 'sending' AND claimed_until >= $2",
                        &[&endpoint.id, &now_ms],
                    )
                    .await?
                    .try_get(0)?;
                let mut room = (limit - deliveries.len() as i64).min(per_endpoint - busy);
                let mut claimed = Vec::new();
                // Tries whose worker stopped (lease over) first, then the
                // due; the condition is checked again where each row is
                // locked, so two instances never claim one delivery. The
                // rows are picked once (`MATERIALIZED`): a subquery under
                // `IN` may be scanned again for each event joined, and a
                // second scan skips the rows this statement has just
                // claimed and picks as many more, past the `LIMIT`.
                for (due, order) in [
                    ("state = 'sending' AND claimed_until < $2", "claimed_until"),
                    (
                        "state = 'pending' AND next_attempt_at <= $2",
                        "next_attempt_at",
                    ),
                ] {
                    if room <= 0 {
                        break;
                    }
                    let rows = transaction
                        .query(
                            &format!(
                                "WITH picked AS MATERIALIZED (
                                   SELECT id FROM webhook_deliveries
                                    WHERE endpoint_id = $1 AND {due}
                                    ORDER BY {order}, id LIMIT $5
                                    FOR UPDATE SKIP LOCKED)
                                 UPDATE webhook_deliveries d
                                    SET state = 'sending', attempts = d.attempts + 1,
                                        claimed_until = $3, claimed_by = $4
                                   FROM picked, webhook_events ev
                                  WHERE d.id = picked.id AND ev.id = d.event_id
                              RETURNING d.id, d.attempts, d.event_id, d.created_at, ev.type, ev.payload"
                            ),
                            &[&endpoint.id, &now_ms, &lease_until_ms, &instance, &room],
                        )
                        .await?;
                    room -= rows.len() as i64;
                    claimed.extend(rows);
                }
                if !claimed.is_empty() {
                    // The endpoint as it stands now, read after the claims:
                    // whatever was changed before an event was made (a
                    // secret rotated, say) is seen by the try that sends it
                    // (the list above may be older than the event).
                    let current = self::endpoint(&transaction, &endpoint.id)
                        .await?
                        .unwrap_or_else(|| endpoint.clone());
                    for row in claimed.drain(..) {
                        deliveries.push(ClaimedDelivery {
                            id: row.try_get(0)?,
                            attempts: row.try_get(1)?,
                            event_id: row.try_get(2)?,
                            created_at_ms: row.try_get(3)?,
                            event_type: row.try_get(4)?,
                            payload: row.try_get(5)?,
                            endpoint: current.clone(),
                        });
                    }
                }
                transaction.commit().await?;
            }
            deliveries.sort_by_key(|delivery| delivery.id);
            Ok(deliveries)
        })
    }

    fn attempted(&self, attempt: Attempted) -> StoreFuture<TryRecorded> {
        if attempt.disable.is_none() {
            // The common case, one statement (atomic on its own) on a
            // connection of its own: a try's record does not wait behind
            // the ledger's batches, nor they behind it. The delivery is
            // changed only under the try's claim, and the endpoint only if
            // the delivery was; the endpoint's row is locked first, as a
            // disable locks it, so that the two never deadlock.
            return self.read(move |client| async move {
                let (state, next_attempt_at) = recorded_state(&attempt.outcome);
                let status = attempt.status_code.map(i64::from);
                let failing = (attempt.outcome != DeliveryOutcome::Delivered).then_some(attempt.at_ms);
                let decided: i64 = client
                    .query_one(
                        "WITH ep AS (
                           SELECT id FROM webhook_endpoints WHERE id = $2 FOR NO KEY UPDATE),
                         tried AS (
                           INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
                           VALUES ($1, $2, $3, $4, $5, $6)),
                         delivery AS (
                           UPDATE webhook_deliveries
                              SET state = $7, next_attempt_at = COALESCE($8, next_attempt_at),
                                  claimed_until = NULL,
                                  finished_at = CASE WHEN $8::BIGINT IS NULL THEN $3::BIGINT END
                            WHERE id = $1 AND state = 'sending' AND attempts = $10
                              AND EXISTS (SELECT 1 FROM ep)
                            RETURNING endpoint_id),
                         endpoint AS (
                           UPDATE webhook_endpoints
                              SET failing_since = CASE WHEN $9::BIGINT IS NULL THEN NULL
                                                       ELSE COALESCE(failing_since, $9) END
                            WHERE id = (SELECT endpoint_id FROM delivery)
                              AND failing_since IS DISTINCT FROM
                                  (CASE WHEN $9::BIGINT IS NULL THEN NULL ELSE COALESCE(failing_since, $9) END))
                         SELECT COUNT(*) FROM delivery",
                        &[
                            &attempt.delivery_id,
                            &attempt.endpoint_id,
                            &attempt.at_ms,
                            &status,
                            &attempt.error,
                            &attempt.duration_ms,
                            &state,
                            &next_attempt_at,
                            &failing,
                            &attempt.claim,
                        ],
                    )
                    .await?
                    .try_get(0)?;
                Ok(if decided == 1 {
                    TryRecorded::Applied
                } else {
                    TryRecorded::Late
                })
            });
        }
        let attempt = std::sync::Arc::new(attempt);
        self.write(move |transaction| {
            let attempt = std::sync::Arc::clone(&attempt);
            boxed(async move {
                let status = attempt.status_code.map(i64::from);
                // The endpoint's row first, as every transaction that
                // changes an endpoint and its deliveries takes them (a
                // disable does): never a delivery then the endpoint, which
                // would deadlock with one.
                transaction
                    .execute(
                        "SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR NO KEY UPDATE",
                        &[&attempt.endpoint_id],
                    )
                    .await?;
                transaction
                    .execute(
                        "INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[
                            &attempt.delivery_id,
                            &attempt.endpoint_id,
                            &attempt.at_ms,
                            &status,
                            &attempt.error,
                            &attempt.duration_ms,
                        ],
                    )
                    .await?;
                let (state, next_attempt_at) = recorded_state(&attempt.outcome);
                let decided = transaction
                    .execute(
                        "UPDATE webhook_deliveries
                            SET state = $2, next_attempt_at = COALESCE($3, next_attempt_at),
                                claimed_until = NULL,
                                finished_at = CASE WHEN $3::BIGINT IS NULL THEN $4::BIGINT END
                          WHERE id = $1 AND state = 'sending' AND attempts = $5",
                        &[
                            &attempt.delivery_id,
                            &state,
                            &next_attempt_at,
                            &attempt.at_ms,
                            &attempt.claim,
                        ],
                    )
                    .await?;
                if decided == 0 {
                    return Ok(TryRecorded::Late);
                }
                let failing = if attempt.outcome == DeliveryOutcome::Delivered {
                    None
                } else {
                    Some(attempt.at_ms)
                };
                transaction
                    .execute(
                        "UPDATE webhook_endpoints
                            SET failing_since = CASE WHEN $2::BIGINT IS NULL THEN NULL
                                                     ELSE COALESCE(failing_since, $2) END
                          WHERE id = $1",
                        &[&attempt.endpoint_id, &failing],
                    )
                    .await?;
                if let Some((reason, event)) = &attempt.disable {
                    let disabled = transaction
                        .execute(
                            "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $2
                              WHERE id = $1 AND enabled = 1",
                            &[&attempt.endpoint_id, reason],
                        )
                        .await?;
                    if disabled == 1 {
                        end_deliveries(
                            transaction,
                            &attempt.endpoint_id,
                            attempt.at_ms,
                            Some(ENDED_DISABLED),
                        )
                        .await?;
                        insert_events(transaction, std::slice::from_ref(event)).await?;
                    }
                }
                Ok(TryRecorded::Applied)
            })
        })
    }

    fn attempts_of(&self, endpoint_id: String, limit: i64) -> StoreFuture<Vec<AttemptRecord>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT e.id, e.type, a.at, a.status_code, a.error, a.duration_ms, a.id
                       FROM webhook_attempts a
                       JOIN webhook_deliveries d ON d.id = a.delivery_id
                       JOIN webhook_events e ON e.id = d.event_id
                      WHERE a.endpoint_id = $1 ORDER BY a.id DESC LIMIT $2",
                    &[&endpoint_id, &limit],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(AttemptRecord {
                        event_id: row.try_get(0)?,
                        event_type: row.try_get(1)?,
                        at_ms: row.try_get(2)?,
                        status_code: status_code(row.try_get(3)?, row.try_get(6)?)?,
                        error: row.try_get(4)?,
                        duration_ms: row.try_get(5)?,
                    })
                })
                .collect()
        })
    }

    fn replay(
        &self,
        endpoint_id: String,
        since_ms: i64,
        now_ms: i64,
    ) -> StoreFuture<ForEnabled<usize>> {
        self.write(move |transaction| {
            let endpoint_id = endpoint_id.clone();
            boxed(async move {
                let Some(found) = endpoint(transaction, &endpoint_id).await? else {
                    return Ok(ForEnabled::NotFound);
                };
                if !found.enabled {
                    return Ok(ForEnabled::Disabled);
                }
                let made = transaction
                    .execute(
                        "INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at, created_at)
                         SELECT $1, id, 'pending', $3, $3 FROM webhook_events
                          WHERE created_at >= $2 AND type <> 'webhook_endpoint.test'
                            AND ($4 = '*' OR strpos($4, ',' || type || ',') > 0)
                          ORDER BY created_at, id",
                        &[&endpoint_id, &since_ms, &now_ms, &found.filter.stored()],
                    )
                    .await?;
                Ok(ForEnabled::Done(usize::try_from(made).unwrap_or(usize::MAX)))
            })
        })
    }

    fn end_deliveries_of_disabled(&self, now_ms: i64, limit: i64) -> StoreFuture<usize> {
        // One statement (atomic on its own) on a reader connection. The
        // endpoints first, then their deliveries by the partial indexes of
        // pending and sending ones; a row changed meanwhile is checked
        // again where it is updated.
        self.read(move |client| async move {
            let ended: i64 = client
                .query_one(
                    "WITH doomed AS (
                       (SELECT d.id FROM webhook_endpoints e
                          JOIN webhook_deliveries d ON d.endpoint_id = e.id AND d.state = 'pending'
                         WHERE e.enabled = 0 OR e.deleted = 1
                        UNION ALL
                        SELECT d.id FROM webhook_endpoints e
                          JOIN webhook_deliveries d ON d.endpoint_id = e.id AND d.state = 'sending'
                         WHERE e.enabled = 0 OR e.deleted = 1)
                       LIMIT $3),
                     ended AS (
                       UPDATE webhook_deliveries
                          SET state = 'failed', claimed_until = NULL, finished_at = $1
                        WHERE id IN (SELECT id FROM doomed) AND state IN ('pending', 'sending')
                        RETURNING id, endpoint_id),
                     listed AS (
                       INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
                       SELECT id, endpoint_id, $1, NULL, $2, 0 FROM ended ORDER BY id)
                     SELECT COUNT(*) FROM ended",
                    &[&now_ms, &ENDED_DISABLED, &limit],
                )
                .await?
                .try_get(0)?;
            row_count(ended)
        })
    }

    fn prune(&self, before_ms: i64, limit: i64) -> StoreFuture<Pruned> {
        // Two statements, each atomic on its own, on a reader connection:
        // the oldest made or ended deliveries with their tries (rows
        // another instance is pruning are skipped), then the events no
        // delivery needs any more.
        self.read(move |client| async move {
            let deliveries: i64 = client
                .query_one(
                    "WITH doomed AS (
                       SELECT id FROM webhook_deliveries
                        WHERE state IN ('delivered', 'failed') AND finished_at < $1
                        ORDER BY finished_at, id LIMIT $2
                        FOR UPDATE SKIP LOCKED),
                     tries AS (
                       DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM doomed)),
                     gone AS (
                       DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM doomed) RETURNING id)
                     SELECT COUNT(*) FROM gone",
                    &[&before_ms, &limit],
                )
                .await?
                .try_get(0)?;
            let events = client
                .execute(
                    "DELETE FROM webhook_events WHERE id IN (
                       SELECT e.id FROM webhook_events e
                        WHERE e.created_at < $1
                          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
                        ORDER BY e.created_at, e.id LIMIT $2
                        FOR UPDATE SKIP LOCKED)",
                    &[&before_ms, &limit],
                )
                .await?;
            Ok(Pruned {
                deliveries: row_count(deliveries)?,
                events: row_count(events)?,
            })
        })
    }

    fn delivery_stats(&self) -> StoreFuture<DeliveryStats> {
        self.read(move |client| async move {
            let row = client
                .query_one(
                    "SELECT COUNT(*), MIN(created_at) FROM webhook_deliveries
                      WHERE state IN ('pending', 'sending')",
                    &[],
                )
                .await?;
            Ok(DeliveryStats {
                pending: row.try_get(0)?,
                oldest_pending_ms: row.try_get(1)?,
            })
        })
    }
}

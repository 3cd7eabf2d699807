//! Webhook endpoints, the events outbox and deliveries in SQLite.
//! [`insert_events`] is what every write that causes an event calls inside
//! its own transaction. Claims, a try's record and its consequences each
//! run in one write transaction, and SQLite has one writer at a time
//! (`BEGIN IMMEDIATE`, across processes too): a claim's count of the tries
//! in flight and the claim itself see every other claim.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteStore;
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
pub(super) fn insert_events(
    connection: &Connection,
    events: &[NewEvent],
) -> Result<bool, rusqlite::Error> {
    let mut made = false;
    for event in events {
        let inserted = connection
            .prepare_cached(
                "INSERT OR IGNORE INTO webhook_events (id, type, account_id, dedupe_key, payload, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                event.id,
                event.kind.as_str(),
                event.account_id.map(|id| id.0),
                event.dedupe_key,
                event.payload(),
                event.created_at_ms
            ])?;
        if inserted == 0 {
            continue;
        }
        super::super::EVENTS_INSERTED.store(true, std::sync::atomic::Ordering::Relaxed);
        made |= connection
            .prepare_cached(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at, created_at)
                 SELECT id, ?1, 'pending', ?3, ?3 FROM webhook_endpoints
                  WHERE enabled = 1 AND deleted = 0
                    AND (events = '*' OR instr(events, ',' || ?2 || ',') > 0)",
            )?
            .execute(params![event.id, event.kind.as_str(), event.created_at_ms])?
            > 0;
    }
    Ok(made)
}

fn endpoint_from_row(row: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let id: String = row.get(0)?;
    let events: String = row.get(2)?;
    let filter = EventFilter::from_stored(&events).ok_or_else(|| {
        UnknownValue::new("webhook_endpoints", &id, "events", events.clone()).into_sql_error(2)
    })?;
    let enabled: i64 = row.get(4)?;
    Ok(Endpoint {
        url: row.get(1)?,
        events: filter.names(),
        filter,
        description: row.get(3)?,
        enabled: enabled == 1,
        disabled_reason: row.get(5)?,
        secret: SigningSecret::from_stored(row.get(6)?),
        previous_secret: row
            .get::<_, Option<String>>(7)?
            .map(SigningSecret::from_stored),
        previous_secret_until_ms: row.get(8)?,
        failing_since_ms: row.get(9)?,
        created_at_ms: row.get(10)?,
        undeliverable: None,
        id,
    })
}

/// Tries of the endpoint in flight (claimed, lease not over).
fn sending(
    connection: &Connection,
    endpoint_id: &str,
    now_ms: i64,
) -> Result<i64, rusqlite::Error> {
    connection
        .prepare_cached(
            "SELECT COUNT(*) FROM webhook_deliveries
              WHERE endpoint_id = ?1 AND state = 'sending' AND claimed_until >= ?2",
        )?
        .query_row(params![endpoint_id, now_ms], |row| row.get(0))
}

/// Ends every delivery of the endpoint not yet made, at `now_ms`; with
/// `why`, each is listed among the endpoint's tries, saying so. Answers
/// how many.
fn end_deliveries(
    connection: &Connection,
    endpoint_id: &str,
    now_ms: i64,
    why: Option<&str>,
) -> Result<usize, rusqlite::Error> {
    if let Some(why) = why {
        connection
            .prepare_cached(
                "INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
                 SELECT id, endpoint_id, ?2, NULL, ?3, 0 FROM webhook_deliveries
                  WHERE endpoint_id = ?1 AND state IN ('pending', 'sending') ORDER BY id",
            )?
            .execute(params![endpoint_id, now_ms, why])?;
    }
    connection
        .prepare_cached(
            "UPDATE webhook_deliveries SET state = 'failed', claimed_until = NULL, finished_at = ?2
              WHERE endpoint_id = ?1 AND state IN ('pending', 'sending')",
        )?
        .execute(params![endpoint_id, now_ms])
}

/// Whether the endpoint exists (not removed) and is enabled.
fn enabled(connection: &Connection, id: &str) -> Result<ForEnabled<()>, StoreError> {
    Ok(match endpoint(connection, id)? {
        None => ForEnabled::NotFound,
        Some(found) if !found.enabled => ForEnabled::Disabled,
        Some(_) => ForEnabled::Done(()),
    })
}

fn endpoint(connection: &Connection, id: &str) -> Result<Option<Endpoint>, StoreError> {
    Ok(connection
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1 AND deleted = 0"
        ))?
        .query_row([id], endpoint_from_row)
        .optional()?)
}

impl WebhookStore for SqliteStore {
    fn create_endpoint(&self, new: NewEndpoint) -> StoreFuture<Endpoint> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO webhook_endpoints (id, url, events, description, enabled, secret, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    new.id,
                    new.url,
                    new.filter.stored(),
                    new.description,
                    i64::from(new.enabled),
                    new.secret.expose(),
                    new.created_at_ms
                ])?;
            endpoint(connection, &new.id)?.ok_or(StoreError::Database(
                "the new endpoint was not found".into(),
            ))
        })
    }

    fn endpoints(&self) -> StoreFuture<Vec<Endpoint>> {
        self.read(move |connection| {
            let endpoints = connection
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted = 0
                      ORDER BY created_at, id"
                ))?
                .query_map([], endpoint_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(endpoints)
        })
    }

    fn endpoint(&self, id: String) -> StoreFuture<Option<Endpoint>> {
        self.read(move |connection| endpoint(connection, &id))
    }

    fn update_endpoint(
        &self,
        id: String,
        change: EndpointChange,
        now_ms: i64,
    ) -> StoreFuture<Option<Endpoint>> {
        self.write(move |connection| {
            if endpoint(connection, &id)?.is_none() {
                return Ok(None);
            }
            if let Some(url) = &change.url {
                connection
                    .prepare_cached("UPDATE webhook_endpoints SET url = ?2 WHERE id = ?1")?
                    .execute(params![id, url])?;
            }
            if let Some(filter) = &change.filter {
                connection
                    .prepare_cached("UPDATE webhook_endpoints SET events = ?2 WHERE id = ?1")?
                    .execute(params![id, filter.stored()])?;
            }
            if let Some(description) = &change.description {
                connection
                    .prepare_cached("UPDATE webhook_endpoints SET description = ?2 WHERE id = ?1")?
                    .execute(params![id, description])?;
            }
            match change.enabled {
                Some(true) => {
                    connection
                        .prepare_cached(
                            "UPDATE webhook_endpoints SET enabled = 1, disabled_reason = NULL,
                                    failing_since = NULL WHERE id = ?1",
                        )?
                        .execute([&id])?;
                }
                Some(false) => {
                    connection
                        .prepare_cached(
                            "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = NULL WHERE id = ?1",
                        )?
                        .execute([&id])?;
                    end_deliveries(connection, &id, now_ms, Some(ENDED_DISABLED))?;
                }
                None => {}
            }
            endpoint(connection, &id)
        })
    }

    fn remove_endpoint(&self, id: String, now_ms: i64) -> StoreFuture<bool> {
        self.write(move |connection| {
            let removed = connection
                .prepare_cached(
                    "UPDATE webhook_endpoints SET deleted = 1, enabled = 0 WHERE id = ?1 AND deleted = 0",
                )?
                .execute([&id])?
                == 1;
            if removed {
                end_deliveries(connection, &id, now_ms, None)?;
            }
            Ok(removed)
        })
    }

    fn rotate_secret(
        &self,
        id: String,
        secret: SigningSecret,
        previous_until_ms: i64,
    ) -> StoreFuture<Option<Endpoint>> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE webhook_endpoints SET previous_secret = secret, secret = ?2,
                            previous_secret_until = ?3 WHERE id = ?1 AND deleted = 0",
                )?
                .execute(params![id, secret.expose(), previous_until_ms])?;
            endpoint(connection, &id)
        })
    }

    fn record_event(&self, event: NewEvent) -> StoreFuture<bool> {
        self.write(move |connection| {
            let known: Option<i64> = connection
                .prepare_cached("SELECT 1 FROM webhook_events WHERE dedupe_key = ?1")?
                .query_row([&event.dedupe_key], |row| row.get(0))
                .optional()?;
            if known.is_some() {
                return Ok(false);
            }
            insert_events(connection, std::slice::from_ref(&event))?;
            Ok(true)
        })
    }

    fn record_test_event(
        &self,
        endpoint_id: String,
        event: NewEvent,
    ) -> StoreFuture<ForEnabled<()>> {
        self.write(move |connection| {
            let found = enabled(connection, &endpoint_id)?;
            if found != ForEnabled::Done(()) {
                return Ok(found);
            }
            connection
                .prepare_cached(
                    "INSERT INTO webhook_events (id, type, account_id, dedupe_key, payload, created_at)
                     VALUES (?1, ?2, NULL, ?3, ?4, ?5)",
                )?
                .execute(params![
                    event.id,
                    event.kind.as_str(),
                    event.dedupe_key,
                    event.payload(),
                    event.created_at_ms
                ])?;
            connection
                .prepare_cached(
                    "INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at, created_at)
                     VALUES (?1, ?2, 'pending', ?3, ?3)",
                )?
                .execute(params![endpoint_id, event.id, event.created_at_ms])?;
            Ok(ForEnabled::Done(()))
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
        self.write(move |connection| {
            let endpoints = connection
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
                      WHERE enabled = 1 AND deleted = 0 ORDER BY id"
                ))?
                .query_map([], endpoint_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let mut deliveries = Vec::new();
            // Start at a different endpoint each time, so that a full
            // instance does not always serve the same ones first.
            let start = now_ms.rem_euclid(endpoints.len().max(1) as i64) as usize;
            for endpoint in endpoints.iter().cycle().skip(start).take(endpoints.len()) {
                let mut room = (limit - deliveries.len() as i64)
                    .min(per_endpoint - sending(connection, &endpoint.id, now_ms)?);
                if room <= 0 {
                    continue;
                }
                // Tries whose worker stopped (lease over) first, then the due.
                for (due, order) in [
                    ("state = 'sending' AND claimed_until < ?2", "claimed_until"),
                    (
                        "state = 'pending' AND next_attempt_at <= ?2",
                        "next_attempt_at",
                    ),
                ] {
                    if room <= 0 {
                        break;
                    }
                    let claimed = connection
                        .prepare_cached(&format!(
                            "UPDATE webhook_deliveries
                                SET state = 'sending', attempts = attempts + 1, claimed_until = ?3,
                                    claimed_by = ?4
                              WHERE id IN (SELECT id FROM webhook_deliveries
                                            WHERE endpoint_id = ?1 AND {due}
                                            ORDER BY {order}, id LIMIT ?5)
                             RETURNING id, attempts, event_id, created_at"
                        ))?
                        .query_map(
                            params![endpoint.id, now_ms, lease_until_ms, instance, room],
                            |row| {
                                Ok((
                                    row.get::<_, i64>(0)?,
                                    row.get::<_, i64>(1)?,
                                    row.get::<_, String>(2)?,
                                    row.get::<_, i64>(3)?,
                                ))
                            },
                        )?
                        .collect::<Result<Vec<_>, _>>()?;
                    room -= claimed.len() as i64;
                    for (id, attempts, event_id, created_at_ms) in claimed {
                        let (event_type, payload): (String, String) = connection
                            .prepare_cached(
                                "SELECT type, payload FROM webhook_events WHERE id = ?1",
                            )?
                            .query_row([&event_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
                        deliveries.push(ClaimedDelivery {
                            id,
                            attempts,
                            event_id,
                            event_type,
                            payload,
                            created_at_ms,
                            endpoint: endpoint.clone(),
                        });
                    }
                }
            }
            deliveries.sort_by_key(|delivery| delivery.id);
            Ok(deliveries)
        })
    }

    fn attempted(&self, attempt: Attempted) -> StoreFuture<TryRecorded> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    attempt.delivery_id,
                    attempt.endpoint_id,
                    attempt.at_ms,
                    attempt.status_code,
                    attempt.error,
                    attempt.duration_ms
                ])?;
            let (state, next_attempt_at) = match attempt.outcome {
                DeliveryOutcome::Delivered => ("delivered", None),
                DeliveryOutcome::Retry { at_ms } => ("pending", Some(at_ms)),
                DeliveryOutcome::GaveUp => ("failed", None),
            };
            // Only under the try's own claim: a later claim has its own
            // number, and an ended delivery is not `sending`.
            let decided = connection
                .prepare_cached(
                    "UPDATE webhook_deliveries
                        SET state = ?2, next_attempt_at = COALESCE(?3, next_attempt_at),
                            claimed_until = NULL,
                            finished_at = CASE WHEN ?3 IS NULL THEN ?4 END
                      WHERE id = ?1 AND state = 'sending' AND attempts = ?5",
                )?
                .execute(params![
                    attempt.delivery_id,
                    state,
                    next_attempt_at,
                    attempt.at_ms,
                    attempt.claim
                ])?;
            if decided == 0 {
                return Ok(TryRecorded::Late);
            }
            if attempt.outcome == DeliveryOutcome::Delivered {
                connection
                    .prepare_cached("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ?1")?
                    .execute([&attempt.endpoint_id])?;
            } else {
                connection
                    .prepare_cached(
                        "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, ?2) WHERE id = ?1",
                    )?
                    .execute(params![attempt.endpoint_id, attempt.at_ms])?;
            }
            if let Some((reason, event)) = &attempt.disable {
                let disabled = connection
                    .prepare_cached(
                        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?2
                          WHERE id = ?1 AND enabled = 1",
                    )?
                    .execute(params![attempt.endpoint_id, reason])?;
                if disabled == 1 {
                    end_deliveries(
                        connection,
                        &attempt.endpoint_id,
                        attempt.at_ms,
                        Some(ENDED_DISABLED),
                    )?;
                    insert_events(connection, std::slice::from_ref(event))?;
                }
            }
            Ok(TryRecorded::Applied)
        })
    }

    fn attempts_of(&self, endpoint_id: String, limit: i64) -> StoreFuture<Vec<AttemptRecord>> {
        self.read(move |connection| {
            let attempts = connection
                .prepare_cached(
                    "SELECT e.id, e.type, a.at, a.status_code, a.error, a.duration_ms
                       FROM webhook_attempts a
                       JOIN webhook_deliveries d ON d.id = a.delivery_id
                       JOIN webhook_events e ON e.id = d.event_id
                      WHERE a.endpoint_id = ?1 ORDER BY a.id DESC LIMIT ?2",
                )?
                .query_map(params![endpoint_id, limit], |row| {
                    Ok(AttemptRecord {
                        event_id: row.get(0)?,
                        event_type: row.get(1)?,
                        at_ms: row.get(2)?,
                        status_code: row.get(3)?,
                        error: row.get(4)?,
                        duration_ms: row.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(attempts)
        })
    }

    fn replay(
        &self,
        endpoint_id: String,
        since_ms: i64,
        now_ms: i64,
    ) -> StoreFuture<ForEnabled<usize>> {
        self.write(move |connection| {
            let Some(found) = endpoint(connection, &endpoint_id)? else {
                return Ok(ForEnabled::NotFound);
            };
            if !found.enabled {
                return Ok(ForEnabled::Disabled);
            }
            let made = connection
                .prepare_cached(
                    "INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at, created_at)
                     SELECT ?1, id, 'pending', ?3, ?3 FROM webhook_events
                      WHERE created_at >= ?2 AND type <> 'webhook_endpoint.test'
                        AND (?4 = '*' OR instr(?4, ',' || type || ',') > 0)
                      ORDER BY created_at, id",
                )?
                .execute(params![endpoint_id, since_ms, now_ms, found.filter.stored()])?;
            Ok(ForEnabled::Done(made))
        })
    }

    fn end_deliveries_of_disabled(&self, now_ms: i64, limit: i64) -> StoreFuture<usize> {
        self.write(move |connection| {
            // The same rows for both statements: the first changes none.
            let doomed = "SELECT d.id FROM webhook_deliveries d
                            JOIN webhook_endpoints e ON e.id = d.endpoint_id
                           WHERE d.state IN ('pending', 'sending') AND (e.enabled = 0 OR e.deleted = 1)
                           ORDER BY d.id LIMIT ?3";
            connection
                .prepare_cached(&format!(
                    "INSERT INTO webhook_attempts (delivery_id, endpoint_id, at, status_code, error, duration_ms)
                     SELECT id, endpoint_id, ?1, NULL, ?2, 0 FROM webhook_deliveries
                      WHERE id IN ({doomed}) ORDER BY id"
                ))?
                .execute(params![now_ms, ENDED_DISABLED, limit])?;
            Ok(connection
                .prepare_cached(&format!(
                    "UPDATE webhook_deliveries SET state = 'failed', claimed_until = NULL, finished_at = ?1
                      WHERE id IN ({doomed})"
                ))?
                .execute(params![now_ms, ENDED_DISABLED, limit])?)
        })
    }

    fn prune(&self, before_ms: i64, limit: i64) -> StoreFuture<Pruned> {
        self.write(move |connection| {
            // The oldest made or ended deliveries (by the index on their
            // finished_at), the same rows for both statements: their tries
            // first.
            let doomed = "SELECT id FROM webhook_deliveries
                           WHERE state IN ('delivered', 'failed') AND finished_at < ?1
                           ORDER BY finished_at, id LIMIT ?2";
            connection
                .prepare_cached(&format!(
                    "DELETE FROM webhook_attempts WHERE delivery_id IN ({doomed})"
                ))?
                .execute(params![before_ms, limit])?;
            let deliveries = connection
                .prepare_cached(&format!(
                    "DELETE FROM webhook_deliveries WHERE id IN ({doomed})"
                ))?
                .execute(params![before_ms, limit])?;
            let events = connection
                .prepare_cached(
                    "DELETE FROM webhook_events WHERE id IN (
                       SELECT e.id FROM webhook_events e
                        WHERE e.created_at < ?1
                          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
                        ORDER BY e.created_at, e.id LIMIT ?2)",
                )?
                .execute(params![before_ms, limit])?;
            Ok(Pruned { deliveries, events })
        })
    }

    fn delivery_stats(&self) -> StoreFuture<DeliveryStats> {
        self.read(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT COUNT(*), MIN(created_at) FROM webhook_deliveries
                      WHERE state IN ('pending', 'sending')",
                )?
                .query_row([], |row| {
                    Ok(DeliveryStats {
                        pending: row.get(0)?,
                        oldest_pending_ms: row.get(1)?,
                    })
                })?)
        })
    }
}

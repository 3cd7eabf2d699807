//! Stripe's events in SQLite: each recorded once by id, with what became
//! of it; waiting events indexed by what they wait on.

use rusqlite::{params, Connection, Row};

use super::SqliteStore;
use crate::billing::event_log::{EventRecord, EventStatus};
use crate::store::{
    EventDecision, ReceivedEvent, Reception, StoreError, StoreFuture, StripeEventStore,
    UnknownValue,
};

const COLUMNS: &str =
    "event_id, event_type, status, waiting_on, outcome, payload, received_at, processed_at";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    let event_id: String = row.get(0)?;
    let status: String = row.get(2)?;
    Ok(EventRecord {
        status: EventStatus::parse(&status).ok_or_else(|| {
            UnknownValue::new("stripe_events", &event_id, "status", status.clone())
                .into_sql_error(2)
        })?,
        event_id,
        event_type: row.get(1)?,
        waiting_on: row.get(3)?,
        detail: row.get(4)?,
        payload: row.get(5)?,
        received_at_ms: row.get(6)?,
        decided_at_ms: row.get(7)?,
    })
}

fn status_of(connection: &Connection, event_id: &str) -> Result<EventStatus, StoreError> {
    let status: String = connection
        .prepare_cached("SELECT status FROM stripe_events WHERE event_id = ?1")?
        .query_row([event_id], |row| row.get(0))?;
    EventStatus::parse(&status).ok_or_else(|| {
        StoreError::UnknownValue(UnknownValue::new(
            "stripe_events",
            event_id,
            "status",
            status,
        ))
    })
}

impl StripeEventStore for SqliteStore {
    fn receive(&self, event: ReceivedEvent) -> StoreFuture<Reception> {
        self.write(move |connection| {
            let inserted = connection
                .prepare_cached(
                    "INSERT INTO stripe_events (event_id, event_type, received_at, payload, status,
                                                claimed_by, claimed_until)
                     VALUES (?1, ?2, ?3, ?4, 'received', ?5, ?6) ON CONFLICT (event_id) DO NOTHING",
                )?
                .execute(params![
                    event.event_id,
                    event.event_type,
                    event.now_ms,
                    event.payload,
                    event.instance_id,
                    event.lease_until_ms,
                ])?;
            if inserted == 1 {
                return Ok(Reception::Claimed);
            }
            // Not decided yet: this instance's, or anyone's whose claim lapsed.
            let claimed = connection
                .prepare_cached(
                    "UPDATE stripe_events
                        SET claimed_by = ?2, claimed_until = ?3, payload = COALESCE(payload, ?5)
                      WHERE event_id = ?1 AND status IN ('received', 'waiting')
                        AND (claimed_by IS NULL OR claimed_by = ?2 OR claimed_until < ?4)",
                )?
                .execute(params![
                    event.event_id,
                    event.instance_id,
                    event.lease_until_ms,
                    event.now_ms,
                    event.payload,
                ])?;
            if claimed == 1 {
                return Ok(Reception::Claimed);
            }
            let status = status_of(connection, &event.event_id)?;
            Ok(if status.is_final() {
                Reception::Decided(status)
            } else {
                Reception::Busy
            })
        })
    }

    fn decide(&self, decision: EventDecision) -> StoreFuture<()> {
        self.write(move |connection| {
            let decided_at = (decision.status != EventStatus::Waiting).then_some(decision.now_ms);
            connection
                .prepare_cached(
                    "UPDATE stripe_events
                        SET status = ?2, waiting_on = ?3, outcome = ?4, processed_at = ?5,
                            claimed_by = NULL, claimed_until = NULL
                      WHERE event_id = ?1 AND status IN ('received', 'waiting')",
                )?
                .execute(params![
                    decision.event_id,
                    decision.status.as_str(),
                    decision.waiting_on,
                    decision.detail,
                    decided_at,
                ])?;
            Ok(())
        })
    }

    fn waiting_on(&self, keys: Vec<String>) -> StoreFuture<Vec<EventRecord>> {
        self.read(move |connection| {
            // No ORDER BY here: it would tempt SQLite to walk every waiting
            // event in received order instead of using the waiting_on index.
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM stripe_events WHERE status = 'waiting' AND waiting_on = ?1"
            ))?;
            let mut found = Vec::new();
            for key in &keys {
                let rows = statement.query_map([key], event_from_row)?;
                for row in rows {
                    found.push(row?);
                }
            }
            found.sort_by(|left, right| {
                (left.received_at_ms, &left.event_id).cmp(&(right.received_at_ms, &right.event_id))
            });
            found.dedup_by(|left, right| left.event_id == right.event_id);
            Ok(found)
        })
    }

    fn waiting_unblocked(
        &self,
        key_prefix: String,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> StoreFuture<Vec<EventRecord>> {
        self.read(move |connection| {
            let (after_at, after_id) = after.unzip();
            // Each waiting event probes its order by the PaymentIntent's
            // unique index.
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM stripe_events
                  WHERE status = 'waiting' AND substr(waiting_on, 1, length(?1)) = ?1
                    AND EXISTS (SELECT 1 FROM orders
                                 WHERE stripe_payment_intent_id = substr(waiting_on, length(?1) + 1)
                                   AND status <> 'pending')
                    AND (?3 IS NULL OR (received_at, event_id) > (?3, ?4))
                  ORDER BY received_at, event_id LIMIT ?2"
            ))?;
            let rows = statement
                .query_map(
                    params![key_prefix, limit, after_at, after_id],
                    event_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn expire_waiting(&self, received_before_ms: i64, now_ms: i64) -> StoreFuture<usize> {
        self.write(move |connection| {
            let expired = connection
                .prepare_cached(
                    "UPDATE stripe_events
                        SET status = 'expired', processed_at = ?2,
                            outcome = 'gave up after 3 days: ' || COALESCE(outcome, 'waited')
                      WHERE status = 'waiting' AND received_at < ?1",
                )?
                .execute(params![received_before_ms, now_ms])?;
            Ok(expired)
        })
    }

    fn list(&self, status: Option<EventStatus>, limit: i64) -> StoreFuture<Vec<EventRecord>> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM stripe_events
                  WHERE ?1 IS NULL OR status = ?1 ORDER BY received_at DESC, event_id DESC LIMIT ?2"
            ))?;
            let rows = statement
                .query_map(
                    params![status.map(EventStatus::as_str), limit],
                    event_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

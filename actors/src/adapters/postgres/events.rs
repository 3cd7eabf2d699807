//! Stripe's events in Postgres: each recorded once by id, claimed by one
//! instance at a time, with what became of it; waiting events indexed by
//! what they wait on.

use tokio_postgres::{GenericClient, Row};

use super::{boxed, PostgresStore};
use crate::billing::event_log::{EventRecord, EventStatus};
use crate::store::{
    EventDecision, ReceivedEvent, Reception, StoreError, StoreFuture, StripeEventStore,
    UnknownValue,
};

const COLUMNS: &str =
    "event_id, event_type, status, waiting_on, outcome, payload, received_at, processed_at";

fn event_from_row(row: &Row) -> Result<EventRecord, StoreError> {
    let event_id: String = row.try_get(0)?;
    let status: String = row.try_get(2)?;
    Ok(EventRecord {
        status: EventStatus::parse(&status).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "stripe_events",
                &event_id,
                "status",
                status.clone(),
            ))
        })?,
        event_id,
        event_type: row.try_get(1)?,
        waiting_on: row.try_get(3)?,
        detail: row.try_get(4)?,
        payload: row.try_get(5)?,
        received_at_ms: row.try_get(6)?,
        decided_at_ms: row.try_get(7)?,
    })
}

/// The status of an event recorded already, if it is.
async fn status_of(
    client: &impl GenericClient,
    event_id: &str,
) -> Result<Option<EventStatus>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT status FROM stripe_events WHERE event_id = $1",
            &[&event_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let status: String = row.try_get(0)?;
    EventStatus::parse(&status).map(Some).ok_or_else(|| {
        StoreError::UnknownValue(UnknownValue::new(
            "stripe_events",
            event_id,
            "status",
            status,
        ))
    })
}

impl StripeEventStore for PostgresStore {
    fn receive(&self, event: ReceivedEvent) -> StoreFuture<Reception> {
        // Most deliveries of a decided event are Stripe's retries: a
        // reader answers them without a place in the writer's queue (a
        // decision is final, so what a reader sees of one stays true).
        let writer = self.writer.clone();
        let event_id = event.event_id.clone();
        let decided = self.read(move |client| async move {
            Ok(status_of(client.as_ref(), &event_id)
                .await?
                .filter(|status| status.is_final()))
        });
        Box::pin(async move {
            if let Some(status) = decided.await? {
                return Ok(Reception::Decided(status));
            }
            claim(&writer, event).await
        })
    }

    fn decide(&self, decision: EventDecision) -> StoreFuture<()> {
        self.write(move |transaction| {
            let (event_id, waiting_on, detail) = (
                decision.event_id.clone(),
                decision.waiting_on.clone(),
                decision.detail.clone(),
            );
            let status = decision.status;
            let decided_at = (status != EventStatus::Waiting).then_some(decision.now_ms);
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE stripe_events
                            SET status = $2, waiting_on = $3, outcome = $4, processed_at = $5,
                                claimed_by = NULL, claimed_until = NULL
                          WHERE event_id = $1 AND status IN ('received', 'waiting')",
                        &[
                            &event_id,
                            &status.as_str(),
                            &waiting_on,
                            &detail,
                            &decided_at,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn waiting_on(&self, keys: Vec<String>) -> StoreFuture<Vec<EventRecord>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM stripe_events
                          WHERE status = 'waiting' AND waiting_on = ANY($1)"
                    ),
                    &[&keys],
                )
                .await?;
            let mut found: Vec<EventRecord> =
                rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
            found.sort_by(|left, right| {
                (left.received_at_ms, &left.event_id).cmp(&(right.received_at_ms, &right.event_id))
            });
            Ok(found)
        })
    }

    fn waiting_unblocked(
        &self,
        key_prefix: String,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> StoreFuture<Vec<EventRecord>> {
        self.read(move |client| async move {
            let (after_at, after_id) = after.unzip();
            // Each waiting event probes its order by the PaymentIntent's
            // unique index.
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM stripe_events
                          WHERE status = 'waiting' AND starts_with(waiting_on, $1)
                            AND EXISTS (SELECT 1 FROM orders
                                         WHERE stripe_payment_intent_id
                                               = substr(waiting_on, length($1) + 1)
                                           AND status <> 'pending')
                            AND ($3::BIGINT IS NULL OR (received_at, event_id) > ($3, $4::TEXT))
                          ORDER BY received_at, event_id LIMIT $2"
                    ),
                    &[&key_prefix, &limit, &after_at, &after_id],
                )
                .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn expire_waiting(&self, received_before_ms: i64, now_ms: i64) -> StoreFuture<usize> {
        self.write(move |transaction| {
            boxed(async move {
                Ok(transaction
                    .execute(
                        "UPDATE stripe_events
                            SET status = 'expired', processed_at = $2,
                                outcome = 'gave up after 3 days: ' || COALESCE(outcome, 'waited')
                          WHERE status = 'waiting' AND received_at < $1",
                        &[&received_before_ms, &now_ms],
                    )
                    .await? as usize)
            })
        })
    }

    fn list(&self, status: Option<EventStatus>, limit: i64) -> StoreFuture<Vec<EventRecord>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM stripe_events
                          WHERE $1::text IS NULL OR status = $1
                          ORDER BY received_at DESC, event_id DESC LIMIT $2"
                    ),
                    &[&status.map(EventStatus::as_str), &limit],
                )
                .await?;
            rows.iter().map(event_from_row).collect()
        })
    }
}

/// Records a delivery or claims the event for this instance, in the writer.
fn claim(
    writer: &tokio::sync::mpsc::UnboundedSender<super::WriterMessage>,
    event: ReceivedEvent,
) -> StoreFuture<Reception> {
    super::write_on(writer, move |transaction| {
        let (event_id, event_type, payload, instance_id) = (
            event.event_id.clone(),
            event.event_type.clone(),
            event.payload.clone(),
            event.instance_id.clone(),
        );
        let (now_ms, lease_until_ms) = (event.now_ms, event.lease_until_ms);
        boxed(async move {
            let inserted = transaction
                    .execute(
                        "INSERT INTO stripe_events (event_id, event_type, received_at, payload, status,
                                                    claimed_by, claimed_until)
                         VALUES ($1, $2, $3, $4, 'received', $5, $6) ON CONFLICT (event_id) DO NOTHING",
                        &[&event_id, &event_type, &now_ms, &payload, &instance_id, &lease_until_ms],
                    )
                    .await?;
            if inserted == 1 {
                return Ok(Reception::Claimed);
            }
            let claimed = transaction
                .execute(
                    "UPDATE stripe_events
                            SET claimed_by = $2, claimed_until = $3, payload = COALESCE(payload, $5)
                          WHERE event_id = $1 AND status IN ('received', 'waiting')
                            AND (claimed_by IS NULL OR claimed_by = $2 OR claimed_until < $4)",
                    &[&event_id, &instance_id, &lease_until_ms, &now_ms, &payload],
                )
                .await?;
            if claimed == 1 {
                return Ok(Reception::Claimed);
            }
            let status = status_of(transaction, &event_id)
                .await?
                .ok_or_else(|| StoreError::Database(format!("event {event_id} vanished")))?;
            Ok(if status.is_final() {
                Reception::Decided(status)
            } else {
                Reception::Busy
            })
        })
    })
}

//! Messages sent and received in Postgres: outbound reservations and their
//! resolution, service messages, Twilio's statuses and prices, inbound
//! commands deduplicated (and claimed) by MessageSid, and notices. The
//! claims that several instances race for take their rows with
//! `FOR UPDATE SKIP LOCKED`.

use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};

use super::accounts::find_account_by_phone;
use super::{boxed, is_unique_violation, PostgresStore};
use crate::accounts::{Account, PhoneNumber};
use crate::ledger::AccountId;
use crate::messaging::notices::{Notice, NoticeKind, NoticeState};
use crate::messaging::records::{
    MarkSentError, MessageKind, MessageRecord, MessageState, NewMessage, OpenReservation,
    ReservationSweep, SentCost, VoidStart,
};
use crate::money::Money;
use crate::store::{
    InboundClaim, InboundRecord, MessageStore, PriceCheck, StoreError, StoreFuture, UnknownValue,
};

const COLUMNS: &str = "id, account_id, kind, idempotency_key, to_number, country, encoding, segments,
                       price_per_segment, charged, state, twilio_sid, twilio_status, refunded, actual_cost, created_at";

fn from_row(row: &Row) -> Result<MessageRecord, StoreError> {
    let id: i64 = row.try_get(0)?;
    let kind: String = row.try_get(2)?;
    let state: String = row.try_get(10)?;
    let unknown = |column: &'static str, value: String| {
        StoreError::UnknownValue(UnknownValue::new("messages", id, column, value))
    };
    Ok(MessageRecord {
        id,
        account_id: row.try_get::<_, Option<i64>>(1)?.map(AccountId),
        kind: MessageKind::parse(&kind).ok_or_else(|| unknown("kind", kind.clone()))?,
        idempotency_key: row.try_get(3)?,
        to: row.try_get(4)?,
        country: row.try_get(5)?,
        encoding: row.try_get(6)?,
        segments: row.try_get(7)?,
        price_per_segment: Money::from_micros(row.try_get(8)?),
        charged: Money::from_micros(row.try_get(9)?),
        state: MessageState::parse(&state).ok_or_else(|| unknown("state", state.clone()))?,
        twilio_sid: row.try_get(11)?,
        twilio_status: row.try_get(12)?,
        // A send that was not made (voided) had its cost given back too.
        refunded: row.try_get::<_, i64>(13)? == 1 || state == "voided",
        actual_cost: row.try_get::<_, Option<i64>>(14)?.map(Money::from_micros),
        created_at_ms: row.try_get(15)?,
    })
}

/// Records a message. Typed, so one round trip (parse, bind and execute
/// together) instead of a prepare and an execute: it is on every message's
/// path.
async fn insert(
    client: &impl GenericClient,
    message: &NewMessage,
) -> Result<MessageRecord, StoreError> {
    let row = client
        .query_typed_one(
            &format!(
                "INSERT INTO messages (account_id, kind, idempotency_key, to_number, country, encoding, segments,
                                       price_per_segment, carrier_cost_per_segment, charged, state, twilio_sid,
                                       next_price_check_at, created_at, instance_id, body_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 RETURNING {COLUMNS}"
            ),
            &[
                (&message.account_id.map(|id| id.0), Type::INT8),
                (&message.kind.as_str(), Type::TEXT),
                (&message.idempotency_key, Type::TEXT),
                (&message.to, Type::TEXT),
                (&message.country, Type::TEXT),
                (&message.encoding, Type::TEXT),
                (&message.segments, Type::INT8),
                (&message.price_per_segment.micros(), Type::INT8),
                (&message.carrier_cost_per_segment.micros(), Type::INT8),
                (&message.charged.micros(), Type::INT8),
                (&message.state.as_str(), Type::TEXT),
                (&message.twilio_sid, Type::TEXT),
                (&message.next_price_check_at, Type::INT8),
                (&message.created_at_ms, Type::INT8),
                (&message.instance_id, Type::TEXT),
                (&message.body_sha256, Type::TEXT),
            ],
        )
        .await?;
    from_row(&row)
}

/// [`COLUMNS`], named by the table's alias `m` (where another table is joined).
const RETURNED: &str = "m.id, m.account_id, m.kind, m.idempotency_key, m.to_number, m.country, m.encoding,
                        m.segments, m.price_per_segment, m.charged, m.state, m.twilio_sid, m.twilio_status,
                        m.refunded, m.actual_cost, m.created_at";

/// The message matching `condition`, in one round trip (typed values).
async fn find_where(
    client: &impl GenericClient,
    condition: &str,
    values: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
) -> Result<Option<MessageRecord>, StoreError> {
    client
        .query_typed_opt(
            &format!("SELECT {COLUMNS} FROM messages WHERE {condition}"),
            values,
        )
        .await?
        .map(|row| from_row(&row))
        .transpose()
}

async fn inbound_reply(
    client: &impl GenericClient,
    message_sid: &str,
) -> Result<Option<Option<String>>, StoreError> {
    let found = client
        .query_typed_opt(
            "SELECT reply FROM inbound_messages WHERE message_sid = $1 AND state = 'answered'",
            &[(&message_sid, Type::TEXT)],
        )
        .await?;
    Ok(found
        .map(|row| row.try_get::<_, Option<String>>(0))
        .transpose()?)
}

fn notice_from_row(row: &Row) -> Result<Notice, StoreError> {
    let id: i64 = row.try_get(0)?;
    let payload: String = row.try_get(2)?;
    let state: String = row.try_get(3)?;
    Ok(Notice {
        id,
        account_id: AccountId(row.try_get(1)?),
        kind: serde_json::from_str::<NoticeKind>(&payload).map_err(|_| {
            StoreError::UnknownValue(UnknownValue::new("notices", id, "payload", payload.clone()))
        })?,
        state: NoticeState::parse(&state).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new("notices", id, "state", state.clone()))
        })?,
        attempts: row.try_get(4)?,
        created_at_ms: row.try_get(5)?,
        sent_at_ms: row.try_get(6)?,
        last_error: row.try_get(7)?,
    })
}

const NOTICE_COLUMNS: &str =
    "id, account_id, payload, state, attempts, created_at, sent_at, last_error";
/// The same, named by table (where another table is joined).
const NOTICE_COLUMNS_OF_NOTICES: &str = "notices.id, notices.account_id, notices.payload,
    notices.state, notices.attempts, notices.created_at, notices.sent_at, notices.last_error";

impl MessageStore for PostgresStore {
    fn reserve_outbound(&self, message: NewMessage) -> StoreFuture<(MessageRecord, bool)> {
        self.write(move |transaction| {
            let message = message.clone();
            boxed(async move {
                if let (Some(account_id), Some(key)) =
                    (message.account_id, &message.idempotency_key)
                {
                    let existing = find_where(
                        transaction,
                        "account_id = $1 AND idempotency_key = $2",
                        &[(&account_id.0, Type::INT8), (key, Type::TEXT)],
                    )
                    .await?;
                    if let Some(existing) = existing {
                        return Ok((existing, false));
                    }
                }
                Ok((insert(transaction, &message).await?, true))
            })
        })
    }

    fn forget_reservation(&self, message_id: i64) -> StoreFuture<()> {
        self.write(move |transaction| {
            boxed(async move {
                transaction
                    .execute(
                        "DELETE FROM messages WHERE id = $1 AND state = 'reserved'",
                        &[&message_id],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn mark_sent(
        &self,
        message_id: i64,
        twilio_sid: String,
        twilio_status: String,
        price_check_at: i64,
    ) -> StoreFuture<(Option<MessageRecord>, Option<String>), MarkSentError> {
        self.write(move |transaction| {
            let (twilio_sid, twilio_status) = (twilio_sid.clone(), twilio_status.clone());
            boxed(async move {
                // Typed statements: one round trip each, on every sent
                // message's path. A sid another message holds is refused by
                // the unique index (no look first: it would cost a round
                // trip on every send, and would miss a row another instance
                // has not committed yet).
                let moved = transaction
                    .execute_typed(
                        "UPDATE messages SET state = 'sent', twilio_sid = $2, twilio_status = $3,
                                next_price_check_at = $4, next_sweep_at = NULL
                          WHERE id = $1 AND state = 'reserved' AND voiding = 0",
                        &[
                            (&message_id, Type::INT8),
                            (&twilio_sid, Type::TEXT),
                            (&twilio_status, Type::TEXT),
                            (&price_check_at, Type::INT8),
                        ],
                    )
                    .await;
                match moved {
                    Ok(_) => {}
                    // Another message holds the sid (recorded before, or by
                    // another instance in the same moment): the index
                    // decided, and this op alone is rolled back.
                    Err(error) if is_unique_violation(&error) => {
                        return Err(MarkSentError::SidTaken(twilio_sid));
                    }
                    Err(error) => return Err(StoreError::from(error).into()),
                }
                let early = transaction
                    .query_typed_opt(
                        "DELETE FROM early_message_statuses WHERE twilio_sid = $1 RETURNING status",
                        &[(&twilio_sid, Type::TEXT)],
                    )
                    .await
                    .map_err(StoreError::from)?
                    .map(|row| row.try_get::<_, String>(0))
                    .transpose()
                    .map_err(StoreError::from)?;
                let record =
                    find_where(transaction, "id = $1", &[(&message_id, Type::INT8)]).await?;
                Ok((record, early))
            })
        })
    }

    fn begin_void(&self, message_id: i64) -> StoreFuture<VoidStart> {
        self.write(move |transaction| {
            boxed(async move {
                let started = transaction
                    .execute(
                        "UPDATE messages SET voiding = 1 WHERE id = $1 AND state = 'reserved'",
                        &[&message_id],
                    )
                    .await?;
                if started == 1 {
                    return Ok(VoidStart::Started);
                }
                find_where(transaction, "id = $1", &[(&message_id, Type::INT8)])
                    .await?
                    .map(|message| VoidStart::Resolved(Box::new(message)))
                    .ok_or_else(|| {
                        StoreError::Database(format!("message {message_id} is not there to void"))
                    })
            })
        })
    }

    fn mark_voided(&self, message_id: i64) -> StoreFuture<bool> {
        self.write(move |transaction| {
            boxed(async move {
                let changed = transaction
                    .execute(
                        "UPDATE messages SET state = 'voided', twilio_sid = NULL, twilio_status = NULL,
                                next_price_check_at = NULL, next_sweep_at = NULL
                          WHERE id = $1 AND state = 'reserved'",
                        &[&message_id],
                    )
                    .await?;
                Ok(changed == 1)
            })
        })
    }

    fn claim_open_reservations(
        &self,
        sweep: ReservationSweep,
    ) -> StoreFuture<Vec<OpenReservation>> {
        self.write(move |transaction| {
            let sweep = sweep.clone();
            boxed(async move {
                // Each instance is alive by its own timeout (the
                // sweeper's for a row that does not say it).
                let alive = format!(
                    "(SELECT id FROM instances WHERE heartbeat_at >= $1 - COALESCE({}, $7))",
                    super::accounts::INSTANCE_TIMEOUT
                );
                // Picked once (`MATERIALIZED`), as the other claims are.
                let rows = transaction
                    .query(
                        &format!(
                            "WITH picked AS MATERIALIZED (
                               SELECT id FROM messages
                                WHERE state = 'reserved'
                                  AND (next_sweep_at IS NULL OR next_sweep_at <= $1
                                       OR swept_by IS NULL OR swept_by NOT IN {alive})
                                  AND (created_at < $3
                                       OR (created_at < $2
                                           AND (instance_id IS NULL OR instance_id NOT IN {alive})))
                                ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED)
                             UPDATE messages m SET next_sweep_at = $4, swept_by = $6
                               FROM picked WHERE m.id = picked.id
                             RETURNING {RETURNED}, m.body_sha256, m.voiding,
                                       m.created_at < $2
                                       AND (m.instance_id IS NULL OR m.instance_id NOT IN {alive})"
                        ),
                        &[
                            &sweep.now_ms,
                            &sweep.now_ms.saturating_sub(sweep.fallback_timeout_ms),
                            &sweep.stale_before_ms,
                            &sweep.lease_until_ms,
                            &sweep.limit,
                            &sweep.instance_id,
                            &sweep.fallback_timeout_ms,
                        ],
                    )
                    .await?;
                let mut open = rows
                    .iter()
                    .map(|row| {
                        let message = from_row(row)?;
                        let voiding: i64 = row.try_get(17)?;
                        Ok(OpenReservation {
                            body_sha256: row.try_get(16)?,
                            voiding: match voiding {
                                0 => false,
                                1 => true,
                                other => {
                                    return Err(StoreError::UnknownValue(UnknownValue::new(
                                        "messages",
                                        message.id,
                                        "voiding",
                                        other.to_string(),
                                    )))
                                }
                            },
                            owner_gone: row.try_get(18)?,
                            message,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                open.sort_by_key(|reservation| reservation.message.id);
                Ok(open)
            })
        })
    }

    fn record_status(
        &self,
        twilio_sid: String,
        status: String,
        now_ms: i64,
    ) -> StoreFuture<Option<MessageRecord>> {
        self.write(move |transaction| {
            let (twilio_sid, status) = (twilio_sid.clone(), status.clone());
            boxed(async move {
                let Some(record) =
                    find_where(transaction, "twilio_sid = $1", &[(&twilio_sid, Type::TEXT)])
                        .await?
                else {
                    transaction
                        .execute(
                            "INSERT INTO early_message_statuses (twilio_sid, status, received_at)
                             VALUES ($1, $2, $3)
                             ON CONFLICT (twilio_sid) DO UPDATE
                                SET status = CASE WHEN early_message_statuses.status = 'failed'
                                                  THEN early_message_statuses.status
                                                  ELSE excluded.status END,
                                    received_at = excluded.received_at",
                            &[&twilio_sid, &status, &now_ms],
                        )
                        .await?;
                    return Ok(None);
                };
                transaction
                    .execute(
                        "UPDATE messages SET twilio_status = $2 WHERE id = $1",
                        &[&record.id, &status],
                    )
                    .await?;
                Ok(Some(record))
            })
        })
    }

    fn mark_refunded(&self, message_id: i64) -> StoreFuture<bool> {
        self.write(move |transaction| {
            boxed(async move {
                let changed = transaction
                    .execute(
                        "UPDATE messages SET refunded = 1 WHERE id = $1 AND refunded = 0",
                        &[&message_id],
                    )
                    .await?;
                Ok(changed == 1)
            })
        })
    }

    fn record_service(&self, message: NewMessage) -> StoreFuture<MessageRecord> {
        self.write(move |transaction| {
            let message = message.clone();
            boxed(async move { insert(transaction, &message).await })
        })
    }

    fn inbound_reply_and_account(
        &self,
        message_sid: String,
        phone: Option<PhoneNumber>,
    ) -> StoreFuture<(Option<Option<String>>, Option<Account>)> {
        self.read(move |client| async move {
            let earlier = inbound_reply(&*client, &message_sid).await?;
            let found = match &phone {
                Some(phone) if earlier.is_none() => find_account_by_phone(&*client, phone).await?,
                _ => None,
            };
            Ok((earlier, found))
        })
    }

    fn claim_inbound(
        &self,
        message_sid: String,
        from: String,
        body: String,
        instance_id: String,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreFuture<InboundClaim> {
        self.write(move |transaction| {
            let (message_sid, from, body, instance_id) = (
                message_sid.clone(),
                from.clone(),
                body.clone(),
                instance_id.clone(),
            );
            boxed(async move {
                // Typed: one round trip, on every inbound message's path.
                let inserted = transaction
                    .execute_typed(
                        "INSERT INTO inbound_messages (message_sid, from_number, body, reply, created_at, state,
                                                       claimed_by, claimed_until)
                         VALUES ($1, $2, $3, NULL, $4, 'claimed', $5, $6) ON CONFLICT (message_sid) DO NOTHING",
                        &[
                            (&message_sid, Type::TEXT),
                            (&from, Type::TEXT),
                            (&body, Type::TEXT),
                            (&now_ms, Type::INT8),
                            (&instance_id, Type::TEXT),
                            (&lease_until_ms, Type::INT8),
                        ],
                    )
                    .await?;
                if inserted == 1 {
                    return Ok(InboundClaim::Mine);
                }
                let taken = transaction
                    .execute(
                        "UPDATE inbound_messages SET claimed_by = $2, claimed_until = $3
                          WHERE message_sid = $1 AND state = 'claimed'
                            AND (claimed_by = $2 OR claimed_by IS NULL OR claimed_until < $4)",
                        &[&message_sid, &instance_id, &lease_until_ms, &now_ms],
                    )
                    .await?;
                if taken == 1 {
                    return Ok(InboundClaim::Mine);
                }
                Ok(match inbound_reply(transaction, &message_sid).await? {
                    Some(reply) => InboundClaim::Answered(reply),
                    None => InboundClaim::Busy,
                })
            })
        })
    }

    fn record_inbound(&self, inbound: InboundRecord) -> StoreFuture<InboundClaim> {
        self.write(move |transaction| {
            let (message_sid, instance_id, from, body, reply, reply_cost) = (
                inbound.message_sid.clone(),
                inbound.instance_id.clone(),
                inbound.from.clone(),
                inbound.body.clone(),
                inbound.reply.clone(),
                inbound.reply_cost.clone(),
            );
            let (phone, opt_change) = (inbound.phone.clone(), inbound.opt_change.clone());
            let withhold_if_opted_out = inbound.withhold_if_opted_out;
            let account_id = inbound.account_id.map(|id| id.0);
            let now_ms = inbound.now_ms;
            boxed(async move {
                let withheld = match &phone {
                    Some(phone) if withhold_if_opted_out => {
                        super::opt_outs::opt_out_of(transaction, phone)
                            .await?
                            .is_some()
                    }
                    _ => false,
                };
                let reply = if withheld { None } else { reply };
                let answered = transaction
                    .execute_typed(
                        "UPDATE inbound_messages
                            SET state = 'answered', reply = $2, account_id = $3, claimed_by = NULL,
                                claimed_until = NULL
                          WHERE message_sid = $1 AND state = 'claimed'
                            AND (claimed_by = $4 OR claimed_by IS NULL)",
                        &[
                            (&message_sid, Type::TEXT),
                            (&reply, Type::TEXT),
                            (&account_id, Type::INT8),
                            (&instance_id, Type::TEXT),
                        ],
                    )
                    .await?;
                let mine = answered == 1
                    || transaction
                        .execute(
                            "INSERT INTO inbound_messages (message_sid, from_number, account_id, body, reply,
                                                           created_at, state)
                             VALUES ($1, $2, $3, $4, $5, $6, 'answered') ON CONFLICT (message_sid) DO NOTHING",
                            &[&message_sid, &from, &account_id, &body, &reply, &now_ms],
                        )
                        .await?
                        == 1;
                if mine {
                    if let (Some(change), Some(phone)) = (&opt_change, &phone) {
                        super::opt_outs::apply(transaction, phone, change, now_ms).await?;
                    }
                    if withheld {
                        return Ok(InboundClaim::Withheld);
                    }
                    if let Some(reply_cost) = &reply_cost {
                        insert(transaction, reply_cost).await?;
                    }
                    return Ok(InboundClaim::Mine);
                }
                Ok(match inbound_reply(transaction, &message_sid).await? {
                    Some(reply) => InboundClaim::Answered(reply),
                    None => InboundClaim::Busy,
                })
            })
        })
    }

    fn release_inbound(
        &self,
        message_sid: String,
        instance_id: String,
        reply_cost: Option<NewMessage>,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let (message_sid, instance_id, reply_cost) =
                (message_sid.clone(), instance_id.clone(), reply_cost.clone());
            boxed(async move {
                let released = transaction
                    .execute(
                        "UPDATE inbound_messages SET claimed_by = NULL, claimed_until = NULL
                          WHERE message_sid = $1 AND state = 'claimed' AND claimed_by = $2",
                        &[&message_sid, &instance_id],
                    )
                    .await?;
                if let Some(reply_cost) = &reply_cost {
                    insert(transaction, reply_cost).await?;
                }
                Ok(released == 1)
            })
        })
    }

    fn claim_price_checks(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<PriceCheck>> {
        self.write(move |transaction| {
            boxed(async move {
                // The rows are picked once (`MATERIALIZED`): a subquery
                // under `IN` may be scanned again for each row of the
                // table (a nested loop), each scan skipping the rows just
                // claimed and picking as many more, past the `LIMIT`.
                let rows = transaction
                    .query(
                        "WITH picked AS MATERIALIZED (
                           SELECT id FROM messages
                            WHERE actual_cost IS NULL AND twilio_sid IS NOT NULL
                              AND next_price_check_at <= $1
                            ORDER BY next_price_check_at LIMIT $3
                            FOR UPDATE SKIP LOCKED)
                         UPDATE messages m SET next_price_check_at = $2
                           FROM picked WHERE m.id = picked.id
                         RETURNING m.id, m.twilio_sid, m.price_checks",
                        &[&now_ms, &lease_until_ms, &limit],
                    )
                    .await?;
                let mut checks = rows
                    .iter()
                    .map(|row| {
                        Ok(PriceCheck {
                            message_id: row.try_get(0)?,
                            twilio_sid: row.try_get(1)?,
                            checks: row.try_get(2)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                checks.sort_by_key(|check| check.message_id);
                Ok(checks)
            })
        })
    }

    fn record_price_check(
        &self,
        message_id: i64,
        actual_cost: Option<Money>,
        next_check_at: Option<i64>,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE messages SET actual_cost = COALESCE($2, actual_cost),
                                price_checks = price_checks + 1, next_price_check_at = $3
                          WHERE id = $1",
                        &[&message_id, &actual_cost.map(Money::micros), &next_check_at],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn sent_costs(&self) -> StoreFuture<Vec<SentCost>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT id, twilio_sid, kind, country, segments, charged, carrier_cost_per_segment,
                            actual_cost
                       FROM messages WHERE state = 'sent' ORDER BY id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let id: i64 = row.try_get(0)?;
                    let kind: String = row.try_get(2)?;
                    Ok(SentCost {
                        message_id: id,
                        twilio_sid: row.try_get(1)?,
                        kind: MessageKind::parse(&kind).ok_or_else(|| {
                            StoreError::UnknownValue(UnknownValue::new(
                                "messages",
                                id,
                                "kind",
                                kind.clone(),
                            ))
                        })?,
                        country: row.try_get(3)?,
                        segments: row.try_get(4)?,
                        charged: Money::from_micros(row.try_get(5)?),
                        carrier_cost_per_segment: Money::from_micros(row.try_get(6)?),
                        actual_cost: row.try_get::<_, Option<i64>>(7)?.map(Money::from_micros),
                    })
                })
                .collect()
        })
    }

    fn claim_notices(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<Notice>> {
        self.write(move |transaction| {
            boxed(async move {
                let rows = transaction
                    .query(
                        &format!(
                            "WITH picked AS MATERIALIZED (
                               SELECT id FROM notices WHERE state = 'pending' AND next_attempt_at <= $1
                                  AND NOT EXISTS (SELECT 1 FROM messages
                                                   WHERE messages.id = notices.after_message
                                                     AND messages.state = 'reserved')
                                ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                             UPDATE notices SET state = 'sending', attempts = notices.attempts + 1,
                                    claimed_until = $2
                               FROM picked WHERE notices.id = picked.id
                             RETURNING {NOTICE_COLUMNS_OF_NOTICES}"
                        ),
                        &[&now_ms, &lease_until_ms, &limit],
                    )
                    .await?;
                let mut claimed: Vec<Notice> =
                    rows.iter().map(notice_from_row).collect::<Result<_, _>>()?;
                claimed.sort_by_key(|notice| notice.id);
                Ok(claimed)
            })
        })
    }

    fn messages_of(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<MessageRecord>> {
        self.read(move |client| async move {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM messages WHERE account_id = $1 ORDER BY id DESC LIMIT $2"
                    ),
                    &[&account_id.0, &limit],
                )
                .await?
                .iter()
                .map(from_row)
                .collect()
        })
    }

    fn pending_warning_after(&self, message_id: i64) -> StoreFuture<Option<i64>> {
        self.read(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT id FROM notices WHERE after_message = $1
                        AND kind = 'low_balance_warning' AND state = 'pending'",
                    &[&message_id],
                )
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    fn notices_of(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<Notice>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {NOTICE_COLUMNS} FROM notices WHERE account_id = $1 ORDER BY id DESC LIMIT $2"
                    ),
                    &[&account_id.0, &limit],
                )
                .await?;
            rows.iter().map(notice_from_row).collect()
        })
    }

    fn abandon_stale_notices(&self, now_ms: i64) -> StoreFuture<usize> {
        self.write(move |transaction| {
            boxed(async move {
                Ok(transaction
                    .execute(
                        "UPDATE notices SET state = 'unknown', last_error = 'its worker stopped mid-send'
                          WHERE state = 'sending' AND claimed_until < $1",
                        &[&now_ms],
                    )
                    .await? as usize)
            })
        })
    }

    fn notice_sent(
        &self,
        notice_id: i64,
        twilio_sid: String,
        cost: NewMessage,
        now_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let (twilio_sid, cost) = (twilio_sid.clone(), cost.clone());
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE notices SET state = 'sent', sent_at = $2, twilio_sid = $3, claimed_until = NULL
                          WHERE id = $1",
                        &[&notice_id, &now_ms, &twilio_sid],
                    )
                    .await?;
                insert(transaction, &cost).await?;
                Ok(())
            })
        })
    }

    fn notice_retry(&self, notice_id: i64, next_attempt_at: i64, error: String) -> StoreFuture<()> {
        self.write(move |transaction| {
            let error = error.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE notices SET state = 'pending', next_attempt_at = $2, last_error = $3,
                                claimed_until = NULL
                          WHERE id = $1 AND state = 'sending'",
                        &[&notice_id, &next_attempt_at, &error],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn notice_ended(&self, notice_id: i64, state: NoticeState, error: String) -> StoreFuture<()> {
        self.write(move |transaction| {
            let error = error.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE notices SET state = $2, last_error = $3, claimed_until = NULL
                          WHERE id = $1 AND state = 'sending'",
                        &[&notice_id, &state.as_str(), &error],
                    )
                    .await?;
                Ok(())
            })
        })
    }
}

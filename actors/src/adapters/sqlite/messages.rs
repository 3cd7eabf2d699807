//! Messages sent and received in SQLite: outbound reservations and their
//! resolution, service messages, Twilio's statuses and prices, inbound
//! commands deduplicated by MessageSid.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::accounts::find_account_by_phone;
use super::SqliteStore;
use crate::accounts::{Account, PhoneNumber};
use crate::ledger::AccountId;
use crate::messaging::notices::{NewNotice, Notice, NoticeKind, NoticeState};
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

fn from_row(row: &Row<'_>) -> rusqlite::Result<MessageRecord> {
    let id: i64 = row.get(0)?;
    let kind: String = row.get(2)?;
    let state: String = row.get(10)?;
    Ok(MessageRecord {
        id,
        account_id: row.get::<_, Option<i64>>(1)?.map(AccountId),
        kind: MessageKind::parse(&kind).ok_or_else(|| {
            UnknownValue::new("messages", id, "kind", kind.clone()).into_sql_error(2)
        })?,
        idempotency_key: row.get(3)?,
        to: row.get(4)?,
        country: row.get(5)?,
        encoding: row.get(6)?,
        segments: row.get(7)?,
        price_per_segment: Money::from_micros(row.get(8)?),
        charged: Money::from_micros(row.get(9)?),
        state: MessageState::parse(&state).ok_or_else(|| {
            UnknownValue::new("messages", id, "state", state.clone()).into_sql_error(10)
        })?,
        twilio_sid: row.get(11)?,
        twilio_status: row.get(12)?,
        // A send that was not made (voided) had its cost given back too.
        refunded: row.get::<_, i64>(13)? == 1 || state == "voided",
        actual_cost: row.get::<_, Option<i64>>(14)?.map(Money::from_micros),
        created_at_ms: row.get(15)?,
    })
}

fn insert(connection: &Connection, message: &NewMessage) -> Result<MessageRecord, StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO messages (account_id, kind, idempotency_key, to_number, country, encoding, segments,
                                   price_per_segment, carrier_cost_per_segment, charged, state, twilio_sid,
                                   next_price_check_at, created_at, instance_id, body_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?
        .execute(params![
            message.account_id.map(|id| id.0),
            message.kind.as_str(),
            message.idempotency_key,
            message.to,
            message.country,
            message.encoding,
            message.segments,
            message.price_per_segment.micros(),
            message.carrier_cost_per_segment.micros(),
            message.charged.micros(),
            message.state.as_str(),
            message.twilio_sid,
            message.next_price_check_at,
            message.created_at_ms,
            message.instance_id,
            message.body_sha256,
        ])?;
    get(connection, connection.last_insert_rowid())?
        .ok_or_else(|| StoreError::Database("inserted message vanished".into()))
}

fn find_by(
    connection: &Connection,
    condition: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<Option<MessageRecord>, StoreError> {
    let found = connection
        .prepare_cached(&format!("SELECT {COLUMNS} FROM messages WHERE {condition}"))?
        .query_row(values, from_row)
        .optional()?;
    Ok(found)
}

fn get(connection: &Connection, id: i64) -> Result<Option<MessageRecord>, StoreError> {
    find_by(connection, "id = ?1", &[&id])
}

fn find_by_key(
    connection: &Connection,
    account_id: AccountId,
    key: &str,
) -> Result<Option<MessageRecord>, StoreError> {
    find_by(
        connection,
        "account_id = ?1 AND idempotency_key = ?2",
        &[&account_id.0, &key],
    )
}

fn find_by_sid(connection: &Connection, sid: &str) -> Result<Option<MessageRecord>, StoreError> {
    find_by(connection, "twilio_sid = ?1", &[&sid])
}

/// Moves a reserved message, not being voided, to sent with Twilio's id.
/// A sid another message holds is refused: one Twilio message is never the
/// send of two (the writer takes transactions one at a time, across
/// processes too, so the look and the move are one step).
fn mark_sent(
    connection: &Connection,
    id: i64,
    twilio_sid: &str,
    twilio_status: &str,
    next_price_check_at: i64,
) -> Result<(), MarkSentError> {
    if let Some(holder) = find_by_sid(connection, twilio_sid)? {
        if holder.id != id {
            return Err(MarkSentError::SidTaken(twilio_sid.to_string()));
        }
    }
    connection
        .prepare_cached(
            "UPDATE messages SET state = 'sent', twilio_sid = ?2, twilio_status = ?3, next_price_check_at = ?4,
                    next_sweep_at = NULL
              WHERE id = ?1 AND state = 'reserved' AND voiding = 0",
        )
        .and_then(|mut statement| {
            statement.execute(params![id, twilio_sid, twilio_status, next_price_check_at])
        })
        .map_err(StoreError::from)?;
    Ok(())
}

/// Moves a reserved message to voided. Returns whether it was still
/// reserved: a reservation is resolved exactly once.
fn mark_voided(connection: &Connection, id: i64) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached(
            "UPDATE messages SET state = 'voided', twilio_sid = NULL, twilio_status = NULL,
                    next_price_check_at = NULL, next_sweep_at = NULL
              WHERE id = ?1 AND state = 'reserved'",
        )?
        .execute([id])?;
    Ok(changed == 1)
}

/// Begins a void (see `MessageStore::begin_void`).
fn begin_void(connection: &Connection, id: i64) -> Result<VoidStart, StoreError> {
    let started = connection
        .prepare_cached("UPDATE messages SET voiding = 1 WHERE id = ?1 AND state = 'reserved'")?
        .execute([id])?;
    if started == 1 {
        return Ok(VoidStart::Started);
    }
    get(connection, id)?
        .map(|message| VoidStart::Resolved(Box::new(message)))
        .ok_or_else(|| StoreError::Database(format!("message {id} is not there to void")))
}

/// Records a status Twilio reported.
fn set_twilio_status(connection: &Connection, id: i64, status: &str) -> Result<(), StoreError> {
    connection
        .prepare_cached("UPDATE messages SET twilio_status = ?2 WHERE id = ?1")?
        .execute(params![id, status])?;
    Ok(())
}

/// Keeps a status for a sid no message has yet (see `take_early_status`).
fn keep_early_status(
    connection: &Connection,
    sid: &str,
    status: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO early_message_statuses (twilio_sid, status, received_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (twilio_sid) DO UPDATE
                SET status = CASE WHEN status = 'failed' THEN status ELSE excluded.status END,
                    received_at = excluded.received_at",
        )?
        .execute(params![sid, status, now_ms])?;
    Ok(())
}

/// Removes and returns a status that arrived before its message's sid was
/// recorded.
fn take_early_status(connection: &Connection, sid: &str) -> Result<Option<String>, StoreError> {
    Ok(connection
        .prepare_cached(
            "DELETE FROM early_message_statuses WHERE twilio_sid = ?1 RETURNING status",
        )?
        .query_row([sid], |row| row.get(0))
        .optional()?)
}

/// Marks a message refunded; `false` if it already was.
fn mark_refunded(connection: &Connection, id: i64) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached("UPDATE messages SET refunded = 1 WHERE id = ?1 AND refunded = 0")?
        .execute([id])?;
    Ok(changed == 1)
}

/// Reservations to resolve, each put under the sweep's lease (see
/// `MessageStore::claim_open_reservations`).
fn claim_open_reservations(
    connection: &Connection,
    sweep: ReservationSweep,
) -> Result<Vec<OpenReservation>, StoreError> {
    // Each instance is alive by its own timeout (the sweeper's for a row
    // that does not say it).
    let alive = format!(
        "(SELECT id FROM instances WHERE heartbeat_at >= ?1 - COALESCE({}, ?7))",
        super::accounts::INSTANCE_TIMEOUT
    );
    let mut statement = connection.prepare_cached(&format!(
        "UPDATE messages SET next_sweep_at = ?4, swept_by = ?6
          WHERE id IN (SELECT id FROM messages
                        WHERE state = 'reserved'
                          AND (next_sweep_at IS NULL OR next_sweep_at <= ?1
                               OR swept_by IS NULL OR swept_by NOT IN {alive})
                          AND (created_at < ?3
                               OR (created_at < ?2 AND (instance_id IS NULL OR instance_id NOT IN {alive})))
                        ORDER BY id LIMIT ?5)
         RETURNING {COLUMNS}, body_sha256, voiding,
                   created_at < ?2 AND (instance_id IS NULL OR instance_id NOT IN {alive})"
    ))?;
    let mut open = statement
        .query_map(
            params![
                sweep.now_ms,
                sweep.now_ms.saturating_sub(sweep.fallback_timeout_ms),
                sweep.stale_before_ms,
                sweep.lease_until_ms,
                sweep.limit,
                sweep.instance_id,
                sweep.fallback_timeout_ms
            ],
            |row| {
                let message = from_row(row)?;
                let voiding: i64 = row.get(17)?;
                Ok(OpenReservation {
                    body_sha256: row.get(16)?,
                    voiding: match voiding {
                        0 => false,
                        1 => true,
                        other => {
                            return Err(UnknownValue::new(
                                "messages",
                                message.id,
                                "voiding",
                                other.to_string(),
                            )
                            .into_sql_error(17))
                        }
                    },
                    owner_gone: row.get(18)?,
                    message,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    open.sort_by_key(|reservation| reservation.message.id);
    Ok(open)
}

/// The reply an inbound MessageSid got, if it was handled before:
/// `Some(reply)` where `reply` is `None` for "no reply".
fn inbound_reply(
    connection: &Connection,
    message_sid: &str,
) -> Result<Option<Option<String>>, StoreError> {
    let found = connection
        .prepare_cached(
            "SELECT reply FROM inbound_messages WHERE message_sid = ?1 AND state = 'answered'",
        )?
        .query_row([message_sid], |row| row.get(0))
        .optional()?;
    Ok(found)
}

/// Records an inbound message and its reply: this instance's claim on it,
/// or a claim let go, becomes the answer, or it is recorded if new; if it
/// was answered before, the reply it got; if another instance is answering
/// it, `Busy`.
fn record_inbound(
    connection: &Connection,
    inbound: &InboundRecord,
    reply: Option<&str>,
) -> Result<InboundClaim, StoreError> {
    let account_id = inbound.account_id.map(|id| id.0);
    let answered = connection
        .prepare_cached(
            "UPDATE inbound_messages
                SET state = 'answered', reply = ?2, account_id = ?3, claimed_by = NULL, claimed_until = NULL
              WHERE message_sid = ?1 AND state = 'claimed' AND (claimed_by = ?4 OR claimed_by IS NULL)",
        )?
        .execute(params![inbound.message_sid, reply, account_id, inbound.instance_id])?;
    if answered == 1 {
        return Ok(InboundClaim::Mine);
    }
    let inserted = connection
        .prepare_cached(
            "INSERT INTO inbound_messages (message_sid, from_number, account_id, body, reply, created_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'answered') ON CONFLICT (message_sid) DO NOTHING",
        )?
        .execute(params![
            inbound.message_sid,
            inbound.from,
            account_id,
            inbound.body,
            reply,
            inbound.now_ms
        ])?;
    if inserted == 1 {
        return Ok(InboundClaim::Mine);
    }
    Ok(match inbound_reply(connection, &inbound.message_sid)? {
        Some(reply) => InboundClaim::Answered(reply),
        None => InboundClaim::Busy,
    })
}

/// Claims an inbound message for an instance (see `MessageStore::claim_inbound`).
fn claim_inbound(
    connection: &Connection,
    message_sid: &str,
    from: &str,
    body: &str,
    instance_id: &str,
    now_ms: i64,
    lease_until_ms: i64,
) -> Result<InboundClaim, StoreError> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO inbound_messages (message_sid, from_number, body, reply, created_at, state,
                                           claimed_by, claimed_until)
             VALUES (?1, ?2, ?3, NULL, ?4, 'claimed', ?5, ?6) ON CONFLICT (message_sid) DO NOTHING",
        )?
        .execute(params![message_sid, from, body, now_ms, instance_id, lease_until_ms])?;
    if inserted == 1 {
        return Ok(InboundClaim::Mine);
    }
    // Taken over when the claim is this instance's, has lapsed or was let go.
    let taken = connection
        .prepare_cached(
            "UPDATE inbound_messages SET claimed_by = ?2, claimed_until = ?3
              WHERE message_sid = ?1 AND state = 'claimed'
                AND (claimed_by = ?2 OR claimed_by IS NULL OR claimed_until < ?4)",
        )?
        .execute(params![message_sid, instance_id, lease_until_ms, now_ms])?;
    if taken == 1 {
        return Ok(InboundClaim::Mine);
    }
    Ok(match inbound_reply(connection, message_sid)? {
        Some(reply) => InboundClaim::Answered(reply),
        None => InboundClaim::Busy,
    })
}

/// Lets go of an instance's claim on an inbound message, unanswered (see
/// `MessageStore::release_inbound`).
fn release_inbound(
    connection: &Connection,
    message_sid: &str,
    instance_id: &str,
) -> Result<bool, StoreError> {
    let released = connection
        .prepare_cached(
            "UPDATE inbound_messages SET claimed_by = NULL, claimed_until = NULL
              WHERE message_sid = ?1 AND state = 'claimed' AND claimed_by = ?2",
        )?
        .execute(params![message_sid, instance_id])?;
    Ok(released == 1)
}

/// Forgets a reservation whose debit was refused (nothing was reserved).
fn delete_reserved(connection: &Connection, id: i64) -> Result<(), StoreError> {
    connection
        .prepare_cached("DELETE FROM messages WHERE id = ?1 AND state = 'reserved'")?
        .execute([id])?;
    Ok(())
}

/// Stores Twilio's price, or schedules another look (`None` after the last try).
fn record_price_check(
    connection: &Connection,
    id: i64,
    actual_cost: Option<Money>,
    next_check_at: Option<i64>,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE messages SET actual_cost = COALESCE(?2, actual_cost), price_checks = price_checks + 1,
                    next_price_check_at = ?3
              WHERE id = ?1",
        )?
        .execute(params![id, actual_cost.map(Money::micros), next_check_at])?;
    Ok(())
}

/// Sent messages whose Twilio price is due, each put off to `lease_until`
/// so that no other worker looks it up meanwhile.
fn claim_price_checks(
    connection: &Connection,
    now_ms: i64,
    lease_until_ms: i64,
    limit: i64,
) -> Result<Vec<PriceCheck>, StoreError> {
    let mut statement = connection.prepare_cached(
        "UPDATE messages SET next_price_check_at = ?2
          WHERE id IN (SELECT id FROM messages
                        WHERE actual_cost IS NULL AND twilio_sid IS NOT NULL AND next_price_check_at <= ?1
                        ORDER BY next_price_check_at LIMIT ?3)
         RETURNING id, twilio_sid, price_checks",
    )?;
    let mut rows = statement
        .query_map(params![now_ms, lease_until_ms, limit], |row| {
            Ok(PriceCheck {
                message_id: row.get(0)?,
                twilio_sid: row.get(1)?,
                checks: row.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by_key(|check| check.message_id);
    Ok(rows)
}

fn sent_costs(connection: &Connection) -> Result<Vec<SentCost>, StoreError> {
    let mut statement = connection.prepare(
        "SELECT id, twilio_sid, kind, country, segments, charged, carrier_cost_per_segment, actual_cost
           FROM messages WHERE state = 'sent' ORDER BY id",
    )?;
    let rows = statement
        .query_map([], |row| {
            let id: i64 = row.get(0)?;
            let kind: String = row.get(2)?;
            Ok(SentCost {
                message_id: id,
                twilio_sid: row.get(1)?,
                kind: MessageKind::parse(&kind).ok_or_else(|| {
                    UnknownValue::new("messages", id, "kind", kind.clone()).into_sql_error(2)
                })?,
                country: row.get(3)?,
                segments: row.get(4)?,
                charged: Money::from_micros(row.get(5)?),
                carrier_cost_per_segment: Money::from_micros(row.get(6)?),
                actual_cost: row.get::<_, Option<i64>>(7)?.map(Money::from_micros),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Queues a notice (once per dedupe key); runs in the ledger write's transaction.
pub(super) fn queue(connection: &Connection, notice: &NewNotice) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO notices (account_id, kind, dedupe_key, payload, state, next_attempt_at, created_at,
                                  after_message)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?6) ON CONFLICT (dedupe_key) DO NOTHING",
        )?
        .execute(params![
            notice.account_id.0,
            notice.kind.as_str(),
            notice.dedupe_key,
            notice.payload(),
            notice.created_at_ms,
            notice.after_message,
        ])?;
    Ok(())
}

/// Withdraws a notice still `pending`; runs in the ledger write's
/// transaction (the write that gives its message's cost back).
pub(super) fn withdraw(connection: &Connection, notice_id: i64) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "UPDATE notices SET state = 'withdrawn',
                    last_error = 'its message was not sent: its cost was given back'
              WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![notice_id])?;
    Ok(())
}

fn notice_from_row(row: &Row<'_>) -> rusqlite::Result<Notice> {
    let id: i64 = row.get(0)?;
    let payload: String = row.get(2)?;
    let state: String = row.get(3)?;
    Ok(Notice {
        id,
        account_id: AccountId(row.get(1)?),
        kind: serde_json::from_str::<NoticeKind>(&payload).map_err(|_| {
            UnknownValue::new("notices", id, "payload", payload.clone()).into_sql_error(2)
        })?,
        state: NoticeState::parse(&state).ok_or_else(|| {
            UnknownValue::new("notices", id, "state", state.clone()).into_sql_error(3)
        })?,
        attempts: row.get(4)?,
        created_at_ms: row.get(5)?,
        sent_at_ms: row.get(6)?,
        last_error: row.get(7)?,
    })
}

const NOTICE_COLUMNS: &str =
    "id, account_id, payload, state, attempts, created_at, sent_at, last_error";

impl MessageStore for SqliteStore {
    fn reserve_outbound(&self, message: NewMessage) -> StoreFuture<(MessageRecord, bool)> {
        self.write(move |connection| {
            if let (Some(account_id), Some(key)) = (message.account_id, &message.idempotency_key) {
                if let Some(existing) = find_by_key(connection, account_id, key)? {
                    return Ok((existing, false));
                }
            }
            Ok((insert(connection, &message)?, true))
        })
    }

    fn forget_reservation(&self, message_id: i64) -> StoreFuture<()> {
        self.write(move |connection| delete_reserved(connection, message_id))
    }

    fn mark_sent(
        &self,
        message_id: i64,
        twilio_sid: String,
        twilio_status: String,
        price_check_at: i64,
    ) -> StoreFuture<(Option<MessageRecord>, Option<String>), MarkSentError> {
        self.write(move |connection| {
            mark_sent(
                connection,
                message_id,
                &twilio_sid,
                &twilio_status,
                price_check_at,
            )?;
            let early = take_early_status(connection, &twilio_sid)?;
            Ok((get(connection, message_id)?, early))
        })
    }

    fn begin_void(&self, message_id: i64) -> StoreFuture<VoidStart> {
        self.write(move |connection| begin_void(connection, message_id))
    }

    fn mark_voided(&self, message_id: i64) -> StoreFuture<bool> {
        self.write(move |connection| mark_voided(connection, message_id))
    }

    fn claim_open_reservations(
        &self,
        sweep: ReservationSweep,
    ) -> StoreFuture<Vec<OpenReservation>> {
        self.write(move |connection| claim_open_reservations(connection, sweep))
    }

    fn record_status(
        &self,
        twilio_sid: String,
        status: String,
        now_ms: i64,
    ) -> StoreFuture<Option<MessageRecord>> {
        self.write(move |connection| {
            let Some(record) = find_by_sid(connection, &twilio_sid)? else {
                keep_early_status(connection, &twilio_sid, &status, now_ms)?;
                return Ok(None);
            };
            set_twilio_status(connection, record.id, &status)?;
            Ok(Some(record))
        })
    }

    fn mark_refunded(&self, message_id: i64) -> StoreFuture<bool> {
        self.write(move |connection| mark_refunded(connection, message_id))
    }

    fn record_service(&self, message: NewMessage) -> StoreFuture<MessageRecord> {
        self.write(move |connection| insert(connection, &message))
    }

    fn inbound_reply_and_account(
        &self,
        message_sid: String,
        phone: Option<PhoneNumber>,
    ) -> StoreFuture<(Option<Option<String>>, Option<Account>)> {
        self.read(move |connection| {
            let earlier = inbound_reply(connection, &message_sid)?;
            let found = match &phone {
                Some(phone) if earlier.is_none() => find_account_by_phone(connection, phone)?,
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
        self.write(move |connection| {
            claim_inbound(
                connection,
                &message_sid,
                &from,
                &body,
                &instance_id,
                now_ms,
                lease_until_ms,
            )
        })
    }

    fn record_inbound(&self, inbound: InboundRecord) -> StoreFuture<InboundClaim> {
        self.write(move |connection| {
            let withheld = match &inbound.phone {
                Some(phone) if inbound.withhold_if_opted_out => {
                    super::opt_outs::opt_out_of(connection, phone)?.is_some()
                }
                _ => false,
            };
            let reply = if withheld {
                None
            } else {
                inbound.reply.as_deref()
            };
            let recorded = record_inbound(connection, &inbound, reply)?;
            if recorded != InboundClaim::Mine {
                return Ok(recorded);
            }
            if let (Some(change), Some(phone)) = (&inbound.opt_change, &inbound.phone) {
                super::opt_outs::apply(connection, phone, change, inbound.now_ms)?;
            }
            if withheld {
                return Ok(InboundClaim::Withheld);
            }
            if let Some(reply_cost) = &inbound.reply_cost {
                insert(connection, reply_cost)?;
            }
            Ok(recorded)
        })
    }

    fn release_inbound(
        &self,
        message_sid: String,
        instance_id: String,
        reply_cost: Option<NewMessage>,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            let released = release_inbound(connection, &message_sid, &instance_id)?;
            if let Some(reply_cost) = &reply_cost {
                insert(connection, reply_cost)?;
            }
            Ok(released)
        })
    }

    fn claim_price_checks(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<PriceCheck>> {
        self.write(move |connection| claim_price_checks(connection, now_ms, lease_until_ms, limit))
    }

    fn record_price_check(
        &self,
        message_id: i64,
        actual_cost: Option<Money>,
        next_check_at: Option<i64>,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            record_price_check(connection, message_id, actual_cost, next_check_at)
        })
    }

    fn sent_costs(&self) -> StoreFuture<Vec<SentCost>> {
        self.read(sent_costs)
    }

    fn claim_notices(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<Notice>> {
        self.write(move |connection| {
            let mut statement = connection.prepare_cached(
                "UPDATE notices SET state = 'sending', attempts = attempts + 1, claimed_until = ?2
                  WHERE id IN (SELECT id FROM notices WHERE state = 'pending' AND next_attempt_at <= ?1
                                  AND NOT EXISTS (SELECT 1 FROM messages
                                                   WHERE messages.id = notices.after_message
                                                     AND messages.state = 'reserved')
                                ORDER BY next_attempt_at, id LIMIT ?3)
                 RETURNING id, account_id, payload, state, attempts, created_at, sent_at, last_error",
            )?;
            let mut claimed = statement
                .query_map(params![now_ms, lease_until_ms, limit], notice_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            claimed.sort_by_key(|notice| notice.id);
            Ok(claimed)
        })
    }

    fn messages_of(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<MessageRecord>> {
        self.read(move |connection| {
            let messages = connection
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM messages WHERE account_id = ?1 ORDER BY id DESC LIMIT ?2"
                ))?
                .query_map(params![account_id.0, limit], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(messages)
        })
    }

    fn pending_warning_after(&self, message_id: i64) -> StoreFuture<Option<i64>> {
        self.read(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT id FROM notices WHERE after_message = ?1
                        AND kind = 'low_balance_warning' AND state = 'pending'",
                )?
                .query_row(params![message_id], |row| row.get(0))
                .optional()?)
        })
    }

    fn notices_of(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<Notice>> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {NOTICE_COLUMNS} FROM notices WHERE account_id = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let notices = statement
                .query_map(params![account_id.0, limit], notice_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(notices)
        })
    }

    fn abandon_stale_notices(&self, now_ms: i64) -> StoreFuture<usize> {
        self.write(move |connection| {
            Ok(connection
                .prepare_cached(
                    "UPDATE notices SET state = 'unknown', last_error = 'its worker stopped mid-send'
                      WHERE state = 'sending' AND claimed_until < ?1",
                )?
                .execute([now_ms])?)
        })
    }

    fn notice_sent(
        &self,
        notice_id: i64,
        twilio_sid: String,
        cost: NewMessage,
        now_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE notices SET state = 'sent', sent_at = ?2, twilio_sid = ?3, claimed_until = NULL
                      WHERE id = ?1",
                )?
                .execute(params![notice_id, now_ms, twilio_sid])?;
            insert(connection, &cost)?;
            Ok(())
        })
    }

    fn notice_retry(&self, notice_id: i64, next_attempt_at: i64, error: String) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE notices SET state = 'pending', next_attempt_at = ?2, last_error = ?3,
                            claimed_until = NULL
                      WHERE id = ?1 AND state = 'sending'",
                )?
                .execute(params![notice_id, next_attempt_at, error])?;
            Ok(())
        })
    }

    fn notice_ended(&self, notice_id: i64, state: NoticeState, error: String) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE notices SET state = ?2, last_error = ?3, claimed_until = NULL
                      WHERE id = ?1 AND state = 'sending'",
                )?
                .execute(params![notice_id, state.as_str(), error])?;
            Ok(())
        })
    }
}

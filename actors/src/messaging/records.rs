//! The SQL of `messages` and `inbound_messages`.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::ledger::AccountId;
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

/// What a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// For the host application; charged to the account.
    Outbound,
    /// A reply to an SMS command: a service message, costed, not charged.
    Reply,
    /// A low-balance warning: a service message.
    Warning,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Outbound => "outbound",
            MessageKind::Reply => "reply",
            MessageKind::Warning => "warning",
        }
    }

    pub fn parse(text: &str) -> Option<MessageKind> {
        match text {
            "outbound" => Some(MessageKind::Outbound),
            "reply" => Some(MessageKind::Reply),
            "warning" => Some(MessageKind::Warning),
            _ => None,
        }
    }
}

/// Where a message's reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Debited, not yet handed to Twilio.
    Reserved,
    /// Accepted by Twilio.
    Sent,
    /// Not sent; the debit was given back.
    Voided,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Reserved => "reserved",
            MessageState::Sent => "sent",
            MessageState::Voided => "voided",
        }
    }

    pub fn parse(text: &str) -> Option<MessageState> {
        match text {
            "reserved" => Some(MessageState::Reserved),
            "sent" => Some(MessageState::Sent),
            "voided" => Some(MessageState::Voided),
            _ => None,
        }
    }
}

/// A message sent (or being sent), with its costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageRecord {
    pub id: i64,
    pub account_id: Option<AccountId>,
    pub kind: MessageKind,
    pub idempotency_key: Option<String>,
    pub to: String,
    pub country: String,
    pub encoding: String,
    pub segments: i64,
    #[serde(rename = "price_per_segment_micros")]
    pub price_per_segment: Money,
    #[serde(rename = "charged_micros")]
    pub charged: Money,
    pub state: MessageState,
    pub twilio_sid: Option<String>,
    pub twilio_status: Option<String>,
    pub refunded: bool,
    #[serde(rename = "actual_cost_micros")]
    pub actual_cost: Option<Money>,
    pub created_at_ms: i64,
}

/// A message to record.
pub struct NewMessage<'a> {
    pub account_id: Option<AccountId>,
    pub kind: MessageKind,
    pub idempotency_key: Option<&'a str>,
    pub to: &'a str,
    pub country: &'a str,
    pub encoding: &'a str,
    pub segments: i64,
    pub price_per_segment: Money,
    pub carrier_cost_per_segment: Money,
    pub charged: Money,
    pub state: MessageState,
    pub twilio_sid: Option<&'a str>,
    pub next_price_check_at: Option<i64>,
}

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
        refunded: row.get::<_, i64>(13)? == 1,
        actual_cost: row.get::<_, Option<i64>>(14)?.map(Money::from_micros),
        created_at_ms: row.get(15)?,
    })
}

pub fn insert(
    connection: &Connection,
    message: &NewMessage<'_>,
    now_ms: i64,
) -> Result<MessageRecord, StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO messages (account_id, kind, idempotency_key, to_number, country, encoding, segments,
                                   price_per_segment, carrier_cost_per_segment, charged, state, twilio_sid,
                                   next_price_check_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
            now_ms,
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

pub fn get(connection: &Connection, id: i64) -> Result<Option<MessageRecord>, StoreError> {
    find_by(connection, "id = ?1", &[&id])
}

pub fn find_by_key(
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

pub fn find_by_sid(
    connection: &Connection,
    sid: &str,
) -> Result<Option<MessageRecord>, StoreError> {
    find_by(connection, "twilio_sid = ?1", &[&sid])
}

/// Moves a reserved message to sent (with Twilio's id) or voided. Returns
/// whether it was still reserved: a reservation is resolved exactly once.
pub fn resolve(
    connection: &Connection,
    id: i64,
    state: MessageState,
    twilio_sid: Option<&str>,
    twilio_status: Option<&str>,
    next_price_check_at: Option<i64>,
) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached(
            "UPDATE messages SET state = ?2, twilio_sid = ?3, twilio_status = ?4, next_price_check_at = ?5
              WHERE id = ?1 AND state = 'reserved'",
        )?
        .execute(params![
            id,
            state.as_str(),
            twilio_sid,
            twilio_status,
            next_price_check_at
        ])?;
    Ok(changed == 1)
}

/// Records a status Twilio reported.
pub fn set_twilio_status(connection: &Connection, id: i64, status: &str) -> Result<(), StoreError> {
    connection
        .prepare_cached("UPDATE messages SET twilio_status = ?2 WHERE id = ?1")?
        .execute(params![id, status])?;
    Ok(())
}

/// Keeps a status for a sid no message has yet (see `take_early_status`).
pub fn keep_early_status(
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
pub fn take_early_status(connection: &Connection, sid: &str) -> Result<Option<String>, StoreError> {
    Ok(connection
        .prepare_cached(
            "DELETE FROM early_message_statuses WHERE twilio_sid = ?1 RETURNING status",
        )?
        .query_row([sid], |row| row.get(0))
        .optional()?)
}

/// Marks a message refunded; `false` if it already was.
pub fn mark_refunded(connection: &Connection, id: i64) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached("UPDATE messages SET refunded = 1 WHERE id = ?1 AND refunded = 0")?
        .execute([id])?;
    Ok(changed == 1)
}

/// Messages whose reservation was never resolved (a crash between the
/// debit and the send).
pub fn unresolved(connection: &Connection) -> Result<Vec<MessageRecord>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages WHERE state = 'reserved' ORDER BY id"
    ))?;
    let rows = statement
        .query_map([], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The reply an inbound MessageSid got, if it was handled before:
/// `Some(reply)` where `reply` is `None` for "no reply".
pub fn inbound_reply(
    connection: &Connection,
    message_sid: &str,
) -> Result<Option<Option<String>>, StoreError> {
    let found = connection
        .prepare_cached("SELECT reply FROM inbound_messages WHERE message_sid = ?1")?
        .query_row([message_sid], |row| row.get(0))
        .optional()?;
    Ok(found)
}

/// Records an inbound message and its reply, unless its MessageSid was
/// recorded before: then the reply it got then (`Some`) and nothing changes.
pub fn record_inbound(
    connection: &Connection,
    message_sid: &str,
    from: &str,
    account_id: Option<AccountId>,
    body: &str,
    reply: Option<&str>,
    now_ms: i64,
) -> Result<Option<Option<String>>, StoreError> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO inbound_messages (message_sid, from_number, account_id, body, reply, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (message_sid) DO NOTHING",
        )?
        .execute(params![message_sid, from, account_id.map(|id| id.0), body, reply, now_ms])?;
    if inserted == 1 {
        Ok(None)
    } else {
        inbound_reply(connection, message_sid)
    }
}

/// Forgets a reservation whose debit was refused (nothing was reserved).
pub fn delete_reserved(connection: &Connection, id: i64) -> Result<(), StoreError> {
    connection
        .prepare_cached("DELETE FROM messages WHERE id = ?1 AND state = 'reserved'")?
        .execute([id])?;
    Ok(())
}

/// Sent messages whose Twilio price is due to be fetched.
pub fn price_checks_due(
    connection: &Connection,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<(i64, String, i64)>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT id, twilio_sid, price_checks FROM messages
          WHERE actual_cost IS NULL AND twilio_sid IS NOT NULL AND next_price_check_at <= ?1
          ORDER BY next_price_check_at LIMIT ?2",
    )?;
    let rows = statement
        .query_map(params![now_ms, limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Stores Twilio's price, or schedules another look (`None` after the last try).
pub fn record_price_check(
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

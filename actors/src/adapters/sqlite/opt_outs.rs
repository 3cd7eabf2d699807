//! Numbers that opted out of texts, in SQLite.

use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::accounts::PhoneNumber;
use crate::opt_outs::{OptChange, OptOut, OptOutVia};
use crate::store::{OptOutStore, StoreError, StoreFuture, UnknownValue};

/// The number's opt-out, if it opted out.
pub(super) fn opt_out_of(
    connection: &Connection,
    phone: &PhoneNumber,
) -> Result<Option<OptOut>, StoreError> {
    let found: Option<(i64, String, Option<String>)> = connection
        .prepare_cached("SELECT opted_out_at, via, keyword FROM opt_outs WHERE phone = ?1")?
        .query_row([phone.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    found
        .map(|(opted_out_at_ms, via, keyword)| {
            let via = OptOutVia::parse(&via).ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new("opt_outs", phone, "via", &via))
            })?;
            Ok(OptOut {
                opted_out_at_ms,
                via,
                keyword,
            })
        })
        .transpose()
}

/// Records an opt-out; one already recorded stands.
pub(super) fn record_opt_out(
    connection: &Connection,
    phone: &PhoneNumber,
    via: OptOutVia,
    keyword: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO opt_outs (phone, opted_out_at, via, keyword) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (phone) DO NOTHING",
        )?
        .execute(params![phone.as_str(), now_ms, via.as_str(), keyword])?;
    Ok(())
}

/// Applies what an inbound text changes of its number's subscription.
pub(super) fn apply(
    connection: &Connection,
    phone: &PhoneNumber,
    change: &OptChange,
    now_ms: i64,
) -> Result<(), StoreError> {
    match change {
        OptChange::Out(keyword) => {
            record_opt_out(connection, phone, OptOutVia::Keyword, Some(keyword), now_ms)
        }
        OptChange::In => {
            connection
                .prepare_cached("DELETE FROM opt_outs WHERE phone = ?1")?
                .execute([phone.as_str()])?;
            // When: a carrier's opt-out about a message sent before it is
            // old news.
            connection
                .prepare_cached(
                    "INSERT INTO opt_ins (phone, opted_in_at) VALUES (?1, ?2)
                     ON CONFLICT (phone) DO UPDATE SET opted_in_at = excluded.opted_in_at",
                )?
                .execute(params![phone.as_str(), now_ms])?;
            Ok(())
        }
    }
}

impl OptOutStore for SqliteStore {
    fn opt_out_of(&self, phone: PhoneNumber) -> StoreFuture<Option<OptOut>> {
        self.read(move |connection| opt_out_of(connection, &phone))
    }

    fn record_opt_out(
        &self,
        phone: PhoneNumber,
        via: OptOutVia,
        keyword: Option<String>,
        now_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            record_opt_out(connection, &phone, via, keyword.as_deref(), now_ms)
        })
    }

    fn record_carrier_opt_out(
        &self,
        phone: PhoneNumber,
        sent_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            let opted_in_at: Option<i64> = connection
                .prepare_cached("SELECT opted_in_at FROM opt_ins WHERE phone = ?1")?
                .query_row([phone.as_str()], |row| row.get(0))
                .optional()?;
            if let (Some(sent_at), Some(opted_in_at)) = (sent_at_ms, opted_in_at) {
                if sent_at < opted_in_at {
                    return Ok(false);
                }
            }
            record_opt_out(connection, &phone, OptOutVia::Carrier, None, now_ms)?;
            Ok(true)
        })
    }
}

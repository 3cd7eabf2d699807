//! Auto top-up in SQLite: settings, attempts (one in flight per account, by
//! a partial unique index) and the end of a saved card. Every decision
//! runs in one write.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::messages::queue;
use super::SqliteStore;
use crate::billing::auto_top_up::{
    AfterAttempt, AttemptEnd, AttemptStatus, AutoTopUpAttempt, AutoTopUpSettings, Begin, Consent,
    ConsentVia, NotStarted, SettingChange,
};
use crate::ledger::AccountId;
use crate::messaging::notices::{NewNotice, NoticeKind};
use crate::money::Money;
use crate::store::change_notes;
use crate::store::{AutoTopUpStore, StoreError, StoreFuture, UnknownValue};
use crate::webhooks::events::{auto_top_up_disabled, DisabledBecause};

const SETTINGS_COLUMNS: &str = "account_id, enabled, threshold, amount, monthly_cap, consent_at,
    consent_via, consent_text, consecutive_failures, not_before, paused_reason, updated_at";

fn settings_from_row(row: &Row<'_>) -> rusqlite::Result<AutoTopUpSettings> {
    let account_id: i64 = row.get(0)?;
    let via: Option<String> = row.get(6)?;
    let consent = match (row.get::<_, Option<i64>>(5)?, via) {
        (Some(at_ms), Some(via)) => Some(Consent {
            at_ms,
            via: ConsentVia::parse(&via).ok_or_else(|| {
                UnknownValue::new(
                    "auto_top_up_settings",
                    account_id,
                    "consent_via",
                    via.clone(),
                )
                .into_sql_error(6)
            })?,
            // Consent is recorded with the words agreed to, never without.
            text: row.get::<_, Option<String>>(7)?.ok_or_else(|| {
                UnknownValue::new("auto_top_up_settings", account_id, "consent_text", "NULL")
                    .into_sql_error(7)
            })?,
        }),
        _ => None,
    };
    Ok(AutoTopUpSettings {
        account_id: AccountId(account_id),
        enabled: row.get::<_, i64>(1)? == 1,
        threshold: Money::from_micros(row.get(2)?),
        amount: Money::from_micros(row.get(3)?),
        monthly_cap: Money::from_micros(row.get(4)?),
        consent,
        consecutive_failures: row.get(8)?,
        not_before_ms: row.get(9)?,
        paused_reason: row.get(10)?,
        updated_at_ms: row.get(11)?,
    })
}

fn get_settings(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<AutoTopUpSettings>, StoreError> {
    Ok(connection
        .prepare_cached(&format!(
            "SELECT {SETTINGS_COLUMNS} FROM auto_top_up_settings WHERE account_id = ?1"
        ))?
        .query_row([account_id.0], settings_from_row)
        .optional()?)
}

const ATTEMPT_COLUMNS: &str = "id, account_id, n, amount, month, status, reason, order_id,
    payment_intent_id, created_at, updated_at, claims";

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<AutoTopUpAttempt> {
    let id: i64 = row.get(0)?;
    let status: String = row.get(5)?;
    Ok(AutoTopUpAttempt {
        id,
        account_id: AccountId(row.get(1)?),
        n: row.get(2)?,
        amount: Money::from_micros(row.get(3)?),
        month: row.get(4)?,
        status: AttemptStatus::parse(&status).ok_or_else(|| {
            UnknownValue::new("auto_top_ups", id, "status", status.clone()).into_sql_error(5)
        })?,
        reason: row.get(6)?,
        order_id: row.get(7)?,
        payment_intent_id: row.get(8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
        claim: row.get(11)?,
    })
}

/// The statuses that count toward the month's cap.
const COUNTED: &str = "('pending', 'charging', 'processing', 'succeeded')";

fn begin(
    connection: &Connection,
    account_id: AccountId,
    month: &str,
    now_ms: i64,
) -> Result<Begin, StoreError> {
    let Some(settings) = get_settings(connection, account_id)? else {
        return Ok(Begin::NotStarted(NotStarted::Off));
    };
    if !settings.enabled {
        return Ok(Begin::NotStarted(NotStarted::Off));
    }
    if settings.not_before_ms > now_ms {
        return Ok(Begin::NotStarted(NotStarted::Waiting(
            settings.not_before_ms,
        )));
    }
    let (card, balance): (Option<String>, i64) = connection
        .prepare_cached(
            "SELECT a.stripe_payment_method_id, b.balance
               FROM accounts a JOIN account_balances b ON b.account_id = a.id WHERE a.id = ?1",
        )?
        .query_row([account_id.0], |row| Ok((row.get(0)?, row.get(1)?)))?;
    if card.is_none() {
        return Ok(Begin::NotStarted(NotStarted::NoSavedCard));
    }
    if Money::from_micros(balance) >= settings.threshold {
        return Ok(Begin::NotStarted(NotStarted::BalanceAbove));
    }
    let in_flight: bool = connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM auto_top_ups WHERE account_id = ?1
                              AND status IN ('pending', 'charging', 'processing'))",
        )?
        .query_row([account_id.0], |row| row.get(0))?;
    if in_flight {
        return Ok(Begin::NotStarted(NotStarted::InFlight));
    }
    let charged = month_charged(connection, account_id, month)?;
    if charged.micros().saturating_add(settings.amount.micros()) > settings.monthly_cap.micros() {
        return Ok(Begin::NotStarted(NotStarted::CapReached));
    }
    let inserted = connection
        .prepare_cached(&format!(
            "INSERT INTO auto_top_ups (account_id, n, amount, month, status, created_at, updated_at)
             SELECT ?1, COALESCE(MAX(n), 0) + 1, ?2, ?3, 'pending', ?4, ?4
               FROM auto_top_ups WHERE account_id = ?1
             ON CONFLICT DO NOTHING
             RETURNING {ATTEMPT_COLUMNS}"
        ))?
        .query_row(
            params![account_id.0, settings.amount.micros(), month, now_ms],
            attempt_from_row,
        )
        .optional()?;
    Ok(match inserted {
        Some(attempt) => Begin::Started(attempt),
        None => Begin::NotStarted(NotStarted::InFlight),
    })
}

fn month_charged(
    connection: &Connection,
    account_id: AccountId,
    month: &str,
) -> Result<Money, StoreError> {
    let sum: i64 = connection
        .prepare_cached(&format!(
            "SELECT COALESCE(SUM(amount), 0) FROM auto_top_ups
              WHERE account_id = ?1 AND month = ?2 AND status IN {COUNTED}"
        ))?
        .query_row(params![account_id.0, month], |row| row.get(0))?;
    Ok(Money::from_micros(sum))
}

fn end(connection: &Connection, end: &AttemptEnd) -> Result<Option<AutoTopUpSettings>, StoreError> {
    let changed = connection
        .prepare_cached(
            "UPDATE auto_top_ups SET status = ?2, reason = ?3,
                    payment_intent_id = COALESCE(?4, payment_intent_id), updated_at = ?5
              WHERE id = ?1 AND status IN ('pending', 'charging', 'processing')
                AND (?6 IS NULL OR claims = ?6)",
        )?
        .execute(params![
            end.attempt_id,
            end.status.as_str(),
            end.reason,
            end.payment_intent_id,
            end.now_ms,
            end.claim
        ])?;
    if changed == 0 {
        return Ok(None);
    }
    let account_id: i64 = connection
        .prepare_cached("SELECT account_id FROM auto_top_ups WHERE id = ?1")?
        .query_row([end.attempt_id], |row| row.get(0))?;
    match &end.after {
        AfterAttempt::Success => {
            connection
                .prepare_cached(
                    "UPDATE auto_top_up_settings SET consecutive_failures = 0, not_before = 0,
                            updated_at = ?2 WHERE account_id = ?1",
                )?
                .execute(params![account_id, end.now_ms])?;
        }
        AfterAttempt::Failure {
            not_before_ms,
            turn_off,
        } => {
            connection
                .prepare_cached(
                    "UPDATE auto_top_up_settings
                        SET consecutive_failures = consecutive_failures + 1, not_before = ?2,
                            enabled = CASE WHEN ?3 IS NULL THEN enabled ELSE 0 END,
                            paused_reason = COALESCE(?3, paused_reason), updated_at = ?4
                      WHERE account_id = ?1",
                )?
                .execute(params![account_id, not_before_ms, turn_off, end.now_ms])?;
        }
    }
    for notice in &end.notices {
        queue(connection, notice)?;
    }
    super::webhooks::insert_events(connection, &end.events)?;
    get_settings(connection, AccountId(account_id))
}

fn set_settings(
    connection: &Connection,
    change: &SettingChange,
) -> Result<AutoTopUpSettings, StoreError> {
    let consent = change.consent.as_ref();
    let was_on: Option<i64> = connection
        .prepare_cached("SELECT enabled FROM auto_top_up_settings WHERE account_id = ?1")?
        .query_row([change.account_id.0], |row| row.get(0))
        .optional()?;
    if was_on == Some(1) && !change.enabled {
        let event = auto_top_up_disabled(
            change.account_id,
            DisabledBecause::TurnedOff,
            "turned off",
            format!(
                "auto_top_up.disabled:off:{}:{}",
                change.account_id, change.now_ms
            ),
            change.now_ms,
        )?;
        super::webhooks::insert_events(connection, &[event])?;
    }
    connection
        .prepare_cached(
            "INSERT INTO auto_top_up_settings (account_id, enabled, threshold, amount, monthly_cap,
                 consent_at, consent_via, consent_text, consecutive_failures, not_before,
                 paused_reason, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, NULL, ?9)
             ON CONFLICT (account_id) DO UPDATE SET
                 enabled = excluded.enabled, threshold = excluded.threshold,
                 amount = excluded.amount, monthly_cap = excluded.monthly_cap,
                 consent_at = COALESCE(excluded.consent_at, consent_at),
                 consent_via = COALESCE(excluded.consent_via, consent_via),
                 consent_text = COALESCE(excluded.consent_text, consent_text),
                 consecutive_failures = CASE WHEN excluded.enabled = 1 AND enabled = 0
                                             THEN 0 ELSE consecutive_failures END,
                 not_before = CASE WHEN excluded.enabled = 1 AND enabled = 0
                                   THEN 0 ELSE not_before END,
                 paused_reason = CASE WHEN excluded.enabled = 1 THEN NULL ELSE paused_reason END,
                 updated_at = excluded.updated_at",
        )?
        .execute(params![
            change.account_id.0,
            i64::from(change.enabled),
            change.threshold.micros(),
            change.amount.micros(),
            change.monthly_cap.micros(),
            consent.map(|consent| consent.at_ms),
            consent.map(|consent| consent.via.as_str()),
            consent.map(|consent| consent.text.as_str()),
            change.now_ms,
        ])?;
    get_settings(connection, change.account_id)?
        .ok_or_else(|| StoreError::Database("the setting just written vanished".into()))
}

fn forget_card(
    connection: &Connection,
    payment_method_id: &str,
    notice: NoticeKind,
    now_ms: i64,
) -> Result<Option<AccountId>, StoreError> {
    let account_id: Option<i64> = connection
        .prepare_cached("SELECT id FROM accounts WHERE stripe_payment_method_id = ?1")?
        .query_row([payment_method_id], |row| row.get(0))
        .optional()?;
    let Some(account_id) = account_id else {
        return Ok(None);
    };
    connection
        .prepare_cached(
            "UPDATE accounts SET stripe_payment_method_id = NULL, card_brand = NULL,
                    card_last4 = NULL, card_exp_month = NULL, card_exp_year = NULL,
                    forgotten_payment_method_id = ?2
              WHERE id = ?1",
        )?
        .execute(params![account_id, payment_method_id])?;
    let paused = connection
        .prepare_cached(
            "UPDATE auto_top_up_settings SET enabled = 0, paused_reason = 'the saved card is gone',
                    updated_at = ?2
              WHERE account_id = ?1 AND enabled = 1",
        )?
        .execute(params![account_id, now_ms])?;
    if paused > 0 {
        let event = auto_top_up_disabled(
            AccountId(account_id),
            DisabledBecause::CardGone,
            "the saved card is gone",
            format!("auto_top_up.disabled:card:{account_id}:{payment_method_id}"),
            now_ms,
        )?;
        super::webhooks::insert_events(connection, &[event])?;
        queue(
            connection,
            &NewNotice::new(
                AccountId(account_id),
                notice,
                format!("card-forgotten:{account_id}:{payment_method_id}"),
                now_ms,
            )
            .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?,
        )?;
    }
    Ok(Some(AccountId(account_id)))
}

impl AutoTopUpStore for SqliteStore {
    fn auto_settings(&self, account_id: AccountId) -> StoreFuture<Option<AutoTopUpSettings>> {
        self.read(move |connection| get_settings(connection, account_id))
    }

    /// Stores the setting and leaves a change note, so that the live
    /// actors of other processes follow it within the watcher's poll.
    fn set_auto_settings(&self, change: SettingChange) -> StoreFuture<AutoTopUpSettings> {
        let origin = self.origin.clone();
        self.write(move |connection| {
            let settings = set_settings(connection, &change)?;
            let note = change_notes::auto_top_up(change.account_id);
            super::watcher::leave_note(connection, &origin, &note, change.now_ms)?;
            Ok(settings)
        })
    }

    fn begin_auto_top_up(
        &self,
        account_id: AccountId,
        month: String,
        now_ms: i64,
    ) -> StoreFuture<Begin> {
        self.write(move |connection| begin(connection, account_id, &month, now_ms))
    }

    fn claim_auto_top_ups(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<AutoTopUpAttempt>> {
        self.write(move |connection| {
            let claimed = connection
                .prepare_cached(&format!(
                    "UPDATE auto_top_ups SET status = 'charging', claimed_until = ?2, updated_at = ?1,
                            claims = claims + 1
                      WHERE id IN (SELECT id FROM auto_top_ups
                                    WHERE status IN ('pending', 'charging') AND claimed_until <= ?1
                                    ORDER BY id LIMIT ?3)
                      RETURNING {ATTEMPT_COLUMNS}"
                ))?
                .query_map(params![now_ms, lease_until_ms, limit], attempt_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(claimed)
        })
    }

    fn auto_top_up_ordered(&self, attempt_id: i64, order_id: i64) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached("UPDATE auto_top_ups SET order_id = ?2 WHERE id = ?1")?
                .execute(params![attempt_id, order_id])?;
            Ok(())
        })
    }

    fn auto_top_up_processing(
        &self,
        attempt_id: i64,
        payment_intent_id: String,
        now_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE auto_top_ups SET status = 'processing', payment_intent_id = ?2,
                            updated_at = ?3
                      WHERE id = ?1 AND status IN ('pending', 'charging')",
                )?
                .execute(params![attempt_id, payment_intent_id, now_ms])?;
            Ok(())
        })
    }

    fn renew_auto_top_up(
        &self,
        attempt_id: i64,
        claim: i64,
        lease_until_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |connection| {
            let renewed = connection
                .prepare_cached(
                    "UPDATE auto_top_ups SET claimed_until = ?3
                      WHERE id = ?1 AND claims = ?2 AND status = 'charging'",
                )?
                .execute(params![attempt_id, claim, lease_until_ms])?;
            Ok(renewed == 1)
        })
    }

    fn auto_top_up_later(
        &self,
        attempt_id: i64,
        claim: i64,
        at_ms: i64,
        reason: String,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE auto_top_ups SET claimed_until = ?3, reason = ?4
                      WHERE id = ?1 AND claims = ?2 AND status IN ('pending', 'charging')",
                )?
                .execute(params![attempt_id, claim, at_ms, reason])?;
            Ok(())
        })
    }

    fn end_auto_top_up(&self, attempt_end: AttemptEnd) -> StoreFuture<Option<AutoTopUpSettings>> {
        self.write(move |connection| end(connection, &attempt_end))
    }

    fn auto_top_up_by_order(&self, order_id: i64) -> StoreFuture<Option<AutoTopUpAttempt>> {
        self.read(move |connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM auto_top_ups WHERE order_id = ?1"
                ))?
                .query_row([order_id], attempt_from_row)
                .optional()?)
        })
    }

    fn auto_top_ups_of(
        &self,
        account_id: AccountId,
        limit: i64,
    ) -> StoreFuture<Vec<AutoTopUpAttempt>> {
        self.read(move |connection| {
            Ok(connection
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM auto_top_ups WHERE account_id = ?1
                      ORDER BY n DESC LIMIT ?2"
                ))?
                .query_map(params![account_id.0, limit], attempt_from_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn month_charged(&self, account_id: AccountId, month: String) -> StoreFuture<Money> {
        self.read(move |connection| month_charged(connection, account_id, &month))
    }

    fn auto_top_up_totals(&self) -> StoreFuture<Vec<(AttemptStatus, i64, Money)>> {
        self.read(|connection| {
            let rows = connection
                .prepare_cached(
                    "SELECT status, COUNT(*), COALESCE(SUM(amount), 0) FROM auto_top_ups
                      GROUP BY status ORDER BY status",
                )?
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(status, count, amount)| {
                    let parsed = AttemptStatus::parse(&status).ok_or_else(|| {
                        StoreError::UnknownValue(UnknownValue::new(
                            "auto_top_ups",
                            format!("status {status}"),
                            "status",
                            status.clone(),
                        ))
                    })?;
                    Ok((parsed, count, Money::from_micros(amount)))
                })
                .collect()
        })
    }

    fn auto_enabled(&self) -> StoreFuture<Vec<(AccountId, Money, i64)>> {
        self.read(|connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT account_id, threshold, not_before FROM auto_top_up_settings
                      WHERE enabled = 1 ORDER BY account_id",
                )?
                .query_map([], |row| {
                    Ok((
                        AccountId(row.get(0)?),
                        Money::from_micros(row.get(1)?),
                        row.get(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn auto_due(&self, now_ms: i64, limit: i64) -> StoreFuture<Vec<AccountId>> {
        self.read(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT s.account_id FROM auto_top_up_settings s
                       JOIN account_balances b ON b.account_id = s.account_id
                      WHERE s.enabled = 1 AND b.balance < s.threshold AND s.not_before <= ?1
                        AND NOT EXISTS (SELECT 1 FROM auto_top_ups t WHERE t.account_id = s.account_id
                                          AND t.status IN ('pending', 'charging', 'processing'))
                      ORDER BY s.account_id LIMIT ?2",
                )?
                .query_map(params![now_ms, limit], |row| Ok(AccountId(row.get(0)?)))?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn forget_card(
        &self,
        payment_method_id: String,
        notice: NoticeKind,
        now_ms: i64,
    ) -> StoreFuture<Option<AccountId>> {
        self.write(move |connection| {
            forget_card(connection, &payment_method_id, notice.clone(), now_ms)
        })
    }
}

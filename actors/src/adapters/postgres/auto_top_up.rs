//! Auto top-up in Postgres: settings, attempts (one in flight per account,
//! by a partial unique index; an attempt starts with its setting's row
//! locked, so instances asking together start one) and the end of a saved
//! card.

use tokio_postgres::{GenericClient, Row};

use super::writer::INSERT_NOTICES;
use super::{boxed, PostgresStore};
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

fn settings_from_row(row: &Row) -> Result<AutoTopUpSettings, StoreError> {
    let account_id: i64 = row.try_get(0)?;
    let via: Option<String> = row.try_get(6)?;
    let consent = match (row.try_get::<_, Option<i64>>(5)?, via) {
        (Some(at_ms), Some(via)) => Some(Consent {
            at_ms,
            via: ConsentVia::parse(&via).ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new(
                    "auto_top_up_settings",
                    account_id,
                    "consent_via",
                    via.clone(),
                ))
            })?,
            // Consent is recorded with the words agreed to, never without.
            text: row.try_get::<_, Option<String>>(7)?.ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new(
                    "auto_top_up_settings",
                    account_id,
                    "consent_text",
                    "NULL",
                ))
            })?,
        }),
        _ => None,
    };
    Ok(AutoTopUpSettings {
        account_id: AccountId(account_id),
        enabled: row.try_get::<_, i64>(1)? == 1,
        threshold: Money::from_micros(row.try_get(2)?),
        amount: Money::from_micros(row.try_get(3)?),
        monthly_cap: Money::from_micros(row.try_get(4)?),
        consent,
        consecutive_failures: row.try_get(8)?,
        not_before_ms: row.try_get(9)?,
        paused_reason: row.try_get(10)?,
        updated_at_ms: row.try_get(11)?,
    })
}

async fn get_settings(
    client: &impl GenericClient,
    account_id: AccountId,
    lock: bool,
) -> Result<Option<AutoTopUpSettings>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    client
        .query_opt(
            &format!(
                "SELECT {SETTINGS_COLUMNS} FROM auto_top_up_settings WHERE account_id = $1{lock}"
            ),
            &[&account_id.0],
        )
        .await?
        .map(|row| settings_from_row(&row))
        .transpose()
}

const ATTEMPT_COLUMNS: &str = "id, account_id, n, amount, month, status, reason, order_id,
    payment_intent_id, created_at, updated_at, claims";

/// The same, named by the alias of the table (where another is joined).
fn attempt_columns_of(alias: &str) -> String {
    ATTEMPT_COLUMNS
        .split(',')
        .map(|column| format!("{alias}.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn attempt_from_row(row: &Row) -> Result<AutoTopUpAttempt, StoreError> {
    let id: i64 = row.try_get(0)?;
    let status: String = row.try_get(5)?;
    Ok(AutoTopUpAttempt {
        id,
        account_id: AccountId(row.try_get(1)?),
        n: row.try_get(2)?,
        amount: Money::from_micros(row.try_get(3)?),
        month: row.try_get(4)?,
        status: AttemptStatus::parse(&status).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "auto_top_ups",
                id,
                "status",
                status.clone(),
            ))
        })?,
        reason: row.try_get(6)?,
        order_id: row.try_get(7)?,
        payment_intent_id: row.try_get(8)?,
        created_at_ms: row.try_get(9)?,
        updated_at_ms: row.try_get(10)?,
        claim: row.try_get(11)?,
    })
}

/// The statuses that count toward the month's cap.
const COUNTED: &str = "('pending', 'charging', 'processing', 'succeeded')";

async fn month_charged(
    client: &impl GenericClient,
    account_id: AccountId,
    month: &str,
) -> Result<Money, StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM auto_top_ups
                  WHERE account_id = $1 AND month = $2 AND status IN {COUNTED}"
            ),
            &[&account_id.0, &month],
        )
        .await?;
    Ok(Money::from_micros(row.try_get(0)?))
}

async fn begin(
    client: &impl GenericClient,
    account_id: AccountId,
    month: &str,
    now_ms: i64,
) -> Result<Begin, StoreError> {
    let Some(settings) = get_settings(client, account_id, true).await? else {
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
    let row = client
        .query_one(
            "SELECT a.stripe_payment_method_id, b.balance
               FROM accounts a JOIN account_balances b ON b.account_id = a.id WHERE a.id = $1",
            &[&account_id.0],
        )
        .await?;
    let card: Option<String> = row.try_get(0)?;
    let balance: i64 = row.try_get(1)?;
    if card.is_none() {
        return Ok(Begin::NotStarted(NotStarted::NoSavedCard));
    }
    if Money::from_micros(balance) >= settings.threshold {
        return Ok(Begin::NotStarted(NotStarted::BalanceAbove));
    }
    let in_flight: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM auto_top_ups WHERE account_id = $1
                              AND status IN ('pending', 'charging', 'processing'))",
            &[&account_id.0],
        )
        .await?
        .try_get(0)?;
    if in_flight {
        return Ok(Begin::NotStarted(NotStarted::InFlight));
    }
    let charged = month_charged(client, account_id, month).await?;
    if charged.micros().saturating_add(settings.amount.micros()) > settings.monthly_cap.micros() {
        return Ok(Begin::NotStarted(NotStarted::CapReached));
    }
    let inserted = client
        .query_opt(
            &format!(
                "INSERT INTO auto_top_ups (account_id, n, amount, month, status, created_at, updated_at)
                 SELECT $1, COALESCE(MAX(n), 0) + 1, $2, $3, 'pending', $4, $4
                   FROM auto_top_ups WHERE account_id = $1
                 ON CONFLICT DO NOTHING
                 RETURNING {ATTEMPT_COLUMNS}"
            ),
            &[&account_id.0, &settings.amount.micros(), &month, &now_ms],
        )
        .await?;
    Ok(match inserted {
        Some(row) => Begin::Started(attempt_from_row(&row)?),
        None => Begin::NotStarted(NotStarted::InFlight),
    })
}

/// Queues a notice (once per dedupe key) in the write's transaction, with
/// the ledger path's statement.
async fn queue(client: &impl GenericClient, notice: &NewNotice) -> Result<(), StoreError> {
    client
        .execute(
            INSERT_NOTICES,
            &[
                &[notice.account_id.0].as_slice(),
                &[notice.kind.as_str()].as_slice(),
                &[notice.dedupe_key.as_str()].as_slice(),
                &[notice.payload()].as_slice(),
                &[notice.created_at_ms].as_slice(),
                &[notice.after_message].as_slice(),
            ],
        )
        .await?;
    Ok(())
}

async fn end(
    client: &impl GenericClient,
    end: &AttemptEnd,
) -> Result<Option<AutoTopUpSettings>, StoreError> {
    let ended = client
        .query_opt(
            "UPDATE auto_top_ups SET status = $2, reason = $3,
                    payment_intent_id = COALESCE($4, payment_intent_id), updated_at = $5
              WHERE id = $1 AND status IN ('pending', 'charging', 'processing')
                AND ($6::BIGINT IS NULL OR claims = $6)
             RETURNING account_id",
            &[
                &end.attempt_id,
                &end.status.as_str(),
                &end.reason,
                &end.payment_intent_id,
                &end.now_ms,
                &end.claim,
            ],
        )
        .await?;
    let Some(ended) = ended else {
        return Ok(None);
    };
    let account_id: i64 = ended.try_get(0)?;
    match &end.after {
        AfterAttempt::Success => {
            client
                .execute(
                    "UPDATE auto_top_up_settings SET consecutive_failures = 0, not_before = 0,
                            updated_at = $2 WHERE account_id = $1",
                    &[&account_id, &end.now_ms],
                )
                .await?;
        }
        AfterAttempt::Failure {
            not_before_ms,
            turn_off,
        } => {
            client
                .execute(
                    "UPDATE auto_top_up_settings
                        SET consecutive_failures = consecutive_failures + 1, not_before = $2,
                            enabled = CASE WHEN $3::TEXT IS NULL THEN enabled ELSE 0 END,
                            paused_reason = COALESCE($3, paused_reason), updated_at = $4
                      WHERE account_id = $1",
                    &[&account_id, not_before_ms, turn_off, &end.now_ms],
                )
                .await?;
        }
    }
    for notice in &end.notices {
        queue(client, notice).await?;
    }
    super::webhooks::insert_events(client, &end.events).await?;
    get_settings(client, AccountId(account_id), false).await
}

async fn set_settings(
    client: &impl GenericClient,
    change: &SettingChange,
) -> Result<AutoTopUpSettings, StoreError> {
    let consent = change.consent.as_ref();
    let was_on = client
        .query_opt(
            "SELECT enabled FROM auto_top_up_settings WHERE account_id = $1 FOR UPDATE",
            &[&change.account_id.0],
        )
        .await?
        .map(|row| row.try_get::<_, i64>(0))
        .transpose()?;
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
        super::webhooks::insert_events(client, &[event]).await?;
    }
    client
        .execute(
            "INSERT INTO auto_top_up_settings AS s (account_id, enabled, threshold, amount,
                 monthly_cap, consent_at, consent_via, consent_text, consecutive_failures,
                 not_before, paused_reason, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, NULL, $9)
             ON CONFLICT (account_id) DO UPDATE SET
                 enabled = excluded.enabled, threshold = excluded.threshold,
                 amount = excluded.amount, monthly_cap = excluded.monthly_cap,
                 consent_at = COALESCE(excluded.consent_at, s.consent_at),
                 consent_via = COALESCE(excluded.consent_via, s.consent_via),
                 consent_text = COALESCE(excluded.consent_text, s.consent_text),
                 consecutive_failures = CASE WHEN excluded.enabled = 1 AND s.enabled = 0
                                             THEN 0 ELSE s.consecutive_failures END,
                 not_before = CASE WHEN excluded.enabled = 1 AND s.enabled = 0
                                   THEN 0 ELSE s.not_before END,
                 paused_reason = CASE WHEN excluded.enabled = 1 THEN NULL ELSE s.paused_reason END,
                 updated_at = excluded.updated_at",
            &[
                &change.account_id.0,
                &i64::from(change.enabled),
                &change.threshold.micros(),
                &change.amount.micros(),
                &change.monthly_cap.micros(),
                &consent.map(|consent| consent.at_ms),
                &consent.map(|consent| consent.via.as_str()),
                &consent.map(|consent| consent.text.as_str()),
                &change.now_ms,
            ],
        )
        .await?;
    get_settings(client, change.account_id, false)
        .await?
        .ok_or_else(|| StoreError::Database("the setting just written vanished".into()))
}

async fn forget_card(
    client: &impl GenericClient,
    payment_method_id: &str,
    notice: &NoticeKind,
    now_ms: i64,
) -> Result<Option<AccountId>, StoreError> {
    let account = client
        .query_opt(
            "UPDATE accounts SET stripe_payment_method_id = NULL, card_brand = NULL,
                    card_last4 = NULL, card_exp_month = NULL, card_exp_year = NULL,
                    forgotten_payment_method_id = $1
              WHERE stripe_payment_method_id = $1 RETURNING id",
            &[&payment_method_id],
        )
        .await?;
    let Some(account) = account else {
        return Ok(None);
    };
    let account_id: i64 = account.try_get(0)?;
    let paused = client
        .execute(
            "UPDATE auto_top_up_settings SET enabled = 0, paused_reason = 'the saved card is gone',
                    updated_at = $2
              WHERE account_id = $1 AND enabled = 1",
            &[&account_id, &now_ms],
        )
        .await?;
    if paused > 0 {
        let event = auto_top_up_disabled(
            AccountId(account_id),
            DisabledBecause::CardGone,
            "the saved card is gone",
            format!("auto_top_up.disabled:card:{account_id}:{payment_method_id}"),
            now_ms,
        )?;
        super::webhooks::insert_events(client, &[event]).await?;
        queue(
            client,
            &NewNotice::new(
                AccountId(account_id),
                notice.clone(),
                format!("card-forgotten:{account_id}:{payment_method_id}"),
                now_ms,
            )?,
        )
        .await?;
    }
    Ok(Some(AccountId(account_id)))
}

impl AutoTopUpStore for PostgresStore {
    fn auto_settings(&self, account_id: AccountId) -> StoreFuture<Option<AutoTopUpSettings>> {
        self.read(move |client| async move { get_settings(&*client, account_id, false).await })
    }

    /// Stores the setting and notifies the other instances (on commit), so
    /// that their live actors follow it at once.
    fn set_auto_settings(&self, change: SettingChange) -> StoreFuture<AutoTopUpSettings> {
        let origin = self.origin.clone();
        self.write(move |transaction| {
            let change = change.clone();
            let origin = origin.clone();
            boxed(async move {
                let settings = set_settings(transaction, &change).await?;
                let note = change_notes::auto_top_up(change.account_id);
                super::writer::notify_note(transaction, &origin, &note).await?;
                Ok(settings)
            })
        })
    }

    fn begin_auto_top_up(
        &self,
        account_id: AccountId,
        month: String,
        now_ms: i64,
    ) -> StoreFuture<Begin> {
        self.write(move |transaction| {
            let month = month.clone();
            boxed(async move { begin(transaction, account_id, &month, now_ms).await })
        })
    }

    fn claim_auto_top_ups(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<AutoTopUpAttempt>> {
        self.write(move |transaction| {
            boxed(async move {
                let rows = transaction
                    .query(
                        &format!(
                            "WITH picked AS MATERIALIZED (
                               SELECT id FROM auto_top_ups
                                WHERE status IN ('pending', 'charging') AND claimed_until <= $1
                                ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                             UPDATE auto_top_ups a SET status = 'charging', claimed_until = $2,
                                    updated_at = $1, claims = a.claims + 1
                               FROM picked WHERE a.id = picked.id
                             RETURNING {}",
                            attempt_columns_of("a")
                        ),
                        &[&now_ms, &lease_until_ms, &limit],
                    )
                    .await?;
                let mut claimed: Vec<AutoTopUpAttempt> = rows
                    .iter()
                    .map(attempt_from_row)
                    .collect::<Result<_, _>>()?;
                claimed.sort_by_key(|attempt| attempt.id);
                Ok(claimed)
            })
        })
    }

    fn auto_top_up_ordered(&self, attempt_id: i64, order_id: i64) -> StoreFuture<()> {
        self.write(move |transaction| {
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE auto_top_ups SET order_id = $2 WHERE id = $1",
                        &[&attempt_id, &order_id],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn auto_top_up_processing(
        &self,
        attempt_id: i64,
        payment_intent_id: String,
        now_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let payment_intent_id = payment_intent_id.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE auto_top_ups SET status = 'processing', payment_intent_id = $2,
                                updated_at = $3
                          WHERE id = $1 AND status IN ('pending', 'charging')",
                        &[&attempt_id, &payment_intent_id, &now_ms],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn renew_auto_top_up(
        &self,
        attempt_id: i64,
        claim: i64,
        lease_until_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            boxed(async move {
                let renewed = transaction
                    .execute(
                        "UPDATE auto_top_ups SET claimed_until = $3
                          WHERE id = $1 AND claims = $2 AND status = 'charging'",
                        &[&attempt_id, &claim, &lease_until_ms],
                    )
                    .await?;
                Ok(renewed == 1)
            })
        })
    }

    fn auto_top_up_later(
        &self,
        attempt_id: i64,
        claim: i64,
        at_ms: i64,
        reason: String,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let reason = reason.clone();
            boxed(async move {
                transaction
                    .execute(
                        "UPDATE auto_top_ups SET claimed_until = $3, reason = $4
                          WHERE id = $1 AND claims = $2 AND status IN ('pending', 'charging')",
                        &[&attempt_id, &claim, &at_ms, &reason],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn end_auto_top_up(&self, attempt_end: AttemptEnd) -> StoreFuture<Option<AutoTopUpSettings>> {
        self.write(move |transaction| {
            let attempt_end = attempt_end.clone();
            boxed(async move { end(transaction, &attempt_end).await })
        })
    }

    fn auto_top_up_by_order(&self, order_id: i64) -> StoreFuture<Option<AutoTopUpAttempt>> {
        self.read(move |client| async move {
            client
                .query_opt(
                    &format!("SELECT {ATTEMPT_COLUMNS} FROM auto_top_ups WHERE order_id = $1"),
                    &[&order_id],
                )
                .await?
                .map(|row| attempt_from_row(&row))
                .transpose()
        })
    }

    fn auto_top_ups_of(
        &self,
        account_id: AccountId,
        limit: i64,
    ) -> StoreFuture<Vec<AutoTopUpAttempt>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {ATTEMPT_COLUMNS} FROM auto_top_ups WHERE account_id = $1
                          ORDER BY n DESC LIMIT $2"
                    ),
                    &[&account_id.0, &limit],
                )
                .await?;
            rows.iter().map(attempt_from_row).collect()
        })
    }

    fn month_charged(&self, account_id: AccountId, month: String) -> StoreFuture<Money> {
        self.read(move |client| async move { month_charged(&*client, account_id, &month).await })
    }

    fn auto_top_up_totals(&self) -> StoreFuture<Vec<(AttemptStatus, i64, Money)>> {
        self.read(|client| async move {
            let rows = client
                .query(
                    "SELECT status, COUNT(*)::BIGINT, COALESCE(SUM(amount), 0)::BIGINT
                       FROM auto_top_ups GROUP BY status ORDER BY status",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let status: String = row.try_get(0)?;
                    let parsed = AttemptStatus::parse(&status).ok_or_else(|| {
                        StoreError::UnknownValue(UnknownValue::new(
                            "auto_top_ups",
                            format!("status {status}"),
                            "status",
                            status.clone(),
                        ))
                    })?;
                    Ok((parsed, row.try_get(1)?, Money::from_micros(row.try_get(2)?)))
                })
                .collect()
        })
    }

    fn auto_enabled(&self) -> StoreFuture<Vec<(AccountId, Money, i64)>> {
        self.read(|client| async move {
            let rows = client
                .query(
                    "SELECT account_id, threshold, not_before FROM auto_top_up_settings
                      WHERE enabled = 1 ORDER BY account_id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        AccountId(row.try_get(0)?),
                        Money::from_micros(row.try_get(1)?),
                        row.try_get(2)?,
                    ))
                })
                .collect()
        })
    }

    fn auto_due(&self, now_ms: i64, limit: i64) -> StoreFuture<Vec<AccountId>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT s.account_id FROM auto_top_up_settings s
                       JOIN account_balances b ON b.account_id = s.account_id
                      WHERE s.enabled = 1 AND b.balance < s.threshold AND s.not_before <= $1
                        AND NOT EXISTS (SELECT 1 FROM auto_top_ups t WHERE t.account_id = s.account_id
                                          AND t.status IN ('pending', 'charging', 'processing'))
                      ORDER BY s.account_id LIMIT $2",
                    &[&now_ms, &limit],
                )
                .await?;
            rows.iter()
                .map(|row| Ok(AccountId(row.try_get(0)?)))
                .collect()
        })
    }

    fn forget_card(
        &self,
        payment_method_id: String,
        notice: NoticeKind,
        now_ms: i64,
    ) -> StoreFuture<Option<AccountId>> {
        self.write(move |transaction| {
            let (payment_method_id, notice) = (payment_method_id.clone(), notice.clone());
            boxed(
                async move { forget_card(transaction, &payment_method_id, &notice, now_ms).await },
            )
        })
    }
}

//! The console's reports in SQLite: sums by hour and by country, each
//! through an index on its time column.

use rusqlite::{params, Row};

use super::SqliteStore;
use crate::books::{BooksError, CreditBooks, Period};
use crate::money::Money;
use crate::reports::{
    merge_hours, AccountActivity, Attention, AutoTopUpOff, CountryMargin, HourFigures, LowBalance,
    OpenReservation, UnsentNotice,
};
use crate::store::{ReportStore, StoreFuture};

const HOUR_MS: i64 = 3_600_000;

fn hour_row(row: &Row<'_>) -> rusqlite::Result<HourFigures> {
    Ok(HourFigures {
        hour_ms: row.get(0)?,
        payments_micros: row.get(1)?,
        refunds_micros: row.get(2)?,
        messages: row.get(3)?,
        segments: row.get(4)?,
    })
}

impl ReportStore for SqliteStore {
    fn activity(&self, since_ms: i64) -> StoreFuture<Vec<HourFigures>> {
        self.read(move |connection| {
            let mut rows = Vec::new();
            for sql in [
                "SELECT completed_at / ?2 * ?2, SUM(amount), 0, 0, 0 FROM orders
                  WHERE completed_at >= ?1 AND status IN ('completed', 'refunded')
                  GROUP BY completed_at / ?2",
                "SELECT created_at / ?2 * ?2, 0, -SUM(amount), 0, 0 FROM transactions
                  WHERE type = 'refund' AND created_at >= ?1 AND amount < 0
                  GROUP BY created_at / ?2",
                "SELECT created_at / ?2 * ?2, 0, 0, COUNT(*), SUM(segments) FROM messages
                  WHERE created_at >= ?1 AND state = 'sent'
                  GROUP BY created_at / ?2",
            ] {
                let found = connection
                    .prepare_cached(sql)?
                    .query_map(params![since_ms, HOUR_MS], hour_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.extend(found);
            }
            Ok(merge_hours(rows))
        })
    }

    fn margins(&self, since_ms: i64) -> StoreFuture<Vec<CountryMargin>> {
        self.read(move |connection| {
            let margins = connection
                .prepare_cached(
                    "SELECT country, COUNT(*), SUM(segments), SUM(charged),
                            SUM(COALESCE(actual_cost, carrier_cost_per_segment * segments)),
                            SUM(CASE WHEN actual_cost IS NULL THEN 0 ELSE 1 END)
                       FROM messages WHERE created_at >= ?1 AND state = 'sent'
                      GROUP BY country ORDER BY country",
                )?
                .query_map([since_ms], |row| {
                    Ok(CountryMargin {
                        country: row.get(0)?,
                        messages: row.get(1)?,
                        segments: row.get(2)?,
                        charged_micros: row.get(3)?,
                        carrier_cost_micros: row.get(4)?,
                        priced_messages: row.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(margins)
        })
    }

    fn attention(
        &self,
        threshold: Money,
        reserved_before_ms: i64,
        limit: i64,
    ) -> StoreFuture<Attention> {
        self.read(move |connection| {
            let low_balances = connection
                .prepare_cached(
                    "SELECT a.id, a.phone, b.balance FROM account_balances b
                       JOIN accounts a ON a.id = b.account_id
                      WHERE b.balance < ?1 ORDER BY b.balance, a.id LIMIT ?2",
                )?
                .query_map(params![threshold.micros(), limit], |row| {
                    Ok(LowBalance {
                        account_id: row.get(0)?,
                        phone: row.get(1)?,
                        balance_micros: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let auto_top_ups_off = connection
                .prepare_cached(
                    "SELECT account_id, paused_reason, updated_at FROM auto_top_up_settings
                      WHERE enabled = 0 AND paused_reason IS NOT NULL
                      ORDER BY updated_at DESC, account_id LIMIT ?1",
                )?
                .query_map([limit], |row| {
                    Ok(AutoTopUpOff {
                        account_id: row.get(0)?,
                        reason: row.get(1)?,
                        since_ms: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let notices_unsent = connection
                .prepare_cached(
                    "SELECT id, account_id, state, last_error, created_at FROM notices
                      WHERE state IN ('failed', 'unknown') ORDER BY id DESC LIMIT ?1",
                )?
                .query_map([limit], |row| {
                    Ok(UnsentNotice {
                        notice_id: row.get(0)?,
                        account_id: row.get(1)?,
                        state: row.get(2)?,
                        error: row.get(3)?,
                        created_at_ms: row.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let reservations_open = connection
                .prepare_cached(
                    "SELECT id, account_id, charged, created_at FROM messages
                      WHERE state = 'reserved' AND created_at < ?1 ORDER BY created_at, id LIMIT ?2",
                )?
                .query_map(params![reserved_before_ms, limit], |row| {
                    Ok(OpenReservation {
                        message_id: row.get(0)?,
                        account_id: row.get(1)?,
                        charged_micros: row.get(2)?,
                        created_at_ms: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Attention {
                low_balances,
                auto_top_ups_off,
                notices_unsent,
                reservations_open,
                disputes_open: super::disputes::open_disputes(connection, limit)?,
            })
        })
    }

    fn account_activity(&self, account_ids: Vec<i64>) -> StoreFuture<Vec<AccountActivity>> {
        self.read(move |connection| {
            let ids = serde_json::to_string(&account_ids)
                .map_err(|error| crate::store::StoreError::Database(error.to_string()))?;
            let found = connection
                .prepare_cached(
                    "SELECT b.account_id, COALESCE(s.enabled, 0), b.updated_at
                       FROM account_balances b
                       LEFT JOIN auto_top_up_settings s ON s.account_id = b.account_id
                      WHERE b.account_id IN (SELECT value FROM json_each(?1))
                      ORDER BY b.account_id",
                )?
                .query_map([ids], |row| {
                    Ok(AccountActivity {
                        account_id: row.get(0)?,
                        auto_top_up: row.get::<_, i64>(1)? == 1,
                        last_activity_ms: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(found)
        })
    }

    fn credit_books(&self, period: Period, as_of_ms: i64) -> StoreFuture<CreditBooks, BooksError> {
        // A reader of its own: the whole ledger may take a while to read.
        let read = self.read_alone("store-books", move |connection| {
            super::books::credit_books(connection, period, as_of_ms)
        });
        let hold = self.shared.books_hold();
        Box::pin(async move {
            let books = read.await;
            if let Some(hold) = hold {
                hold.stop_here().await;
            }
            books?
        })
    }
}

//! The console's reports in Postgres: sums by hour and by country, each
//! through an index on its time column.

use tokio_postgres::Row;

use super::PostgresStore;
use crate::books::{BooksError, CreditBooks, Period};
use crate::money::Money;
use crate::reports::{
    merge_hours, AccountActivity, Attention, AutoTopUpOff, CountryMargin, HourFigures, LowBalance,
    OpenReservation, UnsentNotice,
};
use crate::store::{ReportStore, StoreError, StoreFuture};

const HOUR_MS: i64 = 3_600_000;

fn hour_row(row: &Row) -> Result<HourFigures, StoreError> {
    Ok(HourFigures {
        hour_ms: row.try_get(0)?,
        payments_micros: row.try_get(1)?,
        refunds_micros: row.try_get(2)?,
        messages: row.try_get(3)?,
        segments: row.try_get(4)?,
    })
}

impl ReportStore for PostgresStore {
    fn activity(&self, since_ms: i64) -> StoreFuture<Vec<HourFigures>> {
        self.read(move |client| async move {
            let mut rows = Vec::new();
            for sql in [
                "SELECT completed_at / $2 * $2, SUM(amount)::BIGINT, 0::BIGINT, 0::BIGINT, 0::BIGINT
                   FROM orders WHERE completed_at >= $1 AND status IN ('completed', 'refunded')
                  GROUP BY completed_at / $2",
                "SELECT created_at / $2 * $2, 0::BIGINT, (-SUM(amount))::BIGINT, 0::BIGINT, 0::BIGINT
                   FROM transactions WHERE type = 'refund' AND created_at >= $1 AND amount < 0
                  GROUP BY created_at / $2",
                "SELECT created_at / $2 * $2, 0::BIGINT, 0::BIGINT, COUNT(*), SUM(segments)::BIGINT
                   FROM messages WHERE created_at >= $1 AND state = 'sent'
                  GROUP BY created_at / $2",
            ] {
                for row in client.query(sql, &[&since_ms, &HOUR_MS]).await? {
                    rows.push(hour_row(&row)?);
                }
            }
            Ok(merge_hours(rows))
        })
    }

    fn margins(&self, since_ms: i64) -> StoreFuture<Vec<CountryMargin>> {
        self.read(move |client| async move {
            client
                .query(
                    "SELECT country, COUNT(*), SUM(segments)::BIGINT, SUM(charged)::BIGINT,
                            SUM(COALESCE(actual_cost, carrier_cost_per_segment * segments))::BIGINT,
                            COUNT(actual_cost)
                       FROM messages WHERE created_at >= $1 AND state = 'sent'
                      GROUP BY country ORDER BY country",
                    &[&since_ms],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(CountryMargin {
                        country: row.try_get(0)?,
                        messages: row.try_get(1)?,
                        segments: row.try_get(2)?,
                        charged_micros: row.try_get(3)?,
                        carrier_cost_micros: row.try_get(4)?,
                        priced_messages: row.try_get(5)?,
                    })
                })
                .collect()
        })
    }

    fn attention(
        &self,
        threshold: Money,
        reserved_before_ms: i64,
        limit: i64,
    ) -> StoreFuture<Attention> {
        self.read(move |client| async move {
            let mut attention = Attention::default();
            for row in client
                .query(
                    "SELECT a.id, a.phone, b.balance FROM account_balances b
                       JOIN accounts a ON a.id = b.account_id
                      WHERE b.balance < $1 ORDER BY b.balance, a.id LIMIT $2",
                    &[&threshold.micros(), &limit],
                )
                .await?
            {
                attention.low_balances.push(LowBalance {
                    account_id: row.try_get(0)?,
                    phone: row.try_get(1)?,
                    balance_micros: row.try_get(2)?,
                });
            }
            for row in client
                .query(
                    "SELECT account_id, paused_reason, updated_at FROM auto_top_up_settings
                      WHERE enabled = 0 AND paused_reason IS NOT NULL
                      ORDER BY updated_at DESC, account_id LIMIT $1",
                    &[&limit],
                )
                .await?
            {
                attention.auto_top_ups_off.push(AutoTopUpOff {
                    account_id: row.try_get(0)?,
                    reason: row.try_get(1)?,
                    since_ms: row.try_get(2)?,
                });
            }
            for row in client
                .query(
                    "SELECT id, account_id, state, last_error, created_at FROM notices
                      WHERE state IN ('failed', 'unknown') ORDER BY id DESC LIMIT $1",
                    &[&limit],
                )
                .await?
            {
                attention.notices_unsent.push(UnsentNotice {
                    notice_id: row.try_get(0)?,
                    account_id: row.try_get(1)?,
                    state: row.try_get(2)?,
                    error: row.try_get(3)?,
                    created_at_ms: row.try_get(4)?,
                });
            }
            for row in client
                .query(
                    "SELECT id, account_id, charged, created_at FROM messages
                      WHERE state = 'reserved' AND created_at < $1 ORDER BY created_at, id LIMIT $2",
                    &[&reserved_before_ms, &limit],
                )
                .await?
            {
                attention.reservations_open.push(OpenReservation {
                    message_id: row.try_get(0)?,
                    account_id: row.try_get(1)?,
                    charged_micros: row.try_get(2)?,
                    created_at_ms: row.try_get(3)?,
                });
            }
            attention.disputes_open = super::disputes::open_disputes(&*client, limit).await?;
            Ok(attention)
        })
    }

    fn account_activity(&self, account_ids: Vec<i64>) -> StoreFuture<Vec<AccountActivity>> {
        self.read(move |client| async move {
            client
                .query(
                    "SELECT b.account_id, COALESCE(s.enabled, 0), b.updated_at
                       FROM account_balances b
                       LEFT JOIN auto_top_up_settings s ON s.account_id = b.account_id
                      WHERE b.account_id = ANY($1)
                      ORDER BY b.account_id",
                    &[&account_ids],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(AccountActivity {
                        account_id: row.try_get(0)?,
                        auto_top_up: row.try_get::<_, i64>(1)? == 1,
                        last_activity_ms: row.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn credit_books(&self, period: Period, as_of_ms: i64) -> StoreFuture<CreditBooks, BooksError> {
        let connector = self.readers.connector.clone();
        // The books read on a connection of their own, not through
        // `read`: the switch that fails reads is honoured here too, as
        // SQLite's reader of its own does.
        let injected = self.shared.injected_read_failure();
        let hold = self.shared.books_hold();
        Box::pin(async move {
            if let Some(failure) = injected {
                return Err(failure.into());
            }
            // Every row is decoded and placed on a thread of the adapter's
            // blocking pool, never where the caller awaits: rows the
            // connection has buffered are taken without a pause, so a long
            // read polled there would hold the caller's thread (an HTTP
            // worker, with every request on it) until its end. The
            // connection itself is driven on the adapter's runtime, as
            // every connection is.
            let runtime = connector.runtime.clone();
            let on_thread = runtime.clone();
            let read = runtime.spawn_blocking(move || {
                on_thread.block_on(async move {
                    let mut client = connector.connect(None).await?;
                    super::books::credit_books(&mut client, period, as_of_ms).await
                })
            });
            let books = read.await.map_err(|_| StoreError::Closed);
            if let Some(hold) = hold {
                hold.stop_here().await;
            }
            books??
        })
    }
}

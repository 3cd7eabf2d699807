//! The console's reports in SQLite: sums by hour and by country, each
//! through an index on its time column.

use rusqlite::{params, Row};

use super::SqliteStore;
use crate::reports::{merge_hours, CountryMargin, HourFigures};
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
}

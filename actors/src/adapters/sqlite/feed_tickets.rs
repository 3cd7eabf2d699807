//! Feed tickets in SQLite: issued and redeemed by the writer, whose
//! transactions every process on the file takes in turn (`BEGIN
//! IMMEDIATE`), and redeemed by one `DELETE … RETURNING`, so a ticket is
//! given up once.

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::feed_tickets::{FeedScope, NewFeedTicket, RedeemedTicket, EXPIRED_DELETED_PER_ISSUE};
use crate::store::{FeedTicketStore, StoreFuture};

impl FeedTicketStore for SqliteStore {
    fn issue(&self, ticket: NewFeedTicket, now_ms: i64) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "DELETE FROM feed_tickets WHERE ticket_hash IN (
                         SELECT ticket_hash FROM feed_tickets WHERE expires_at <= ?1
                          ORDER BY expires_at LIMIT ?2)",
                )?
                .execute(params![now_ms, EXPIRED_DELETED_PER_ISSUE])?;
            let (scope, account_id) = ticket.scope.stored();
            connection
                .prepare_cached(
                    "INSERT INTO feed_tickets (ticket_hash, scope, account_id, token_hash, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    ticket.ticket_hash,
                    scope,
                    account_id,
                    ticket.token_hash,
                    ticket.expires_at_ms
                ])?;
            Ok(())
        })
    }

    fn redeem(&self, ticket_hash: String, now_ms: i64) -> StoreFuture<Option<RedeemedTicket>> {
        self.write(move |connection| {
            let found = connection
                .prepare_cached(
                    "DELETE FROM feed_tickets WHERE ticket_hash = ?1 AND expires_at > ?2
                     RETURNING scope, account_id, token_hash",
                )?
                .query_row(params![ticket_hash, now_ms], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                    ))
                })
                .optional()?;
            found
                .map(|(scope, account_id, token_hash)| {
                    Ok(RedeemedTicket {
                        scope: FeedScope::from_stored(&ticket_hash, &scope, account_id)?,
                        token_hash,
                    })
                })
                .transpose()
        })
    }
}

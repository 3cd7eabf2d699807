//! Feed tickets in Postgres: issued and redeemed by the writer, and
//! redeemed by one `DELETE … RETURNING`. Two instances redeeming one
//! ticket at once both reach its row; the second waits for the first's
//! commit, finds the row gone and gets nothing. Expired tickets are
//! deleted with `SKIP LOCKED`, so two instances issuing at once never wait
//! on each other's clean-up.

use super::{boxed, PostgresStore};
use crate::feed_tickets::{FeedScope, NewFeedTicket, RedeemedTicket, EXPIRED_DELETED_PER_ISSUE};
use crate::store::{FeedTicketStore, StoreFuture};

impl FeedTicketStore for PostgresStore {
    fn issue(&self, ticket: NewFeedTicket, now_ms: i64) -> StoreFuture<()> {
        self.write(move |transaction| {
            let ticket = ticket.clone();
            boxed(async move {
                transaction
                    .execute(
                        "DELETE FROM feed_tickets WHERE ticket_hash IN (
                             SELECT ticket_hash FROM feed_tickets WHERE expires_at <= $1
                              ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                        &[&now_ms, &EXPIRED_DELETED_PER_ISSUE],
                    )
                    .await?;
                let (scope, account_id) = ticket.scope.stored();
                transaction
                    .execute(
                        "INSERT INTO feed_tickets (ticket_hash, scope, account_id, token_hash, expires_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &ticket.ticket_hash,
                            &scope,
                            &account_id,
                            &ticket.token_hash,
                            &ticket.expires_at_ms,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn redeem(&self, ticket_hash: String, now_ms: i64) -> StoreFuture<Option<RedeemedTicket>> {
        self.write(move |transaction| {
            let ticket_hash = ticket_hash.clone();
            boxed(async move {
                let row = transaction
                    .query_opt(
                        "DELETE FROM feed_tickets WHERE ticket_hash = $1 AND expires_at > $2
                         RETURNING scope, account_id, token_hash",
                        &[&ticket_hash, &now_ms],
                    )
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let scope: String = row.try_get(0)?;
                Ok(Some(RedeemedTicket {
                    scope: FeedScope::from_stored(&ticket_hash, &scope, row.try_get(1)?)?,
                    token_hash: row.try_get(2)?,
                }))
            })
        })
    }
}

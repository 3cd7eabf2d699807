//! Numbers that opted out of texts, in Postgres.

use tokio_postgres::GenericClient;

use super::{boxed, PostgresStore};
use crate::accounts::PhoneNumber;
use crate::opt_outs::{OptChange, OptOut, OptOutVia};
use crate::store::{OptOutStore, StoreError, StoreFuture, UnknownValue};

/// The number's opt-out, if it opted out.
pub(super) async fn opt_out_of(
    client: &impl GenericClient,
    phone: &PhoneNumber,
) -> Result<Option<OptOut>, StoreError> {
    let row = client
        .query_opt(
            "SELECT opted_out_at, via, keyword FROM opt_outs WHERE phone = $1",
            &[&phone.as_str()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let via: String = row.try_get(1)?;
    let via = OptOutVia::parse(&via).ok_or_else(|| {
        StoreError::UnknownValue(UnknownValue::new("opt_outs", phone, "via", &via))
    })?;
    Ok(Some(OptOut {
        opted_out_at_ms: row.try_get(0)?,
        via,
        keyword: row.try_get(2)?,
    }))
}

/// Records an opt-out; one already recorded stands.
pub(super) async fn record_opt_out(
    client: &impl GenericClient,
    phone: &PhoneNumber,
    via: OptOutVia,
    keyword: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO opt_outs (phone, opted_out_at, via, keyword) VALUES ($1, $2, $3, $4)
             ON CONFLICT (phone) DO NOTHING",
            &[&phone.as_str(), &now_ms, &via.as_str(), &keyword],
        )
        .await?;
    Ok(())
}

/// Applies what an inbound text changes of its number's subscription.
pub(super) async fn apply(
    client: &impl GenericClient,
    phone: &PhoneNumber,
    change: &OptChange,
    now_ms: i64,
) -> Result<(), StoreError> {
    match change {
        OptChange::Out(keyword) => {
            record_opt_out(client, phone, OptOutVia::Keyword, Some(keyword), now_ms).await
        }
        OptChange::In => {
            client
                .execute("DELETE FROM opt_outs WHERE phone = $1", &[&phone.as_str()])
                .await?;
            // When: a carrier's opt-out about a message sent before it is
            // old news.
            client
                .execute(
                    "INSERT INTO opt_ins (phone, opted_in_at) VALUES ($1, $2)
                     ON CONFLICT (phone) DO UPDATE SET opted_in_at = excluded.opted_in_at",
                    &[&phone.as_str(), &now_ms],
                )
                .await?;
            Ok(())
        }
    }
}

impl OptOutStore for PostgresStore {
    fn opt_out_of(&self, phone: PhoneNumber) -> StoreFuture<Option<OptOut>> {
        self.read(move |client| async move { opt_out_of(&*client, &phone).await })
    }

    fn record_opt_out(
        &self,
        phone: PhoneNumber,
        via: OptOutVia,
        keyword: Option<String>,
        now_ms: i64,
    ) -> StoreFuture<()> {
        self.write(move |transaction| {
            let (phone, keyword) = (phone.clone(), keyword.clone());
            boxed(async move {
                record_opt_out(transaction, &phone, via, keyword.as_deref(), now_ms).await
            })
        })
    }

    fn record_carrier_opt_out(
        &self,
        phone: PhoneNumber,
        sent_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let phone = phone.clone();
            boxed(async move {
                let opted_in_at: Option<i64> = transaction
                    .query_opt(
                        "SELECT opted_in_at FROM opt_ins WHERE phone = $1",
                        &[&phone.as_str()],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                if let (Some(sent_at), Some(opted_in_at)) = (sent_at_ms, opted_in_at) {
                    if sent_at < opted_in_at {
                        return Ok(false);
                    }
                }
                record_opt_out(transaction, &phone, OptOutVia::Carrier, None, now_ms).await?;
                Ok(true)
            })
        })
    }
}

//! A copy's source in Postgres, read without changing it: never migrated,
//! on connections whose transactions are read-only — one whose reads are
//! one moment (one `REPEATABLE READ` transaction, from the first read to
//! `end_moment`), and one for the instances' heartbeats as they are now.

use std::sync::Arc;

use tokio::sync::{oneshot, Mutex};
use tokio_postgres::Client;

use super::{block_on, start_runtime, Connector, PostgresUrl};
use crate::store::copy::{CopyError, CopyRow, Table};
use crate::store::{InstanceBeat, SourceStore, StoreError, StoreFuture};
use crate::verify::VerifyReport;

/// The source's connection, driven on a runtime of its own that stops when
/// this is dropped.
pub(crate) struct PostgresSource {
    client: Arc<Mutex<Moment>>,
    now: Arc<Client>,
    _stop: oneshot::Sender<()>,
}

/// The connection the copy's moment is read on, and whether the moment
/// (its transaction) has begun.
struct Moment {
    client: Client,
    begun: bool,
}

impl Moment {
    /// The connection, in the copy's moment: its transaction begun by
    /// the first read.
    async fn in_moment(&mut self) -> Result<&Client, StoreError> {
        if !self.begun {
            self.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            self.begun = true;
        }
        Ok(&self.client)
    }
}

/// Opens the sms-credit database at `url` to be read only: refused when
/// there is none (no migration history), or when its history is not this
/// release's (see `adapters::check_history`).
pub(crate) fn open_source(url: &PostgresUrl) -> Result<PostgresSource, CopyError> {
    let (runtime, stop) = start_runtime()?;
    let connector = Connector::new(url, runtime.clone())?;
    let shown = url.to_string();
    let connect = |connector: Connector| async move {
        let client = connector.connect(None).await?;
        // Nothing this connection runs can write.
        client
            .batch_execute("SET default_transaction_read_only = on")
            .await?;
        Ok::<_, StoreError>(client)
    };
    let moment_connector = connector.clone();
    let (client, now) = block_on(&runtime, async move {
        let client = connect(moment_connector).await?;
        if !super::migrations::has_history(&client).await? {
            return Err(StoreError::Missing {
                database: shown,
                reason: "the database holds no sms-credit tables".to_string(),
            });
        }
        let now = connect(connector).await?;
        Ok((client, now))
    })?;
    let client = Arc::new(Mutex::new(Moment {
        client,
        begun: false,
    }));
    let now = Arc::new(now);
    let reading = Arc::clone(&now);
    let applied = block_on(&runtime, async move {
        super::migrations::applied_migrations(&reading).await
    })?;
    crate::adapters::check_history(&applied, super::migrations::names())?;
    Ok(PostgresSource {
        client,
        now,
        _stop: stop,
    })
}

impl SourceStore for PostgresSource {
    fn beats(&self) -> StoreFuture<Vec<InstanceBeat>> {
        let now = Arc::clone(&self.now);
        Box::pin(async move { super::accounts::instance_beats(&*now).await })
    }

    fn verify(&self) -> StoreFuture<VerifyReport> {
        let client = Arc::clone(&self.client);
        Box::pin(async move {
            let mut moment = client.lock().await;
            super::ledger::verify_in(moment.in_moment().await?).await
        })
    }

    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>> {
        let client = Arc::clone(&self.client);
        Box::pin(async move {
            let mut moment = client.lock().await;
            super::copy::select_page(moment.in_moment().await?, table, after.as_ref(), limit).await
        })
    }

    fn end_moment(&self) -> StoreFuture<()> {
        let client = Arc::clone(&self.client);
        Box::pin(async move {
            let mut moment = client.lock().await;
            if moment.begun {
                moment.client.batch_execute("COMMIT").await?;
                moment.begun = false;
            }
            Ok(())
        })
    }
}

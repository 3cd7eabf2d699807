//! A copy's source in Postgres, read without changing it: one connection
//! whose transactions are read-only, never migrated.

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
    client: Arc<Mutex<Client>>,
    _stop: oneshot::Sender<()>,
}

/// Opens the sms-credit database at `url` to be read only: refused when
/// there is none (no migration history), or when its history is not this
/// release's (see `adapters::check_history`).
pub(crate) fn open_source(url: &PostgresUrl) -> Result<PostgresSource, CopyError> {
    let (runtime, stop) = start_runtime()?;
    let connector = Connector::new(url, runtime.clone())?;
    let shown = url.to_string();
    let client = block_on(&runtime, async move {
        let client = connector.connect(None).await?;
        // Nothing this connection runs can write.
        client
            .batch_execute("SET default_transaction_read_only = on")
            .await?;
        if !super::migrations::has_history(&client).await? {
            return Err(StoreError::Missing {
                database: shown,
                reason: "the database holds no sms-credit tables".to_string(),
            });
        }
        Ok(client)
    })?;
    let client = Arc::new(Mutex::new(client));
    let reading = Arc::clone(&client);
    let applied = block_on(&runtime, async move {
        super::migrations::applied_migrations(&*reading.lock().await).await
    })?;
    crate::adapters::check_history(&applied, super::migrations::names())?;
    Ok(PostgresSource {
        client,
        _stop: stop,
    })
}

impl SourceStore for PostgresSource {
    fn beats(&self) -> StoreFuture<Vec<InstanceBeat>> {
        let client = Arc::clone(&self.client);
        Box::pin(async move { super::accounts::instance_beats(&*client.lock().await).await })
    }

    fn verify(&self) -> StoreFuture<VerifyReport> {
        let client = Arc::clone(&self.client);
        Box::pin(async move { super::ledger::verify(&mut *client.lock().await).await })
    }

    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>> {
        let client = Arc::clone(&self.client);
        Box::pin(async move {
            super::copy::select_page(&*client.lock().await, table, after.as_ref(), limit).await
        })
    }
}

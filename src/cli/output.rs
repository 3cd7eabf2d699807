//! What the commands share: opening the store or the core for one command,
//! and printing for people or as JSON.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use sms_credit_actors::adapters;
use sms_credit_actors::clock::SystemClock;
use sms_credit_actors::store::Store;

use crate::config::Settings;
use crate::startup::Core;

/// Opens the store (no actors), runs `work`, and waits for its last commit.
pub fn with_store<T, F, Fut>(settings: &Settings, work: F) -> Result<T, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    actix_rt::System::new().block_on(async move {
        let store = adapters::open(&settings.database.store_settings())
            .map_err(|error| error.to_string())?;
        let outcome = work(store.clone()).await;
        store.flush().await.map_err(|error| error.to_string())?;
        outcome
    })
}

/// Starts the core on the database, runs `work`, and shuts the core down.
pub fn with_core<F, Fut>(settings: &Settings, work: F) -> Result<(), String>
where
    F: FnOnce(Arc<Core>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    actix_rt::System::new().block_on(async move {
        let core = Arc::new(
            Core::start(settings, Arc::new(SystemClock)).map_err(|error| error.to_string())?,
        );
        let outcome = work(Arc::clone(&core)).await;
        if let Ok(core) = Arc::try_unwrap(core) {
            core.shutdown().await;
        }
        outcome
    })
}

/// Prints `value` as one line of JSON (for programs), or says why it
/// cannot.
pub fn print_json(value: &impl Serialize) -> Result<(), String> {
    let value = serde_json::to_value(value).map_err(|error| error.to_string())?;
    println!("{value}");
    Ok(())
}

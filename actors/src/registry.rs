//! The registry of live account actors: it activates an actor on demand, on
//! the arbiter its account maps to, and delivers messages so that none is
//! lost to a passivation racing it.

use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use dashmap::DashMap;

use crate::account_actor::{AccountActor, AccountSettings, ActorTable};
use crate::clock::Clock;
use crate::error::LedgerError;
use crate::ledger::AccountId;
use crate::store::Store;

/// How often one message is offered again after finding its actor gone.
/// Each retry activates a fresh actor, so more than one is already rare.
const MAX_DELIVERY_ATTEMPTS: usize = 16;

/// Live account actors by account; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    /// The live actors; an actor removes itself when it passivates.
    table: Arc<ActorTable>,
    store: Store,
    clock: Arc<dyn Clock>,
    settings: Arc<AccountSettings>,
    /// Where actors run: an account always maps to the same arbiter.
    /// Empty means the arbiter of whoever activates it.
    arbiters: Vec<ArbiterHandle>,
}

impl Registry {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        settings: AccountSettings,
        arbiters: Vec<ArbiterHandle>,
    ) -> Registry {
        Registry {
            inner: Arc::new(RegistryInner {
                table: Arc::new(DashMap::new()),
                store,
                clock,
                settings: Arc::new(settings),
                arbiters,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// One of the actor arbiters, chosen by `key` (`None` if the registry
    /// runs actors on the caller's arbiter).
    pub fn arbiter(&self, key: u64) -> Option<ArbiterHandle> {
        let arbiters = &self.inner.arbiters;
        (!arbiters.is_empty()).then(|| arbiters[(key % arbiters.len() as u64) as usize].clone())
    }

    /// How many account actors are live.
    pub fn active_count(&self) -> usize {
        self.inner.table.len()
    }

    /// The live actor of an account, activated if there is none.
    pub fn activate(&self, account_id: AccountId) -> Addr<AccountActor> {
        if let Some(listed) = self.inner.table.get(&account_id) {
            if listed.connected() {
                return listed.clone();
            }
        }
        let mut slot = self
            .inner
            .table
            .entry(account_id)
            .or_insert_with(|| self.start(account_id));
        if !slot.connected() {
            *slot = self.start(account_id);
        }
        slot.clone()
    }

    fn start(&self, account_id: AccountId) -> Addr<AccountActor> {
        let inner = &self.inner;
        let build = {
            let store = inner.store.clone();
            let table = Arc::clone(&inner.table);
            let clock = Arc::clone(&inner.clock);
            let settings = Arc::clone(&inner.settings);
            move |_: &mut Context<AccountActor>| {
                AccountActor::new(account_id, store, table, clock, settings)
            }
        };
        if inner.arbiters.is_empty() {
            AccountActor::create(build)
        } else {
            let index = account_id.0.unsigned_abs() as usize % inner.arbiters.len();
            AccountActor::start_in_arbiter(&inner.arbiters[index], build)
        }
    }

    /// Sends a message to an account's actor and waits for its answer. A
    /// full mailbox makes this wait (backpressure); an actor that stopped
    /// before handling the message is replaced and the message sent again.
    pub async fn send<M, T>(&self, account_id: AccountId, message: M) -> Result<T, LedgerError>
    where
        M: Message<Result = Result<T, LedgerError>> + Clone + Send + 'static,
        T: Send + 'static,
        AccountActor: Handler<M>,
        <AccountActor as Actor>::Context: ToEnvelope<AccountActor, M>,
    {
        for _ in 0..MAX_DELIVERY_ATTEMPTS {
            let address = self.activate(account_id);
            match address.send(message.clone()).await {
                Ok(Err(LedgerError::Passivated)) | Err(MailboxError::Closed) => {
                    self.inner
                        .table
                        .remove_if(&account_id, |_, listed| *listed == address);
                }
                Ok(answer) => return answer,
                Err(MailboxError::Timeout) => return Err(LedgerError::Busy),
            }
        }
        Err(LedgerError::Interrupted)
    }
}

//! The registry of live account actors: it activates an actor on demand, on
//! the arbiter its account maps to, and delivers messages so that none is
//! lost to a passivation racing it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use dashmap::DashMap;

use crate::account_actor::{
    AccountActor, AccountSettings, ActorShared, ActorTable, LedgerMoved, MayBeStale,
    PassivateIfIdle,
};
use crate::billing::auto_top_up::AutoTriggers;
use crate::clock::Clock;
use crate::error::LedgerError;
use crate::ledger::AccountId;
use crate::store::{Moved, Store};
use tokio::sync::mpsc;

/// How often one message is offered again after finding its actor gone.
/// Each retry activates a fresh actor, so more than one is already rare.
const MAX_DELIVERY_ATTEMPTS: usize = 16;

/// Live account actors by account; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    /// What every actor shares: the store, the clock, the settings and the
    /// table of live actors (an actor removes itself when it passivates).
    shared: Arc<ActorShared>,
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
        let table = Arc::new(DashMap::new());
        let sweep_every = sweep_interval(settings.passivate_after);
        let shared = Arc::new(ActorShared {
            store,
            table: Arc::clone(&table),
            clock,
            settings,
            epoch: Instant::now(),
            auto_top_ups: AutoTriggers::new(),
        });
        let sweeper = sweep(Arc::downgrade(&table), sweep_every);
        let moved = shared
            .store
            .take_moved()
            .map(|moved| tell_moved(Arc::downgrade(&table), moved));
        match arbiters.first() {
            Some(arbiter) => {
                arbiter.spawn(sweeper);
                if let Some(moved) = moved {
                    arbiter.spawn(moved);
                }
            }
            None => {
                actix::spawn(sweeper);
                if let Some(moved) = moved {
                    actix::spawn(moved);
                }
            }
        }
        Registry {
            inner: Arc::new(RegistryInner { shared, arbiters }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.shared.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.shared.clock
    }

    /// The accounts with auto top-up on, which the actors consult after
    /// each debit, and the requests they make.
    pub fn auto_triggers(&self) -> &Arc<AutoTriggers> {
        &self.inner.shared.auto_top_ups
    }

    /// One of the actor arbiters, chosen by `key` (`None` if the registry
    /// runs actors on the caller's arbiter).
    pub fn arbiter(&self, key: u64) -> Option<ArbiterHandle> {
        let arbiters = &self.inner.arbiters;
        (!arbiters.is_empty()).then(|| arbiters[(key % arbiters.len() as u64) as usize].clone())
    }

    /// The arbiter an account's actor runs on (`None` if the registry runs
    /// actors on the caller's arbiter).
    pub fn arbiter_of(&self, account_id: AccountId) -> Option<ArbiterHandle> {
        self.arbiter(account_id.0.unsigned_abs())
    }

    /// How many account actors are live.
    pub fn active_count(&self) -> usize {
        self.inner.shared.table.len()
    }

    /// Runs `use_actor` on the live actor of an account (activated if there
    /// is none) while it is listed, without cloning its address: a clone
    /// allocates, and every message would pay for it.
    fn with_actor<R>(
        &self,
        account_id: AccountId,
        use_actor: impl FnOnce(&Addr<AccountActor>) -> R,
    ) -> R {
        if let Some(listed) = self.inner.shared.table.get(&account_id) {
            if listed.connected() {
                return use_actor(&listed);
            }
        }
        let mut slot = self
            .inner
            .shared
            .table
            .entry(account_id)
            .or_insert_with(|| self.start(account_id));
        if !slot.connected() {
            *slot = self.start(account_id);
        }
        use_actor(&slot)
    }

    fn start(&self, account_id: AccountId) -> Addr<AccountActor> {
        let inner = &self.inner;
        let build = {
            let shared = Arc::clone(&inner.shared);
            move |_: &mut Context<AccountActor>| AccountActor::new(account_id, shared)
        };
        match self.arbiter_of(account_id) {
            None => AccountActor::create(build),
            Some(arbiter) => AccountActor::start_in_arbiter(&arbiter, build),
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
            let request = self.with_actor(account_id, |address| address.send(message.clone()));
            match request.await {
                Ok(Err(LedgerError::Passivated)) | Err(MailboxError::Closed) => {
                    // The actor stopped (it unlists itself first); drop its
                    // listing if it is still there, but never a fresh one.
                    self.inner
                        .shared
                        .table
                        .remove_if(&account_id, |_, listed| !listed.connected());
                }
                Ok(answer) => return answer,
                Err(MailboxError::Timeout) => return Err(LedgerError::Busy),
            }
        }
        Err(LedgerError::Interrupted)
    }
}

/// How often the sweeper looks for idle actors: often enough that an actor
/// stops within a quarter of the passivation time after it, rarely enough
/// to cost nothing (at most every 30 s, at least every millisecond).
fn sweep_interval(passivate_after: Duration) -> Duration {
    (passivate_after / 4).clamp(Duration::from_millis(1), Duration::from_secs(30))
}

/// Tells the live actor of each account another process wrote to, so that
/// it catches up (an account without a live actor needs nothing: its next
/// actor loads the snapshot), and every live actor when the store may have
/// missed what the others said. Ends when the store or the registry is
/// gone.
async fn tell_moved(table: Weak<ActorTable>, mut moved: mpsc::UnboundedReceiver<Moved>) {
    while let Some(change) = moved.recv().await {
        let Some(table) = table.upgrade() else {
            return;
        };
        match change {
            Moved::Rows {
                account_id,
                seq,
                after,
            } => {
                if let Some(listed) = table.get(&account_id) {
                    let _ = listed.try_send(LedgerMoved { seq, after });
                }
            }
            Moved::Unknown => {
                // Every live actor reads its account again before it next
                // answers (one with a write in flight learns from the
                // write's guard instead).
                for listed in table.iter() {
                    let _ = listed.value().try_send(MayBeStale);
                }
            }
        }
    }
}

/// Asks every live actor, now and then, to stop if it is idle: one task for
/// all actors instead of a timer in each. A full mailbox is skipped (that
/// actor is busy, not idle). Ends when the registry is gone.
async fn sweep(table: Weak<ActorTable>, every: Duration) {
    let mut ticks = actix::clock::interval(every);
    loop {
        ticks.tick().await;
        let Some(table) = table.upgrade() else {
            return;
        };
        for listed in table.iter() {
            let _ = listed.value().try_send(PassivateIfIdle);
        }
    }
}

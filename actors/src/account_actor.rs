//! The account actor: the only code that changes a balance.
//!
//! It owns its account's balance, ledger position and warning cooldown in
//! memory, loaded from the committed snapshot when it is activated. It does
//! not wait for the disk between messages: each write is queued to the
//! store and the actor goes on, while the caller's answer waits for the
//! commit that holds the write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::error::LedgerError;
use crate::ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, TransactionKind};
use crate::money::Money;
use crate::store::{LedgerWrite, Store, StoreError};

// ---------------------------------------------------------------- messages

/// Money paid in. `amount` must be positive.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Credit {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    pub description: String,
    pub order_id: Option<i64>,
}

/// Credit spent. `amount` must be positive; refused with
/// [`LedgerError::InsufficientCredit`] if the balance would drop below zero.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Debit {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    pub description: String,
}

/// Money given back, signed: positive returns credit to the account (a
/// failed message), negative takes back a payment refunded to the card.
/// May take the balance below zero.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Refund {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    pub description: String,
    pub order_id: Option<i64>,
}

/// An administrator's correction, signed; may take the balance below zero.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Adjust {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    pub reason: String,
}

/// The committed snapshot: balance, ledger position and warning cooldown.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<Snapshot, LedgerError>")]
pub struct GetBalance;

/// The answer to a mutation: the ledger row it made (or made the first
/// time, when `replayed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub entry: LedgerEntry,
    /// True when this key was seen before and nothing new happened.
    pub replayed: bool,
    /// True when this debit left the balance below the low-balance
    /// threshold and no warning went out within the cooldown: the caller
    /// sends one. The cooldown is committed with the debit, so it survives
    /// restarts and no second warning follows.
    pub low_balance_warning_due: bool,
}

// ---------------------------------------------------------------- the actor

/// Settings shared by every account actor.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    /// An actor idle this long, with nothing in flight, stops; the next
    /// message activates a fresh one from the snapshot.
    pub passivate_after: Duration,
    /// Messages that may wait in one actor's mailbox before senders wait.
    pub mailbox_capacity: usize,
    /// Writes that may wait for their commit in one actor before further
    /// mutations are refused as busy.
    pub max_in_flight: usize,
    /// A debit that leaves the balance below this is followed by a warning.
    pub low_balance_threshold: Money,
    /// At most one warning per account in this long.
    pub low_balance_cooldown: Duration,
}

impl Default for AccountSettings {
    fn default() -> AccountSettings {
        AccountSettings {
            passivate_after: Duration::from_secs(15 * 60),
            mailbox_capacity: 256,
            max_in_flight: 4096,
            low_balance_threshold: Money::from_micros(2_000_000),
            low_balance_cooldown: Duration::from_secs(24 * 3600),
        }
    }
}

/// How long an actor for an account that does not exist keeps answering
/// `AccountNotFound` before it stops.
const MISSING_ACCOUNT_LINGER: Duration = Duration::from_secs(1);

/// The live actors by account, shared with the registry; an actor removes
/// itself from it when it passivates.
pub(crate) type ActorTable = DashMap<AccountId, Addr<AccountActor>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    /// The snapshot is loaded; messages are served.
    Ready,
    /// There is no such account; messages are answered with `AccountNotFound`.
    Missing,
    /// Stopping after idleness; messages are handed back to the registry.
    Passivating,
}

/// A write queued to the store whose commit has not been seen yet.
struct InFlight {
    entry: LedgerEntry,
    /// Whether this write also starts a low-balance warning's cooldown.
    warning_due: bool,
    /// Callers waiting for this write: the first asked for it, the others
    /// repeated its idempotency key while it was in flight.
    waiters: Vec<oneshot::Sender<Result<Receipt, LedgerError>>>,
    snapshot_after: Snapshot,
}

/// One change of balance, whatever message asked for it.
struct Mutation {
    kind: TransactionKind,
    /// Signed as it will stand in the ledger.
    amount: Money,
    idempotency_key: IdempotencyKey,
    description: String,
    order_id: Option<i64>,
}

type Reply = oneshot::Sender<Result<Receipt, LedgerError>>;

pub struct AccountActor {
    /// The account this actor owns; no other code changes its balance.
    account_id: AccountId,
    /// Where ledger rows and snapshots become durable.
    store: Store,
    /// Where this actor is listed; it unlists itself when it passivates.
    table: Arc<ActorTable>,
    /// Timestamps for ledger rows (injectable for tests).
    clock: Arc<dyn Clock>,
    settings: Arc<AccountSettings>,
    lifecycle: Lifecycle,
    /// The last committed snapshot: what `GetBalance` answers and what a
    /// failed commit falls back to.
    committed: Snapshot,
    /// The committed snapshot plus every write queued but not yet committed:
    /// what the next mutation is computed on.
    working: Snapshot,
    /// Writes queued to the store and not yet answered, by idempotency key,
    /// so a repeated key joins the write instead of making another.
    in_flight: HashMap<IdempotencyKey, InFlight>,
    /// The store refuses writes of older generations of this account after
    /// a failure; a reload takes a new one.
    generation: u64,
    /// When a message last arrived, for passivation.
    last_activity: Instant,
}

impl AccountActor {
    pub(crate) fn new(
        account_id: AccountId,
        store: Store,
        table: Arc<ActorTable>,
        clock: Arc<dyn Clock>,
        settings: Arc<AccountSettings>,
    ) -> AccountActor {
        let generation = store.next_generation();
        let empty = Snapshot {
            balance: Money::ZERO,
            seq: 0,
            low_balance_warned_at_ms: None,
        };
        AccountActor {
            account_id,
            store,
            table,
            clock,
            settings,
            lifecycle: Lifecycle::Ready,
            committed: empty,
            working: empty,
            in_flight: HashMap::new(),
            generation,
            last_activity: Instant::now(),
        }
    }

    /// Loads the committed snapshot, holding every message until it is in.
    /// A store that cannot be read is retried, because answering from a
    /// guessed state is never right.
    fn load_snapshot(&mut self, ctx: &mut Context<Self>) {
        let load = self.store.load_snapshot(self.account_id);
        ctx.wait(load.into_actor(self).map(|loaded, actor, ctx| match loaded {
            Ok(Some(snapshot)) => {
                actor.committed = snapshot;
                actor.working = snapshot;
            }
            Ok(None) => {
                // Answer what arrives for a short while, then stop: a later
                // message activates a fresh actor that looks again, so an
                // account created meanwhile is found. (A stopping actor
                // drops its queued messages, which the registry resends.)
                actor.lifecycle = Lifecycle::Missing;
                ctx.run_later(MISSING_ACCOUNT_LINGER, |actor, ctx| actor.unlist_and_stop(ctx));
            }
            Err(error) => {
                tracing::error!(account_id = %actor.account_id, %error, "cannot load snapshot; retrying");
                let pause = actix::clock::sleep(Duration::from_millis(100));
                ctx.wait(pause.into_actor(actor).map(|_, actor, ctx| actor.load_snapshot(ctx)));
            }
        }));
    }

    /// Refuses what cannot be served right now.
    fn admit(&mut self) -> Result<(), LedgerError> {
        self.last_activity = Instant::now();
        match self.lifecycle {
            Lifecycle::Ready => Ok(()),
            Lifecycle::Missing => Err(LedgerError::AccountNotFound(self.account_id)),
            Lifecycle::Passivating => Err(LedgerError::Passivated),
        }
    }

    fn mutate(
        &mut self,
        mutation: Mutation,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<Receipt, LedgerError>> {
        let (reply, answer) = oneshot::channel();
        self.begin_mutation(mutation, reply, ctx);
        Box::pin(async move { answer.await.unwrap_or(Err(LedgerError::Interrupted)) })
    }

    fn begin_mutation(&mut self, mutation: Mutation, reply: Reply, ctx: &mut Context<Self>) {
        if let Err(error) = self.admit() {
            let _ = reply.send(Err(error));
            return;
        }
        if let Some(in_flight) = self.in_flight.get_mut(&mutation.idempotency_key) {
            if in_flight.entry.kind == mutation.kind && in_flight.entry.amount == mutation.amount {
                in_flight.waiters.push(reply);
            } else {
                let _ = reply.send(Err(conflict(&in_flight.entry)));
            }
            return;
        }
        if self.in_flight.len() >= self.settings.max_in_flight {
            let _ = reply.send(Err(LedgerError::Busy));
            return;
        }
        // The key may have been used by an earlier activation: ask the
        // ledger, holding later messages so that they are applied in order.
        let lookup = self
            .store
            .find_entry_by_key(self.account_id, mutation.idempotency_key.clone());
        ctx.wait(lookup.into_actor(self).map(move |found, actor, ctx| {
            let outcome = match found {
                Err(error) => Err(LedgerError::from(error)),
                Ok(Some(existing)) => replay(existing, &mutation),
                Ok(None) => match actor.apply(mutation, ctx) {
                    Ok(in_flight) => {
                        in_flight.waiters.push(reply);
                        return;
                    }
                    Err(error) => Err(error),
                },
            };
            let _ = reply.send(outcome);
        }));
    }

    /// Computes the new row and snapshot, queues them to the store and
    /// moves the working state on without waiting for the commit.
    fn apply(
        &mut self,
        mutation: Mutation,
        ctx: &mut Context<Self>,
    ) -> Result<&mut InFlight, LedgerError> {
        let balance_after = self.working.balance.checked_add(mutation.amount)?;
        if mutation.kind == TransactionKind::Debit && balance_after.is_negative() {
            return Err(LedgerError::InsufficientCredit {
                balance: self.working.balance,
                needed: -mutation.amount,
            });
        }
        let now_ms = self.clock.now_ms();
        let warning_due = mutation.kind == TransactionKind::Debit
            && balance_after < self.settings.low_balance_threshold
            && self
                .working
                .low_balance_warned_at_ms
                .is_none_or(|warned_at| {
                    now_ms.saturating_sub(warned_at)
                        >= self.settings.low_balance_cooldown.as_millis() as i64
                });
        let snapshot_after = Snapshot {
            balance: balance_after,
            seq: self.working.seq + 1,
            low_balance_warned_at_ms: if warning_due {
                Some(now_ms)
            } else {
                self.working.low_balance_warned_at_ms
            },
        };
        let entry = LedgerEntry {
            account_id: self.account_id,
            seq: snapshot_after.seq,
            kind: mutation.kind,
            amount: mutation.amount,
            balance_after,
            idempotency_key: mutation.idempotency_key.as_str().to_string(),
            order_id: mutation.order_id,
            description: mutation.description,
            created_at_ms: now_ms,
        };
        let (done, committed) = oneshot::channel();
        self.store.submit_ledger_write(LedgerWrite {
            entry: entry.clone(),
            previous: self.working,
            next: snapshot_after,
            generation: self.generation,
            done,
        })?;
        self.working = snapshot_after;

        let generation = self.generation;
        let key = mutation.idempotency_key;
        let done_key = key.clone();
        let commit = async move { committed.await.unwrap_or(Err(StoreError::Closed)) };
        ctx.spawn(commit.into_actor(self).map(move |result, actor, ctx| {
            actor.on_write_done(&done_key, generation, result, ctx)
        }));
        Ok(self.in_flight.entry(key).or_insert(InFlight {
            entry,
            warning_due,
            waiters: Vec::with_capacity(1),
            snapshot_after,
        }))
    }

    /// Answers the callers of one write once the store has decided it.
    fn on_write_done(
        &mut self,
        key: &IdempotencyKey,
        generation: u64,
        result: Result<(), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(in_flight) = self.in_flight.remove(key) else {
            return;
        };
        match result {
            Ok(()) => {
                if in_flight.snapshot_after.seq > self.committed.seq {
                    self.committed = in_flight.snapshot_after;
                }
                for (index, waiter) in in_flight.waiters.into_iter().enumerate() {
                    let _ = waiter.send(Ok(Receipt {
                        entry: in_flight.entry.clone(),
                        replayed: index > 0,
                        low_balance_warning_due: in_flight.warning_due && index == 0,
                    }));
                }
            }
            Err(error) => {
                for waiter in in_flight.waiters {
                    let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                }
                if generation == self.generation {
                    // Memory ran ahead of a write that did not land: drop it
                    // and start again from what is on disk.
                    tracing::warn!(account_id = %self.account_id, %error, "write failed; reloading snapshot");
                    self.generation = self.store.next_generation();
                    self.load_snapshot(ctx);
                }
            }
        }
    }

    fn schedule_passivation_check(&mut self, ctx: &mut Context<Self>, after: Duration) {
        ctx.run_later(after, |actor, ctx| {
            let idle = actor.last_activity.elapsed();
            let passivate_after = actor.settings.passivate_after;
            if idle >= passivate_after
                && actor.in_flight.is_empty()
                && actor.lifecycle == Lifecycle::Ready
            {
                actor.lifecycle = Lifecycle::Passivating;
                actor.unlist_and_stop(ctx);
            } else {
                let remaining = passivate_after
                    .saturating_sub(idle)
                    .max(Duration::from_millis(10));
                actor.schedule_passivation_check(ctx, remaining);
            }
        });
    }

    /// Leaves the registry, so the next message activates a fresh actor,
    /// then stops. A message already on its way to this actor is dropped
    /// unhandled when the actor stops (or answered `Passivated`); either way
    /// the registry sends it again to a fresh actor: none is lost.
    fn unlist_and_stop(&mut self, ctx: &mut Context<Self>) {
        let own_address = ctx.address();
        self.table
            .remove_if(&self.account_id, |_, listed| *listed == own_address);
        ctx.stop();
    }
}

fn conflict(existing: &LedgerEntry) -> LedgerError {
    LedgerError::IdempotencyConflict {
        key: existing.idempotency_key.clone(),
        existing_kind: existing.kind,
        existing_amount: existing.amount.micros(),
    }
}

/// The answer to a key that is already in the ledger: the original row if
/// the request is the same, a conflict if it is not.
fn replay(existing: LedgerEntry, mutation: &Mutation) -> Result<Receipt, LedgerError> {
    if existing.kind == mutation.kind && existing.amount == mutation.amount {
        Ok(Receipt {
            entry: existing,
            replayed: true,
            low_balance_warning_due: false,
        })
    } else {
        Err(conflict(&existing))
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
        self.load_snapshot(ctx);
        let passivate_after = self.settings.passivate_after;
        self.schedule_passivation_check(ctx, passivate_after);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        tracing::debug!(account_id = %self.account_id, "account actor stopped");
    }
}

// ---------------------------------------------------------------- handlers

impl Handler<Credit> for AccountActor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, message: Credit, ctx: &mut Context<Self>) -> Self::Result {
        if !message.amount.is_positive() {
            return Box::pin(async {
                Err(LedgerError::InvalidAmount("a credit must be positive"))
            });
        }
        self.mutate(
            Mutation {
                kind: TransactionKind::Credit,
                amount: message.amount,
                idempotency_key: message.idempotency_key,
                description: message.description,
                order_id: message.order_id,
            },
            ctx,
        )
    }
}

impl Handler<Debit> for AccountActor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, message: Debit, ctx: &mut Context<Self>) -> Self::Result {
        if !message.amount.is_positive() {
            return Box::pin(async { Err(LedgerError::InvalidAmount("a debit must be positive")) });
        }
        self.mutate(
            Mutation {
                kind: TransactionKind::Debit,
                amount: -message.amount,
                idempotency_key: message.idempotency_key,
                description: message.description,
                order_id: None,
            },
            ctx,
        )
    }
}

impl Handler<Refund> for AccountActor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, message: Refund, ctx: &mut Context<Self>) -> Self::Result {
        if message.amount.is_zero() {
            return Box::pin(async {
                Err(LedgerError::InvalidAmount("a refund must not be zero"))
            });
        }
        self.mutate(
            Mutation {
                kind: TransactionKind::Refund,
                amount: message.amount,
                idempotency_key: message.idempotency_key,
                description: message.description,
                order_id: message.order_id,
            },
            ctx,
        )
    }
}

impl Handler<Adjust> for AccountActor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, message: Adjust, ctx: &mut Context<Self>) -> Self::Result {
        if message.amount.is_zero() {
            return Box::pin(async {
                Err(LedgerError::InvalidAmount("an adjustment must not be zero"))
            });
        }
        self.mutate(
            Mutation {
                kind: TransactionKind::Adjustment,
                amount: message.amount,
                idempotency_key: message.idempotency_key,
                description: message.reason,
                order_id: None,
            },
            ctx,
        )
    }
}

impl Handler<GetBalance> for AccountActor {
    type Result = Result<Snapshot, LedgerError>;

    fn handle(&mut self, _message: GetBalance, _ctx: &mut Context<Self>) -> Self::Result {
        self.admit()?;
        Ok(self.committed)
    }
}

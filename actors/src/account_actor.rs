//! The account actor: the only code that changes a balance.
//!
//! It owns its account's balance, ledger position and warning cooldown in
//! memory, loaded from the committed snapshot when it is activated. It does
//! not wait for the disk between messages: each write is queued to the
//! store and the actor goes on, while the caller's answer waits for the
//! commit that holds the write.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::billing::auto_top_up::AutoTriggers;
use crate::billing::disputes::OrderClaims;
use crate::billing::orders::Order;
use crate::clock::Clock;
use crate::error::LedgerError;
use crate::grants::{
    Book, Category, CreditGrant, Funding, GrantError, GrantSource, GrantTerms, Priority, Take,
};
use crate::ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, Standing, TransactionKind};
use crate::messaging::notices::{NewNotice, NoticeKind};
use crate::money::{Money, MoneyError};
use crate::rating::RateTable;
use crate::store::ports::Activation;
use crate::store::{LedgerWrite, Outbox, Store, StoreError};
use crate::webhooks::events::{credit_expired, credit_granted, payment_refunded, EventDraft};
use crate::webhooks::{EventType, NewEvent};
use serde_json::Map;

// ---------------------------------------------------------------- messages

/// Money paid in. `amount` must be positive.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Credit {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    pub description: String,
    pub order_id: Option<i64>,
    /// What paid for it: the grant it makes is paid credit of this source.
    pub source: GrantSource,
    /// The webhook event this credit is (`payment.succeeded`), committed
    /// with its row, which adds `seq` and `balance_micros`.
    pub event: Option<EventDraft>,
}

/// Credit spent. `amount` must be positive; refused with
/// [`LedgerError::InsufficientCredit`] if the balance would drop below zero.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Debit {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    pub description: String,
    /// What one segment to the account's own number costs, when the debit
    /// pays for a message: the debit that takes the balance below it makes
    /// `balance.depleted`.
    pub one_segment: Option<Money>,
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
    /// The webhook event this refund is (`payment.refunded`), committed
    /// with its row.
    pub event: Option<EventDraft>,
}

/// Credit taken back because (part of) an order's payment was refunded to
/// the card or disputed, or given back because a refund failed or a
/// dispute was won. How much is decided here, from the committed ledger:
/// what the order's refunds and disputes hold back of its credit in all
/// (the refunds that stand, plus what disputes hold, up to what the order
/// credited; see [`OrderClaims::held_back`], recorded in the store before
/// this is sent), less what the order's earlier rows took back; read again
/// whenever the write is computed again (another instance wrote first). A
/// refund's row takes back no more than that refund. A key that already
/// holds a row is answered from it. May take the balance below zero.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<TakenBack, LedgerError>")]
pub struct TakeBack {
    /// The order, as the caller read it.
    pub order: Order,
    /// What the order credited: no more is ever taken back for it.
    pub credited: Money,
    /// What moved: a refund (`stripe_refund(refund)`), a
    /// dispute's funds (`stripe_dispute(dispute, stage)`), a refund that
    /// failed (`stripe_refund_failed(refund)`), or nothing new
    /// (`stripe_settle`: a check of the order).
    pub idempotency_key: IdempotencyKey,
    pub description: String,
    pub cause: TakeBackCause,
}

/// Why an order's credit is settled again. Every cause was recorded in the
/// store (the refund, the dispute, the failed refund) before it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeBackCause {
    /// Stripe's refund `refund_id` of `refunded` stands (the order's
    /// refunds came to `total_refunded` in all when it was recorded): the
    /// row takes back no more than `refunded`, and carries
    /// `payment.refunded`, once per refund — unless not `announce`d (the
    /// earlier release told the host of it).
    Refund {
        refund_id: String,
        refunded: Money,
        total_refunded: Money,
        announce: bool,
    },
    /// A dispute's funds were withdrawn or reinstated, a refund failed, or
    /// nothing new (a check after another change).
    Claims,
}

/// What a [`TakeBack`] came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakenBack {
    /// The row that took credit back or gave it back (or did the first
    /// time: `replayed`), committed with its events and, for a refund, the
    /// order's figure.
    Row(Receipt),
    /// The order's rows hold back what its refunds and disputes claim
    /// already: no row.
    Nothing,
}

/// What the account holder reads of an adjustment given no description of
/// its own: neutral, whatever the operator's reason.
pub const ADJUSTMENT_DESCRIPTION: &str = "Balance adjustment";

/// An administrator's correction, signed; may take the balance below zero.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Adjust {
    pub amount: Money,
    pub idempotency_key: IdempotencyKey,
    /// Why, in the operator's words: kept with the row for the operator,
    /// never shown to the account holder.
    pub reason: String,
    /// What the account holder reads; `None` is [`ADJUSTMENT_DESCRIPTION`].
    pub description: Option<String>,
    /// A positive adjustment makes a grant: its category (`None`:
    /// promotional), priority (`None`: 50) and expiry. A negative one takes
    /// credit and makes none, so it takes none of these.
    pub category: Option<Category>,
    pub priority: Option<Priority>,
    /// Unix milliseconds, after now: one that is not is refused
    /// ([`LedgerError::ExpiryPassed`]) unless the key already holds the
    /// adjustment's row, which answers it (a retry).
    pub expires_at_ms: Option<i64>,
}

/// The committed snapshot: balance, ledger position and warning cooldown.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<Snapshot, LedgerError>")]
pub struct GetBalance;

/// Writes the expiry row of every grant of the account expired by now with
/// credit left, through the same path as the expiry rows every change
/// writes first (and nothing else), and answers once they are durable,
/// with every write in flight before it: `Ok` says that nothing was due at
/// the committed state (at the actor's clock when it last looked). Sent by
/// the sweep of expired grants; sent twice (two instances' sweeps, a round
/// again), the second finds nothing due: the account's snapshot, its
/// grants with it, is guarded by every write, so a grant's remainder is
/// taken once. An account that does not exist is `AccountNotFound`.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Result<(), LedgerError>")]
pub struct ExpireDue;

/// The answer to a mutation: the ledger row it made (or made the first
/// time, when `replayed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub entry: LedgerEntry,
    /// True when this key was seen before and nothing new happened.
    pub replayed: bool,
    /// True when this debit left the balance below the low-balance
    /// threshold and no warning went out within the cooldown: a warning was
    /// queued with the debit (and goes out after the caller is answered).
    /// The cooldown is committed with the debit, so it survives restarts
    /// and no second warning follows.
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
    /// What one segment to an account's own number costs, so that a change
    /// other than a message's debit (an adjustment, a refund taken back)
    /// that leaves less than that makes `balance.depleted` too (`None`:
    /// only a message's debit, which says its price, can).
    pub rates: Option<Arc<RateTable>>,
}

impl Default for AccountSettings {
    fn default() -> AccountSettings {
        AccountSettings {
            passivate_after: Duration::from_secs(15 * 60),
            mailbox_capacity: 256,
            max_in_flight: 4096,
            low_balance_threshold: Money::from_micros(2_000_000),
            low_balance_cooldown: Duration::from_secs(24 * 3600),
            rates: None,
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
    /// The snapshot is not loaded: it could not be read (the store is
    /// away; what waited is answered with the store's error), or the store
    /// may have missed another process's writes. The next mutation or
    /// balance read reads it again, so no caller waits longer than one
    /// read and none is answered from a stale state.
    Unloaded,
}

/// How many times one mutation is computed again after the ledger moved on
/// under it (another process or instance wrote to the account first)
/// before its callers are told it was not applied.
const MAX_ATTEMPTS: u8 = 64;

/// A write queued to the store whose commit has not been seen yet.
struct InFlight {
    entry: LedgerEntry,
    /// Whether this write also starts a low-balance warning's cooldown.
    warning_due: bool,
    /// Callers waiting for this write: the first asked for it, the others
    /// repeated its idempotency key while it was in flight.
    waiters: Vec<Reply>,
    snapshot_after: Packed,
    /// How many times this mutation has been computed (1 the first time).
    attempts: u8,
    /// The actor's generation when it was written: an answer for an older
    /// write of the same key (already redone) is not this one's.
    generation: u64,
    /// The store's answer, once it has come, until the writes before this
    /// one are settled.
    outcome: Option<Result<(), StoreError>>,
    /// The mutation's hints, should it be computed again.
    hints: Option<Box<Hints>>,
}

/// What computing a mutation came to.
enum Step {
    /// Written or answered.
    Done,
    /// It must wait for the writes in flight to be settled.
    Wait(Retry),
    /// Its key is being looked up: nothing later goes before the answer.
    Paused,
}

/// A mutation to compute again on a reloaded snapshot, with its callers.
struct Retry {
    mutation: Mutation,
    waiters: Vec<Reply>,
    attempts: u8,
}

impl Retry {
    /// The mutation an unapplied write (keyed `key`) was made from.
    fn of(key: IdempotencyKey, in_flight: InFlight) -> Retry {
        let entry = in_flight.entry;
        Retry {
            mutation: Mutation {
                kind: entry.kind,
                amount: entry.amount,
                idempotency_key: key,
                description: entry.description,
                reason: entry.reason.map(|reason| *reason),
                order_id: entry.order_id,
                hints: in_flight.hints,
            },
            waiters: in_flight.waiters,
            attempts: in_flight.attempts,
        }
        .forgetting_take_back()
    }

    /// A take-back computed again decides its amount again, from the
    /// ledger read again: what it read before is forgotten.
    fn forgetting_take_back(mut self) -> Retry {
        if let Some(hints) = self.mutation.hints.as_mut() {
            if let Some(plan) = hints.take_back.as_mut() {
                plan.learnt_at = None;
                plan.taken = None;
                hints.event = None;
                self.mutation.amount = Money::ZERO;
            }
        }
        self
    }
}

/// One change of balance, whatever message asked for it.
struct Mutation {
    kind: TransactionKind,
    /// Signed as it will stand in the ledger.
    amount: Money,
    idempotency_key: IdempotencyKey,
    /// What the account holder reads.
    description: String,
    /// The operator's own words (adjustments), never shown to the holder.
    reason: Option<String>,
    order_id: Option<i64>,
    /// What its webhook events need beyond the row; most have none.
    hints: Option<Box<Hints>>,
}

/// How many times [`ExpireDue`] waits for the expiry rows it caused
/// before it is answered as failed.
const EXPIRE_DUE_TRIES: u8 = 8;

impl Mutation {
    /// The terms an adjustment asks its grant to be made with (the part
    /// of the request its key stands for beside the kind and amount).
    fn adjustment_terms(&self) -> Option<GrantTerms> {
        if self.kind != TransactionKind::Adjustment {
            return None;
        }
        self.hints.as_ref()?.grant.as_ref().map(|(terms, _)| *terms)
    }

    /// What one segment to the account's own number costs, as far as this
    /// mutation knows it: `Some(None)` when it was looked up and cannot be
    /// priced; `None` when not known (a message's debit says its own).
    fn own_segment(&self) -> Option<Option<Money>> {
        let hints = self.hints.as_ref()?;
        if hints.one_segment.is_some() || hints.own_segment_looked_up {
            Some(hints.one_segment)
        } else {
            None
        }
    }

    /// What [`ExpireDue`] asks: the expiry rows due, and no row of its own.
    /// An expiry that names no grant; never written, and its key (grant 0's
    /// expiry at position 0) is one no row can hold.
    fn expire_due() -> Mutation {
        Mutation {
            kind: TransactionKind::Expiry,
            amount: Money::ZERO,
            idempotency_key: IdempotencyKey::grant_expiry(crate::grants::SHORTFALL, 0),
            description: String::new(),
            reason: None,
            order_id: None,
            hints: None,
        }
    }

    /// Whether this is [`ExpireDue`]'s request rather than a row.
    fn is_expire_due(&self) -> bool {
        self.kind == TransactionKind::Expiry
            && self
                .hints
                .as_ref()
                .is_none_or(|hints| hints.expiring.is_none())
    }

    fn take_back(&self) -> Option<&TakeBackPlan> {
        self.hints.as_ref()?.take_back.as_ref()
    }

    /// The message whose cost this gives back, while its debit's funding
    /// is not read yet.
    fn reversal_unread(&self) -> Option<i64> {
        if self.kind != TransactionKind::Refund || !self.amount.is_positive() {
            return None;
        }
        let read = self
            .hints
            .as_ref()
            .is_some_and(|hints| hints.reversal.is_some());
        self.idempotency_key
            .given_back_message_id()
            .filter(|_| !read)
    }
}

/// What decides a take-back's amount (see [`TakeBack`]).
#[derive(Clone, Debug)]
struct TakeBackPlan {
    order: Order,
    credited: Money,
    cause: TakeBackCause,
    /// The account's `seq` when the ledger was read for it: the amount
    /// decided then holds only for a write guarded by that position.
    learnt_at: Option<i64>,
    /// What the order's rows took back, grant by grant (read with the
    /// amount): what a give-back reverses.
    taken: Option<Reversal>,
}

/// What credit given back reverses: the funding of the rows it undoes (a
/// message's debit, an order's take-backs) and the lasting facts of their
/// grants, read first (a grant with nothing left is not in memory).
#[derive(Clone, Debug, Default)]
struct Reversal {
    funding: Funding,
    facts: Vec<CreditGrant>,
}

impl TakeBackPlan {
    /// The row's amount (signed as in the ledger: negative takes credit
    /// back) that brings what the order's rows took back, `taken_before`,
    /// to what its refunds and disputes hold back. A refund's row takes
    /// back no more than the refund, and gives nothing back (the order's
    /// other refunds, each under its own key, take the rest; what a
    /// failure or a dispute gives back is theirs to give).
    fn change(&self, claims: &OrderClaims, taken_before: Money) -> Result<Money, MoneyError> {
        let change = taken_before.checked_sub(claims.held_back(self.credited)?)?;
        Ok(match &self.cause {
            TakeBackCause::Refund { refunded, .. } => change.max(-*refunded).min(Money::ZERO),
            TakeBackCause::Claims => change,
        })
    }

    /// The event a refund's row carries (`payment.refunded`, with what it
    /// took back), if the refund is to be announced; the other causes'
    /// rows carry none of their own (the caller sends a dispute's, once
    /// per dispute).
    fn event(&self, taken: Money) -> Option<EventDraft> {
        let TakeBackCause::Refund {
            refund_id,
            refunded,
            total_refunded,
            announce: true,
        } = &self.cause
        else {
            return None;
        };
        Some(payment_refunded(
            &self.order,
            refund_id,
            *refunded,
            *total_refunded,
            taken.max(Money::ZERO),
        ))
    }
}

/// What a mutation's webhook events need beyond its row.
#[derive(Clone, Debug, Default)]
struct Hints {
    one_segment: Option<Money>,
    /// `one_segment` was looked up from the account's own number (and is
    /// `None` if it cannot be priced): not to be looked up again.
    own_segment_looked_up: bool,
    /// For the void of a message: the low-balance warning its debit set
    /// off, still pending, which the void withdraws (the cooldown it spent
    /// is given back with it).
    withdraw_warning: Option<i64>,
    /// `withdraw_warning` was looked up: not to be looked up again.
    warning_looked_up: bool,
    event: Option<EventDraft>,
    /// For credit taken back for a refund: what decides how much.
    take_back: Option<TakeBackPlan>,
    /// For a row that makes a grant (a credit, a positive adjustment): its
    /// terms and source.
    grant: Option<(GrantTerms, GrantSource)>,
    /// For the cost of a message given back: the funding of its debit.
    reversal: Option<Reversal>,
    /// For an expiry row: the grant whose remainder it takes, and when.
    expiring: Option<Expiring>,
    /// For [`ExpireDue`]: the account was read from the store for it (an
    /// actor that missed another process's note must not answer "nothing
    /// due" from what it remembers).
    expire_read: bool,
}

/// The grant an expiry row takes the remainder of, and the moment the row
/// is dated: when the grant expired, never before the row before it (a
/// remainder given back after the expiry expires when it came back).
#[derive(Clone, Copy, Debug)]
struct Expiring {
    grant_id: i64,
    at_ms: i64,
}

impl Hints {
    fn boxed(one_segment: Option<Money>, event: Option<EventDraft>) -> Option<Box<Hints>> {
        (one_segment.is_some() || event.is_some()).then(|| {
            Box::new(Hints {
                one_segment,
                event,
                ..Hints::default()
            })
        })
    }
}

/// What the callers of a mutation are told.
#[derive(Clone, Debug)]
enum Answer {
    /// The row it made, or made the first time.
    Row(Receipt),
    /// A take-back found nothing left to take: no row.
    Nothing,
}

impl Answer {
    /// The answer for the `index`th caller of one write: all but the
    /// first hear a row as replayed.
    fn for_caller(self, index: usize) -> Answer {
        match self {
            Answer::Row(receipt) => Answer::Row(Receipt {
                replayed: receipt.replayed || index > 0,
                ..receipt
            }),
            nothing => nothing,
        }
    }
}

type Reply = oneshot::Sender<Result<Answer, LedgerError>>;

/// What every account actor shares: one pointer per actor instead of one
/// per field, because an actor's size is paid once per active account.
pub(crate) struct ActorShared {
    /// Where ledger rows and snapshots become durable.
    pub(crate) store: Store,
    /// Where actors are listed; an actor unlists itself when it passivates.
    pub(crate) table: Arc<ActorTable>,
    /// Timestamps for ledger rows (injectable for tests).
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: AccountSettings,
    /// The instant activity times count from.
    pub(crate) epoch: Instant,
    /// The accounts with auto top-up on (only those take room), asked
    /// after a committed debit leaves the balance below the threshold.
    pub(crate) auto_top_ups: Arc<AutoTriggers>,
}

impl ActorShared {
    /// Milliseconds since `epoch`, truncated to 32 bits: the clock of idle
    /// times, compared with wrapping arithmetic (see [`passivation_millis`]).
    fn activity_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }
}

/// A [`Snapshot`] packed for the actor (24 bytes instead of 32): the
/// warning time uses `i64::MIN` for "never".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    balance: Money,
    seq: i64,
    warned_at_ms: i64,
}

const NEVER_WARNED: i64 = i64::MIN;

impl Packed {
    const EMPTY: Packed = Packed {
        balance: Money::ZERO,
        seq: 0,
        warned_at_ms: NEVER_WARNED,
    };

    fn pack(snapshot: Snapshot) -> Packed {
        Packed {
            balance: snapshot.balance,
            seq: snapshot.seq,
            warned_at_ms: snapshot.low_balance_warned_at_ms.unwrap_or(NEVER_WARNED),
        }
    }

    fn unpack(self) -> Snapshot {
        Snapshot {
            balance: self.balance,
            seq: self.seq,
            low_balance_warned_at_ms: (self.warned_at_ms != NEVER_WARNED)
                .then_some(self.warned_at_ms),
        }
    }
}

/// Whether the account has ever had at least the low-balance threshold:
/// only an account that has is announced `balance.low` when it falls below,
/// so only it is announced `balance.replenished` when it is back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reached {
    /// Not known: read from the ledger before a change that crosses the
    /// threshold upwards.
    Unknown,
    No,
    Yes,
}

/// What a mutation needs read before it can be computed.
#[derive(Clone, Copy, Debug)]
struct Facts {
    /// Whether the account ever had the threshold.
    reached: bool,
    /// What one segment to the account's own number costs.
    own_segment: bool,
    /// The pending warning that the debit of the message this mutation
    /// voids set off.
    warning_of_message: Option<i64>,
}

/// What a mutation waits for before it is written or answered.
enum ReadFirst {
    /// A refusal, answered from the row its key holds if there is one.
    Key(LedgerError),
    /// What its events need.
    Facts(Facts),
    /// What decides a take-back's amount.
    TakeBack,
    /// The funding of the debit of the message whose cost is given back.
    Reversal(i64),
}

/// The actor's state. Kept small on purpose: with many accounts active,
/// every byte here is paid once per account (see the scale benchmark).
pub struct AccountActor {
    /// The account this actor owns; no other code changes its balance.
    account_id: AccountId,
    /// Store, actor table, clock and settings, shared by all actors.
    shared: Arc<ActorShared>,
    /// The committed snapshot plus every write queued but not yet
    /// committed: what the next mutation is computed on. With nothing in
    /// flight it is the committed snapshot.
    working: Packed,
    /// Writes queued to the store and not yet answered. Boxed and made on
    /// demand: an idle actor has none.
    in_flight: Option<Box<Pipeline>>,
    /// Mutations that wait for the writes in flight to be settled, in
    /// order, and every mutation that arrived after them (see
    /// [`AccountActor::compute`]). Boxed and made on demand.
    // Boxed on purpose: 8 bytes in every actor instead of 32.
    #[allow(clippy::box_collection)]
    deferred: Option<Box<VecDeque<Retry>>>,
    /// The store refuses writes of older generations of this account after
    /// a failure; a reload takes a new one.
    generation: u64,
    /// When a message last arrived, in [`ActorShared::activity_ms`], for
    /// passivation.
    last_activity_ms: u32,
    lifecycle: Lifecycle,
    /// Whether the account has had the low-balance threshold (counting the
    /// writes in flight): decides `balance.replenished`.
    reached: Reached,
    /// What is left of each grant at the working state, with their terms:
    /// what the next row's funding is decided on. Boxed (an idle actor pays
    /// a pointer); `None` when not known (another process's write that did
    /// not say them, a refusal, a failed read): read again before the next
    /// mutation is computed.
    grants: Option<Box<WorkingGrants>>,
}

/// The working grants: the book at `at_seq`, and its stored form (the
/// next write's `previous_grants`, shared, not copied).
struct WorkingGrants {
    at_seq: i64,
    book: Book,
    encoded: Arc<str>,
    /// Where the next stored form is written before it is shared (kept,
    /// so that a write allocates only the shared copy).
    scratch: String,
    /// When the row at `at_seq` is dated (`i64::MIN`: there is none), so
    /// that an expiry row is never dated before it; `None` when not known
    /// (the grants moved by another process's write): read with the
    /// snapshot before an expiry row is written.
    last_row_at_ms: Option<i64>,
}

impl WorkingGrants {
    fn new(at_seq: i64, book: Book, last_row_at_ms: Option<i64>) -> Box<WorkingGrants> {
        let mut scratch = String::new();
        book.encode_into(&mut scratch);
        let encoded = Arc::from(scratch.as_str());
        Box::new(WorkingGrants {
            at_seq,
            book,
            encoded,
            scratch,
            last_row_at_ms,
        })
    }
}

/// Why an account's grants cannot be used: its snapshot names grants it
/// cannot read, or none were made (a database the backfill has not run
/// on); no row is decided without them. Its own error, not a failure of
/// the store: retrying cannot help until an operator repairs the account.
fn grants_unusable(account_id: AccountId, why: &str) -> StoreError {
    StoreError::GrantsUnusable {
        account_id: account_id.0,
        why: why.to_string(),
    }
}

/// What an actor with writes in flight keeps besides its working state.
struct Pipeline {
    /// The writes by idempotency key, so a repeated key joins the write
    /// instead of making another.
    writes: HashMap<IdempotencyKey, InFlight>,
    /// The writes' keys in `seq` order: answers are settled in this order,
    /// whatever order they arrive in.
    order: VecDeque<IdempotencyKey>,
    /// The last committed snapshot: what `GetBalance` answers while writes
    /// are in flight.
    committed: Packed,
}

impl AccountActor {
    pub(crate) fn new(account_id: AccountId, shared: Arc<ActorShared>) -> AccountActor {
        let generation = shared.store.next_generation();
        let last_activity_ms = shared.activity_ms();
        AccountActor {
            account_id,
            shared,
            working: Packed::EMPTY,
            in_flight: None,
            deferred: None,
            generation,
            last_activity_ms,
            lifecycle: Lifecycle::Ready,
            reached: Reached::Unknown,
            grants: None,
        }
    }

    fn in_flight_count(&self) -> usize {
        self.in_flight
            .as_ref()
            .map_or(0, |pipeline| pipeline.writes.len())
    }

    /// The last committed snapshot.
    fn committed(&self) -> Packed {
        self.in_flight
            .as_ref()
            .map_or(self.working, |pipeline| pipeline.committed)
    }

    /// Takes where the store says the account stands. Whether it ever had
    /// the threshold is known again only if it has it now: what the actor
    /// knew may have counted writes that were not committed.
    fn take_snapshot(&mut self, snapshot: Snapshot) {
        self.working = Packed::pack(snapshot);
        self.reached = if snapshot.balance >= self.shared.settings.low_balance_threshold {
            Reached::Yes
        } else {
            Reached::Unknown
        };
        // A snapshot alone says nothing of the grants: those known here may
        // be a refused or failed write's at the same position, or another
        // process's write may have made others there. They are read again
        // (the callers that know them take them after this).
        self.grants = None;
    }

    /// Takes where another process's write (or the guard's refusal) says
    /// the account stands: the grants move with it when the store said
    /// them and every one of them is known here, made by a row at or
    /// before `committed_through` (the last position known committed: a
    /// grant this actor made by a write that was refused is not the one
    /// another process made at its position); otherwise they are read
    /// before the next mutation.
    fn take_standing(&mut self, standing: Standing, committed_through: i64) {
        let moved = match (&standing.grants, self.grants.as_deref()) {
            (Some(remaining), Some(known)) => known
                .book
                .moved_to(remaining, committed_through)
                .map(|book| WorkingGrants::new(standing.snapshot.seq, book, None)),
            _ => None,
        };
        self.grants = None;
        self.take_snapshot(standing.snapshot);
        self.grants = moved;
    }

    /// Takes what activation (or a reload) read: the snapshot, and the
    /// grants, which must be readable.
    fn take_activation(&mut self, activation: Activation) -> Result<(), StoreError> {
        self.grants = None;
        let seq = activation.standing.snapshot.seq;
        self.take_snapshot(activation.standing.snapshot);
        let remaining = activation
            .standing
            .grants
            .ok_or_else(|| grants_unusable(self.account_id, "they were never made"))?;
        let book = Book::from_parts(&remaining, &activation.facts)
            .map_err(|error| grants_unusable(self.account_id, &error.to_string()))?;
        let sum = book
            .balance()
            .map_err(|error| grants_unusable(self.account_id, &error.to_string()))?;
        if sum != activation.standing.snapshot.balance {
            return Err(grants_unusable(
                self.account_id,
                &format!(
                    "they hold {sum} in all, but the balance is {}",
                    activation.standing.snapshot.balance
                ),
            ));
        }
        let last_row_at_ms = if seq == 0 {
            Some(i64::MIN)
        } else {
            activation.last_row_at_ms
        };
        self.grants = Some(WorkingGrants::new(seq, book, last_row_at_ms));
        Ok(())
    }

    /// Whether the working grants are those of the working state.
    fn grants_current(&self) -> bool {
        self.grants
            .as_ref()
            .is_some_and(|grants| grants.at_seq == self.working.seq)
    }

    /// Whether a grant has expired at `now_ms` with credit left while what
    /// one segment to the account's own number costs is not known to
    /// `mutation` (with a rate table: without one, nothing can be priced,
    /// and no change is `balance.depleted` but a message's debit).
    fn expiry_unpriced(&self, now_ms: i64, mutation: &Mutation) -> bool {
        self.shared.settings.rates.is_some()
            && mutation.own_segment().is_none()
            && self
                .grants
                .as_ref()
                .is_some_and(|grants| grants.book.due_expiry(now_ms).is_some())
    }

    /// Whether a grant has expired at `now_ms` with credit left while the
    /// date of the row before its expiry row is not known (read with the
    /// snapshot first).
    fn expiry_undated(&self, now_ms: i64) -> bool {
        self.grants.as_ref().is_some_and(|grants| {
            grants.last_row_at_ms.is_none() && grants.book.due_expiry(now_ms).is_some()
        })
    }

    /// What `mutation` needs read before it is computed: whether the
    /// account ever had the threshold, for a change that crosses it upwards
    /// while that is not known; one segment's price to its own number, for
    /// a change that takes credit away and is not a message's debit (which
    /// says its price).
    fn facts_needed(&self, mutation: &Mutation) -> Option<Facts> {
        let settings = &self.shared.settings;
        let before = self.working.balance;
        let after = before.checked_add(mutation.amount).ok()?;
        let threshold = settings.low_balance_threshold;
        let reached = self.reached == Reached::Unknown && before < threshold && after >= threshold;
        let own_segment = mutation.kind != TransactionKind::Debit
            && mutation.amount.is_negative()
            && settings.rates.is_some()
            && !mutation
                .hints
                .as_ref()
                .is_some_and(|hints| hints.own_segment_looked_up || hints.one_segment.is_some());
        // A void can only withdraw a warning if one was given since the
        // account was last reloaded or ever (the cooldown is set).
        let warning_of_message = mutation.idempotency_key.voided_message_id().filter(|_| {
            self.working.warned_at_ms != NEVER_WARNED
                && !mutation
                    .hints
                    .as_ref()
                    .is_some_and(|hints| hints.warning_looked_up)
        });
        (reached || own_segment || warning_of_message.is_some()).then_some(Facts {
            reached,
            own_segment,
            warning_of_message,
        })
    }

    /// Reads what `retry` needs (see [`AccountActor::facts_needed`]),
    /// holding every message until it is in, then computes it again.
    fn learn_facts(&mut self, mut retry: Retry, facts: Facts, ctx: &mut Context<Self>) {
        let store = self.shared.store.clone();
        let account_id = self.account_id;
        let threshold = self.shared.settings.low_balance_threshold;
        let rates = self.shared.settings.rates.clone();
        let lookup = async move {
            let reached = if facts.reached {
                Some(store.ledger().ever_reached(account_id, threshold).await?)
            } else {
                None
            };
            let one_segment = match rates.filter(|_| facts.own_segment) {
                Some(rates) => Some(
                    store
                        .accounts()
                        .get(account_id)
                        .await?
                        .and_then(|account| account.phone.country())
                        .and_then(|country| rates.rate_for(country).map(|rate| rate.customer_rate)),
                ),
                None => None,
            };
            let warning = match facts.warning_of_message {
                Some(message_id) => Some(store.messages().pending_warning_after(message_id).await?),
                None => None,
            };
            Ok::<_, StoreError>((reached, one_segment, warning))
        };
        ctx.wait(lookup.into_actor(self).map(move |found, actor, ctx| {
            // The change itself does not depend on these reads: if they
            // fail it goes ahead, its events decided on what is safest for
            // the host application: an account not known to have had the
            // threshold counts as announced low (a `balance.replenished`
            // too many tells it to send again; one too few would leave it
            // holding back), no segment price means no
            // `balance.depleted`, and no warning found means none withdrawn
            // (the warning goes out as it was queued).
            let (reached, one_segment, warning) = found.unwrap_or_else(|error| {
                tracing::warn!(account_id = actor.account_id.0, %error, "cannot read what a change's events need; deciding them without it");
                (
                    facts.reached.then_some(true),
                    facts.own_segment.then_some(None),
                    facts.warning_of_message.map(|_| None),
                )
            });
            if let Some(reached) = reached {
                actor.reached = if reached { Reached::Yes } else { Reached::No };
            }
            if let Some(one_segment) = one_segment {
                let hints = retry.mutation.hints.get_or_insert_with(Box::default);
                hints.one_segment = one_segment;
                hints.own_segment_looked_up = true;
            }
            if let Some(warning) = warning {
                let hints = retry.mutation.hints.get_or_insert_with(Box::default);
                hints.withdraw_warning = warning;
                hints.warning_looked_up = true;
            }
            actor.resume(vec![retry], ctx);
        }));
    }

    /// Whether `mutation` is a take-back whose amount is not decided for
    /// where the account stands now.
    fn take_back_undecided(&self, mutation: &Mutation) -> bool {
        mutation
            .take_back()
            .is_some_and(|plan| plan.learnt_at != Some(self.working.seq))
    }

    /// Reads what decides a take-back (what the order's committed rows
    /// took back, the row its key may hold, what the order's refunds and
    /// disputes claim), holding every message until it is in, then answers
    /// it (from its key's row, or with nothing to change) or decides its
    /// amount and computes it. Read with nothing in flight, so what the
    /// ledger says is where the working state stands, or later than it (a
    /// write another instance committed since): then the guard refuses
    /// the write, and it is decided again on a fresh read.
    fn learn_take_back(&mut self, mut retry: Retry, ctx: &mut Context<Self>) {
        let Some(plan) = retry.mutation.take_back().cloned() else {
            self.resume(vec![retry], ctx);
            return;
        };
        let store = self.shared.store.clone();
        let account_id = self.account_id;
        let key = retry.mutation.idempotency_key.clone();
        let at_seq = self.working.seq;
        let order_id = plan.order.id;
        let lookup = async move {
            let (taken_before, existing, claims) = futures_util::try_join!(
                store.ledger().taken_back(account_id, order_id),
                store.ledger().entry_by_key(account_id, key),
                store.billing().claims(order_id),
            )?;
            let claims = claims.ok_or_else(|| {
                StoreError::Database(format!("order {order_id} is not in the store"))
            })?;
            // What a give-back reverses: the grants the take-backs took from.
            let facts = read_facts(&store, account_id, &taken_before.funding).await?;
            let taken = Reversal {
                funding: taken_before.funding,
                facts,
            };
            Ok::<_, StoreError>((taken_before.amount, taken, existing, claims))
        };
        ctx.wait(lookup.into_actor(self).map(move |found, actor, ctx| {
            let outcome = match found {
                // Money depends on it: nothing is decided without it.
                Err(error) => Err(LedgerError::Store(error)),
                Ok((_, _, Some(existing), _)) => replay(existing, &retry.mutation).map(Answer::Row),
                Ok((taken_before, taken, None, claims)) => match plan.change(&claims, taken_before)
                {
                    Err(error) => Err(LedgerError::from(error)),
                    Ok(change) if change.is_zero() => Ok(Answer::Nothing),
                    Ok(change) => {
                        retry.mutation.amount = change;
                        if let Some(hints) = retry.mutation.hints.as_mut() {
                            hints.event = plan.event(-change);
                            if let Some(plan) = hints.take_back.as_mut() {
                                plan.learnt_at = Some(at_seq);
                                plan.taken = Some(taken);
                            }
                        }
                        let hold = actor
                            .shared
                            .store
                            .take_back_hold(retry.mutation.idempotency_key.as_str());
                        match hold {
                            // A test's hold between the read and the write.
                            Some(hold) => ctx.wait(
                                async move { hold.stop_here().await }
                                    .into_actor(actor)
                                    .map(move |(), actor, ctx| actor.resume(vec![retry], ctx)),
                            ),
                            None => actor.resume(vec![retry], ctx),
                        }
                        return;
                    }
                },
            };
            for (index, waiter) in retry.waiters.into_iter().enumerate() {
                let _ = waiter.send(outcome.clone().map(|answer| answer.for_caller(index)));
            }
            actor.resume(Vec::new(), ctx);
        }));
    }

    /// A read that must come before `retry` is decided, made with nothing
    /// in flight: started now (the actor pauses until it is answered), or
    /// `retry` waits for the writes in flight to be settled first.
    fn read_first(
        &mut self,
        retry: Retry,
        ctx: &mut Context<Self>,
        read: impl FnOnce(&mut Self, Retry, &mut Context<Self>),
    ) -> Step {
        if self.in_flight.is_some() {
            return Step::Wait(retry);
        }
        read(self, retry, ctx);
        Step::Paused
    }

    /// Loads the committed snapshot, holding every message until it is in,
    /// then computes `then` again on it. A store that cannot be read is
    /// retried, because answering from a guessed state is never right.
    fn load_snapshot(&mut self, then: Vec<Retry>, ctx: &mut Context<Self>) {
        let load = self.shared.store.ledger().activation(self.account_id);
        ctx.wait(load.into_actor(self).map(|loaded, actor, ctx| match loaded {
            Ok(Some(activation)) => {
                let taken = actor.take_activation(activation);
                if let Some(pipeline) = actor.in_flight.as_mut() {
                    pipeline.committed = actor.working;
                }
                if let Err(error) = taken {
                    // The balance can still be told; no row can be decided.
                    tracing::error!(account_id = actor.account_id.0, %error, "cannot use the account's grants");
                    actor.lifecycle = Lifecycle::Unloaded;
                    let waiting = actor.deferred.take().map(|deferred| *deferred).unwrap_or_default();
                    for retry in then.into_iter().chain(waiting) {
                        for waiter in retry.waiters {
                            let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                        }
                    }
                    return;
                }
                if actor.lifecycle == Lifecycle::Unloaded {
                    actor.lifecycle = Lifecycle::Ready;
                }
                // In their first order, before any later message.
                actor.resume(then, ctx);
            }
            Ok(None) => {
                // Answer what arrives for a short while, then stop: a later
                // message activates a fresh actor that looks again, so an
                // account created meanwhile is found. (A stopping actor
                // drops its queued messages, which the registry resends.)
                actor.lifecycle = Lifecycle::Missing;
                actor.resume(then, ctx);
                ctx.run_later(MISSING_ACCOUNT_LINGER, |actor, ctx| actor.unlist_and_stop(ctx));
            }
            Err(error) => {
                tracing::error!(account_id = actor.account_id.0, %error, "cannot load snapshot; the next message tries again");
                actor.lifecycle = Lifecycle::Unloaded;
                let waiting = actor.deferred.take().map(|deferred| *deferred).unwrap_or_default();
                for retry in then.into_iter().chain(waiting) {
                    for waiter in retry.waiters {
                        let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                    }
                }
            }
        }));
    }

    /// Refuses what cannot be served right now.
    fn admit(&mut self) -> Result<(), LedgerError> {
        self.last_activity_ms = self.shared.activity_ms();
        match self.lifecycle {
            Lifecycle::Ready => Ok(()),
            Lifecycle::Missing => Err(LedgerError::AccountNotFound(self.account_id)),
            Lifecycle::Passivating => Err(LedgerError::Passivated),
            // A mutation reads the snapshot first (see `compute`); a balance
            // cannot be told without it.
            Lifecycle::Unloaded => Err(LedgerError::Store(StoreError::Database(
                "the account's snapshot could not be read; try again".into(),
            ))),
        }
    }

    fn mutate(
        &mut self,
        mutation: Mutation,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<Receipt, LedgerError>> {
        let answer = self.begin(mutation, ctx);
        Box::pin(async move {
            match answer.await? {
                Answer::Row(receipt) => Ok(receipt),
                // Only a take-back answers this.
                Answer::Nothing => Err(LedgerError::InvalidAmount("nothing to apply")),
            }
        })
    }

    /// Starts a mutation; the future answers it.
    fn begin(
        &mut self,
        mutation: Mutation,
        ctx: &mut Context<Self>,
    ) -> impl std::future::Future<Output = Result<Answer, LedgerError>> + 'static {
        let (reply, answer) = oneshot::channel();
        self.begin_mutation(mutation, reply, ctx);
        async move { answer.await.unwrap_or(Err(LedgerError::Interrupted)) }
    }

    fn begin_mutation(&mut self, mutation: Mutation, reply: Reply, ctx: &mut Context<Self>) {
        self.begin_retry(
            Retry {
                mutation,
                waiters: vec![reply],
                attempts: 0,
            },
            ctx,
        );
    }

    /// Computes a mutation (for the first time, or again after the ledger
    /// moved on under it) and queues its write, unless earlier mutations
    /// wait: then it waits behind them, so that order holds.
    fn begin_retry(&mut self, retry: Retry, ctx: &mut Context<Self>) {
        if let Some(deferred) = self.deferred.as_mut() {
            deferred.push_back(retry);
            return;
        }
        match self.compute(retry, ctx) {
            Step::Done => {}
            Step::Wait(waiting) => self.deferred = Some(Box::new(VecDeque::from([waiting]))),
            Step::Paused => self.deferred = Some(Box::default()),
        }
    }

    /// Puts `first` ahead of whatever waits, then computes what waits in
    /// order, for as long as nothing needs the writes in flight settled.
    fn resume(&mut self, first: Vec<Retry>, ctx: &mut Context<Self>) {
        let mut queue = self
            .deferred
            .take()
            .map(|deferred| *deferred)
            .unwrap_or_default();
        for retry in first.into_iter().rev() {
            queue.push_front(retry);
        }
        while let Some(retry) = queue.pop_front() {
            match self.compute(retry, ctx) {
                Step::Done => {}
                Step::Wait(waiting) => {
                    queue.push_front(waiting);
                    self.deferred = Some(Box::new(queue));
                    return;
                }
                Step::Paused => {
                    self.deferred = Some(Box::new(queue));
                    return;
                }
            }
        }
    }

    /// Computes a mutation and queues its write, or answers it; gives it
    /// back if it cannot be decided while writes are in flight: a refusal
    /// (no credit, a key another amount holds) computed on writes that the
    /// store may still refuse (a key the ledger already holds) could be
    /// wrong, so it waits for them to be settled.
    fn compute(&mut self, retry: Retry, ctx: &mut Context<Self>) -> Step {
        let Retry {
            mutation,
            mut waiters,
            attempts,
        } = retry;
        let answer_all = |waiters: Vec<Reply>, outcome: Result<Answer, LedgerError>| {
            for (index, waiter) in waiters.into_iter().enumerate() {
                let _ = waiter.send(outcome.clone().map(|answer| answer.for_caller(index)));
            }
        };
        if mutation.kind == TransactionKind::Expiry && !mutation.is_expire_due() {
            // An expiry row that was not applied is not computed again as
            // it was: the next mutation (or the `ExpireDue` that wrote it,
            // which waits behind it) decides what is due from where the
            // account stands then (nobody waits for an expiry row itself).
            answer_all(waiters, Err(LedgerError::Interrupted));
            return Step::Done;
        }
        if self.lifecycle == Lifecycle::Unloaded && self.in_flight.is_none() {
            // Read the snapshot again first; nothing later goes before it.
            self.last_activity_ms = self.shared.activity_ms();
            let retry = Retry {
                mutation,
                waiters,
                attempts,
            };
            self.load_snapshot(vec![retry], ctx);
            return Step::Paused;
        }
        if let Err(error) = self.admit() {
            answer_all(waiters, Err(error));
            return Step::Done;
        }
        let joined = self
            .in_flight
            .as_mut()
            .and_then(|pipeline| pipeline.writes.get_mut(&mutation.idempotency_key));
        if let Some(in_flight) = joined {
            // A take-back of the same key is the same refund, whatever
            // amount it would decide now.
            let in_flight_terms = in_flight
                .hints
                .as_ref()
                .and_then(|hints| hints.grant.as_ref())
                .map(|(terms, _)| *terms);
            if in_flight.entry.kind == mutation.kind
                && (in_flight.entry.amount == mutation.amount || mutation.take_back().is_some())
                && (mutation.adjustment_terms().is_none()
                    || mutation.adjustment_terms() == in_flight_terms)
            {
                in_flight.waiters.append(&mut waiters);
                return Step::Done;
            }
            // Another amount under a key in flight: what the key holds is
            // known once that write is settled.
            return Step::Wait(Retry {
                mutation,
                waiters,
                attempts,
            });
        }
        if self.in_flight_count() >= self.shared.settings.max_in_flight {
            answer_all(waiters, Err(LedgerError::Busy));
            return Step::Done;
        }
        if !self.grants_current() {
            // The grants are read with the snapshot, with nothing in flight.
            let retry = Retry {
                mutation,
                waiters,
                attempts,
            };
            return self.read_first(retry, ctx, |actor, retry, ctx| {
                actor.load_snapshot(vec![retry], ctx)
            });
        }
        let now_ms = self.shared.clock.now_ms();
        if self.expiry_undated(now_ms) {
            // An expiry row is due, dated no earlier than the row before
            // it, whose date is read with the snapshot, with nothing in
            // flight.
            let retry = Retry {
                mutation,
                waiters,
                attempts,
            };
            return self.read_first(retry, ctx, |actor, retry, ctx| {
                actor.load_snapshot(vec![retry], ctx)
            });
        }
        if self.expiry_unpriced(now_ms, &mutation) {
            // An expiry row is due, and what one segment to the account's
            // own number costs is not known: read first (with nothing in
            // flight), so that an expiry row that leaves less than that is
            // `balance.depleted`, as any change that takes credit is.
            let retry = Retry {
                mutation,
                waiters,
                attempts,
            };
            let facts = Facts {
                reached: false,
                own_segment: true,
                warning_of_message: None,
            };
            return self.read_first(retry, ctx, |actor, retry, ctx| {
                actor.learn_facts(retry, facts, ctx)
            });
        }
        let one_segment = mutation.own_segment();
        // Grants that expired are taken first (their expiry rows), so that
        // nothing is decided on credit that is gone.
        if let Err(error) = self.expire_due(now_ms, one_segment.flatten(), ctx) {
            answer_all(waiters, Err(error));
            return Step::Done;
        }
        if mutation.is_expire_due() {
            // Answered once every write in flight, the expiry rows among
            // them, is settled (acknowledged means durable); a row refused
            // meanwhile is decided again when this is computed again. Later
            // messages wait behind it for as long as one commit takes. An
            // expiry row that keeps failing (a store that refuses writes)
            // is answered as failed after a few tries, never tried for ever.
            if attempts >= EXPIRE_DUE_TRIES {
                answer_all(
                    waiters,
                    Err(LedgerError::Store(StoreError::CommitFailed(format!(
                        "the expiry rows of account {} were not written in {EXPIRE_DUE_TRIES} tries",
                        self.account_id
                    )))),
                );
                return Step::Done;
            }
            if self.in_flight.is_some() {
                return Step::Wait(Retry {
                    mutation,
                    waiters,
                    attempts: attempts + 1,
                });
            }
            // Nothing due by what the actor knows: read the account once
            // (it may have missed another process's write of a grant that
            // has expired since), then decide again.
            let read = mutation
                .hints
                .as_ref()
                .is_some_and(|hints| hints.expire_read);
            if !read {
                let mut mutation = mutation;
                mutation.hints = Some(Box::new(Hints {
                    expire_read: true,
                    ..Hints::default()
                }));
                self.load_snapshot(
                    vec![Retry {
                        mutation,
                        waiters,
                        attempts,
                    }],
                    ctx,
                );
                return Step::Paused;
            }
            answer_all(waiters, Ok(Answer::Nothing));
            return Step::Done;
        }
        // No read of the key first: the write goes out, and if the key was
        // used by an earlier activation (or another process), the ledger's
        // unique index refuses it (`DuplicateKey`) and only then is the row
        // looked up. Two things are read first. A refusal decided here (no
        // credit, out of range) is looked up before it is answered: a
        // retried request whose key already took effect gets that first
        // outcome, whatever the balance now. And a change whose events need
        // what only the ledger says (see `facts_needed`) reads it. Either
        // read is of the committed ledger, so the writes in flight are
        // settled first, and nothing later is written before it is in (a
        // later write of the same key must not be what the lookup finds).
        let read_first = match self.refusal(&mutation, now_ms) {
            Err(refusal) => Some(ReadFirst::Key(refusal)),
            Ok(()) if self.take_back_undecided(&mutation) => Some(ReadFirst::TakeBack),
            Ok(()) => match mutation.reversal_unread() {
                Some(message_id) => Some(ReadFirst::Reversal(message_id)),
                None => self.facts_needed(&mutation).map(ReadFirst::Facts),
            },
        };
        if let Some(read_first) = read_first {
            let retry = Retry {
                mutation,
                waiters,
                attempts,
            };
            return self.read_first(retry, ctx, |actor, retry, ctx| match read_first {
                ReadFirst::Key(refusal) => actor.answer_from_ledger(retry, refusal, true, ctx),
                ReadFirst::Facts(facts) => actor.learn_facts(retry, facts, ctx),
                ReadFirst::TakeBack => actor.learn_take_back(retry, ctx),
                ReadFirst::Reversal(message_id) => actor.learn_reversal(retry, message_id, ctx),
            });
        }
        match self.apply(mutation, attempts + 1, now_ms, ctx) {
            Ok(in_flight) => in_flight.waiters.append(&mut waiters),
            Err(error) => answer_all(waiters, Err(error)),
        }
        // Credit given back to a grant that has expired expires again (told
        // `balance.depleted` only if the price was read: what it takes is
        // what the give-back just gave, so it leaves the balance no lower
        // than it was).
        if let Err(error) = self.expire_due(now_ms, one_segment.flatten(), ctx) {
            tracing::warn!(account_id = self.account_id.0, %error, "an expiry after a give-back was not written; the next change writes it");
        }
        Step::Done
    }

    /// Writes the expiry row of every grant expired at `now_ms` with credit
    /// left, one after another in the order they expired (pipelined, like
    /// any write), each dated when its grant expired, or, if later, when
    /// the row before it is (credit given back to a grant after its expiry
    /// expires when it came back; the dates of an account's rows never go
    /// back). What the books count in a period is then what happened in it,
    /// however late the row is written. A row that leaves the balance below
    /// `one_segment` (what one segment to the account's own number costs,
    /// when known) is `balance.depleted`, once, as any change's is.
    fn expire_due(
        &mut self,
        now_ms: i64,
        one_segment: Option<Money>,
        ctx: &mut Context<Self>,
    ) -> Result<(), LedgerError> {
        while let Some((due, last_row_at_ms)) = self.grants.as_ref().and_then(|grants| {
            grants
                .book
                .due_expiry(now_ms)
                .map(|due| (*due, grants.last_row_at_ms))
        }) {
            // A grant due to expire has an expiry; the row before is dated
            // (see `expiry_undated`), else no later than now.
            let expired_at_ms = due.expires_at_ms.unwrap_or(now_ms);
            let at_ms = expired_at_ms.max(last_row_at_ms.unwrap_or(now_ms));
            let mutation = Mutation {
                kind: TransactionKind::Expiry,
                amount: -due.remaining,
                idempotency_key: IdempotencyKey::grant_expiry(due.id, self.working.seq + 1),
                description: format!("Credit expired: what was left of grant {}", due.id),
                reason: None,
                // Not an order's row: what an order's rows took back is
                // read from its refund rows alone.
                order_id: None,
                hints: Some(Box::new(Hints {
                    expiring: Some(Expiring {
                        grant_id: due.id,
                        at_ms,
                    }),
                    one_segment,
                    own_segment_looked_up: true,
                    ..Hints::default()
                })),
            };
            self.apply(mutation, 1, now_ms, ctx)?;
        }
        Ok(())
    }

    /// Reads the funding of the debit of the message whose cost `retry`
    /// gives back, and the facts of its grants, holding every message
    /// until it is in, then computes it again. A debit's row never changes,
    /// so what is read holds wherever the account stands; none found (its
    /// debit is not in the ledger) gives back to nothing (see
    /// [`Book::restore`]).
    fn learn_reversal(&mut self, mut retry: Retry, message_id: i64, ctx: &mut Context<Self>) {
        let store = self.shared.store.clone();
        let account_id = self.account_id;
        let lookup = async move {
            let debit = store
                .ledger()
                .entry_by_key(account_id, IdempotencyKey::message(message_id))
                .await?;
            let funding = match debit.filter(|entry| entry.kind == TransactionKind::Debit) {
                // Not in the ledger: nothing was taken from a grant.
                None => Funding::NONE,
                // A debit draws exactly its amount. One without its funding
                // (an earlier release's server wrote it after the upgrade)
                // is never read as drawing on nothing, which would make the
                // whole give-back a new paid grant (promotional credit
                // turned into refundable paid credit).
                Some(entry) if entry.funded_by.total().ok() != Some(-entry.amount) => {
                    return Err(grants_unusable(
                        account_id,
                        &format!(
                            "the debit #{} of message {message_id} does not say which grants \
                             paid its {} (an earlier release's server wrote it after the upgrade)",
                            entry.seq, -entry.amount
                        ),
                    ));
                }
                Some(entry) => entry.funded_by,
            };
            let facts = read_facts(&store, account_id, &funding).await?;
            Ok::<_, StoreError>(Reversal { funding, facts })
        };
        ctx.wait(lookup.into_actor(self).map(move |found, actor, ctx| {
            match found {
                Ok(reversal) => {
                    retry
                        .mutation
                        .hints
                        .get_or_insert_with(Box::default)
                        .reversal = Some(reversal);
                    actor.resume(vec![retry], ctx);
                }
                // Money depends on it: nothing is decided without it.
                Err(error) => {
                    for waiter in retry.waiters {
                        let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                    }
                    actor.resume(Vec::new(), ctx);
                }
            }
        }));
    }

    /// The row's funding, the grant it makes, and the grants after it,
    /// decided by the rules of [`crate::grants`] on the working grants.
    fn decide_grants(
        &self,
        mutation: &Mutation,
        seq: i64,
        now_ms: i64,
    ) -> Result<(Funding, Option<CreditGrant>), LedgerError> {
        let grants = self
            .grants
            .as_ref()
            .filter(|grants| grants.at_seq == self.working.seq)
            .ok_or_else(|| {
                LedgerError::Store(grants_unusable(self.account_id, "they are not loaded"))
            })?;
        let book = &grants.book;
        let hints = mutation.hints.as_deref();
        let amount = mutation.amount;
        let nothing = Reversal::default();
        let (funding, made) = match mutation.kind {
            TransactionKind::Debit => (
                book.debit(-amount, now_ms)
                    .map_err(|error| grant_error(error, self.working.balance))?,
                None,
            ),
            TransactionKind::Expiry => {
                let grant_id = hints
                    .and_then(|hints| hints.expiring)
                    .map(|expiring| expiring.grant_id)
                    .ok_or(LedgerError::InvalidAmount(
                        "an expiry names the grant it takes",
                    ))?;
                (
                    book.expire(grant_id)
                        .map_err(|error| grant_error(error, self.working.balance))?,
                    None,
                )
            }
            TransactionKind::Credit | TransactionKind::Adjustment if amount.is_positive() => {
                let (terms, source) =
                    hints
                        .and_then(|hints| hints.grant)
                        .ok_or(LedgerError::InvalidAmount(
                            "credit is made with its grant's terms",
                        ))?;
                let grant = CreditGrant {
                    id: seq,
                    category: terms.category,
                    source,
                    order_id: mutation.order_id,
                    amount,
                    priority: terms.priority,
                    granted_at_ms: now_ms,
                    expires_at_ms: terms.expires_at_ms,
                };
                let funding = book
                    .make(&grant)
                    .map_err(|error| grant_error(error, self.working.balance))?;
                (funding, Some(grant))
            }
            TransactionKind::Credit => {
                return Err(LedgerError::InvalidAmount("a credit must be positive"))
            }
            TransactionKind::Adjustment => (
                book.take(-amount, now_ms, Take::Any)
                    .map_err(|error| grant_error(error, self.working.balance))?,
                None,
            ),
            TransactionKind::Refund if amount.is_negative() => (
                book.take(
                    -amount,
                    now_ms,
                    Take::Paid {
                        order_id: mutation.order_id,
                    },
                )
                .map_err(|error| grant_error(error, self.working.balance))?,
                None,
            ),
            TransactionKind::Refund => {
                let reversal = hints
                    .and_then(|hints| {
                        hints.reversal.as_ref().or(hints
                            .take_back
                            .as_ref()
                            .and_then(|plan| plan.taken.as_ref()))
                    })
                    .unwrap_or(&nothing);
                let (funding, made) = book
                    .restore(amount, &reversal.funding, |extra| CreditGrant {
                        id: seq,
                        category: Category::Paid,
                        source: GrantSource::GiveBack,
                        order_id: mutation.order_id,
                        amount: extra,
                        priority: Priority::DEFAULT,
                        granted_at_ms: now_ms,
                        expires_at_ms: None,
                    })
                    .map_err(|error| grant_error(error, self.working.balance))?;
                (funding, made)
            }
        };
        Ok((funding, made))
    }

    /// Moves the working grants on by a row just decided (in place: no
    /// copy), to the row's `seq` and date; answers what they were stored as
    /// before. A row the grants cannot take, or that would not leave them
    /// summing to the balance, is refused and never written; the grants
    /// are then read again before the next mutation.
    fn move_grants(
        &mut self,
        made: Option<&CreditGrant>,
        funding: &Funding,
        facts: &[CreditGrant],
        (seq, dated_ms): (i64, i64),
        balance_after: Money,
    ) -> Result<Arc<str>, LedgerError> {
        let account_id = self.account_id;
        let balance = self.working.balance;
        let Some(grants) = self.grants.as_mut() else {
            return Err(LedgerError::Store(grants_unusable(
                account_id,
                "they are not loaded",
            )));
        };
        let moved = grants
            .book
            .apply_in_place(made, funding, facts)
            .map_err(|error| grant_error(error, balance))
            .and_then(|()| {
                let sum = grants
                    .book
                    .balance()
                    .map_err(|error| grant_error(error, balance))?;
                if sum == balance_after {
                    Ok(())
                } else {
                    Err(LedgerError::Store(grants_unusable(
                        account_id,
                        "a row's funding would not leave them summing to the balance",
                    )))
                }
            });
        if let Err(error) = moved {
            self.grants = None;
            return Err(error);
        }
        grants.book.encode_into(&mut grants.scratch);
        let previous = std::mem::replace(&mut grants.encoded, Arc::from(grants.scratch.as_str()));
        grants.at_seq = seq;
        grants.last_row_at_ms = Some(dated_ms);
        Ok(previous)
    }

    /// What the working state (at `now_ms`) refuses of a mutation before
    /// any write. Every refusal is answered only once its key is looked
    /// up, so that a retry whose first try took effect gets that first
    /// answer: no credit now, or an adjustment's expiry that has passed
    /// since it was first asked, refuses only a request that is new.
    fn refusal(&self, mutation: &Mutation, now_ms: i64) -> Result<(), LedgerError> {
        let balance_after = self.working.balance.checked_add(mutation.amount)?;
        if mutation.kind == TransactionKind::Debit && balance_after.is_negative() {
            return Err(LedgerError::InsufficientCredit {
                balance: self.working.balance,
                needed: -mutation.amount,
            });
        }
        let expiry = mutation
            .adjustment_terms()
            .and_then(|terms| terms.expires_at_ms);
        if expiry.is_some_and(|expires_at_ms| expires_at_ms <= now_ms) {
            return Err(LedgerError::ExpiryPassed);
        }
        Ok(())
    }

    /// Answers the callers of a mutation from the ledger's row with its
    /// key: the row if it is the same request, a conflict if not; with no
    /// such row, `otherwise`. A key's row is there for good, so one read
    /// decides; if it cannot be read, the callers are told nothing was
    /// applied.
    fn answer_from_ledger(
        &mut self,
        retry: Retry,
        otherwise: LedgerError,
        then_resume: bool,
        ctx: &mut Context<Self>,
    ) {
        let Retry {
            mutation, waiters, ..
        } = retry;
        let store = self.shared.store.clone();
        let account_id = self.account_id;
        let asks_terms = mutation.adjustment_terms().is_some();
        // Asked now, before anything else this actor reads.
        let by_key = store
            .ledger()
            .entry_by_key(account_id, mutation.idempotency_key.clone());
        let lookup = async move {
            let Some(existing) = by_key.await? else {
                return Ok(None);
            };
            // An adjustment's grant terms are part of its request: the
            // grant its row made is read to compare them.
            let made = if asks_terms && existing.kind == TransactionKind::Adjustment {
                store
                    .ledger()
                    .account_grants(account_id)
                    .await?
                    .and_then(|found| {
                        found
                            .grants
                            .into_iter()
                            .find(|grant| grant.id == existing.seq)
                    })
                    .map(|grant| GrantTerms {
                        category: grant.category,
                        priority: grant.priority,
                        expires_at_ms: grant.expires_at_ms,
                    })
            } else {
                None
            };
            Ok::<_, StoreError>(Some((existing, made)))
        };
        ctx.wait(lookup.into_actor(self).map(move |found, actor, ctx| {
            let outcome = match found {
                Ok(Some((existing, made))) => {
                    if mutation.adjustment_terms().is_some()
                        && existing.kind == mutation.kind
                        && made != mutation.adjustment_terms()
                    {
                        Err(conflict(&existing))
                    } else {
                        replay(existing, &mutation).map(Answer::Row)
                    }
                }
                Ok(None) => Err(otherwise),
                // A commit's unknown outcome stays unknown when it cannot
                // be looked up.
                Err(_) if matches!(otherwise, LedgerError::Store(StoreError::CommitUnknown(_))) => {
                    Err(otherwise)
                }
                Err(error) => Err(LedgerError::from(error)),
            };
            for (index, waiter) in waiters.into_iter().enumerate() {
                let _ = waiter.send(outcome.clone().map(|answer| answer.for_caller(index)));
            }
            if then_resume {
                actor.resume(Vec::new(), ctx);
            }
        }));
    }

    /// Computes the new row and snapshot, queues them to the store and
    /// moves the working state on without waiting for the commit.
    fn apply(
        &mut self,
        mutation: Mutation,
        attempts: u8,
        now_ms: i64,
        ctx: &mut Context<Self>,
    ) -> Result<&mut InFlight, LedgerError> {
        let balance_after = self.working.balance.checked_add(mutation.amount)?;
        if mutation.kind == TransactionKind::Debit && balance_after.is_negative() {
            return Err(LedgerError::InsufficientCredit {
                balance: self.working.balance,
                needed: -mutation.amount,
            });
        }
        let (funded_by, made) = self.decide_grants(&mutation, self.working.seq + 1, now_ms)?;
        let settings = &self.shared.settings;
        // The void of a message whose debit set off a warning still
        // pending withdraws that warning, and gives back the cooldown it
        // spent: the debit warned, so no earlier warning's cooldown was
        // running, and none is now. The balance the void leaves decides
        // again, as a debit's does: still low, a warning with what is left.
        let withdraw_warning = mutation
            .hints
            .as_ref()
            .and_then(|hints| hints.withdraw_warning);
        let warned_at_ms = if withdraw_warning.is_some() {
            NEVER_WARNED
        } else {
            self.working.warned_at_ms
        };
        // A debit warns, and so does an expiry: the one drop of a balance
        // nobody asked for.
        let drop_warns = matches!(
            mutation.kind,
            TransactionKind::Debit | TransactionKind::Expiry
        );
        let warning_due = (drop_warns || withdraw_warning.is_some())
            && balance_after < settings.low_balance_threshold
            && (warned_at_ms == NEVER_WARNED
                || now_ms.saturating_sub(warned_at_ms)
                    >= crate::clock::millis(settings.low_balance_cooldown));
        let snapshot_after = Packed {
            balance: balance_after,
            seq: self.working.seq + 1,
            warned_at_ms: if warning_due { now_ms } else { warned_at_ms },
        };
        // Every row is dated when it is written, but an expiry row: when
        // its grant expired (see `expire_due`).
        let created_at_ms = mutation
            .hints
            .as_ref()
            .and_then(|hints| hints.expiring)
            .map_or(now_ms, |expiring| expiring.at_ms);
        let entry = LedgerEntry {
            account_id: self.account_id,
            seq: snapshot_after.seq,
            kind: mutation.kind,
            amount: mutation.amount,
            balance_after,
            idempotency_key: mutation.idempotency_key.as_str().to_string(),
            order_id: mutation.order_id,
            description: mutation.description,
            reason: mutation.reason.map(Box::new),
            created_at_ms,
            funded_by,
        };
        // What is committed, read before the working state moves on.
        let committed_before = self.committed();
        // The warning goes out after the caller is answered, queued with
        // the debit so that it is neither lost nor sent twice; a message's
        // debit holds it until that message is resolved, so the warning
        // never reaches the phone before the message that caused it.
        let notice = if warning_due {
            let kind = NoticeKind::LowBalanceWarning {
                balance: balance_after,
                top_up: self
                    .shared
                    .auto_top_ups
                    .would_ask(self.account_id, balance_after, now_ms),
            };
            let dedupe_key = format!("low-balance:{}:{}", self.account_id, snapshot_after.seq);
            Some(
                NewNotice::new(self.account_id, kind, dedupe_key, now_ms)
                    .map_err(|error| LedgerError::Store(error.into()))?
                    .after_message(mutation.idempotency_key.message_id()),
            )
        } else {
            None
        };
        let events = self
            .events_of(&entry, mutation.hints.as_deref(), made.as_ref(), now_ms)
            .map_err(LedgerError::Store)?;
        let outbox = (notice.is_some()
            || withdraw_warning.is_some()
            || !events.is_empty()
            || made.is_some())
        .then(|| {
            Box::new(Outbox {
                notice,
                withdraw_notice: withdraw_warning,
                events,
                grant: made,
            })
        });
        let nothing: &[CreditGrant] = &[];
        let facts = mutation
            .hints
            .as_deref()
            .and_then(|hints| {
                hints.reversal.as_ref().or(hints
                    .take_back
                    .as_ref()
                    .and_then(|plan| plan.taken.as_ref()))
            })
            .map_or(nothing, |reversal| &reversal.facts[..]);
        let made = outbox.as_ref().and_then(|outbox| outbox.grant.as_ref());
        let previous_grants = self.move_grants(
            made,
            &entry.funded_by,
            facts,
            (snapshot_after.seq, entry.created_at_ms),
            balance_after,
        )?;
        let grants_after = self
            .grants
            .as_ref()
            .map_or_else(|| Arc::from(""), |grants| Arc::clone(&grants.encoded));
        let (done, committed) = oneshot::channel();
        let submitted = self.shared.store.ledger().submit(LedgerWrite {
            funded_by: entry.funded_by.encode(),
            entry: entry.clone(),
            previous: self.working.unpack(),
            next: snapshot_after.unpack(),
            grants: grants_after,
            previous_grants,
            generation: self.generation,
            done,
            submitted_at: Instant::now(),
            outbox,
        });
        if let Err(error) = submitted {
            // The grants moved on, the snapshot did not: read both again.
            self.grants = None;
            return Err(error.into());
        }
        self.working = snapshot_after;
        // Set only once the write is queued: a write that never left
        // reached nothing.
        if balance_after >= self.shared.settings.low_balance_threshold {
            self.reached = Reached::Yes;
        }

        let generation = self.generation;
        let key = mutation.idempotency_key;
        let done_key = key.clone();
        let commit = async move { committed.await.unwrap_or(Err(StoreError::Closed)) };
        ctx.spawn(commit.into_actor(self).map(move |result, actor, ctx| {
            actor.on_write_done(&done_key, generation, result, ctx)
        }));
        let pipeline = self.in_flight.get_or_insert_with(|| {
            Box::new(Pipeline {
                writes: HashMap::new(),
                order: VecDeque::new(),
                committed: committed_before,
            })
        });
        pipeline.order.push_back(key.clone());
        Ok(pipeline.writes.entry(key).or_insert(InFlight {
            entry,
            warning_due,
            waiters: Vec::with_capacity(1),
            snapshot_after,
            attempts,
            generation,
            outcome: None,
            hints: mutation.hints,
        }))
    }

    /// The webhook events a row makes, whatever moved the balance: the
    /// balance crossing the low-balance threshold (down: `balance.low`; up:
    /// `balance.replenished`, only for an account that had the threshold
    /// before, so was announced low) or one segment's price to the
    /// account's own number (`balance.depleted`), the caller's own event,
    /// and the grant's: `credit.granted` for the grant the row makes,
    /// `credit.expired` for an expiry row. A crossing is from one side to
    /// the other, so each is once until the balance has gone back. Every
    /// event is dated `now_ms`, when it is written (its deliveries' days
    /// count from then), whatever its row is dated (an expiry row: when
    /// the grant expired, which `credit.expired` says).
    fn events_of(
        &self,
        entry: &LedgerEntry,
        hints: Option<&Hints>,
        made: Option<&CreditGrant>,
        now_ms: i64,
    ) -> Result<Vec<NewEvent>, StoreError> {
        let before = self.working.balance;
        let after = entry.balance_after;
        let threshold = self.shared.settings.low_balance_threshold;
        let mut events = Vec::new();
        let mut crossing = |kind: EventType| {
            NewEvent::of_entry(kind, entry, Map::new()).map(|event| events.push(event))
        };
        if before >= threshold && after < threshold {
            crossing(EventType::BalanceLow)?;
        }
        if let Some(one_segment) = hints.and_then(|hints| hints.one_segment) {
            if before >= one_segment && after < one_segment {
                crossing(EventType::BalanceDepleted)?;
            }
        }
        if before < threshold && after >= threshold && self.reached == Reached::Yes {
            crossing(EventType::BalanceReplenished)?;
        }
        if let Some(draft) = hints.and_then(|hints| hints.event.as_ref()) {
            events.push(draft.of_entry(entry)?);
        }
        if let Some(grant) = made {
            events.push(credit_granted(entry, grant)?);
        }
        if let Some(expiring) = hints
            .and_then(|hints| hints.expiring)
            .filter(|_| entry.kind == TransactionKind::Expiry)
        {
            events.push(credit_expired(entry, expiring.grant_id)?);
        }
        for event in &mut events {
            event.created_at_ms = now_ms;
        }
        Ok(events)
    }

    /// Answers the callers of one write once the store has decided it.
    fn on_write_done(
        &mut self,
        key: &IdempotencyKey,
        generation: u64,
        result: Result<(), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(pipeline) = self.in_flight.as_mut() else {
            return;
        };
        // An answer for a write already taken back and redone is stale.
        match pipeline.writes.get_mut(key) {
            Some(in_flight) if in_flight.generation == generation => {
                in_flight.outcome = Some(result);
            }
            _ => return,
        }
        // Settle answers in `seq` order: a refusal handled before the
        // commit of an earlier write would take that write back too.
        loop {
            let Some(pipeline) = self.in_flight.as_mut() else {
                return;
            };
            let Some(head) = pipeline.order.front() else {
                return;
            };
            let ready = pipeline
                .writes
                .get(head)
                .is_some_and(|in_flight| in_flight.outcome.is_some());
            if !ready {
                return;
            }
            let Some(head) = pipeline.order.pop_front() else {
                return;
            };
            let Some(mut in_flight) = pipeline.writes.remove(&head) else {
                continue;
            };
            let Some(result) = in_flight.outcome.take() else {
                continue;
            };
            let generation = in_flight.generation;
            self.settle(&head, generation, in_flight, result, ctx);
        }
    }

    /// Answers the callers of one write, the writes before it settled.
    fn settle(
        &mut self,
        key: &IdempotencyKey,
        generation: u64,
        in_flight: InFlight,
        result: Result<(), StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(pipeline) = self.in_flight.as_mut() else {
            return;
        };
        if result.is_ok() && in_flight.snapshot_after.seq > pipeline.committed.seq {
            pipeline.committed = in_flight.snapshot_after;
        }
        let settled = pipeline.writes.is_empty();
        if settled {
            // Every write is answered: what is committed is the working
            // state (after a failure, the reload below replaces both).
            self.in_flight = None;
        }
        match result {
            Ok(()) => {
                if matches!(
                    in_flight.entry.kind,
                    TransactionKind::Debit | TransactionKind::Expiry
                ) {
                    // A committed debit (or expiry) left the balance low:
                    // ask for an auto top-up (once, however many debits
                    // follow). Asked at the clock's time: an expiry row is
                    // dated when its grant expired.
                    self.shared.auto_top_ups.ask(
                        self.account_id,
                        in_flight.entry.balance_after,
                        self.shared.clock.now_ms(),
                    );
                }
                for (index, waiter) in in_flight.waiters.into_iter().enumerate() {
                    let _ = waiter.send(Ok(Answer::Row(Receipt {
                        entry: in_flight.entry.clone(),
                        replayed: index > 0,
                        low_balance_warning_due: in_flight.warning_due && index == 0,
                    })));
                }
                if settled {
                    // What waited for the writes to be settled goes on.
                    self.resume(Vec::new(), ctx);
                }
            }
            Err(error) => {
                // Memory ran ahead of a write that did not land: start again
                // from what is on disk (once per generation: later writes of
                // the same generation are refused by the store, and come
                // here too).
                let reload = generation == self.generation;
                if reload {
                    self.generation = self.shared.store.next_generation();
                }
                if matches!(error, StoreError::CommitUnknown(_)) {
                    // Whether it was applied is not known: the key's row
                    // says it was, and the callers are answered from it.
                    // Not finding it (the server may still be finishing the
                    // commit) or not being able to look says nothing: still
                    // unknown, never "not applied". Then memory is read
                    // again from disk.
                    let not_there = LedgerError::Store(error.clone());
                    self.answer_from_ledger(
                        Retry::of(key.clone(), in_flight),
                        not_there,
                        !reload && settled,
                        ctx,
                    );
                    if reload {
                        self.load_snapshot(Vec::new(), ctx);
                    }
                    return;
                }
                // Nothing was applied, and the write was computed on a state
                // that is gone (the ledger moved on under this actor, or an
                // earlier write of it failed): compute it again, invisibly
                // to its callers. A failed commit is answered instead: the
                // store itself is in trouble.
                let redo = matches!(
                    error,
                    StoreError::Conflict
                        | StoreError::MovedOn(_)
                        | StoreError::Aborted
                        | StoreError::DuplicateKey
                );
                if reload && redo {
                    // Every later write of this generation will be refused
                    // too: take them all back now and compute them again, in
                    // their first order, before any later message, so that
                    // what callers sent in order is applied in order.
                    self.redo_from(key, in_flight, error, ctx);
                    return;
                }
                if reload {
                    // A failed commit: the store itself is in trouble. Its
                    // callers are told; memory falls back to disk.
                    for waiter in in_flight.waiters {
                        let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                    }
                    tracing::warn!(account_id = self.account_id.0, %error, "write failed; reloading snapshot");
                    self.load_snapshot(Vec::new(), ctx);
                    return;
                }
                // A write of a generation already given up after a failed
                // commit (the reload is under way or done): computed again
                // on what was reloaded, or answered from the key's row.
                match error {
                    StoreError::DuplicateKey => self.answer_from_ledger(
                        Retry::of(key.clone(), in_flight),
                        LedgerError::Store(StoreError::DuplicateKey),
                        settled,
                        ctx,
                    ),
                    StoreError::Conflict | StoreError::MovedOn(_) | StoreError::Aborted
                        if in_flight.attempts < MAX_ATTEMPTS =>
                    {
                        // Only the write whose own guard failed spends an
                        // attempt. One refused because an earlier write
                        // failed did not meet the other writer itself, and
                        // under heavy contention a deep pipeline would
                        // otherwise spend all its attempts behind heads
                        // that each lost once.
                        let spent = u8::from(!matches!(error, StoreError::Aborted));
                        let mut retry = Retry::of(key.clone(), in_flight);
                        retry.attempts = retry.attempts.saturating_sub(1 - spent);
                        self.begin_retry(retry, ctx);
                        if settled {
                            self.resume(Vec::new(), ctx);
                        }
                    }
                    _ => {
                        for waiter in in_flight.waiters {
                            let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                        }
                        if settled {
                            self.resume(Vec::new(), ctx);
                        }
                    }
                }
            }
        }
    }

    /// After the first refused write of a generation (`failed`, refused
    /// with `error`): reloads the snapshot, then computes again, in `seq`
    /// order, the refused write and every later one still in flight (the
    /// store refuses them all). A write refused for its key is answered
    /// from the ledger instead.
    fn redo_from(
        &mut self,
        failed_key: &IdempotencyKey,
        failed: InFlight,
        error: StoreError,
        ctx: &mut Context<Self>,
    ) {
        let mut later: Vec<(IdempotencyKey, InFlight)> = self
            .in_flight
            .take()
            .map(|pipeline| pipeline.writes.into_iter().collect())
            .unwrap_or_default();
        later.sort_by_key(|(_, in_flight)| in_flight.entry.seq);
        let failed_seq = failed.entry.seq;
        let mut redo = Vec::with_capacity(later.len() + 1);
        match error {
            StoreError::DuplicateKey => {
                self.answer_from_ledger(
                    Retry::of(failed_key.clone(), failed),
                    LedgerError::Store(StoreError::DuplicateKey),
                    // The snapshot's reload follows; what waits resumes after it.
                    false,
                    ctx,
                );
            }
            _ if failed.attempts >= MAX_ATTEMPTS => {
                for waiter in failed.waiters {
                    let _ = waiter.send(Err(LedgerError::Store(error.clone())));
                }
            }
            _ => {
                // Only a write whose own guard failed spends an attempt.
                let spent = u8::from(matches!(
                    error,
                    StoreError::Conflict | StoreError::MovedOn(_)
                ));
                let mut retry = Retry::of(failed_key.clone(), failed);
                retry.attempts = retry.attempts.saturating_sub(1 - spent);
                redo.push(retry);
            }
        }
        for (key, in_flight) in later {
            let mut retry = Retry::of(key, in_flight);
            retry.attempts = retry.attempts.saturating_sub(1);
            redo.push(retry);
        }
        if let StoreError::MovedOn(standing) = error {
            // The store said where the account stands: no read back (its
            // grants too, unless one of them is not known here).
            // Every row from the failed one on was refused.
            self.take_standing(*standing, failed_seq - 1);
            self.resume(redo, ctx);
            return;
        }
        if matches!(error, StoreError::Conflict) {
            tracing::info!(account_id = self.account_id.0, %error, "the ledger moved on; reloading and computing again");
        }
        self.load_snapshot(redo, ctx);
    }

    /// Stops this actor if it has been idle for the passivation time with
    /// nothing in flight (asked by the registry's sweeper).
    fn passivate_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle_ms = self
            .shared
            .activity_ms()
            .wrapping_sub(self.last_activity_ms);
        if u128::from(idle_ms) >= passivation_millis(self.shared.settings.passivate_after)
            && self.in_flight.is_none()
            && self.deferred.is_none()
            && matches!(self.lifecycle, Lifecycle::Ready | Lifecycle::Unloaded)
        {
            self.lifecycle = Lifecycle::Passivating;
            self.unlist_and_stop(ctx);
        }
    }

    /// Leaves the registry, so the next message activates a fresh actor,
    /// then stops. A message already on its way to this actor is dropped
    /// unhandled when the actor stops (or answered `Passivated`); either way
    /// the registry sends it again to a fresh actor: none is lost.
    fn unlist_and_stop(&mut self, ctx: &mut Context<Self>) {
        let own_address = ctx.address();
        self.shared
            .table
            .remove_if(&self.account_id, |_, listed| *listed == own_address);
        ctx.stop();
    }
}

/// A decision the grant rules refused, for the callers.
fn grant_error(error: GrantError, balance: Money) -> LedgerError {
    match error {
        GrantError::Overflow => LedgerError::Overflow,
        GrantError::Insufficient { needed, .. } => {
            LedgerError::InsufficientCredit { balance, needed }
        }
        other => LedgerError::Store(StoreError::Database(format!(
            "the account's credit grants: {other}"
        ))),
    }
}

/// The lasting facts of the grants `funding` draws on (grant 0 has none).
async fn read_facts(
    store: &Store,
    account_id: AccountId,
    funding: &Funding,
) -> Result<Vec<CreditGrant>, StoreError> {
    let ids: Vec<i64> = funding
        .draws()
        .iter()
        .map(|draw| draw.grant_id)
        .filter(|id| *id != crate::grants::SHORTFALL)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    store.ledger().grants_by_id(account_id, ids).await
}

fn conflict(existing: &LedgerEntry) -> LedgerError {
    LedgerError::IdempotencyConflict {
        key: existing.idempotency_key.clone(),
        existing_kind: existing.kind,
        existing_amount: existing.amount.micros(),
    }
}

/// The answer to a key that is already in the ledger: the original row if
/// the request is the same (for a take-back, whose amount the ledger
/// decided, a row of its kind), a conflict if it is not.
fn replay(existing: LedgerEntry, mutation: &Mutation) -> Result<Receipt, LedgerError> {
    if existing.kind == mutation.kind
        && (existing.amount == mutation.amount || mutation.take_back().is_some())
    {
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
        ctx.set_mailbox_capacity(self.shared.settings.mailbox_capacity);
        self.load_snapshot(Vec::new(), ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        tracing::debug!(account_id = self.account_id.0, "account actor stopped");
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
                reason: None,
                order_id: message.order_id,
                hints: Some(Box::new(Hints {
                    event: message.event,
                    grant: Some((GrantTerms::PAID, message.source)),
                    ..Hints::default()
                })),
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
                reason: None,
                order_id: None,
                hints: Hints::boxed(message.one_segment, None),
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
                reason: None,
                order_id: message.order_id,
                hints: Hints::boxed(None, message.event),
            },
            ctx,
        )
    }
}

impl Handler<TakeBack> for AccountActor {
    type Result = ResponseFuture<Result<TakenBack, LedgerError>>;

    fn handle(&mut self, message: TakeBack, ctx: &mut Context<Self>) -> Self::Result {
        let refund_not_positive = matches!(
            message.cause,
            TakeBackCause::Refund { refunded, .. } if !refunded.is_positive()
        );
        if refund_not_positive || message.credited.is_negative() {
            return Box::pin(async {
                Err(LedgerError::InvalidAmount(
                    "a refund must be positive and what its order credited not negative",
                ))
            });
        }
        let order_id = message.order.id;
        let answer = self.begin(
            Mutation {
                kind: TransactionKind::Refund,
                // Decided from the ledger before it is written.
                amount: Money::ZERO,
                idempotency_key: message.idempotency_key,
                description: message.description,
                reason: None,
                order_id: Some(order_id),
                hints: Some(Box::new(Hints {
                    take_back: Some(TakeBackPlan {
                        order: message.order,
                        credited: message.credited,
                        cause: message.cause,
                        learnt_at: None,
                        taken: None,
                    }),
                    ..Hints::default()
                })),
            },
            ctx,
        );
        Box::pin(async move {
            Ok(match answer.await? {
                Answer::Row(receipt) => TakenBack::Row(receipt),
                Answer::Nothing => TakenBack::Nothing,
            })
        })
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
        let terms_given = message.category.is_some()
            || message.priority.is_some()
            || message.expires_at_ms.is_some();
        if message.amount.is_negative() && terms_given {
            return Box::pin(async {
                Err(LedgerError::InvalidGrant(
                    "a negative adjustment takes credit and makes no grant: it has no category, priority or expiry",
                ))
            });
        }
        let grant = message.amount.is_positive().then(|| {
            (
                GrantTerms {
                    category: message.category.unwrap_or(Category::Promotional),
                    priority: message.priority.unwrap_or_default(),
                    expires_at_ms: message.expires_at_ms,
                },
                GrantSource::Adjustment,
            )
        });
        self.mutate(
            Mutation {
                kind: TransactionKind::Adjustment,
                amount: message.amount,
                idempotency_key: message.idempotency_key,
                description: message
                    .description
                    .unwrap_or_else(|| ADJUSTMENT_DESCRIPTION.to_string()),
                reason: Some(message.reason),
                order_id: None,
                hints: grant.map(|grant| {
                    Box::new(Hints {
                        grant: Some(grant),
                        ..Hints::default()
                    })
                }),
            },
            ctx,
        )
    }
}

impl Handler<ExpireDue> for AccountActor {
    type Result = ResponseFuture<Result<(), LedgerError>>;

    fn handle(&mut self, _message: ExpireDue, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.begin(Mutation::expire_due(), ctx);
        Box::pin(async move { answer.await.map(|_| ()) })
    }
}

impl Handler<GetBalance> for AccountActor {
    type Result = ResponseActFuture<Self, Result<Snapshot, LedgerError>>;

    /// The committed balance; an actor whose snapshot is not loaded (a
    /// read failed, or the store may have missed another process's
    /// writes) reads it first, so that it never answers from a guess and
    /// never stays unable to answer.
    fn handle(&mut self, _message: GetBalance, ctx: &mut Context<Self>) -> Self::Result {
        if self.lifecycle == Lifecycle::Unloaded && self.in_flight.is_none() {
            self.last_activity_ms = self.shared.activity_ms();
            // Every later message waits for the read (a note of another
            // process's write among them: taken after it, not lost).
            let (answer, answered) = oneshot::channel();
            let load = self.shared.store.ledger().snapshot(self.account_id);
            ctx.wait(load.into_actor(self).map(|loaded, actor, _ctx| {
                let outcome = match loaded {
                    Ok(Some(snapshot)) => {
                        if actor.lifecycle == Lifecycle::Unloaded && actor.in_flight.is_none() {
                            actor.lifecycle = Lifecycle::Ready;
                            actor.take_snapshot(snapshot);
                        }
                        Ok(actor.committed().unpack())
                    }
                    Ok(None) => Err(LedgerError::AccountNotFound(actor.account_id)),
                    Err(error) => Err(LedgerError::Store(error)),
                };
                let _ = answer.send(outcome);
            }));
            return Box::pin(
                async move {
                    answered
                        .await
                        .unwrap_or(Err(LedgerError::Store(StoreError::Closed)))
                }
                .into_actor(self),
            );
        }
        let answer = self.admit().map(|()| self.committed().unpack());
        Box::pin(actix::fut::ready(answer))
    }
}

/// The passivation time in milliseconds, at most 2³¹ − 1 (24 days), so that
/// 32-bit activity times compared with wrapping arithmetic stay exact.
fn passivation_millis(passivate_after: Duration) -> u128 {
    passivate_after.as_millis().min(i32::MAX as u128)
}

/// Another process (or instance) committed to this account up to `seq`:
/// the actor catches up if it is behind and has nothing in flight (a write
/// in flight will find out from the store's guard), taking the snapshot
/// `after` when the other process said it, else reloading. Told within a
/// millisecond or so of the other commit, the next write is computed on
/// where the account stands, and the guard rarely has to refuse it.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub(crate) struct LedgerMoved {
    pub(crate) seq: i64,
    /// The account's snapshot (and grants) at `seq`, when the note carried
    /// it.
    pub(crate) after: Option<Standing>,
}

/// The store may have missed other processes' writes to any account (its
/// listening connection was lost): an actor with nothing in flight reads
/// its snapshot again before it next answers (a write in flight finds out
/// from the store's guard). Lazily, so that a reconnection does not make
/// every live actor read at once.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct MayBeStale;

impl Handler<MayBeStale> for AccountActor {
    type Result = ();

    fn handle(&mut self, _message: MayBeStale, _ctx: &mut Context<Self>) {
        if self.lifecycle == Lifecycle::Ready && self.in_flight.is_none() {
            self.lifecycle = Lifecycle::Unloaded;
        }
    }
}

impl Handler<LedgerMoved> for AccountActor {
    type Result = ();

    fn handle(&mut self, message: LedgerMoved, ctx: &mut Context<Self>) {
        if self.lifecycle == Lifecycle::Ready
            && self.in_flight.is_none()
            && self.working.seq < message.seq
        {
            match message.after {
                // Nothing in flight: the working position is committed.
                Some(after) if after.snapshot.seq == message.seq => {
                    let committed_through = self.working.seq;
                    self.take_standing(after, committed_through);
                }
                _ => self.load_snapshot(Vec::new(), ctx),
            }
        }
    }
}

/// Asks an actor to stop if it has been idle for the passivation time. Sent
/// by the registry's sweeper, so that an actor needs no timer of its own.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct PassivateIfIdle;

impl Handler<PassivateIfIdle> for AccountActor {
    type Result = ();

    fn handle(&mut self, _message: PassivateIfIdle, ctx: &mut Context<Self>) {
        self.passivate_if_idle(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of the actor is paid once per active account (see the
    /// scale benchmark): what ARCHITECTURE.md says it is kept to.
    #[test]
    fn the_actor_stays_small() {
        assert_eq!(std::mem::size_of::<AccountActor>(), 80);
    }
}

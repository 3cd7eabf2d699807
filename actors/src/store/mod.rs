//! The durable store: the storage port the domain talks to ([`ports`]),
//! the handle that routes it to an adapter, and what both adapters share
//! (errors, ledger writes, counters, the balance feed's fan-out).
//!
//! Adapters: SQLite (`sqlite/`, the embedded default: one writer thread that
//! group-commits, reader threads) and Postgres. Each keeps its SQL, its
//! migrations and its connections to itself. Whatever the adapter, a write
//! is answered only after the transaction that holds it has committed.

pub mod backup;
pub(crate) mod change_notes;
pub mod copy;
pub mod error;
pub mod ports;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::feed::FeedHub;
use crate::grants::CreditGrant;
use crate::ledger::{AccountId, LedgerEntry, Snapshot, Standing, TransactionKind};
use crate::messaging::notices::NewNotice;
use crate::stats::{Histogram, KindTotals, BATCH_SIZES, LATENCY_MICROS};
use crate::webhooks::NewEvent;

pub use error::{CreateAccountError, StoreCause, StoreError, UnknownValue};
pub use ports::{
    AccessOrderRequest, AccountStore, AutoTopUpStore, Backend, BackupStore, BillingStore,
    CopyStore, EventDecision, FeedTicketStore, GrantExpiryStore, InboundClaim, InboundRecord,
    InstanceStore, LedgerStore, MessageStore, OptOutStore, OrderCompletion, PriceAccess,
    PriceCheck, ReceivedEvent, Reception, ReportStore, SignInStore, SourceStore, StoreFuture,
    StripeEventStore, TokenStore, WebhookStore,
};

/// A ledger row with the snapshot it leads to, from an account actor.
pub struct LedgerWrite {
    pub entry: LedgerEntry,
    /// The snapshot this write starts from; the write applies only if the
    /// snapshot on disk is still this one.
    pub previous: Snapshot,
    /// The snapshot after this write.
    pub next: Snapshot,
    /// What is left of each grant after this write (the snapshot's
    /// `grants`, encoded by [`crate::grants::encode_remaining`]): moved by
    /// the same guarded update as the balance.
    pub grants: Arc<str>,
    /// What was left of each grant before it, to put back should the row
    /// fail after the snapshot moved (shared with the actor's state: no
    /// copy).
    pub previous_grants: Arc<str>,
    /// The row's `funded_by` as stored, encoded by the actor (off the
    /// writer's thread, which every write waits for).
    pub funded_by: Option<String>,
    /// The writing actor's generation: once a write of this account fails,
    /// the store refuses its later writes of the same or an older
    /// generation, because they were computed on top of the failed one.
    pub generation: u64,
    pub done: oneshot::Sender<Result<(), StoreError>>,
    /// When it was submitted, for the acknowledgement latency.
    pub submitted_at: Instant,
    /// What the write queues besides its row, in the same transaction.
    /// Boxed: it is rare, and a write is paid per debit.
    pub outbox: Option<Box<Outbox>>,
}

/// What a ledger write queues besides its row: a notice it makes due (a
/// low-balance warning), a pending notice it withdraws (the warning of a
/// message whose cost it gives back), the webhook events it causes (a
/// balance crossing, a payment) and the grant it makes.
#[derive(Debug, Default)]
pub struct Outbox {
    pub notice: Option<NewNotice>,
    /// A notice still `pending` that becomes `withdrawn` with the write.
    pub withdraw_notice: Option<i64>,
    pub events: Vec<NewEvent>,
    /// The grant the row makes (a credit, a positive adjustment): its
    /// `credit_grants` row.
    pub grant: Option<CreditGrant>,
}

impl LedgerWrite {
    pub fn notice(&self) -> Option<&NewNotice> {
        self.outbox
            .as_ref()
            .and_then(|outbox| outbox.notice.as_ref())
    }

    pub fn withdrawn_notice(&self) -> Option<i64> {
        self.outbox
            .as_ref()
            .and_then(|outbox| outbox.withdraw_notice)
    }

    pub fn events(&self) -> &[NewEvent] {
        self.outbox.as_ref().map_or(&[], |outbox| &outbox.events)
    }

    pub fn grant(&self) -> Option<&CreditGrant> {
        self.outbox
            .as_ref()
            .and_then(|outbox| outbox.grant.as_ref())
    }
}

/// Test-only: a part of a ledger write that a test switch fails (see
/// [`Store::fail_ledger_write_for_testing`]), as a full disk or a lack of
/// memory would fail that statement: after the snapshot's guarded update
/// and, for the parts after it, after the row too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePart {
    /// The ledger row's insert.
    Row,
    /// The insert of the notice the write makes due.
    Notice,
    /// The insert of the webhook events the write causes.
    Events,
}

impl WritePart {
    pub fn as_str(self) -> &'static str {
        match self {
            WritePart::Row => "ledger row",
            WritePart::Notice => "notice",
            WritePart::Events => "webhook events",
        }
    }
}

/// Counters of the writer, for benchmarks and metrics.
pub struct StoreStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Writes in those transactions.
    pub committed_writes: AtomicU64,
    /// Transactions that failed.
    pub failed_commits: AtomicU64,
    /// Ledger writes refused because the account's snapshot had moved on
    /// (another process or instance wrote first); their actors reload and
    /// compute them again.
    pub conflicts: AtomicU64,
    /// The largest batch seen.
    pub max_batch: AtomicU64,
    /// Total time spent on batches (statements and commit), in microseconds.
    pub batch_micros: AtomicU64,
    /// Of that, time spent in COMMIT (SQLite: the WAL write; Postgres: the
    /// last round trip, which carries the batch's last statements with the
    /// COMMIT and its WAL flush), in microseconds.
    pub commit_micros: AtomicU64,
    /// Microseconds spent making commits durable apart from them (SQLite's
    /// syncer fsyncs while the writer runs the next batch; 0 on Postgres,
    /// whose COMMIT is durable).
    pub sync_micros: AtomicU64,
    /// Writes per committed batch.
    pub batch_sizes: Histogram,
    /// Time of each COMMIT, in microseconds.
    pub commit_latency: Histogram,
    /// From a ledger write's submission to its answer, in microseconds.
    pub ack_latency: Histogram,
    /// Committed ledger rows by kind.
    pub credits: KindTotals,
    pub debits: KindTotals,
    pub refunds: KindTotals,
    pub adjustments: KindTotals,
    pub expiries: KindTotals,
}

impl Default for StoreStats {
    fn default() -> StoreStats {
        StoreStats {
            commits: AtomicU64::new(0),
            committed_writes: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            batch_micros: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            sync_micros: AtomicU64::new(0),
            batch_sizes: Histogram::new(BATCH_SIZES),
            commit_latency: Histogram::new(LATENCY_MICROS),
            ack_latency: Histogram::new(LATENCY_MICROS),
            credits: KindTotals::default(),
            debits: KindTotals::default(),
            refunds: KindTotals::default(),
            adjustments: KindTotals::default(),
            expiries: KindTotals::default(),
        }
    }
}

impl StoreStats {
    /// The totals of one kind of ledger row.
    pub fn totals(&self, kind: TransactionKind) -> &KindTotals {
        match kind {
            TransactionKind::Credit => &self.credits,
            TransactionKind::Debit => &self.debits,
            TransactionKind::Refund => &self.refunds,
            TransactionKind::Adjustment => &self.adjustments,
            TransactionKind::Expiry => &self.expiries,
        }
    }

    /// Counts a committed batch (of `batch_size` queued items, of which
    /// `writes` were applied) and its ledger rows.
    pub(crate) fn committed(&self, batch_size: usize, writes: usize, entries: &[&LedgerEntry]) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_writes
            .fetch_add(writes as u64, Ordering::Relaxed);
        self.max_batch
            .fetch_max(batch_size as u64, Ordering::Relaxed);
        self.batch_sizes.observe(batch_size as u64);
        for entry in entries {
            self.totals(entry.kind).add(entry.amount.micros());
        }
    }
}

/// What an adapter learnt of other processes' (or instances') writes.
pub enum Moved {
    /// Ledger rows committed to one account.
    Rows {
        account_id: AccountId,
        /// The account's seq after them.
        seq: i64,
        /// The account's snapshot (and grants) after them, when the other
        /// process said it: the live actor takes it without reading the
        /// store.
        after: Option<Standing>,
    },
    /// Any account may have moved: this process may have missed what the
    /// others said (its listening connection was lost and made again).
    Unknown,
}

/// Whose tokens were revoked or rotated, for open feeds to check their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokensChanged {
    /// One account's.
    Account(AccountId),
    /// Anyone's may have been: this process may have missed what the
    /// others said (its listening connection was lost and made again).
    Unknown,
}

/// What the handle and its adapter share.
pub(crate) struct Shared {
    /// Names this store among the processes sharing the database, so that
    /// each learns only of the others' writes.
    pub(crate) origin: String,
    /// How long after its last heartbeat this process counts as gone to
    /// the others (the server's `instance_timeout_secs`), which its
    /// heartbeat writes; `None` for a process that runs no instance jobs
    /// (a command).
    instance_timeout_ms: Option<i64>,
    /// Where the accounts that moved under this process are sent (the
    /// registry listens, so that live actors reload).
    moved: mpsc::UnboundedSender<Moved>,
    moved_receiver: Mutex<Option<mpsc::UnboundedReceiver<Moved>>>,
    /// Where the accounts whose auto top-up setting another process
    /// changed are sent (the auto top-up worker listens).
    auto_top_up_changed: mpsc::UnboundedSender<AccountId>,
    auto_top_up_changed_receiver: Mutex<Option<mpsc::UnboundedReceiver<AccountId>>>,
    /// The accounts whose tokens were revoked (here or by another
    /// process), for every open feed to check its own.
    tokens_changed: tokio::sync::broadcast::Sender<TokensChanged>,
    pub(crate) stats: Arc<StoreStats>,
    /// Where committed ledger rows are published for the balance feed.
    pub(crate) feed: Arc<FeedHub>,
    /// Test-only: how many of the next commits fail as a full disk would.
    pub(crate) fail_next_commits: AtomicU64,
    /// Test-only: the commit that many commits from now (1: the next) is
    /// applied and then answered as a connection lost after the commit was
    /// sent would leave it (0: none).
    lose_commit_answer_in: AtomicU64,
    /// Test-only: while not 0, each commit counts it down, and the one
    /// that takes it to 0 fails (1: the next commit).
    fail_commit_in: AtomicU64,
    /// Test-only: how many of the next reads fail as a lost connection's
    /// would.
    fail_next_reads: AtomicU64,
    /// Test-only: while not 0, each read counts it down, and the one that
    /// takes it to 0 fails (1: the next read).
    fail_read_in: AtomicU64,
    /// Test-only: how many of the next reads of another instance's rows
    /// (for the balance feed) fail.
    fail_next_external_reads: AtomicU64,
    /// Test-only: while set, SQLite's syncer holds committed batches before
    /// making them durable (nothing about them may be told meanwhile).
    pub(crate) syncs_held: AtomicBool,
    /// Test-only: SQLite's next fsync fails as a failing disk's would.
    pub(crate) fail_next_sync: AtomicBool,
    /// Test-only: the writer's next batch waits until it holds this many
    /// writes.
    gather_next: AtomicUsize,
    /// Test-only: the ledger write with this idempotency key fails at this
    /// part, in the next batch that holds it.
    fail_write_part: Mutex<Option<(String, WritePart)>>,
    /// Whether `fail_write_part` is armed (read per write without a lock).
    fail_write_part_armed: AtomicBool,
    /// Test-only: the next Stripe event found to wait stops just before
    /// it is recorded waiting, until the test lets it go.
    hold_next_waiting_mark: Mutex<Option<Arc<TestHold>>>,
    /// Test-only: the take-back whose idempotency key this is stops once
    /// its amount is decided, before it is written, until the test lets
    /// it go.
    hold_take_back: Mutex<Option<(String, Arc<TestHold>)>>,
    /// Test-only: the next mark of an order's legacy record settled stops
    /// just before it is written, until the test releases it.
    hold_next_settled_mark: Mutex<Option<Arc<TestHold>>>,
    /// Test-only: how many of the next books reads stop once read, before
    /// they answer, and the hold they stop at.
    hold_books: Mutex<Option<(u64, Arc<TestHold>)>>,
    /// Told after a commit that queued notices, so they go out at once.
    pub(crate) notices_ready: Notify,
    /// Told after a commit that made webhook deliveries, so they go out at
    /// once.
    pub(crate) webhooks_ready: Notify,
    next_generation: AtomicU64,
}

/// This process's name among those sharing the database: random, and
/// ending with how long after its last heartbeat it counts as gone
/// (`3f9a…-200000ms`). Its heartbeat writes that timeout in a column of
/// its own (`instances.timeout_ms`), by which every other instance judges
/// it; the name says it too, as an earlier release's only did (the
/// migration that added the column reads it from there for such a row).
fn instance_name(random: &str, instance_timeout: Option<std::time::Duration>) -> String {
    match instance_timeout {
        Some(timeout) => format!("{random}-{}ms", crate::clock::millis(timeout)),
        None => random.to_string(),
    }
}

/// An instance's row: its last heartbeat, and how long after it the
/// instance counts as gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceBeat {
    pub id: String,
    pub heartbeat_ms: i64,
    /// Its own timeout, as its heartbeat wrote it (or, for an earlier
    /// release's, as its name says); `None` when it does not say, and the
    /// judge's own is used.
    pub timeout_ms: Option<i64>,
}

impl InstanceBeat {
    /// Whether it is alive at `now_ms`: its last heartbeat younger than
    /// its own timeout (`fallback_timeout_ms`, the judge's, when it does
    /// not say).
    pub fn is_alive(&self, now_ms: i64, fallback_timeout_ms: i64) -> bool {
        let timeout = self.timeout_ms.unwrap_or(fallback_timeout_ms);
        self.heartbeat_ms >= now_ms.saturating_sub(timeout)
    }

    /// When it counts as gone: its last heartbeat and its own timeout
    /// (`fallback_timeout_ms` when it does not say).
    pub fn gone_at(&self, fallback_timeout_ms: i64) -> i64 {
        self.heartbeat_ms
            .saturating_add(self.timeout_ms.unwrap_or(fallback_timeout_ms))
    }
}

/// The instances of `beats` alive at `now_ms`, each judged by its own
/// timeout ([`InstanceBeat::is_alive`]).
pub fn alive_at(
    beats: Vec<InstanceBeat>,
    now_ms: i64,
    fallback_timeout_ms: i64,
) -> Vec<InstanceBeat> {
    beats
        .into_iter()
        .filter(|beat| beat.is_alive(now_ms, fallback_timeout_ms))
        .collect()
}

/// Instances that are running, for people: each one's id, its last
/// heartbeat, the timeout it is judged by and how long it counts as
/// running still; `fallback_named` says whose timeout judges one that does
/// not say its own (an earlier release's). Also answers when the last of
/// them counts as gone. What `copy` and the migration to credit grants say
/// when they find a database in use.
pub fn running_instances_told(
    instances: &[InstanceBeat],
    now_ms: i64,
    fallback_timeout_ms: i64,
    fallback_named: &str,
) -> (String, i64) {
    let seconds = |ms: i64| (ms.max(0) + 999) / 1_000;
    let listed: Vec<String> = instances
        .iter()
        .map(|instance| {
            let timeout = match instance.timeout_ms {
                Some(timeout) => format!("its instance_timeout_secs is {} s", timeout / 1_000),
                None => format!(
                    "an earlier release's, which does not say its timeout: {fallback_named}, {} s",
                    fallback_timeout_ms / 1_000
                ),
            };
            format!(
                "{} (last heartbeat {} s ago, at {}; {timeout}; counts as running for {} s more)",
                instance.id,
                now_ms.saturating_sub(instance.heartbeat_ms).max(0) / 1_000,
                crate::clock::format_rfc3339_ms(instance.heartbeat_ms),
                seconds(instance.gone_at(fallback_timeout_ms).saturating_sub(now_ms)),
            )
        })
        .collect();
    let clears_at = instances
        .iter()
        .map(|instance| instance.gone_at(fallback_timeout_ms))
        .max()
        .unwrap_or(now_ms);
    (listed.join(", "), clears_at)
}

impl Shared {
    /// What every adapter shares; `instance_timeout` (the server's
    /// `instance_timeout_secs`) is what this process's heartbeat writes,
    /// and goes into its name ([`instance_name`]).
    pub(crate) fn new(
        instance_timeout: Option<std::time::Duration>,
    ) -> Result<Arc<Shared>, StoreError> {
        let (moved, moved_receiver) = mpsc::unbounded_channel();
        let (auto_top_up_changed, auto_top_up_receiver) = mpsc::unbounded_channel();
        Ok(Arc::new(Shared {
            origin: instance_name(&crate::random::random_secret("")?[..16], instance_timeout),
            instance_timeout_ms: instance_timeout.map(crate::clock::millis),
            moved,
            moved_receiver: Mutex::new(Some(moved_receiver)),
            auto_top_up_changed,
            auto_top_up_changed_receiver: Mutex::new(Some(auto_top_up_receiver)),
            tokens_changed: tokio::sync::broadcast::channel(1024).0,
            stats: Arc::new(StoreStats::default()),
            feed: FeedHub::new(),
            fail_next_commits: AtomicU64::new(0),
            lose_commit_answer_in: AtomicU64::new(0),
            fail_commit_in: AtomicU64::new(0),
            fail_next_reads: AtomicU64::new(0),
            fail_read_in: AtomicU64::new(0),
            fail_next_external_reads: AtomicU64::new(0),
            syncs_held: AtomicBool::new(false),
            fail_next_sync: AtomicBool::new(false),
            gather_next: AtomicUsize::new(0),
            fail_write_part: Mutex::new(None),
            fail_write_part_armed: AtomicBool::new(false),
            hold_next_waiting_mark: Mutex::new(None),
            hold_take_back: Mutex::new(None),
            hold_next_settled_mark: Mutex::new(None),
            hold_books: Mutex::new(None),
            notices_ready: Notify::new(),
            webhooks_ready: Notify::new(),
            next_generation: AtomicU64::new(1),
        }))
    }

    /// Whether another process's rows need reading: only the balance feed
    /// shows them (an actor is told where the account stands by the note,
    /// or reloads). A subscriber that arrives after this is asked reads
    /// them from the database itself.
    pub(crate) fn wants_external_rows(&self) -> bool {
        !self.feed.is_idle()
    }

    /// Another process committed rows to an account, up to `seq`: those
    /// read (`entries`, none when nobody watches the feed) are published to
    /// the balance feed like this process's own, and the account's live
    /// actor is told, with the snapshot `after` them when the note said it.
    pub(crate) fn external(
        &self,
        account_id: AccountId,
        seq: i64,
        entries: Vec<LedgerEntry>,
        after: Option<Standing>,
    ) {
        if !entries.is_empty() && !self.feed.is_idle() {
            for entry in entries {
                self.feed.publish(Arc::new(entry));
            }
        }
        let _ = self.moved.send(Moved::Rows {
            account_id,
            seq,
            after,
        });
    }

    /// Another process committed rows to an account that could not be
    /// read: its live actor is told, and its feeds (and those of every
    /// account) read them from the ledger themselves.
    pub(crate) fn external_unread(&self, account_id: AccountId, seq: i64, after: Option<Standing>) {
        self.feed.resubscribe_account(account_id);
        self.external(account_id, seq, Vec::new(), after);
    }

    /// The failure of the next read of another instance's rows, if the
    /// test switch says it fails (counting it).
    pub(crate) fn injected_external_read_failure(&self) -> Option<StoreError> {
        take_one(&self.fail_next_external_reads).then(|| {
            StoreError::Database("the read failed (a test switch injected it)".to_string())
        })
    }

    /// An account's tokens were revoked or rotated (here or elsewhere).
    pub(crate) fn tokens_changed(&self, account_id: AccountId) {
        let _ = self.tokens_changed.send(TokensChanged::Account(account_id));
    }

    /// This process may have missed what the others said (its listening
    /// connection was lost and made again; called once it listens again):
    /// every feed reads what it missed from the ledger, every live actor
    /// reads its account again, every open feed checks its token.
    pub(crate) fn may_have_missed_changes(&self) {
        self.feed.resubscribe_everyone();
        let _ = self.moved.send(Moved::Unknown);
        let _ = self.tokens_changed.send(TokensChanged::Unknown);
    }

    /// Another process changed an account's auto top-up setting.
    pub(crate) fn external_auto_top_up(&self, account_id: AccountId) {
        let _ = self.auto_top_up_changed.send(account_id);
    }

    /// How many writes the next batch waits for (test switch; 0: none).
    pub(crate) fn take_gather(&self) -> usize {
        self.gather_next.swap(0, Ordering::SeqCst)
    }

    /// The part at which the ledger write with `key` is to fail (the test
    /// switch), taken: the switch fires in one batch only.
    pub(crate) fn take_failing_part(&self, key: &str) -> Option<WritePart> {
        if !self.fail_write_part_armed.load(Ordering::Relaxed) {
            return None;
        }
        let mut armed = self
            .fail_write_part
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match armed.as_ref() {
            Some((armed_key, part)) if armed_key == key => {
                let part = *part;
                *armed = None;
                self.fail_write_part_armed.store(false, Ordering::Relaxed);
                Some(part)
            }
            _ => None,
        }
    }

    /// Whether the next commit is to fail (the test switch), counting it.
    /// Whether the answer of the commit just applied is to be lost (the
    /// test switch), counting it.
    pub(crate) fn take_lost_commit_answer(&self) -> bool {
        self.lose_commit_answer_in
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |remaining| {
                remaining.checked_sub(1)
            })
            == Ok(1)
    }

    pub(crate) fn take_injected_failure(&self) -> bool {
        take_one(&self.fail_next_commits)
            || self
                .fail_commit_in
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |remaining| {
                    remaining.checked_sub(1)
                })
                == Ok(1)
    }

    /// The hold a books read stops at before it answers, if a test put one
    /// there (see [`Store::hold_books_for_testing`]), counting the read.
    pub(crate) fn books_hold(&self) -> Option<Arc<TestHold>> {
        let mut held = self
            .hold_books
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (remaining, hold) = held.as_mut()?;
        let hold = Arc::clone(hold);
        *remaining -= 1;
        if *remaining == 0 {
            *held = None;
        }
        Some(hold)
    }

    /// The failure of the next read, if the test switch says it fails
    /// (counting it).
    pub(crate) fn injected_read_failure(&self) -> Option<StoreError> {
        let counted_down =
            self.fail_read_in
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |remaining| {
                    remaining.checked_sub(1)
                })
                == Ok(1);
        (take_one(&self.fail_next_reads) || counted_down).then(|| {
            StoreError::Database("the read failed (a test switch injected it)".to_string())
        })
    }
}

/// Test-only: a point a flow stops at until the test lets it go.
pub struct TestHold {
    reached: tokio::sync::Semaphore,
    released: tokio::sync::Semaphore,
}

impl Default for TestHold {
    fn default() -> TestHold {
        TestHold {
            reached: tokio::sync::Semaphore::new(0),
            released: tokio::sync::Semaphore::new(0),
        }
    }
}

impl TestHold {
    /// Waits until the flow has stopped at the point.
    pub async fn reached(&self) {
        if let Ok(permit) = self.reached.acquire().await {
            permit.forget();
        }
    }

    /// Lets the flow go on.
    pub fn release(&self) {
        self.released.add_permits(1);
    }

    /// Where the flow stops: tells the test it is there, and waits until
    /// the test lets it go.
    pub(crate) async fn stop_here(&self) {
        self.reached.add_permits(1);
        if let Ok(permit) = self.released.acquire().await {
            permit.forget();
        }
    }
}

/// Counts one down from `counter`: `false` when it was already 0.
fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |remaining| {
            remaining.checked_sub(1)
        })
        .is_ok()
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
}

impl Store {
    /// The handle to an adapter's store (made by `adapters::open`).
    pub(crate) fn new(backend: Arc<dyn Backend>, shared: Arc<Shared>) -> Store {
        Store { backend, shared }
    }

    pub fn ledger(&self) -> &dyn LedgerStore {
        &*self.backend
    }

    pub fn grant_expiry(&self) -> &dyn GrantExpiryStore {
        &*self.backend
    }

    pub fn accounts(&self) -> &dyn AccountStore {
        &*self.backend
    }

    pub fn tokens(&self) -> &dyn TokenStore {
        &*self.backend
    }

    pub fn feed_tickets(&self) -> &dyn FeedTicketStore {
        &*self.backend
    }

    pub fn sign_in(&self) -> &dyn SignInStore {
        &*self.backend
    }

    pub fn billing(&self) -> &dyn BillingStore {
        &*self.backend
    }

    pub fn events(&self) -> &dyn StripeEventStore {
        &*self.backend
    }

    pub fn messages(&self) -> &dyn MessageStore {
        &*self.backend
    }

    pub fn opt_outs(&self) -> &dyn OptOutStore {
        &*self.backend
    }

    pub fn auto_top_up(&self) -> &dyn AutoTopUpStore {
        &*self.backend
    }

    pub fn instances(&self) -> &dyn InstanceStore {
        &*self.backend
    }

    pub fn reports(&self) -> &dyn ReportStore {
        &*self.backend
    }

    pub fn webhooks(&self) -> &dyn WebhookStore {
        &*self.backend
    }

    pub fn copying(&self) -> &dyn CopyStore {
        &*self.backend
    }

    pub fn backups(&self) -> &dyn BackupStore {
        &*self.backend
    }

    /// This store's name among the instances sharing the database.
    pub fn instance_id(&self) -> &str {
        &self.shared.origin
    }

    /// How long after its last heartbeat this process counts as gone (see
    /// [`InstanceStore::heartbeat`]).
    pub fn instance_timeout_ms(&self) -> Option<i64> {
        self.shared.instance_timeout_ms
    }

    /// The accounts other processes wrote to, as this store learns of them
    /// (once: the registry takes it).
    pub fn take_moved(&self) -> Option<mpsc::UnboundedReceiver<Moved>> {
        self.shared
            .moved_receiver
            .lock()
            .ok()
            .and_then(|mut receiver| receiver.take())
    }

    /// The accounts whose auto top-up setting another process changed, as
    /// this store learns of them (once: the auto top-up worker takes it).
    pub fn take_auto_top_up_changes(&self) -> Option<mpsc::UnboundedReceiver<AccountId>> {
        self.shared
            .auto_top_up_changed_receiver
            .lock()
            .ok()
            .and_then(|mut receiver| receiver.take())
    }

    /// The accounts whose tokens are revoked or rotated from now on, by
    /// this process or another (an open feed checks its own token).
    pub fn token_changes(&self) -> tokio::sync::broadcast::Receiver<TokensChanged> {
        self.shared.tokens_changed.subscribe()
    }

    /// Tells this process's open feeds that an account's tokens changed
    /// (other processes learn it from the change note the store left).
    pub fn tokens_changed(&self, account_id: AccountId) {
        self.shared.tokens_changed(account_id);
    }

    /// Told after each commit that queued notices.
    pub fn notices_ready(&self) -> &Notify {
        &self.shared.notices_ready
    }

    /// The fan-out of committed ledger rows (the balance feed).
    /// Notified when deliveries were made by this process's commits.
    pub fn webhooks_ready(&self) -> &Notify {
        &self.shared.webhooks_ready
    }

    pub fn feed(&self) -> &Arc<FeedHub> {
        &self.shared.feed
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// A generation number never handed out before (see [`LedgerWrite::generation`]).
    pub fn next_generation(&self) -> u64 {
        self.shared.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Test-only switch: the writer's next batch waits until it holds
    /// `writes` writes, so a test can put them in one transaction.
    pub fn gather_next_batch_for_testing(&self, writes: usize) {
        self.shared.gather_next.store(writes, Ordering::SeqCst);
    }

    /// Test-only switch: in the next batch that holds the ledger write with
    /// idempotency key `key`, that write's statement for `part` fails as a
    /// full disk would fail it without ending the transaction (SQLite: an
    /// error from the statement; Postgres: the statement raises
    /// `disk_full`). The write's earlier statements have run by then.
    pub fn fail_ledger_write_for_testing(&self, key: &str, part: WritePart) {
        *self
            .shared
            .fail_write_part
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((key.to_string(), part));
        self.shared
            .fail_write_part_armed
            .store(true, Ordering::SeqCst);
    }

    /// Test-only: whether the failure [`Store::fail_ledger_write_for_testing`]
    /// put in is still to come (`false` once it fired).
    pub fn ledger_write_failure_armed_for_testing(&self) -> bool {
        self.shared.fail_write_part_armed.load(Ordering::SeqCst)
    }

    /// Test-only switch: the next `count` commits fail as a full disk would,
    /// and roll back.
    pub fn fail_next_commits_for_testing(&self, count: u64) {
        self.shared.fail_next_commits.store(count, Ordering::SeqCst);
    }

    /// Test-only switch: the next `skip` commits go through and the one
    /// after them fails as a full disk would (`None`: none fails), so a
    /// test can fail each step of a flow in turn.
    /// Test-only switch: after `skip` commits, the next one is applied
    /// and then answered `CommitUnknown`, as a connection lost after the
    /// commit was sent would leave it.
    pub fn lose_commit_answer_after_for_testing(&self, skip: u64) {
        self.shared
            .lose_commit_answer_in
            .store(skip.saturating_add(1), Ordering::SeqCst);
    }

    pub fn fail_commit_after_for_testing(&self, skip: Option<u64>) {
        let armed = skip.map_or(0, |skip| skip.saturating_add(1));
        self.shared.fail_commit_in.store(armed, Ordering::SeqCst);
    }

    /// Test-only switch: the next `count` reads fail as they would on a
    /// lost connection.
    pub fn fail_next_external_reads_for_testing(&self, count: u64) {
        self.shared
            .fail_next_external_reads
            .store(count, Ordering::SeqCst);
    }

    /// Test-only switch: the next `skip` reads go through and the one
    /// after them fails as on a lost connection (`None`: none fails), so a
    /// test can fail a read deep in a flow.
    pub fn fail_read_after_for_testing(&self, skip: Option<u64>) {
        let armed = skip.map_or(0, |skip| skip.saturating_add(1));
        self.shared.fail_read_in.store(armed, Ordering::SeqCst);
    }

    pub fn fail_next_reads_for_testing(&self, count: u64) {
        self.shared.fail_next_reads.store(count, Ordering::SeqCst);
    }

    /// Test-only switch (SQLite): while `held`, committed batches wait
    /// before their fsync, so a test can see that nothing about them is
    /// answered, shown or read before they are durable; so do the fsyncs
    /// reads ask for when they found another process's commit last. Postgres makes a
    /// commit durable before anyone can see it; there it does nothing.
    pub fn hold_syncs_for_testing(&self, held: bool) {
        self.shared.syncs_held.store(held, Ordering::SeqCst);
    }

    /// Test-only switch (SQLite): the next fsync of the write-ahead log
    /// fails, as on a failing disk. Postgres: does nothing.
    pub fn fail_next_sync_for_testing(&self) {
        self.shared.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// Test-only switch: the next Stripe event found to wait for state
    /// that does not exist yet stops just before it is recorded waiting,
    /// until the test releases the hold it is handed (so a test can put
    /// another instance's work in that moment).
    pub fn hold_next_waiting_mark_for_testing(&self) -> Arc<TestHold> {
        let hold = Arc::new(TestHold::default());
        *self
            .shared
            .hold_next_waiting_mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::clone(&hold));
        hold
    }

    /// Where a waiting event is about to be recorded: stops there while a
    /// test holds it (see [`Store::hold_next_waiting_mark_for_testing`]).
    pub(crate) async fn waiting_mark_point(&self) {
        let hold = self
            .shared
            .hold_next_waiting_mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(hold) = hold {
            hold.stop_here().await;
        }
    }

    /// Test-only switch: the next mark of an order's replaced legacy
    /// record as settled (see [`BillingStore::legacy_replacement_settled`])
    /// stops just before it is written, once the order's credit is settled,
    /// until the test releases the hold it is handed (so a test can record
    /// another refund of the order in that moment).
    pub fn hold_next_settled_mark_for_testing(&self) -> Arc<TestHold> {
        let hold = Arc::new(TestHold::default());
        *self
            .shared
            .hold_next_settled_mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::clone(&hold));
        hold
    }

    /// Where an order's legacy record is about to be marked settled: stops
    /// there while a test holds it (see
    /// [`Store::hold_next_settled_mark_for_testing`]).
    pub(crate) async fn settled_mark_point(&self) {
        let hold = self
            .shared
            .hold_next_settled_mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(hold) = hold {
            hold.stop_here().await;
        }
    }

    /// Test-only switch: the take-back (credit an order's refunds or
    /// disputes take back or give back) keyed `key` stops once its amount
    /// is decided from what it read, before it is written, until the test
    /// releases the hold it is handed (so a test can put another
    /// instance's work between the read and the write).
    pub fn hold_take_back_for_testing(&self, key: &str) -> Arc<TestHold> {
        let hold = Arc::new(TestHold::default());
        *self
            .shared
            .hold_take_back
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((key.to_string(), Arc::clone(&hold)));
        hold
    }

    /// Where the take-back keyed `key` is about to be written: the hold a
    /// test put there, taken (see [`Store::hold_take_back_for_testing`]).
    pub(crate) fn take_back_hold(&self, key: &str) -> Option<Arc<TestHold>> {
        let mut held = self
            .shared
            .hold_take_back
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match held.as_ref() {
            Some((held_key, _)) if held_key == key => held.take().map(|(_, hold)| hold),
            _ => None,
        }
    }

    /// Test-only switch: each of the next `count` books reads
    /// ([`ReportStore::credit_books`]) stops once read, before it answers,
    /// until the test releases the hold it is handed (once per read), so a
    /// test can keep books reads in flight.
    pub fn hold_books_for_testing(&self, count: u64) -> Arc<TestHold> {
        let hold = Arc::new(TestHold::default());
        *self
            .shared
            .hold_books
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            (count > 0).then(|| (count, Arc::clone(&hold)));
        hold
    }

    /// Waits until everything queued before this call has committed or failed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush().await
    }
}

//! The writer task: takes everything queued while the last commit ran and
//! puts it into the next transaction (group commit). Ledger writes go in
//! bulk: the accounts' snapshot rows are locked in account order (so two
//! instances never deadlock on them), each account's chain of writes moves
//! its snapshot from the first write's `previous` to the last one's `next`
//! in one guarded `UPDATE … FROM unnest(…)`, and the rows of the chains
//! that passed their guard go in with one `INSERT … SELECT unnest(…)`. A
//! chain whose guard failed (another instance wrote first) fails alone. The
//! other writes run one after another (and, only if one of them is refused,
//! again, each in a savepoint of its own). After `COMMIT` returns, each write
//! is answered, the rows published to the feed, and other instances told
//! (`pg_notify`, sent in the same transaction, delivered on commit).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Statement, Transaction};

use super::webhooks;
use super::{
    describe, is_retryable, is_unique_violation, Connector, CustomFailure, CustomWrite,
    ErasedValue, OpFailure, WriterMessage,
};
use crate::ledger::{AccountId, LedgerEntry, Snapshot, Standing};
use crate::money::Money;
use crate::store::change_notes;
use crate::store::{LedgerWrite, Shared, StoreError, WritePart};

/// The channel other instances listen on.
pub(super) const CHANNEL: &str = "sms_credit_ledger";
/// Postgres refuses notification payloads of 8 000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// How many times a batch that met a deadlock or a serialization failure
/// (another instance's transaction) is run again before its callers are
/// told it was not applied.
const BATCH_ATTEMPTS: u32 = 4;

/// The ledger path's statements, prepared once per connection: each batch
/// then costs one round trip per step, not two (no parse, no plan).
pub(super) struct Prepared {
    lock: Statement,
    update: Statement,
    insert_rows: Statement,
    insert_notices: Statement,
    notify: Statement,
    standing: Statement,
    insert_grants: Statement,
}

const LOCK: &str =
    "SELECT 1 FROM account_balances WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE";
const UPDATE: &str = "UPDATE account_balances b
    SET balance = u.balance, seq = u.seq, low_balance_warned_at = u.warned, updated_at = u.updated,
        grants = u.grants
   FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
               $6::bigint[], $7::bigint[], $8::text[])
        AS u (account_id, previous_seq, previous_balance, balance, seq, warned, updated, grants)
  WHERE b.account_id = u.account_id AND b.seq = u.previous_seq
    AND b.balance = u.previous_balance
RETURNING b.account_id";
const INSERT_ROWS: &str = "INSERT INTO transactions (account_id, seq, type, amount, balance_after,
                          idempotency_key, order_id, description, created_at, reason, funded_by)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::text[], $11::text[])";
/// The grants the batch's rows make (credits, positive adjustments: rare),
/// in the same pipeline.
const INSERT_GRANTS: &str = "INSERT INTO credit_grants (account_id, id, category, source, order_id,
                           amount, priority, granted_at, expires_at)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])";
/// Notices in columns (also used, one at a time, by writes that queue a
/// notice outside the ledger path).
pub(super) const INSERT_NOTICES: &str =
    "INSERT INTO notices (account_id, kind, dedupe_key, payload, state,
                     next_attempt_at, created_at, after_message)
SELECT account_id, kind, dedupe_key, payload, 'pending', created_at, created_at, after_message
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
       AS n (account_id, kind, dedupe_key, payload, created_at, after_message)
ON CONFLICT (dedupe_key) DO NOTHING";
const NOTIFY: &str = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS p (payload)";
const STANDING: &str =
    "SELECT account_id, balance, seq, low_balance_warned_at, grants FROM account_balances
  WHERE account_id = ANY($1)";

impl Prepared {
    pub(super) async fn new(client: &Client) -> Result<Prepared, tokio_postgres::Error> {
        let (lock, update, insert_rows, insert_notices, notify, standing, insert_grants) = futures_util::try_join!(
            client.prepare(LOCK),
            client.prepare(UPDATE),
            client.prepare(INSERT_ROWS),
            client.prepare(INSERT_NOTICES),
            client.prepare(NOTIFY),
            client.prepare(STANDING),
            client.prepare(INSERT_GRANTS),
        )?;
        Ok(Prepared {
            lock,
            update,
            insert_rows,
            insert_notices,
            notify,
            standing,
            insert_grants,
        })
    }
}

pub(super) struct Writer {
    connector: Connector,
    client: Option<(Client, Prepared)>,
    max_batch: usize,
    shared: Arc<Shared>,
    /// Accounts with a failed write and the generation it failed at (as in
    /// the SQLite writer: later writes of that generation are refused).
    poisoned: HashMap<AccountId, u64>,
}

/// What became of one ledger write in a batch.
#[derive(Clone, Debug)]
enum Fate {
    Committed,
    Refused(StoreError),
}

/// Why a batch's transaction did not commit.
enum BatchFailure {
    /// A deadlock or serialization failure: run it again.
    Retry(String),
    /// A custom write was refused in a try without savepoints: run it
    /// again with each write in a savepoint.
    Careful,
    /// Anything else: its writes fail.
    Failed(String),
    /// The connection was lost in the round trip that carried the COMMIT:
    /// the batch may have been applied.
    Unknown(String),
}

impl BatchFailure {
    /// What the test switch makes of a commit.
    fn injected() -> BatchFailure {
        BatchFailure::Failed("injected commit failure (test switch)".into())
    }
}

/// A failure of the round trip that carried the COMMIT: the database's own
/// refusal (a constraint, a deadlock) says nothing was applied; anything
/// else (the connection lost) leaves the outcome unknown.
fn at_commit(error: tokio_postgres::Error) -> BatchFailure {
    if error.as_db_error().is_some() {
        error.into()
    } else {
        BatchFailure::Unknown(describe(&error))
    }
}

impl From<tokio_postgres::Error> for BatchFailure {
    fn from(error: tokio_postgres::Error) -> BatchFailure {
        if is_retryable(&error) {
            BatchFailure::Retry(describe(&error))
        } else {
            BatchFailure::Failed(describe(&error))
        }
    }
}

impl Writer {
    pub(super) fn new(
        connector: Connector,
        client: (Client, Prepared),
        max_batch: usize,
        shared: Arc<Shared>,
    ) -> Writer {
        Writer {
            connector,
            client: Some(client),
            max_batch,
            shared,
            poisoned: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, mut queue: mpsc::UnboundedReceiver<WriterMessage>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = queue.recv().await {
            batch.push(first);
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let gather = self.shared.take_gather();
            while batch.len() < gather {
                match queue.recv().await {
                    Some(next) => batch.push(next),
                    None => break,
                }
            }
            self.commit_batch(std::mem::take(&mut batch)).await;
        }
    }

    /// The writer's connection and its statements, made again after it was lost.
    async fn client(&mut self) -> Result<&mut (Client, Prepared), String> {
        if self
            .client
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            self.client = None;
            let client = self
                .connector
                .connect(None)
                .await
                .map_err(|error| error.to_string())?;
            let prepared = Prepared::new(&client)
                .await
                .map_err(|error| describe(&error))?;
            self.client = Some((client, prepared));
        }
        self.client
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    async fn commit_batch(&mut self, batch: Vec<WriterMessage>) {
        let started = Instant::now();
        let batch_size = batch.len();
        let mut ledger: Vec<LedgerWrite> = Vec::new();
        let mut custom: Vec<CustomWrite> = Vec::new();
        let mut flushes = Vec::new();
        let mut refused: Vec<(oneshot::Sender<Result<(), StoreError>>, StoreError)> = Vec::new();
        for message in batch {
            match message {
                WriterMessage::Ledger(write) => {
                    let write = *write;
                    let account_id = write.entry.account_id;
                    match self.poisoned.get(&account_id) {
                        Some(&poisoned_at) if write.generation <= poisoned_at => {
                            refused.push((write.done, StoreError::Aborted));
                        }
                        Some(_) => {
                            self.poisoned.remove(&account_id);
                            ledger.push(write);
                        }
                        None => ledger.push(write),
                    }
                }
                WriterMessage::Custom(write) => custom.push(write),
                WriterMessage::Flush(done) => flushes.push(done),
            }
        }

        // The test switch that fails one write's statement: it holds for
        // every try of this batch.
        let failing = ledger.iter().enumerate().find_map(|(index, write)| {
            self.shared
                .take_failing_part(&write.entry.idempotency_key)
                .map(|part| Failing { index, part })
        });
        let mut attempt = 1;
        let mut careful = false;
        let mut inject = self.shared.take_injected_failure();
        let outcome = loop {
            let outcome = self
                .try_batch(&ledger, &custom, careful, inject, failing)
                .await;
            match outcome {
                // Not an attempt of its own: the same try, with savepoints.
                Err(BatchFailure::Careful) => careful = true,
                Err(BatchFailure::Retry(reason)) if attempt < BATCH_ATTEMPTS => {
                    tracing::info!(%reason, attempt, "a group commit met another instance's transaction; running it again");
                    attempt += 1;
                    inject = self.shared.take_injected_failure();
                }
                Err(BatchFailure::Retry(reason) | BatchFailure::Failed(reason)) => {
                    break Err(StoreError::CommitFailed(reason))
                }
                Err(BatchFailure::Unknown(reason)) => break Err(StoreError::CommitUnknown(reason)),
                Ok(_) if self.shared.take_lost_commit_answer() => {
                    break Err(StoreError::CommitUnknown(
                        "the commit's answer was lost (a test switch)".into(),
                    ))
                }
                Ok(done) => break Ok(done),
            }
        };

        match outcome {
            Ok((fates, custom_results, commit_micros)) => {
                self.shared
                    .stats
                    .commit_micros
                    .fetch_add(commit_micros, Ordering::Relaxed);
                self.shared.stats.commit_latency.observe(commit_micros);
                let committed: Vec<&LedgerEntry> = ledger
                    .iter()
                    .zip(&fates)
                    .filter(|(_, fate)| matches!(fate, Fate::Committed))
                    .map(|(write, _)| &write.entry)
                    .collect();
                let applied = committed.len()
                    + custom_results
                        .iter()
                        .filter(|result| result.is_ok())
                        .count();
                self.shared.stats.committed(batch_size, applied, &committed);
                if ledger.iter().zip(&fates).any(|(write, fate)| {
                    write.notice().is_some() && matches!(fate, Fate::Committed)
                }) {
                    self.shared.notices_ready.notify_one();
                }
                // Events of the ledger writes, or of other writes (an
                // order's end, an account made): the worker goes at once.
                if super::super::take_events_inserted() {
                    self.shared.webhooks_ready.notify_one();
                }
                let publish = !self.shared.feed.is_idle();
                for (write, fate) in ledger.into_iter().zip(fates) {
                    match fate {
                        Fate::Committed => {
                            let queued_at = write.submitted_at;
                            if publish {
                                self.shared.feed.publish(Arc::new(write.entry));
                            }
                            let _ = write.done.send(Ok(()));
                            self.shared
                                .stats
                                .ack_latency
                                .observe(queued_at.elapsed().as_micros() as u64);
                        }
                        Fate::Refused(error) => {
                            if matches!(error, StoreError::Conflict | StoreError::MovedOn(_)) {
                                self.shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            self.poison(write.entry.account_id, write.generation);
                            let _ = write.done.send(Err(error));
                        }
                    }
                }
                for (write, result) in custom.into_iter().zip(custom_results) {
                    let _ = write.done.send(result.map_err(CustomFailure::Op));
                }
            }
            Err(error) => {
                self.shared
                    .stats
                    .failed_commits
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, writes = ledger.len() + custom.len(), "group commit failed");
                for write in ledger {
                    self.poison(write.entry.account_id, write.generation);
                    let _ = write.done.send(Err(error.clone()));
                }
                for write in custom {
                    let _ = write.done.send(Err(CustomFailure::Store(error.clone())));
                }
            }
        }
        for (done, error) in refused {
            let _ = done.send(Err(error));
        }
        for done in flushes {
            let _ = done.send(());
        }
        self.shared
            .stats
            .batch_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// One try of a batch: its fates, the custom writes' own results, and
    /// the time COMMIT took. Unless `careful`, the custom writes run without
    /// savepoints, and a refused one (unless alone) ends the try with
    /// [`BatchFailure::Careful`].
    #[allow(clippy::type_complexity)]
    async fn try_batch(
        &mut self,
        ledger: &[LedgerWrite],
        custom: &[CustomWrite],
        careful: bool,
        inject: bool,
        failing: Option<Failing>,
    ) -> Result<(Vec<Fate>, Vec<Result<ErasedValue, ErasedValue>>, u64), BatchFailure> {
        let shared = Arc::clone(&self.shared);
        let origin = shared.origin.as_str();
        let (client, prepared) = self.client().await.map_err(BatchFailure::Failed)?;
        // A row the guard let through clashed with one already there, or
        // Postgres refused one of the bulk statements: the ledger's writes
        // go again each on its own, so that only the one at fault fails.
        let mut clashed = false;
        if custom.is_empty() {
            match ledger_alone(client, prepared, origin, ledger, inject, failing).await? {
                Some(done) => return Ok(done),
                None => clashed = true,
            }
        }
        let mut transaction = client.transaction().await?;
        let fates = if ledger.is_empty() {
            Vec::new()
        } else if clashed {
            apply_ledger_one_by_one(&mut transaction, prepared, origin, ledger, failing).await?
        } else {
            match apply_ledger(&transaction, prepared, origin, ledger, None, failing).await {
                Ok((fates, _)) => fates,
                Err(error) if is_unique_violation(&error) || refused_by_database(&error) => {
                    transaction.rollback().await?;
                    transaction = client.transaction().await?;
                    apply_ledger_one_by_one(&mut transaction, prepared, origin, ledger, failing)
                        .await?
                }
                Err(error) => return Err(error.into()),
            }
        };
        let mut results = Vec::with_capacity(custom.len());
        // First without savepoints (each costs two round trips): most
        // writes are not refused. A refused one has aborted the
        // transaction, or left part of itself in it; unless it is alone,
        // the batch is run again with each write in a savepoint, so that
        // only the refused one is rolled back.
        let alone = ledger.is_empty() && custom.len() == 1;
        for write in custom {
            let result = if careful {
                let savepoint = transaction.savepoint("custom_write").await?;
                match (write.op)(&savepoint).await {
                    Ok(value) => {
                        savepoint.commit().await?;
                        Ok(value)
                    }
                    Err(OpFailure::Refused(error)) => {
                        // A database error of the op itself is rolled back
                        // with its savepoint; a broken connection fails the
                        // batch.
                        savepoint.rollback().await?;
                        Err(OpFailure::Refused(error))
                    }
                    Err(contention) => Err(contention),
                }
            } else {
                (write.op)(&transaction).await
            };
            match result {
                Ok(value) => results.push(Ok(value)),
                Err(OpFailure::Contention(reason)) => {
                    transaction.rollback().await?;
                    return Err(BatchFailure::Retry(reason));
                }
                Err(OpFailure::Refused(error)) if careful => results.push(Err(error)),
                Err(OpFailure::Refused(error)) if alone => {
                    // Its own refusal rolls back the whole transaction,
                    // which is only its.
                    transaction.rollback().await?;
                    if inject {
                        return Err(BatchFailure::injected());
                    }
                    return Ok((Vec::new(), vec![Err(error)], 0));
                }
                Err(OpFailure::Refused(_)) => {
                    transaction.rollback().await?;
                    return Err(BatchFailure::Careful);
                }
            }
        }
        if inject {
            transaction.rollback().await?;
            return Err(BatchFailure::injected());
        }
        let committing = Instant::now();
        transaction.commit().await.map_err(at_commit)?;
        Ok((fates, results, committing.elapsed().as_micros() as u64))
    }

    fn poison(&mut self, account_id: AccountId, generation: u64) {
        let entry = self.poisoned.entry(account_id).or_insert(generation);
        *entry = (*entry).max(generation);
    }
}

/// A batch of ledger writes alone, without a `Transaction` (whose `BEGIN`
/// and `COMMIT` would each cost a round trip of their own): `BEGIN`, then
/// the bulk path with `COMMIT` in its last round trip. `None` when a row
/// clashed with one already there, or Postgres refused a statement:
/// nothing committed, and the batch goes to the careful path.
#[allow(clippy::type_complexity)]
async fn ledger_alone(
    client: &mut Client,
    prepared: &Prepared,
    origin: &str,
    ledger: &[LedgerWrite],
    inject: bool,
    failing: Option<Failing>,
) -> Result<Option<(Vec<Fate>, Vec<Result<ErasedValue, ErasedValue>>, u64)>, BatchFailure> {
    if ledger.is_empty() {
        // Only flushes: everything queued before them has been answered.
        return if inject {
            Err(BatchFailure::injected())
        } else {
            Ok(Some((Vec::new(), Vec::new(), 0)))
        };
    }
    // The test switch rolls back where a commit would have been.
    let end = if inject { "ROLLBACK" } else { "COMMIT" };
    client.batch_execute("BEGIN").await?;
    let last_trip = Instant::now();
    match apply_ledger(&*client, prepared, origin, ledger, Some(end), failing).await {
        Ok((fates, ended)) => {
            if !ended {
                client.batch_execute(end).await.map_err(at_commit)?;
            }
            if inject {
                return Err(BatchFailure::injected());
            }
            Ok(Some((
                fates,
                Vec::new(),
                last_trip.elapsed().as_micros() as u64,
            )))
        }
        Err(error) if error.as_db_error().is_none() => {
            // The connection was lost in the round trip that carried the
            // COMMIT (when it did): nothing more can be said.
            Err(at_commit(error))
        }
        Err(error) => {
            // Whether the transaction is still open or already ended by
            // the pipelined COMMIT (which an earlier failure turns into a
            // rollback), it ends here; a second ROLLBACK only warns.
            client.batch_execute("ROLLBACK").await?;
            if is_unique_violation(&error) || refused_by_database(&error) {
                Ok(None)
            } else {
                Err(error.into())
            }
        }
    }
}

/// Each account's writes in the batch, in order, as far as they chain
/// (each starts from the snapshot the one before leads to); the rest of an
/// account's writes are refused without trying.
struct Chains {
    /// Per account: the indexes of its chained writes, in order.
    chains: Vec<(AccountId, Vec<usize>)>,
    broken: Vec<usize>,
}

fn chains(ledger: &[LedgerWrite]) -> Chains {
    let mut by_account: HashMap<AccountId, usize> = HashMap::new();
    let mut chains: Vec<(AccountId, Vec<usize>)> = Vec::new();
    let mut broken = Vec::new();
    let mut broken_accounts: HashSet<AccountId> = HashSet::new();
    for (index, write) in ledger.iter().enumerate() {
        let account_id = write.entry.account_id;
        if broken_accounts.contains(&account_id) {
            broken.push(index);
            continue;
        }
        match by_account.get(&account_id) {
            None => {
                by_account.insert(account_id, chains.len());
                chains.push((account_id, vec![index]));
            }
            Some(&chain) => {
                let indexes = &mut chains[chain].1;
                let last = &ledger[indexes[indexes.len() - 1]];
                if last.next == write.previous {
                    indexes.push(index);
                } else {
                    broken_accounts.insert(account_id);
                    broken.push(index);
                }
            }
        }
    }
    Chains { chains, broken }
}

/// The bulk path: lock, guarded update, insert, notices, notification, in
/// two round trips. With `end` (`COMMIT` or `ROLLBACK`), the statement that
/// ends the transaction goes in the second round trip too, unless a
/// statement there needs a round trip of its own first (a webhook event's
/// insert is not prepared): the answer says whether it went. Every
/// statement before it is sent before it, so if one fails, the
/// transaction is aborted and `COMMIT` only rolls it back.
async fn apply_ledger(
    client: &impl GenericClient,
    prepared: &Prepared,
    origin: &str,
    ledger: &[LedgerWrite],
    end: Option<&str>,
    failing: Option<Failing>,
) -> Result<(Vec<Fate>, bool), tokio_postgres::Error> {
    let Chains { mut chains, broken } = chains(ledger);
    chains.sort_by_key(|(account_id, _)| *account_id);
    let accounts: Vec<i64> = chains.iter().map(|(account_id, _)| account_id.0).collect();
    let mut previous_seq = Vec::with_capacity(chains.len());
    let mut previous_balance = Vec::with_capacity(chains.len());
    let mut balance = Vec::with_capacity(chains.len());
    let mut seq = Vec::with_capacity(chains.len());
    let mut warned: Vec<Option<i64>> = Vec::with_capacity(chains.len());
    let mut updated = Vec::with_capacity(chains.len());
    let mut grants: Vec<&str> = Vec::with_capacity(chains.len());
    for (_, indexes) in &chains {
        let first = &ledger[indexes[0]];
        let last = &ledger[indexes[indexes.len() - 1]];
        previous_seq.push(first.previous.seq);
        previous_balance.push(first.previous.balance.micros());
        balance.push(last.next.balance.micros());
        seq.push(last.next.seq);
        warned.push(last.next.low_balance_warned_at_ms);
        updated.push(last.entry.created_at_ms);
        grants.push(&last.grants);
    }
    // Lock in account order, so that two instances' batches never wait for
    // each other in a circle; the guarded update follows in the same round
    // trip (tokio-postgres pipelines the two).
    let lock_parameters: [&(dyn ToSql + Sync); 1] = [&accounts];
    let update_parameters: [&(dyn ToSql + Sync); 8] = [
        &accounts,
        &previous_seq,
        &previous_balance,
        &balance,
        &seq,
        &warned,
        &updated,
        &grants,
    ];
    let lock = client.execute(&prepared.lock, &lock_parameters);
    let update = client.query(&prepared.update, &update_parameters);
    let (_, updated_rows) = futures_util::try_join!(lock, update)?;
    let passed: HashSet<i64> = updated_rows
        .iter()
        .map(|row| row.get::<_, i64>(0))
        .collect();

    let mut fates = vec![Fate::Refused(StoreError::Conflict); ledger.len()];
    let mut rows = Rows::default();
    let mut notices = Notices::default();
    let mut made = Grants::default();
    let mut moved = Vec::new();
    let mut lost: Vec<(i64, usize)> = Vec::new();
    for (account_id, indexes) in &chains {
        if !passed.contains(&account_id.0) {
            // Another instance wrote first: the chain's head learns where
            // the account stands (read below, in the same round trip).
            lost.push((account_id.0, indexes[0]));
            continue;
        }
        let first = ledger[indexes[0]].entry.seq;
        let tail = &ledger[indexes[indexes.len() - 1]];
        moved.push((*account_id, first, tail.next, &*tail.grants));
        for &index in indexes {
            fates[index] = Fate::Committed;
            rows.push(&ledger[index]);
            made.push(&ledger[index]);
            notices.withdraw(&ledger[index]);
            if let Some(notice) = ledger[index].notice() {
                notices.push(notice);
            }
        }
    }
    for index in broken {
        fates[index] = Fate::Refused(StoreError::Conflict);
    }
    // The rows, the notices, the notification and where the lost chains'
    // accounts stand (their rows are locked: this is the latest commit):
    // one more round trip.
    let lost_accounts: Vec<i64> = lost.iter().map(|(account_id, _)| *account_id).collect();
    let standing = async {
        if lost_accounts.is_empty() {
            return Ok(Vec::new());
        }
        client.query(&prepared.standing, &[&lost_accounts]).await
    };
    // Webhook events are rare in a real ledger (a balance crossing, a
    // payment), and cost no round trip of their own: their statement (if
    // any) goes in the same pipeline.
    let events = ledger
        .iter()
        .zip(&fates)
        .filter(|(_, fate)| matches!(fate, Fate::Committed))
        .flat_map(|(write, _)| write.events().iter());
    let has_events = events.clone().next().is_some();
    // A withdrawal is a statement prepared on the way (and the notices'
    // insert waits behind it): with either, the transaction's end must wait
    // for them, or it would be sent before them and they would run after
    // it, outside the transaction.
    // The test switch's failing statement, if its write is in and has the
    // part: the transaction's end waits for it too.
    let injected = failing.filter(|failing| {
        matches!(fates[failing.index], Fate::Committed) && failing.part_of(&ledger[failing.index])
    });
    let end = end.filter(|_| !has_events && notices.withdrawn.is_empty() && injected.is_none());
    let injected = async {
        match injected {
            Some(failing) => raise_injected(client, failing.part).await,
            None => Ok(()),
        }
    };
    let finish = async {
        match end {
            Some(statement) => client.batch_execute(statement).await,
            None => Ok(()),
        }
    };
    let (_, _, (), _, standing, _, (), ()) = futures_util::try_join!(
        rows.insert(client, prepared),
        notices.insert(client, prepared),
        made.insert(client, prepared),
        notify(client, prepared, origin, &moved),
        standing,
        webhooks::insert_event_rows(client, events),
        injected,
        finish,
    )?;
    for row in standing {
        let account_id: i64 = row.try_get(0)?;
        let snapshot = Snapshot {
            balance: Money::from_micros(row.try_get(1)?),
            seq: row.try_get(2)?,
            low_balance_warned_at_ms: row.try_get(3)?,
        };
        // Grants that cannot be read: the actor reloads, and is told why.
        let error = match super::ledger::remaining_from_text(row.try_get(4)?, AccountId(account_id))
        {
            Ok(grants) => StoreError::MovedOn(Box::new(Standing { snapshot, grants })),
            Err(_) => StoreError::Conflict,
        };
        if let Some((_, head)) = lost.iter().find(|(lost_id, _)| *lost_id == account_id) {
            fates[*head] = Fate::Refused(error);
        }
    }
    Ok((fates, end.is_some()))
}

/// Whether an insert clashed with the ledger's unique
/// `(account_id, idempotency_key)` index: the key is already used.
fn is_duplicate_key(error: &tokio_postgres::Error) -> bool {
    is_unique_violation(error)
        && error
            .as_db_error()
            .and_then(|db| db.constraint())
            .is_some_and(|constraint| constraint == "transactions_account_idempotency_key")
}

/// Whether Postgres itself refused a statement (a constraint, a full disk)
/// rather than giving way to another transaction or losing the connection:
/// the batch goes again write by write, so that only the write whose
/// statement it was fails.
fn refused_by_database(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some() && !is_retryable(error)
}

/// The careful path, after the bulk path met a clash or a refused
/// statement: each write in a savepoint of its own, so that only the one
/// that clashed or failed is rolled back.
async fn apply_ledger_one_by_one(
    transaction: &mut Transaction<'_>,
    prepared: &Prepared,
    origin: &str,
    ledger: &[LedgerWrite],
    failing: Option<Failing>,
) -> Result<Vec<Fate>, tokio_postgres::Error> {
    let mut fates = Vec::with_capacity(ledger.len());
    let mut failed_accounts: HashSet<AccountId> = HashSet::new();
    let mut moved: HashMap<AccountId, (i64, Snapshot, &str)> = HashMap::new();
    let mut accounts: Vec<i64> = ledger
        .iter()
        .map(|write| write.entry.account_id.0)
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    transaction.execute(&prepared.lock, &[&accounts]).await?;
    for (index, write) in ledger.iter().enumerate() {
        let account_id = write.entry.account_id;
        let failing_part = failing
            .filter(|failing| failing.index == index)
            .map(|failing| failing.part);
        if failed_accounts.contains(&account_id) {
            fates.push(Fate::Refused(StoreError::Aborted));
            continue;
        }
        let savepoint = transaction.savepoint("ledger_write").await?;
        let applied = apply_one(&savepoint, prepared, write, failing_part).await;
        match applied {
            Ok(true) => {
                savepoint.commit().await?;
                let range =
                    moved
                        .entry(account_id)
                        .or_insert((write.entry.seq, write.next, &write.grants));
                range.1 = write.next;
                range.2 = &write.grants;
                fates.push(Fate::Committed);
            }
            Ok(false) => {
                savepoint.rollback().await?;
                failed_accounts.insert(account_id);
                fates.push(Fate::Refused(StoreError::Conflict));
            }
            Err(error) if is_duplicate_key(&error) => {
                // The key is used: the caller looks up what it became.
                savepoint.rollback().await?;
                failed_accounts.insert(account_id);
                fates.push(Fate::Refused(StoreError::DuplicateKey));
            }
            Err(error) if refused_by_database(&error) => {
                // Rolled back to its savepoint: nothing of it commits, and
                // its caller is told it failed (not a conflict: computing
                // it again would not help).
                savepoint.rollback().await?;
                tracing::warn!(%account_id, error = %describe(&error), "ledger write failed; rolled back alone");
                failed_accounts.insert(account_id);
                fates.push(Fate::Refused(StoreError::CommitFailed(format!(
                    "{}; the write was rolled back",
                    describe(&error)
                ))));
            }
            Err(error) => return Err(error),
        }
    }
    let moved: Vec<(AccountId, i64, Snapshot, &str)> = moved
        .into_iter()
        .map(|(account_id, (first, after, grants))| (account_id, first, after, grants))
        .collect();
    notify(transaction, prepared, origin, &moved).await?;
    Ok(fates)
}

async fn apply_one(
    transaction: &Transaction<'_>,
    prepared: &Prepared,
    write: &LedgerWrite,
    failing: Option<WritePart>,
) -> Result<bool, tokio_postgres::Error> {
    let fail_at = |part: WritePart| async move {
        match failing {
            Some(failing) if failing == part => raise_injected(transaction, part).await,
            _ => Ok(()),
        }
    };
    let moved = transaction
        .execute(
            "UPDATE account_balances SET balance = $2, seq = $3, low_balance_warned_at = $4, updated_at = $5,
                    grants = $8
              WHERE account_id = $1 AND seq = $6 AND balance = $7",
            &[
                &write.entry.account_id.0,
                &write.next.balance.micros(),
                &write.next.seq,
                &write.next.low_balance_warned_at_ms,
                &write.entry.created_at_ms,
                &write.previous.seq,
                &write.previous.balance.micros(),
                &&*write.grants,
            ],
        )
        .await?;
    if moved != 1 {
        return Ok(false);
    }
    let mut rows = Rows::default();
    rows.push(write);
    fail_at(WritePart::Row).await?;
    rows.insert(transaction, prepared).await?;
    let mut notices = Notices::default();
    notices.withdraw(write);
    if let Some(notice) = write.notice() {
        notices.push(notice);
        fail_at(WritePart::Notice).await?;
    }
    notices.insert(transaction, prepared).await?;
    let mut made = Grants::default();
    made.push(write);
    made.insert(transaction, prepared).await?;
    if !write.events().is_empty() {
        fail_at(WritePart::Events).await?;
    }
    webhooks::insert_event_rows(transaction, write.events().iter()).await?;
    Ok(true)
}

/// Test switch: the ledger write (by its index in the batch) whose
/// statement for `part` fails.
#[derive(Clone, Copy)]
struct Failing {
    index: usize,
    part: WritePart,
}

impl Failing {
    /// Whether `write` has the part (a write without a notice has no
    /// notice's insert to fail).
    fn part_of(&self, write: &LedgerWrite) -> bool {
        match self.part {
            WritePart::Row => true,
            WritePart::Notice => write.notice().is_some(),
            WritePart::Events => !write.events().is_empty(),
        }
    }
}

/// The test switch's failure in place of a write's statement: the error
/// Postgres gives for a full disk, which aborts the transaction.
async fn raise_injected(
    client: &impl GenericClient,
    part: WritePart,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device (a test switch failed the write''s {})' USING ERRCODE = 'disk_full'; END $$",
            part.as_str()
        ))
        .await
}

/// The grants the batch's rows make, as columns.
#[derive(Default)]
struct Grants<'a> {
    account_id: Vec<i64>,
    id: Vec<i64>,
    category: Vec<&'static str>,
    source: Vec<&'static str>,
    order_id: Vec<Option<i64>>,
    amount: Vec<i64>,
    priority: Vec<i64>,
    granted_at: Vec<i64>,
    expires_at: Vec<Option<i64>>,
    _rows: std::marker::PhantomData<&'a ()>,
}

impl Grants<'_> {
    fn push(&mut self, write: &LedgerWrite) {
        if let Some(grant) = write.grant() {
            self.account_id.push(write.entry.account_id.0);
            self.id.push(grant.id);
            self.category.push(grant.category.as_str());
            self.source.push(grant.source.as_str());
            self.order_id.push(grant.order_id);
            self.amount.push(grant.amount.micros());
            self.priority.push(i64::from(grant.priority.value()));
            self.granted_at.push(grant.granted_at_ms);
            self.expires_at.push(grant.expires_at_ms);
        }
    }

    async fn insert(
        &self,
        client: &impl GenericClient,
        prepared: &Prepared,
    ) -> Result<(), tokio_postgres::Error> {
        if self.account_id.is_empty() {
            return Ok(());
        }
        client
            .execute(
                &prepared.insert_grants,
                &[
                    &self.account_id,
                    &self.id,
                    &self.category,
                    &self.source,
                    &self.order_id,
                    &self.amount,
                    &self.priority,
                    &self.granted_at,
                    &self.expires_at,
                ],
            )
            .await?;
        Ok(())
    }
}

/// Ledger rows as columns, for one `INSERT … SELECT unnest(…)`.
#[derive(Default)]
struct Rows<'a> {
    account_id: Vec<i64>,
    seq: Vec<i64>,
    kind: Vec<&'a str>,
    amount: Vec<i64>,
    balance_after: Vec<i64>,
    idempotency_key: Vec<&'a str>,
    order_id: Vec<Option<i64>>,
    description: Vec<&'a str>,
    created_at: Vec<i64>,
    reason: Vec<Option<&'a str>>,
    funded_by: Vec<Option<&'a str>>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, write: &'a LedgerWrite) {
        let entry = &write.entry;
        self.account_id.push(entry.account_id.0);
        self.seq.push(entry.seq);
        self.kind.push(entry.kind.as_str());
        self.amount.push(entry.amount.micros());
        self.balance_after.push(entry.balance_after.micros());
        self.idempotency_key.push(&entry.idempotency_key);
        self.order_id.push(entry.order_id);
        self.description.push(&entry.description);
        self.created_at.push(entry.created_at_ms);
        self.reason
            .push(entry.reason.as_deref().map(String::as_str));
        self.funded_by.push(write.funded_by.as_deref());
    }

    async fn insert(
        &self,
        client: &impl GenericClient,
        prepared: &Prepared,
    ) -> Result<(), tokio_postgres::Error> {
        if self.account_id.is_empty() {
            return Ok(());
        }
        client
            .execute(
                &prepared.insert_rows,
                &[
                    &self.account_id,
                    &self.seq,
                    &self.kind,
                    &self.amount,
                    &self.balance_after,
                    &self.idempotency_key,
                    &self.order_id,
                    &self.description,
                    &self.created_at,
                    &self.reason,
                    &self.funded_by,
                ],
            )
            .await?;
        Ok(())
    }
}

/// Notices as columns, queued with the writes that made them due.
#[derive(Default)]
struct Notices {
    account_id: Vec<i64>,
    kind: Vec<&'static str>,
    dedupe_key: Vec<String>,
    payload: Vec<String>,
    created_at: Vec<i64>,
    after_message: Vec<Option<i64>>,
    /// Pending notices the writes withdraw.
    withdrawn: Vec<i64>,
}

impl Notices {
    fn push(&mut self, notice: &crate::messaging::notices::NewNotice) {
        self.account_id.push(notice.account_id.0);
        self.kind.push(notice.kind.as_str());
        self.dedupe_key.push(notice.dedupe_key.clone());
        self.payload.push(notice.payload().to_string());
        self.created_at.push(notice.created_at_ms);
        self.after_message.push(notice.after_message);
    }

    /// A pending notice the write withdraws, if it does.
    fn withdraw(&mut self, write: &LedgerWrite) {
        self.withdrawn.extend(write.withdrawn_notice());
    }

    async fn insert(
        &self,
        client: &impl GenericClient,
        prepared: &Prepared,
    ) -> Result<(), tokio_postgres::Error> {
        if !self.withdrawn.is_empty() {
            // Rare (a message not sent after its debit set off a warning):
            // a statement of its own, in the same pipeline.
            client
                .execute(
                    "UPDATE notices SET state = 'withdrawn',
                            last_error = 'its message was not sent: its cost was given back'
                      WHERE id = ANY($1) AND state = 'pending'",
                    &[&self.withdrawn],
                )
                .await?;
        }
        if self.account_id.is_empty() {
            return Ok(());
        }
        client
            .execute(
                &prepared.insert_notices,
                &[
                    &self.account_id,
                    &self.kind,
                    &self.dedupe_key,
                    &self.payload,
                    &self.created_at,
                    &self.after_message,
                ],
            )
            .await?;
        Ok(())
    }
}

/// Tells the other instances `note` when the transaction commits.
pub(super) async fn notify_note(
    client: &impl tokio_postgres::GenericClient,
    origin: &str,
    note: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("{origin};{note}")],
        )
        .await?;
    Ok(())
}

/// Tells other instances which accounts moved and where they stand:
/// `origin;account:first-last:balance:warned;…`, in as many notifications
/// as the payload limit needs. Delivered only if the transaction commits.
async fn notify(
    client: &impl GenericClient,
    prepared: &Prepared,
    origin: &str,
    moved: &[(AccountId, i64, Snapshot, &str)],
) -> Result<(), tokio_postgres::Error> {
    if moved.is_empty() {
        return Ok(());
    }
    let mut payloads = Vec::new();
    let mut payload = String::from(origin);
    for (account_id, first, after, grants) in moved {
        let pair = format!(
            ";{}",
            change_notes::rows(*account_id, *first, after, grants)
        );
        if payload.len() + pair.len() > MAX_PAYLOAD {
            payloads.push(std::mem::replace(&mut payload, origin.to_string()));
        }
        payload.push_str(&pair);
    }
    payloads.push(payload);
    client
        .execute(&prepared.notify, &[&CHANNEL, &payloads])
        .await?;
    Ok(())
}

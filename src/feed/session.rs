//! One feed connection. Subscribes to committed rows *before* reading the
//! database, so every row is either in what it reads or in what it is sent
//! afterwards (both, at worst: duplicates are skipped by `seq`). A gap in
//! the live rows is filled from the ledger before going on, and so is
//! everything missed when the hub dropped this connection's queue: the
//! session subscribes again and reads what it missed.
//!
//! What the client has read is learned from its pongs to numbered pings
//! (every client must answer a ping, in order). A client a window behind
//! is waited for, reading its answers, for a bounded time, in replay as
//! well as live: a client that keeps reading receives any gap in one
//! connection. Only one that reads nothing in that time is too slow: it is
//! sent nothing more but one last numbered ping; once it has read up to it
//! (or a bounded wait is over), the close frame goes out on an empty pipe,
//! saying where to resume. Every frame the server sends has a deadline, so
//! a client that stops reading can never park the session.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Closed, Message, MessageStream, Session};
use serde_json::{json, Value};
use sms_credit_actors::feed::Subscription;
use sms_credit_actors::store::TokensChanged;
use sms_credit_actors::{access_tokens, AccountId, LedgerEntry, Store, StoreError};

use super::FeedScope;
use crate::views::TransactionView;

/// Rows read from the ledger at a time while replaying.
const PAGE: i64 = 500;
/// How long one frame may take to be accepted before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many rows between numbered pings.
const MARK_EVERY: u64 = 16;
/// How long a client a window behind has to read (answer a numbered ping)
/// before it is too slow.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client that is too slow has to read what was sent before the
/// close frame goes out anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows the admin feed holds while it reads where every account stands
/// (they arrive meanwhile); past this it cannot go live.
const ADMIN_START_BUFFER: usize = 100_000;

/// What a connection starts from.
pub struct FeedStart {
    pub scope: FeedScope,
    /// The hash of the account token that opened the feed (`None`: the
    /// admin's): when the account's tokens are revoked and this one is no
    /// longer live, the feed closes.
    pub token_hash: Option<String>,
    /// Replay the rows after this seq before going live.
    pub since: Option<i64>,
    pub store: Store,
    /// Tells when the token that opened the feed expires.
    pub clock: Arc<dyn sms_credit_actors::clock::Clock>,
    pub heartbeat: Duration,
    pub queue: usize,
    /// Becomes `true` when the server stops.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The account's place among its open feeds (given back at the end).
    pub slot: Option<super::FeedSlot>,
}

impl FeedStart {
    /// A new subscription of this feed's scope, after the hub dropped the
    /// last one.
    fn subscribe_again(&self) -> Subscription {
        subscribe(&self.store, self.scope, self.queue)
    }
}

/// Why a connection ended, as its close frame says.
enum End {
    ClientLeft,
    TooSlow {
        /// Where an account feed's client resumes (`None`: the admin feed,
        /// which starts afresh).
        last_seq: Option<i64>,
    },
    /// The server is stopping (a restart): resume from `last_seq`.
    Stopping {
        last_seq: Option<i64>,
    },
    Silent,
    /// The token that opened the feed was revoked (or rotated away).
    Revoked,
    /// The token that opened the feed expired.
    Expired,
    Store(String),
}

/// What ends a feed besides its client: the server stopping and, for a
/// feed opened with an account token, that token expiring or being revoked.
/// Looked at before every row (so a long replay to a slow client ends as
/// promptly as a live feed) and waited on while live.
struct Watch {
    stopping: tokio::sync::watch::Receiver<bool>,
    token: Option<TokenWatch>,
}

/// The account token that opened a feed, and how to tell it still lives.
struct TokenWatch {
    account_id: AccountId,
    token_hash: String,
    store: Store,
    clock: Arc<dyn sms_credit_actors::clock::Clock>,
    /// Subscribed before the token was first checked: a revocation from
    /// then on is heard.
    changes: tokio::sync::broadcast::Receiver<TokensChanged>,
    /// When the token expires (`None`: never, an admin-issued one).
    expires_at_ms: Option<i64>,
}

impl Watch {
    /// Without waiting on anything but a token's re-check: whether the feed
    /// must end now (a `Stopping` without where to resume: the caller
    /// knows).
    async fn check(&mut self) -> Result<(), End> {
        if *self.stopping.borrow() {
            return Err(End::Stopping { last_seq: None });
        }
        let Some(token) = self.token.as_mut() else {
            return Ok(());
        };
        if token.expired() {
            return Err(End::Expired);
        }
        use tokio::sync::broadcast::error::TryRecvError;
        let mut changed = false;
        loop {
            match token.changes.try_recv() {
                Ok(TokensChanged::Account(account_id)) if account_id != token.account_id => {}
                Ok(_) | Err(TryRecvError::Lagged(_)) => changed = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if changed {
            token.still_live().await?;
        }
        Ok(())
    }
}

/// The next change to any account's tokens; never, for a feed not opened
/// with an account token.
async fn next_token_change(
    token: Option<&mut TokenWatch>,
) -> Result<TokensChanged, tokio::sync::broadcast::error::RecvError> {
    match token {
        Some(token) => token.changes.recv().await,
        None => std::future::pending().await,
    }
}

impl TokenWatch {
    fn expired(&self) -> bool {
        self.expires_at_ms
            .is_some_and(|at| self.clock.now_ms() >= at)
    }

    /// After a change to some account's tokens: an error when it was this
    /// feed's account and its token is no longer live (missed changes, when
    /// the channel lagged or the store may have missed another instance's
    /// note, are checked the same way).
    async fn heard(
        &mut self,
        changed: Result<TokensChanged, tokio::sync::broadcast::error::RecvError>,
    ) -> Result<(), End> {
        use tokio::sync::broadcast::error::RecvError;
        match changed {
            Ok(TokensChanged::Account(changed)) if changed != self.account_id => Ok(()),
            // The store is gone: the feed ends with it elsewhere.
            Err(RecvError::Closed) => std::future::pending().await,
            Ok(_) | Err(RecvError::Lagged(_)) => self.still_live().await,
        }
    }

    async fn still_live(&self) -> Result<(), End> {
        let now_ms = self.clock.now_ms();
        match access_tokens::live(&self.store, self.account_id, &self.token_hash, now_ms).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(End::Revoked),
            Err(error) => Err(End::Store(error.to_string())),
        }
    }
}

/// A row as the feed sends it: the ledger row as the REST API shows it
/// (one shape for a ledger row everywhere), as the holder reads it, or,
/// on a feed the operator opened (the admin's token or ticket), with the
/// operator's reason.
fn event(entry: &LedgerEntry, operator: bool) -> TransactionView {
    if operator {
        TransactionView::from(entry)
    } else {
        TransactionView::for_holder(entry)
    }
}

/// Sends one frame within `SEND_TIMEOUT`: a client that does not take it
/// in time is `slow`.
async fn within_deadline(
    send: impl Future<Output = Result<(), Closed>>,
    slow: End,
) -> Result<(), End> {
    match actix_rt::time::timeout(SEND_TIMEOUT, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_closed)) => Err(End::ClientLeft),
        Err(_elapsed) => Err(slow),
    }
}

/// The connection to the client, and how far behind it is.
struct Client {
    session: Session,
    incoming: MessageStream,
    /// Rows sent so far.
    sent: u64,
    /// Rows the client has read: the highest numbered ping it answered.
    read: u64,
    /// The number of the last numbered ping sent.
    marked: u64,
    /// Rows the client may have unread before the server waits for it.
    window: u64,
    /// Rows between numbered pings: at most half a window, so that the
    /// client's answers arrive before the window is full.
    mark_every: u64,
    /// The last row of the account sent (account feeds): where to resume;
    /// `None` for the admin feed, which has no one place to resume from.
    last_row: Option<i64>,
    /// When the client last sent anything.
    last_heard: Instant,
    /// What else ends the feed.
    watch: Watch,
    /// Opened by the operator (no account token): rows carry the reason.
    operator: bool,
}

impl Client {
    fn new(
        session: Session,
        incoming: MessageStream,
        window: usize,
        watch: Watch,
        operator: bool,
    ) -> Client {
        let window = u64::try_from(window).unwrap_or(u64::MAX).max(1);
        Client {
            session,
            incoming,
            sent: 0,
            read: 0,
            marked: 0,
            window,
            mark_every: (window / 2).clamp(1, MARK_EVERY),
            last_row: None,
            last_heard: Instant::now(),
            watch,
            operator,
        }
    }

    fn too_slow(&self) -> End {
        End::TooSlow {
            last_seq: self.last_row,
        }
    }

    async fn frame(&mut self, value: &Value) -> Result<(), End> {
        let slow = self.too_slow();
        within_deadline(self.session.text(value.to_string()), slow).await
    }

    /// A row, unless the feed must end (see [`Watch`]); when the client is
    /// a window behind, first waits (bounded) for it to read; every
    /// `mark_every` rows a ping numbered with the rows sent so far.
    async fn row(&mut self, entry: &LedgerEntry) -> Result<(), End> {
        let last_seq = self.last_row;
        self.watch.check().await.map_err(|end| match end {
            End::Stopping { .. } => End::Stopping { last_seq },
            other => other,
        })?;
        if self.sent - self.read >= self.window {
            self.wait_until_behind(self.window - 1, READ_TIMEOUT)
                .await?;
        }
        let row = serde_json::to_string(&event(entry, self.operator))
            .map_err(|error| End::Store(error.to_string()))?;
        let slow = self.too_slow();
        within_deadline(self.session.text(row), slow).await?;
        self.sent += 1;
        // An account feed resumes from its last row; the admin feed has
        // no one place to resume from.
        if let Some(last_row) = self.last_row.as_mut() {
            *last_row = entry.seq;
        }
        if self.sent - self.marked >= self.mark_every {
            self.mark().await?;
        }
        Ok(())
    }

    async fn mark(&mut self) -> Result<(), End> {
        let slow = self.too_slow();
        let number = self.sent.to_be_bytes();
        within_deadline(self.session.ping(&number), slow).await?;
        self.marked = self.sent;
        Ok(())
    }

    /// Reads the client's frames until it has at most `unread` rows sent
    /// and not read: too slow if it has not got there within `timeout`.
    async fn wait_until_behind(&mut self, unread: u64, timeout: Duration) -> Result<(), End> {
        if self.sent - self.read <= unread {
            return Ok(());
        }
        if self.marked < self.sent {
            self.mark().await?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.sent - self.read > unread {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(message) => {
                    if let Some(end) = self.heard(message).await {
                        return Err(end);
                    }
                }
                Err(_elapsed) => return Err(self.too_slow()),
            }
        }
        Ok(())
    }

    /// A pong: a numbered one says how far the client has read.
    fn pong(&mut self, bytes: &[u8]) {
        if let Ok(mark) = <[u8; 8]>::try_from(bytes) {
            self.read = self.read.max(u64::from_be_bytes(mark).min(self.sent));
        }
    }

    /// Handles a frame from the client; `Some` when the connection is over.
    async fn heard(
        &mut self,
        message: Option<Result<Message, actix_ws::ProtocolError>>,
    ) -> Option<End> {
        let message = match message {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Some(End::ClientLeft),
            Some(Ok(message)) => message,
        };
        self.heard_now();
        match message {
            Message::Ping(bytes) => {
                let slow = self.too_slow();
                within_deadline(self.session.pong(&bytes), slow).await.err()
            }
            Message::Pong(bytes) => {
                self.pong(&bytes);
                None
            }
            _ => None,
        }
    }

    /// A heartbeat: a client silent for three intervals is dropped. The
    /// ping is numbered too: a client may answer only the latest ping
    /// (RFC 6455), so every ping must say how far the client has read.
    async fn heartbeat(&mut self, interval: Duration) -> Option<End> {
        if self.last_heard.elapsed() > interval * 3 {
            return Some(End::Silent);
        }
        self.mark().await.err()
    }

    /// The client is counted as heard now: on any frame from it, and after
    /// the server spent a while reading without pinging it (where every
    /// account stands), whose silence meanwhile is not the client's.
    fn heard_now(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Waits (bounded) until the client has read every row sent, so that
    /// a close frame sent next is not stuck behind them. However that wait
    /// ends, the close frame is sent next.
    async fn drain(&mut self) {
        let _ = self.wait_until_behind(0, DRAIN_TIMEOUT).await;
    }
}

/// The subscription a feed of `scope` starts with: taken before the
/// handshake is answered, so that every row committed after the client saw
/// its connection open is in it or in what the session reads.
pub fn subscribe(store: &Store, scope: FeedScope, queue: usize) -> Subscription {
    store.feed().subscribe(
        match scope {
            FeedScope::Account(account_id) => Some(account_id),
            FeedScope::Admin => None,
        },
        queue,
    )
}

/// Runs a connection until the client leaves, falls behind or goes silent.
pub async fn run(
    start: FeedStart,
    subscription: Subscription,
    session: Session,
    incoming: MessageStream,
) {
    let watch = Watch {
        stopping: start.stopping.clone(),
        token: None,
    };
    let operator = start.token_hash.is_none();
    let mut client = Client::new(session, incoming, start.queue, watch, operator);
    let end = match start.scope {
        FeedScope::Account(account_id) => {
            account_feed(&start, account_id, subscription, &mut client).await
        }
        FeedScope::Admin => admin_feed(&start, subscription, &mut client).await,
    };
    if let End::TooSlow { .. } = end {
        start.store.feed().count_slow_close();
        client.drain().await;
    }
    let reason = match end {
        End::ClientLeft => None,
        End::TooSlow { last_seq } => Some(CloseReason {
            code: CloseCode::Policy,
            description: Some(match last_seq {
                Some(last_seq) => format!("too slow: reconnect with ?since={last_seq}"),
                None => "too slow: reconnect".to_string(),
            }),
        }),
        End::Stopping { last_seq } => Some(CloseReason {
            code: CloseCode::Away,
            description: Some(match last_seq {
                Some(last_seq) => format!("server restarting: reconnect with ?since={last_seq}"),
                None => "server restarting: reconnect".to_string(),
            }),
        }),
        End::Silent => Some(CloseReason {
            code: CloseCode::Away,
            description: Some("no answer to pings".to_string()),
        }),
        End::Revoked => Some(CloseReason {
            code: CloseCode::Policy,
            description: Some("the token was revoked: sign in again".to_string()),
        }),
        End::Expired => Some(CloseReason {
            code: CloseCode::Policy,
            description: Some("the token expired: sign in again".to_string()),
        }),
        End::Store(reason) => {
            tracing::warn!(%reason, "feed ended by a store error");
            Some(CloseReason {
                code: CloseCode::Error,
                description: Some("the ledger could not be read".to_string()),
            })
        }
    };
    let _ = actix_rt::time::timeout(SEND_TIMEOUT, client.session.close(reason)).await;
}

/// Rows of `account_id` after `after_seq`, up to `limit`, and (with
/// `snapshot`) the account's snapshot, read in one transaction.
async fn read_page(
    store: &Store,
    account_id: AccountId,
    after_seq: i64,
    limit: i64,
    snapshot: bool,
) -> Result<(Option<(i64, i64)>, Vec<LedgerEntry>), StoreError> {
    let ledger = store.ledger();
    if !snapshot {
        return Ok((
            None,
            ledger.entries_after(account_id, after_seq, limit).await?,
        ));
    }
    let (current, entries) = ledger
        .snapshot_and_entries_after(account_id, after_seq, limit)
        .await?;
    Ok((
        current.map(|snapshot| (snapshot.seq, snapshot.balance.micros())),
        entries,
    ))
}

/// Sends the rows after `*last` up to `until` (inclusive; `None`: all), in
/// pages, advancing `*last`.
async fn replay(
    store: &Store,
    account_id: AccountId,
    last: &mut i64,
    until: Option<i64>,
    client: &mut Client,
) -> Result<(), End> {
    loop {
        let limit = match until {
            Some(until) if until <= *last => return Ok(()),
            Some(until) => (until - *last).min(PAGE),
            None => PAGE,
        };
        let (_, entries) = read_page(store, account_id, *last, limit, false)
            .await
            .map_err(|error| End::Store(error.to_string()))?;
        let complete = (entries.len() as i64) < limit;
        for entry in &entries {
            client.row(entry).await?;
            *last = entry.seq;
        }
        if complete || entries.is_empty() {
            return Ok(());
        }
    }
}

/// Sends a live row of `account_id` that follows `*last`: skipped if it was
/// sent already, after the rows it skips (from the ledger) if there is a gap.
async fn forward(
    store: &Store,
    entry: &LedgerEntry,
    last: &mut i64,
    client: &mut Client,
) -> Result<(), End> {
    if entry.seq <= *last {
        return Ok(());
    }
    if entry.seq > *last + 1 {
        replay(store, entry.account_id, last, Some(entry.seq - 1), client).await?;
    }
    client.row(entry).await?;
    *last = entry.seq;
    Ok(())
}

async fn account_feed(
    start: &FeedStart,
    account_id: AccountId,
    mut subscription: Subscription,
    client: &mut Client,
) -> End {
    // Subscribed before the token is checked again below: a revocation
    // from then on is heard.
    let changes = start.store.token_changes();
    let expires_at_ms = match token_expiry(start, account_id).await {
        Ok(expires_at_ms) => expires_at_ms,
        Err(end) => return end,
    };
    if let Some(token_hash) = start.token_hash.clone() {
        client.watch.token = Some(TokenWatch {
            account_id,
            token_hash,
            store: start.store.clone(),
            clock: Arc::clone(&start.clock),
            changes,
            expires_at_ms,
        });
    }
    // A token that expires is looked at every second (the clock may be
    // any clock, so no timer is set for the moment itself).
    let mut expiry_checks = actix_rt::time::interval(EXPIRY_CHECK);
    // Without `since`, read only the snapshot (no row is after i64::MAX).
    let after = start.since.map_or(i64::MAX, |since| since.max(0));
    let (snapshot, first_page) = match read_page(&start.store, account_id, after, PAGE, true).await
    {
        Ok(read) => read,
        Err(error) => return End::Store(error.to_string()),
    };
    let (snapshot_seq, balance_micros) = snapshot.unwrap_or((0, 0));
    client.last_row = Some(
        start
            .since
            .map_or(snapshot_seq, |since| since.clamp(0, snapshot_seq)),
    );
    if let Err(end) = client
        .frame(&json!({"seq": snapshot_seq, "balance_micros": balance_micros}))
        .await
    {
        return end;
    }
    // Without `since` the client starts from the snapshot; with it, from
    // `since`, and what it missed follows.
    let mut last = match start.since {
        None => snapshot_seq,
        Some(since) => {
            // A client cannot be ahead of the ledger.
            let mut last = since.clamp(0, snapshot_seq);
            let complete = (first_page.len() as i64) < PAGE;
            for entry in &first_page {
                if let Err(end) = client.row(entry).await {
                    return end;
                }
                last = entry.seq;
            }
            if !complete {
                if let Err(end) = replay(&start.store, account_id, &mut last, None, client).await {
                    return end;
                }
            }
            last
        }
    };

    let mut heartbeat = actix_rt::time::interval(start.heartbeat);
    // Ticks missed while a row waited for the client are not fired at once.
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        if *client.watch.stopping.borrow() {
            return End::Stopping {
                last_seq: Some(last),
            };
        }
        let expires = client
            .watch
            .token
            .as_ref()
            .is_some_and(|token| token.expires_at_ms.is_some());
        tokio::select! {
            _ = client.watch.stopping.changed() => {
                return End::Stopping { last_seq: Some(last) };
            }
            // Only the receiving may be cancelled by another branch; the
            // check of what was received is not.
            changed = next_token_change(client.watch.token.as_mut()) => {
                if let Some(token) = client.watch.token.as_mut() {
                    if let Err(end) = token.heard(changed).await {
                        return end;
                    }
                }
            }
            _ = expiry_checks.tick(), if expires => {
                if client.watch.token.as_ref().is_some_and(TokenWatch::expired) {
                    return End::Expired;
                }
            }
            live = subscription.receiver.recv() => {
                let result = match live {
                    Some(entry) => forward(&start.store, &entry, &mut last, client).await,
                    None => {
                        // The hub dropped this feed's queue while it waited
                        // for the client: subscribe again, then read from the
                        // ledger what was missed.
                        subscription = start.subscribe_again();
                        replay(&start.store, account_id, &mut last, None, client).await
                    }
                };
                if let Err(end) = result {
                    return end;
                }
            }
            message = client.incoming.recv() => {
                if let Some(end) = client.heard(message).await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if let Some(end) = client.heartbeat(start.heartbeat).await {
                    return end;
                }
            }
        }
    }
}

/// How often a feed opened with a token that expires checks the time.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// When the token that opened the feed expires (`None`: never, or the
/// admin's feed), or how the feed ends because it is no longer live.
async fn token_expiry(start: &FeedStart, account_id: AccountId) -> Result<Option<i64>, End> {
    let Some(token_hash) = start.token_hash.as_deref() else {
        return Ok(None);
    };
    let now_ms = start.clock.now_ms();
    match access_tokens::live(&start.store, account_id, token_hash, now_ms).await {
        Ok(Some(live)) => Ok(live.expires_at_ms),
        Ok(None) => Err(End::Revoked),
        Err(error) => Err(End::Store(error.to_string())),
    }
}

/// Every account's `seq` now, read in pages: where the admin feed starts
/// (or starts again). Rows that arrive on `subscription` meanwhile are
/// moved to `arrived`, so that the hub does not drop a subscriber that is
/// busy reading.
async fn every_seq(
    store: &Store,
    subscription: &mut Subscription,
    arrived: &mut VecDeque<Arc<LedgerEntry>>,
) -> Result<HashMap<AccountId, i64>, End> {
    let mut seqs = HashMap::new();
    let mut after_id = 0;
    loop {
        while let Ok(entry) = subscription.receiver.try_recv() {
            if arrived.len() >= ADMIN_START_BUFFER {
                return Err(End::TooSlow { last_seq: None });
            }
            arrived.push_back(entry);
        }
        let page = store
            .accounts()
            .list(None, after_id, PAGE)
            .await
            .map_err(|error: StoreError| End::Store(error.to_string()))?;
        let Some(last) = page.last() else {
            return Ok(seqs);
        };
        after_id = last.id.0;
        let complete = (page.len() as i64) < PAGE;
        seqs.extend(page.iter().map(|account| (account.id, account.seq)));
        if complete {
            return Ok(seqs);
        }
    }
}

/// Every account's rows from the moment it opened (its first frame,
/// `{"live": true}`, says when), each account's in `seq` order without
/// gaps or duplicates: rows committed by other instances (or processes)
/// can reach this one's hub after its own later ones, so the feed keeps
/// each account's last `seq` (starting from what every account had when it
/// opened) and fills a gap from the ledger. When the hub drops its queue
/// (the client was being waited for), it subscribes again and sends every
/// account's rows it missed, read from the ledger.
async fn admin_feed(start: &FeedStart, mut subscription: Subscription, client: &mut Client) -> End {
    let mut arrived = VecDeque::new();
    let mut last = match every_seq(&start.store, &mut subscription, &mut arrived).await {
        Ok(seqs) => seqs,
        Err(end) => return end,
    };
    if let Err(end) = client.frame(&json!({"live": true})).await {
        return end;
    }
    client.heard_now();
    let mut heartbeat = actix_rt::time::interval(start.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut stopping = start.stopping.clone();
    loop {
        while let Some(entry) = arrived.pop_front() {
            // An account not there when the feed opened starts at 0.
            let account_last = last.entry(entry.account_id).or_insert(0);
            if let Err(end) = forward(&start.store, &entry, account_last, client).await {
                return end;
            }
        }
        if *stopping.borrow() {
            return End::Stopping { last_seq: None };
        }
        tokio::select! {
            _ = stopping.changed() => {
                return End::Stopping { last_seq: None };
            }
            live = subscription.receiver.recv() => {
                match live {
                    Some(entry) => arrived.push_back(entry),
                    None => {
                        subscription = start.subscribe_again();
                        if let Err(end) =
                            catch_up_every_account(start, &mut subscription, &mut last, &mut arrived, client).await
                        {
                            return end;
                        }
                        client.heard_now();
                    }
                }
            }
            message = client.incoming.recv() => {
                if let Some(end) = client.heard(message).await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if let Some(end) = client.heartbeat(start.heartbeat).await {
                    return end;
                }
            }
        }
    }
}

/// After the hub dropped the admin feed's queue: every account that moved
/// on since its last row sent gets the rows it missed, from the ledger.
async fn catch_up_every_account(
    start: &FeedStart,
    subscription: &mut Subscription,
    last: &mut HashMap<AccountId, i64>,
    arrived: &mut VecDeque<Arc<LedgerEntry>>,
    client: &mut Client,
) -> Result<(), End> {
    let mut now: Vec<(AccountId, i64)> = every_seq(&start.store, subscription, arrived)
        .await?
        .into_iter()
        .collect();
    now.sort_unstable();
    for (account_id, seq) in now {
        // An account that has not moved on is replayed nothing; one the
        // feed has not seen yet starts at 0, as when its first live row
        // arrives.
        let account_last = last.entry(account_id).or_insert(0);
        replay(&start.store, account_id, account_last, Some(seq), client).await?;
    }
    Ok(())
}

//! One feed connection. Subscribes to committed rows *before* reading the
//! database, so every row is either in what it reads or in what it is sent
//! afterwards (both, at worst: duplicates are skipped by `seq`). A gap in
//! the live rows is filled from the ledger before going on.
//!
//! What the client has read is learned from its pongs to numbered pings
//! (every client must answer a ping, in order): a client more than the
//! queue's length behind is too slow. Then nothing more is sent but one
//! last numbered ping; once the client has read up to it (or a bounded
//! wait is over), the close frame goes out on an empty pipe, saying where
//! to resume.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use serde_json::{json, Value};
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::feed::Subscription;
use sms_credit_actors::{access_tokens, AccountId, LedgerEntry, Store, StoreError};

use super::FeedScope;

/// Rows read from the ledger at a time while replaying.
const PAGE: i64 = 500;
/// How long one frame may take to be accepted before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A numbered ping goes out after this many rows.
const MARK_EVERY: u64 = 16;
/// How long a client that is too slow has to read what was sent before the
/// close frame goes out anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub clock: std::sync::Arc<dyn sms_credit_actors::clock::Clock>,
    pub heartbeat: Duration,
    pub queue: usize,
    /// Becomes `true` when the server stops.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The account's place among its open feeds (given back at the end).
    pub slot: Option<super::FeedSlot>,
}

/// Why a connection ended, as its close frame says.
enum End {
    ClientLeft,
    TooSlow {
        last_seq: i64,
    },
    /// The server is stopping (a restart): resume from `last_seq`.
    Stopping {
        last_seq: i64,
    },
    Silent,
    /// The token that opened the feed was revoked (or rotated away).
    Revoked,
    /// The token that opened the feed expired.
    Expired,
    Store(String),
}

fn event(entry: &LedgerEntry) -> Value {
    json!({
        "account_id": entry.account_id,
        "seq": entry.seq,
        "type": entry.kind,
        "amount_micros": entry.amount.micros(),
        "balance_micros": entry.balance_after.micros(),
        "description": entry.description,
        "at": format_rfc3339_ms(entry.created_at_ms),
    })
}

/// The connection to the client, and how far behind it is.
struct Client {
    session: Session,
    /// Rows sent so far.
    sent: u64,
    /// Rows the client has read: the highest numbered ping it answered.
    read: u64,
    /// Rows the client may have unread before it is too slow.
    window: u64,
    /// The last row of the account sent (account feeds): where to resume.
    last_row: i64,
}

impl Client {
    fn new(session: Session, window: usize) -> Client {
        Client {
            session,
            sent: 0,
            read: 0,
            window: u64::try_from(window).unwrap_or(u64::MAX).max(1),
            last_row: -1,
        }
    }

    fn too_slow(&self) -> End {
        End::TooSlow {
            last_seq: self.last_row,
        }
    }

    async fn frame(&mut self, value: &Value) -> Result<(), End> {
        match actix_rt::time::timeout(SEND_TIMEOUT, self.session.text(value.to_string())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(End::ClientLeft),
            Err(_elapsed) => Err(self.too_slow()),
        }
    }

    /// A row, unless the client is a window behind; every `MARK_EVERY`
    /// rows a ping numbered with the rows sent so far.
    async fn row(&mut self, entry: &LedgerEntry) -> Result<(), End> {
        if self.sent - self.read >= self.window {
            return Err(self.too_slow());
        }
        self.frame(&event(entry)).await?;
        self.sent += 1;
        self.last_row = entry.seq;
        if self.sent.is_multiple_of(MARK_EVERY) {
            self.mark().await?;
        }
        Ok(())
    }

    async fn mark(&mut self) -> Result<(), End> {
        self.session
            .ping(&self.sent.to_be_bytes())
            .await
            .map_err(|_| End::ClientLeft)
    }

    /// A pong: a numbered one says how far the client has read.
    fn pong(&mut self, bytes: &[u8]) {
        if let Ok(mark) = <[u8; 8]>::try_from(bytes) {
            self.read = self.read.max(u64::from_be_bytes(mark).min(self.sent));
        }
    }

    /// Waits (bounded) until the client has read every row sent, so that
    /// a close frame sent next is not stuck behind them.
    async fn drain(&mut self, incoming: &mut MessageStream) {
        if self.read >= self.sent || self.mark().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.read < self.sent {
            match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(Some(Ok(Message::Pong(bytes)))) => self.pong(&bytes),
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// Runs a connection until the client leaves, falls behind or goes silent.
pub async fn run(start: FeedStart, session: Session, mut incoming: MessageStream) {
    let mut client = Client::new(session, start.queue);
    let subscription = start.store.feed().subscribe(
        match start.scope {
            FeedScope::Account(account_id) => Some(account_id),
            FeedScope::Admin => None,
        },
        start.queue,
    );
    let end = match start.scope {
        FeedScope::Account(account_id) => {
            account_feed(&start, account_id, subscription, &mut client, &mut incoming).await
        }
        FeedScope::Admin => admin_feed(&start, subscription, &mut client, &mut incoming).await,
    };
    if let End::TooSlow { .. } = end {
        client.drain(&mut incoming).await;
    }
    let reason = match end {
        End::ClientLeft => None,
        End::TooSlow { last_seq } => Some(CloseReason {
            code: CloseCode::Policy,
            description: Some(if last_seq >= 0 {
                format!("too slow: reconnect with ?since={last_seq}")
            } else {
                "too slow".to_string()
            }),
        }),
        End::Stopping { last_seq } => Some(CloseReason {
            code: CloseCode::Away,
            description: Some(if last_seq >= 0 {
                format!("server restarting: reconnect with ?since={last_seq}")
            } else {
                "server restarting: reconnect".to_string()
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
    let _ = client.session.close(reason).await;
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

async fn account_feed(
    start: &FeedStart,
    account_id: AccountId,
    mut subscription: Subscription,
    client: &mut Client,
    incoming: &mut MessageStream,
) -> End {
    // Subscribed before the token is checked again below: a revocation
    // from then on is heard.
    let mut token_changes = start.store.token_changes();
    let expires_at_ms = match token_expiry(start, account_id).await {
        Ok(expires_at_ms) => expires_at_ms,
        Err(end) => return end,
    };
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
    client.last_row = start
        .since
        .map_or(snapshot_seq, |since| since.clamp(0, snapshot_seq));
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
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    let mut stopping = start.stopping.clone();
    loop {
        if *stopping.borrow() {
            return End::Stopping { last_seq: last };
        }
        tokio::select! {
            _ = stopping.changed() => {
                return End::Stopping { last_seq: last };
            }
            changed = token_changes.recv() => {
                if let Some(end) = still_allowed(start, account_id, changed).await {
                    return end;
                }
            }
            _ = expiry_checks.tick(), if expires_at_ms.is_some() => {
                if expires_at_ms.is_some_and(|at| start.clock.now_ms() >= at) {
                    return End::Expired;
                }
            }
            live = subscription.receiver.recv() => {
                let Some(entry) = live else {
                    return client.too_slow();
                };
                if entry.seq <= last {
                    continue;
                }
                if entry.seq > last + 1 {
                    if let Err(end) =
                        replay(&start.store, account_id, &mut last, Some(entry.seq - 1), client).await
                    {
                        return end;
                    }
                }
                if let Err(end) = client.row(&entry).await {
                    return end;
                }
                last = entry.seq;
            }
            message = incoming.recv() => {
                match heard(message, client, &mut last_heard).await {
                    Some(end) => return end,
                    None => continue,
                }
            }
            _ = heartbeat.tick() => {
                if let Some(end) = ping(client, last_heard, start.heartbeat).await {
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

/// After a change to some account's tokens: `Some` when it was this feed's
/// account and the token that opened the feed is no longer live (missed
/// changes, when the channel lagged, are checked the same way).
async fn still_allowed(
    start: &FeedStart,
    account_id: AccountId,
    changed: Result<AccountId, tokio::sync::broadcast::error::RecvError>,
) -> Option<End> {
    use tokio::sync::broadcast::error::RecvError;
    let token_hash = start.token_hash.as_deref()?;
    match changed {
        Ok(changed) if changed != account_id => return None,
        // The store is gone: the feed ends with it elsewhere.
        Err(RecvError::Closed) => return std::future::pending().await,
        Ok(_) | Err(RecvError::Lagged(_)) => {}
    }
    let now_ms = start.clock.now_ms();
    match access_tokens::live(&start.store, account_id, token_hash, now_ms).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(End::Revoked),
        Err(error) => Some(End::Store(error.to_string())),
    }
}

/// Every account's `seq` now, read in pages: where the admin feed starts.
async fn every_seq(store: &Store) -> Result<HashMap<AccountId, i64>, StoreError> {
    let mut seqs = HashMap::new();
    let mut after_id = 0;
    loop {
        let page = store.accounts().list(None, after_id, PAGE).await?;
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

/// Every account's rows from the moment it opened, each account's in `seq`
/// order without gaps or duplicates: rows committed by other instances (or
/// processes) can reach this one's hub after its own later ones, so the
/// feed keeps each account's last `seq` (starting from what every account
/// had when it opened) and fills a gap from the ledger.
async fn admin_feed(
    start: &FeedStart,
    mut subscription: Subscription,
    client: &mut Client,
    incoming: &mut MessageStream,
) -> End {
    // Subscribed first, so no row committed after this read is missed.
    let mut last = match every_seq(&start.store).await {
        Ok(seqs) => seqs,
        Err(error) => return End::Store(error.to_string()),
    };
    let mut heartbeat = actix_rt::time::interval(start.heartbeat);
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    let mut stopping = start.stopping.clone();
    loop {
        if *stopping.borrow() {
            return End::Stopping { last_seq: -1 };
        }
        tokio::select! {
            _ = stopping.changed() => {
                return End::Stopping { last_seq: -1 };
            }
            live = subscription.receiver.recv() => {
                let Some(entry) = live else {
                    return client.too_slow();
                };
                // An account not there when the feed opened starts at 0.
                let last = last.entry(entry.account_id).or_insert(0);
                if entry.seq <= *last {
                    continue;
                }
                if entry.seq > *last + 1 {
                    if let Err(end) =
                        replay(&start.store, entry.account_id, last, Some(entry.seq - 1), client).await
                    {
                        return end;
                    }
                }
                if let Err(end) = client.row(&entry).await {
                    return end;
                }
                *last = entry.seq;
            }
            message = incoming.recv() => {
                if let Some(end) = heard(message, client, &mut last_heard).await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if let Some(end) = ping(client, last_heard, start.heartbeat).await {
                    return end;
                }
            }
        }
    }
}

/// Handles a frame from the client; `Some` when the connection is over.
async fn heard(
    message: Option<Result<Message, actix_ws::ProtocolError>>,
    client: &mut Client,
    last_heard: &mut Instant,
) -> Option<End> {
    match message {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Some(End::ClientLeft),
        Some(Ok(Message::Ping(bytes))) => {
            *last_heard = Instant::now();
            client
                .session
                .pong(&bytes)
                .await
                .err()
                .map(|_| End::ClientLeft)
        }
        Some(Ok(Message::Pong(bytes))) => {
            *last_heard = Instant::now();
            client.pong(&bytes);
            None
        }
        Some(Ok(_)) => {
            *last_heard = Instant::now();
            None
        }
    }
}

/// A heartbeat: a client silent for three intervals is dropped.
async fn ping(client: &mut Client, last_heard: Instant, interval: Duration) -> Option<End> {
    if last_heard.elapsed() > interval * 3 {
        return Some(End::Silent);
    }
    client
        .session
        .ping(b"")
        .await
        .err()
        .map(|_| End::ClientLeft)
}

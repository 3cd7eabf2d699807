//! One feed connection. Subscribes to committed rows *before* reading the
//! database, so every row is either in what it reads or in what it is sent
//! afterwards (both, at worst: duplicates are skipped by `seq`). A gap in
//! the live rows is filled from the ledger before going on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use serde_json::{json, Value};
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::feed::Subscription;
use sms_credit_actors::{AccountId, LedgerEntry, Store, StoreError};

use super::FeedScope;

/// Rows read from the ledger at a time while replaying.
const PAGE: i64 = 500;
/// How long one frame may take to be accepted before the client counts as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection starts from.
pub struct FeedStart {
    pub scope: FeedScope,
    /// Replay the rows after this seq before going live.
    pub since: Option<i64>,
    pub store: Store,
    pub heartbeat: Duration,
    pub queue: usize,
    /// Becomes `true` when the server stops.
    pub stopping: tokio::sync::watch::Receiver<bool>,
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

async fn send(session: &mut Session, value: &Value) -> Result<(), End> {
    match actix_rt::time::timeout(SEND_TIMEOUT, session.text(value.to_string())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_closed)) => Err(End::ClientLeft),
        Err(_elapsed) => Err(End::TooSlow { last_seq: -1 }),
    }
}

/// Runs a connection until the client leaves, falls behind or goes silent.
pub async fn run(start: FeedStart, mut session: Session, mut incoming: MessageStream) {
    let subscription = start.store.feed().subscribe(
        match start.scope {
            FeedScope::Account(account_id) => Some(account_id),
            FeedScope::Admin => None,
        },
        start.queue,
    );
    let end = match start.scope {
        FeedScope::Account(account_id) => {
            account_feed(
                &start,
                account_id,
                subscription,
                &mut session,
                &mut incoming,
            )
            .await
        }
        FeedScope::Admin => admin_feed(&start, subscription, &mut session, &mut incoming).await,
    };
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
        End::Store(reason) => {
            tracing::warn!(%reason, "feed ended by a store error");
            Some(CloseReason {
                code: CloseCode::Error,
                description: Some("the ledger could not be read".to_string()),
            })
        }
    };
    let _ = session.close(reason).await;
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
    session: &mut Session,
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
            send(session, &event(entry)).await?;
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
    session: &mut Session,
    incoming: &mut MessageStream,
) -> End {
    // Without `since`, read only the snapshot (no row is after i64::MAX).
    let after = start.since.map_or(i64::MAX, |since| since.max(0));
    let (snapshot, first_page) = match read_page(&start.store, account_id, after, PAGE, true).await
    {
        Ok(read) => read,
        Err(error) => return End::Store(error.to_string()),
    };
    let (snapshot_seq, balance_micros) = snapshot.unwrap_or((0, 0));
    if let Err(end) = send(
        session,
        &json!({"seq": snapshot_seq, "balance_micros": balance_micros}),
    )
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
                if let Err(end) = send(session, &event(entry)).await {
                    return end;
                }
                last = entry.seq;
            }
            if !complete {
                if let Err(end) = replay(&start.store, account_id, &mut last, None, session).await {
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
            live = subscription.receiver.recv() => {
                let Some(entry) = live else {
                    return End::TooSlow { last_seq: last };
                };
                if entry.seq <= last {
                    continue;
                }
                if entry.seq > last + 1 {
                    if let Err(end) =
                        replay(&start.store, account_id, &mut last, Some(entry.seq - 1), session).await
                    {
                        return end;
                    }
                }
                if let Err(end) = send(session, &event(&entry)).await {
                    return end;
                }
                last = entry.seq;
            }
            message = incoming.recv() => {
                match heard(message, session, &mut last_heard).await {
                    Some(end) => return end,
                    None => continue,
                }
            }
            _ = heartbeat.tick() => {
                if let Some(end) = ping(session, last_heard, start.heartbeat).await {
                    return end;
                }
            }
        }
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
    session: &mut Session,
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
                    return End::TooSlow { last_seq: -1 };
                };
                // An account not there when the feed opened starts at 0.
                let last = last.entry(entry.account_id).or_insert(0);
                if entry.seq <= *last {
                    continue;
                }
                if entry.seq > *last + 1 {
                    if let Err(end) =
                        replay(&start.store, entry.account_id, last, Some(entry.seq - 1), session).await
                    {
                        return end;
                    }
                }
                if let Err(end) = send(session, &event(&entry)).await {
                    return end;
                }
                *last = entry.seq;
            }
            message = incoming.recv() => {
                if let Some(end) = heard(message, session, &mut last_heard).await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if let Some(end) = ping(session, last_heard, start.heartbeat).await {
                    return end;
                }
            }
        }
    }
}

/// Handles a frame from the client; `Some` when the connection is over.
async fn heard(
    message: Option<Result<Message, actix_ws::ProtocolError>>,
    session: &mut Session,
    last_heard: &mut Instant,
) -> Option<End> {
    match message {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Some(End::ClientLeft),
        Some(Ok(Message::Ping(bytes))) => {
            *last_heard = Instant::now();
            session.pong(&bytes).await.err().map(|_| End::ClientLeft)
        }
        Some(Ok(_)) => {
            *last_heard = Instant::now();
            None
        }
    }
}

/// A heartbeat: a client silent for three intervals is dropped.
async fn ping(session: &mut Session, last_heard: Instant, interval: Duration) -> Option<End> {
    if last_heard.elapsed() > interval * 3 {
        return Some(End::Silent);
    }
    session.ping(b"").await.err().map(|_| End::ClientLeft)
}

//! The listener task: `LISTEN`s on the ledger channel on a connection of
//! its own and, for each notification another instance's writer sent with
//! its commit (`origin;account:first-last;…`), reads the rows it names and
//! hands them to the store: to the balance feed, and to the registry so
//! that live actors reload. Notifications arrive in commit order, within
//! milliseconds of the commit. The connection is asked every 30 s whether
//! it is alive; a lost one is made again (a second later, then longer),
//! and once it listens again whatever was said meanwhile is read from the
//! database: every feed reads the rows it missed from its last one, every
//! live actor its snapshot, every open feed checks its token (an auto
//! top-up setting is read again by the worker's next sweep).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::writer::CHANNEL;
use super::{ledger, Connector, Readers};
use crate::ledger::{AccountId, Standing};
use crate::store::change_notes::{self, ChangeNote};
use crate::store::Shared;

/// The origin and the notes after it; a malformed note is skipped (it
/// names nothing this release could read).
fn decode(payload: &str) -> Option<(&str, Vec<ChangeNote>)> {
    let mut parts = payload.split(';');
    let origin = parts.next()?;
    Some((origin, parts.filter_map(change_notes::parse).collect()))
}

/// How often the listening connection is asked whether it is alive: a
/// socket dropped silently (a NAT's table, a failover) says nothing, and
/// the notifications it should carry would stop without a word.
const LIVENESS_EVERY: Duration = Duration::from_secs(30);

/// How long the liveness question may take before the connection is taken
/// for dead and made again.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run(connector: Connector, readers: Arc<Readers>, shared: Weak<Shared>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let (notifications, mut received) = mpsc::unbounded_channel();
        let listening = async {
            let client = connector.connect(Some(notifications)).await?;
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok::<_, crate::store::StoreError>(client)
        }
        .await;
        let client = match listening {
            Ok(client) => client,
            Err(error) => {
                if shared.upgrade().is_none() {
                    return;
                }
                tracing::warn!(%error, "cannot listen for other instances' writes; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        pause = Duration::from_secs(1);
        // Whatever was said before this connection listened (while an
        // earlier one was lost, or before the first) is read from the
        // database: feeds from their last row, actors their snapshot,
        // open feeds their token.
        match shared.upgrade() {
            Some(shared) => shared.may_have_missed_changes(),
            None => return,
        }
        let mut liveness = tokio::time::interval(LIVENESS_EVERY);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        liveness.tick().await;
        loop {
            tokio::select! {
                notification = received.recv() => {
                    let Some(notification) = notification else {
                        break;
                    };
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    heard(&readers, &shared, notification.payload()).await;
                }
                _ = liveness.tick() => {
                    let answer = tokio::time::timeout(LIVENESS_TIMEOUT, client.simple_query("SELECT 1")).await;
                    if !matches!(answer, Ok(Ok(_))) {
                        tracing::warn!("the listening connection did not answer; listening again");
                        break;
                    }
                }
            }
        }
        drop(client);
        if shared.upgrade().is_none() {
            return;
        }
        tracing::warn!("the listening connection closed; listening again");
    }
}

/// One notification: the rows, settings and tokens it says another
/// instance changed, handed to the store (its own are skipped).
async fn heard(readers: &Readers, shared: &Shared, payload: &str) {
    let Some((origin, moved)) = decode(payload) else {
        return;
    };
    if origin == shared.origin {
        return;
    }
    let mut wanted = Vec::new();
    for note in moved {
        match note {
            ChangeNote::Rows {
                account_id,
                first,
                last,
                after,
            } => {
                if shared.wants_external_rows() {
                    wanted.push((account_id, first, last, after));
                } else {
                    shared.external(account_id, last, Vec::new(), after);
                }
            }
            ChangeNote::AutoTopUp(account_id) => shared.external_auto_top_up(account_id),
            ChangeNote::Tokens(account_id) => shared.tokens_changed(account_id),
        }
    }
    if !wanted.is_empty() {
        read_rows(readers, shared, wanted).await;
    }
}

/// Reads the rows the notes name, for the balance feed, all in one
/// pipeline on one reader connection, and hands them over in the notes'
/// order. An account whose rows cannot be read is still told it moved, and
/// its feeds read them from the ledger themselves.
async fn read_rows(
    readers: &Readers,
    shared: &Shared,
    wanted: Vec<(AccountId, i64, i64, Option<Standing>)>,
) {
    let connected = match shared.injected_external_read_failure() {
        Some(error) => Err(error),
        None => readers.client().await,
    };
    let client = match connected {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "could not read another instance's rows");
            for (account_id, _, last, after) in wanted {
                shared.external_unread(account_id, last, after);
            }
            return;
        }
    };
    let reads = wanted.iter().map(|(account_id, first, last, _)| {
        ledger::entries_between(&client, *account_id, *first, *last)
    });
    let read = futures_util::future::join_all(reads).await;
    for ((account_id, _, last, after), rows) in wanted.into_iter().zip(read) {
        match rows {
            Ok(entries) => shared.external(account_id, last, entries, after),
            Err(error) => {
                tracing::warn!(%account_id, %error, "could not read another instance's rows");
                shared.external_unread(account_id, last, after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back() {
        let (origin, moved) =
            decode("abc;7:12-14;9:3-3;garbage;auto:5").unwrap_or(("", Vec::new()));
        assert_eq!(origin, "abc");
        assert_eq!(
            moved,
            vec![
                ChangeNote::Rows {
                    account_id: AccountId(7),
                    first: 12,
                    last: 14,
                    after: None
                },
                ChangeNote::Rows {
                    account_id: AccountId(9),
                    first: 3,
                    last: 3,
                    after: None
                },
                ChangeNote::AutoTopUp(AccountId(5)),
            ]
        );
    }
}

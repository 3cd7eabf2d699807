//! The balance feed's fan-out: the store's writer publishes every ledger row
//! it has committed, in commit order, to the subscribers of that account and
//! to the subscribers of all accounts. Each subscriber has a bounded queue;
//! one that falls behind is dropped (its receiver ends), never allowed to
//! grow the server's memory: it subscribes again and reads what it missed
//! from the ledger, from its last seq.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::ledger::{AccountId, LedgerEntry};

/// What a subscriber receives.
pub type FeedReceiver = mpsc::Receiver<Arc<LedgerEntry>>;

struct Subscriber {
    id: u64,
    sender: mpsc::Sender<Arc<LedgerEntry>>,
}

/// Every open subscription, by account; cheap to share.
#[derive(Default)]
pub struct FeedHub {
    by_account: DashMap<AccountId, Vec<Subscriber>>,
    all_accounts: Mutex<Vec<Subscriber>>,
    /// Subscribers of any kind, so that the writer skips all work when
    /// nobody listens.
    subscribers: AtomicUsize,
    next_id: AtomicU64,
    /// Subscribers whose queue was full, dropped (each reads what it
    /// missed from the ledger).
    overflowed: AtomicU64,
    /// Feeds closed because their client did not read in time.
    dropped_slow: AtomicU64,
}

/// An open subscription; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<FeedHub>,
    account: Option<AccountId>,
    id: u64,
    pub receiver: FeedReceiver,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.account, self.id);
    }
}

impl FeedHub {
    pub fn new() -> Arc<FeedHub> {
        Arc::new(FeedHub::default())
    }

    /// Subscribes to one account's committed rows (`Some`) or to every
    /// account's (`None`), with a queue of `capacity` rows.
    pub fn subscribe(
        self: &Arc<Self>,
        account: Option<AccountId>,
        capacity: usize,
    ) -> Subscription {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Subscriber { id, sender };
        match account {
            Some(account_id) => self
                .by_account
                .entry(account_id)
                .or_default()
                .push(subscriber),
            None => self
                .all_accounts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(subscriber),
        }
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        Subscription {
            hub: Arc::clone(self),
            account,
            id,
            receiver,
        }
    }

    fn remove(&self, account: Option<AccountId>, id: u64) {
        let removed = match account {
            Some(account_id) => {
                let mut removed = false;
                if let Some(mut subscribers) = self.by_account.get_mut(&account_id) {
                    let before = subscribers.len();
                    subscribers.retain(|subscriber| subscriber.id != id);
                    removed = subscribers.len() < before;
                }
                self.by_account
                    .remove_if(&account_id, |_, subscribers| subscribers.is_empty());
                removed
            }
            None => {
                let mut all = self
                    .all_accounts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let before = all.len();
                all.retain(|subscriber| subscriber.id != id);
                all.len() < before
            }
        };
        if removed {
            self.subscribers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether anybody listens at all.
    pub fn is_idle(&self) -> bool {
        self.subscribers.load(Ordering::SeqCst) == 0
    }

    /// Open subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Feeds closed so far because their client did not read in time.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(Ordering::Relaxed)
    }

    /// Counts a feed closed because its client did not read in time.
    pub fn count_slow_close(&self) {
        self.dropped_slow.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribers dropped so far because their queue was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Drops the subscribers of one account and of every account, as if
    /// their queues were full: each subscribes again and reads what it
    /// missed from the ledger. For rows of the account this process was
    /// told of but could not read.
    pub fn resubscribe_account(&self, account_id: AccountId) {
        let mut dropped = self
            .by_account
            .remove(&account_id)
            .map_or(0, |(_, subscribers)| subscribers.len());
        dropped += self.drop_all_accounts_subscribers();
        self.subscribers.fetch_sub(dropped, Ordering::SeqCst);
    }

    /// Drops every subscriber, as if each queue were full: each subscribes
    /// again and reads what it missed from the ledger. For when this
    /// process may have missed rows (its listening connection was lost).
    pub fn resubscribe_everyone(&self) {
        let mut dropped = 0;
        self.by_account.retain(|_, subscribers| {
            dropped += subscribers.len();
            false
        });
        dropped += self.drop_all_accounts_subscribers();
        self.subscribers.fetch_sub(dropped, Ordering::SeqCst);
    }

    /// Drops the subscribers of every account; answers how many there were.
    fn drop_all_accounts_subscribers(&self) -> usize {
        let mut all = self
            .all_accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dropped = all.len();
        all.clear();
        dropped
    }

    /// Hands a committed row to its subscribers; a subscriber whose queue is
    /// full is dropped. Called by the store's writer, in commit order.
    pub fn publish(&self, entry: Arc<LedgerEntry>) {
        let mut dropped = 0;
        let mut offer = |subscribers: &mut Vec<Subscriber>| {
            subscribers.retain(|subscriber| {
                match subscriber.sender.try_send(Arc::clone(&entry)) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped += 1;
                        false
                    }
                    // The receiver is gone; its Drop removes it (or did).
                    Err(mpsc::error::TrySendError::Closed(_)) => true,
                }
            });
        };
        if let Some(mut subscribers) = self.by_account.get_mut(&entry.account_id) {
            offer(&mut subscribers);
        }
        offer(
            &mut self
                .all_accounts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if dropped > 0 {
            self.subscribers.fetch_sub(dropped, Ordering::SeqCst);
            self.overflowed.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ledger::TransactionKind;
    use crate::money::Money;

    fn entry(account: i64, seq: i64) -> Arc<LedgerEntry> {
        Arc::new(LedgerEntry {
            account_id: AccountId(account),
            seq,
            kind: TransactionKind::Credit,
            amount: Money::from_micros(1),
            balance_after: Money::from_micros(seq),
            idempotency_key: format!("k{seq}"),
            order_id: None,
            description: String::new(),
            reason: None,
            created_at_ms: 0,
            funded_by: crate::grants::Funding::NONE,
        })
    }

    #[test]
    fn delivers_in_order_to_the_account_and_to_everyone() {
        let hub = FeedHub::new();
        let mut one = hub.subscribe(Some(AccountId(1)), 8);
        let mut all = hub.subscribe(None, 8);
        let mut other = hub.subscribe(Some(AccountId(2)), 8);
        for seq in 1..=3 {
            hub.publish(entry(1, seq));
        }
        for seq in 1..=3 {
            assert_eq!(one.receiver.try_recv().unwrap().seq, seq);
            assert_eq!(all.receiver.try_recv().unwrap().seq, seq);
        }
        assert!(other.receiver.try_recv().is_err());
        assert_eq!(hub.subscriber_count(), 3);
        drop(one);
        drop(other);
        drop(all);
        assert!(hub.is_idle());
        assert!(hub.by_account.is_empty());
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_not_buffered() {
        let hub = FeedHub::new();
        let mut slow = hub.subscribe(Some(AccountId(1)), 4);
        let mut keeping_up = hub.subscribe(Some(AccountId(1)), 4);
        for seq in 1..=10 {
            hub.publish(entry(1, seq));
            while let Ok(received) = keeping_up.receiver.try_recv() {
                assert_eq!(received.seq, seq);
            }
        }
        let mut received = Vec::new();
        while let Some(entry) = slow.receiver.blocking_recv() {
            received.push(entry.seq);
        }
        assert_eq!(received, vec![1, 2, 3, 4], "what fitted, then the end");
        assert_eq!(hub.overflowed(), 1);
        assert_eq!(hub.subscriber_count(), 1);
        drop(slow);
        assert_eq!(
            hub.subscriber_count(),
            1,
            "dropping a dropped one counts once"
        );
    }
}

//! How many feeds each account has open on this instance, so that one
//! token cannot hold thousands (each costs memory and a subscription).

use std::sync::Arc;

use dashmap::DashMap;
use sms_credit_actors::AccountId;

/// Open feeds by account.
#[derive(Default)]
pub struct FeedSlots {
    open: DashMap<AccountId, usize>,
}

/// One open feed's place; given back when the feed ends.
pub struct FeedSlot {
    slots: Arc<FeedSlots>,
    account_id: AccountId,
}

impl FeedSlots {
    /// A place for one more feed of `account_id`, unless it has `max` open.
    pub fn take(self: &Arc<Self>, account_id: AccountId, max: usize) -> Option<FeedSlot> {
        let mut open = self.open.entry(account_id).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(FeedSlot {
            slots: Arc::clone(self),
            account_id,
        })
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        if let Some(mut open) = self.slots.open.get_mut(&self.account_id) {
            *open = open.saturating_sub(1);
        }
        self.slots
            .open
            .remove_if(&self.account_id, |_, open| *open == 0);
    }
}

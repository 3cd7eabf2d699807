//! The websocket balance feed: the session that sends a snapshot, replays
//! what a client missed from the ledger and then forwards committed rows
//! live, in `seq` order, with heartbeats and a bounded queue; and the feeds
//! each account may hold open. The short-lived tickets browsers open it
//! with are kept in the store (`sms_credit_actors::feed_tickets`), so any
//! instance redeems them.

mod session;
mod slots;

pub use session::{run, subscribe, FeedStart};
pub use slots::{FeedSlot, FeedSlots};
pub use sms_credit_actors::feed_tickets::{FeedScope, TICKET_LIFETIME};

//! The websocket balance feed: short-lived tickets for browsers, and the
//! session that sends a snapshot, replays what a client missed from the
//! ledger and then forwards committed rows live, in `seq` order, with
//! heartbeats and a bounded queue.

mod session;
mod slots;
mod tickets;

pub use session::{run, subscribe, FeedStart};
pub use slots::{FeedSlot, FeedSlots};
pub use tickets::{FeedScope, Redeemed, Tickets, TICKET_LIFETIME};

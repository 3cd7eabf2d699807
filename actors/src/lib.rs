//! The domain core of sms-credit: exact money, the ledger, account actors
//! with their registry and supervisors, and the durable store. It knows
//! nothing of HTTP; the server in `src/` drives it.
//!
//! Architecture invariants:
//! - only an [`account_actor::AccountActor`] changes a balance;
//! - nothing is answered as done before the store has committed it.

pub mod access_tokens;
pub mod account_actor;
pub mod accounts;
pub mod adapters;
pub mod backfill;
pub mod billing;
pub mod books;
pub mod clock;
pub mod commands;
pub mod error;
pub mod expiry_sweep;
pub mod export;
pub mod feed;
pub mod feed_tickets;
pub mod grants;
pub mod ledger;
pub mod messaging;
pub mod money;
pub mod opt_outs;
pub mod phone;
pub mod random;
pub mod rating;
pub mod registry;
pub mod reports;
pub mod sign_in;
pub mod stats;
pub mod store;
pub mod supervisor;
pub mod verify;
pub mod webhooks;

pub use account_actor::{
    AccountActor, AccountSettings, Adjust, Credit, Debit, ExpireDue, GetBalance, Receipt, Refund,
};
pub use adapters::StoreSettings;
pub use error::LedgerError;
pub use ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, TransactionKind};
pub use money::Money;
pub use registry::Registry;
pub use store::{Store, StoreError};

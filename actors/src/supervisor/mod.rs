//! Supervisors: actors that take work from one outside door (SMS, Stripe),
//! decide which account it belongs to and route it to that account's actor,
//! so that every effect on a balance is serialized by its account actor.

pub mod sms;
pub mod stripe;

pub use sms::{InboundSms, SmsContext, SmsError, SmsSupervisor};
pub use stripe::{HandleStripeEvent, StripeSupervisor, SweepWaitingEvents};

/// Messages that may wait in a supervisor's mailbox before senders wait.
const SUPERVISOR_MAILBOX_CAPACITY: usize = 1024;

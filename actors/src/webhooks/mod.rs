//! Webhooks to the host application: money events (`balance.low`,
//! `payment.succeeded`, …) committed in the same transaction as the change
//! that caused them (a transactional outbox beside the notices), fanned out
//! to the endpoints that want them, and delivered at least once, signed as
//! Standard Webhooks sign, by a worker that retries with growing waits.
//!
//! This module holds the domain: the event types and payloads
//! ([`events`]), the endpoints and their secrets ([`endpoints`]) and the
//! policy of a delivery ([`delivery`]). HTTP lives in the server.

pub mod delivery;
pub mod endpoints;
pub mod events;
pub mod manage;

pub use delivery::{
    AttemptRecord, ClaimedDelivery, DeliveryOutcome, DeliveryStats, ForEnabled, Pruned, TryRecorded,
};
pub use endpoints::{Endpoint, EndpointChange, EventFilter, NewEndpoint, SigningSecret};
pub use events::{EventType, NewEvent};

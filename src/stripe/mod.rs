//! Stripe at the edge: the async-stripe client behind the core's
//! `PaymentGateway` trait, and the translation of verified webhook events
//! into the core's `StripeEvent`.

mod gateway;
mod webhook;

pub use gateway::StripeGateway;
pub use webhook::{verify_and_parse, VerifiedEvent, WebhookFailure};

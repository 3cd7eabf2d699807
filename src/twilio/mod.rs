//! Twilio at the edge: request signatures, TwiML replies, and the REST
//! client behind the core's `SmsSender` trait.

mod client;
pub mod signature;
pub mod twiml;

pub use client::TwilioClient;

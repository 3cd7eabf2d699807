//! Twilio at the edge: strict form parsing, request signatures, the shapes a signed request
//! must have (`requests`), TwiML replies, and the REST
//! client behind the core's `SmsSender` trait.

mod client;
pub mod form;
pub mod requests;
pub mod signature;
pub mod twiml;

pub use client::TwilioClient;

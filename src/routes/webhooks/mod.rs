//! Webhooks from the outside services, each verified on its raw body.

pub mod stripe;
pub mod twilio;

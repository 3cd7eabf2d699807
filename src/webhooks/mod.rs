//! Webhooks to the host application, the server's half: the HTTP sender
//! (Standard Webhooks signatures, a resolver that refuses private
//! addresses) and the worker that claims due deliveries and tries them.
//! What an event is and when it is tried again is the domain's
//! (`sms_credit_actors::webhooks`).

pub mod sender;
pub mod worker;

pub use sender::WebhookSender;
pub use worker::{start_delivery_worker, WebhookMetrics};

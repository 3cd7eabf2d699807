//! The sms-credit server: HTTP routes, configuration, CLI and start-up
//! around the domain core in `sms-credit-actors`.

/// mimalloc instead of the system allocator: an active account actor is a
/// handful of small allocations, and glibc's headers and fragmentation add
/// about a fifth to them (see the scale benchmark); it is also faster for
/// the many short-lived allocations of message passing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod auth;
pub mod cli;
pub mod code_texts;
pub mod config;
pub mod error;
pub mod feed;
pub mod limits;
pub mod logs;
mod routes;
pub use routes::openapi;
pub mod startup;
pub mod state;
pub mod stripe;
pub mod telemetry;
pub mod twilio;
pub mod views;
pub mod webhooks;

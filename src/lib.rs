//! The sms-credit server: HTTP routes, configuration, CLI and start-up
//! around the domain core in `sms-credit-actors`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod feed;
pub mod openapi;
mod routes;
pub mod startup;
pub mod stripe;
pub mod telemetry;
pub mod twilio;

//! The one integration-test binary: each module tests one area of the real
//! application, started by `helpers`.

// A failed unwrap is how a test says what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod database;
mod fake_stripe;
mod fake_twilio;
mod helpers;
mod hostile;
mod input_properties;
mod litestream;
mod proxy;
mod watchdog;
mod webhook_receiver;

mod admin_api;
mod auto_top_up;
mod backup;
mod books;
mod browser;
mod cli;
mod code_shape;
mod copy;
mod crash;
mod disk_loss;
mod disputes;
mod docs;
mod expiry_sweep;
mod feed;
mod grants;
mod grants_upgrade;
mod instances;
mod ledger_actors;
mod ledger_properties;
mod legacy_sweep;
mod migrations;
mod openapi;
mod operations;
mod outage;
mod quick_start;
mod quote;
mod receipts;
mod refunds;
mod refunds_by_id;
mod refunds_told;
mod reservations;
mod restart;
mod second_writer;
mod segment_properties;
mod sign_in;
mod stored_values;
mod stripe;
mod stripe_chaos;
mod stripe_events;
mod twilio;
mod webhooks;

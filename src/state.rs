//! `AppState`: what every request handler can reach, made once at start-up.

use std::sync::Arc;

use actix::Addr;
use sms_credit_actors::billing::checkout::Billing;
use sms_credit_actors::clock::Clock;
use sms_credit_actors::messaging::Messaging;
use sms_credit_actors::supervisor::{SmsSupervisor, StripeSupervisor};
use sms_credit_actors::{Registry, Store};

use crate::config::Settings;
use crate::limits::{BooksReads, Limits};
use crate::telemetry::{HttpMetrics, SignInCodeCounts};

/// What every request handler can reach.
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub registry: Registry,
    pub billing: Option<Billing>,
    pub messaging: Option<Messaging>,
    pub stripe_supervisor: Addr<StripeSupervisor>,
    pub sms_supervisor: Addr<SmsSupervisor>,
    pub clock: Arc<dyn Clock>,
    /// Open feeds per account (at most `feed.max_per_account`).
    pub feed_slots: Arc<crate::feed::FeedSlots>,
    pub http_metrics: Arc<HttpMetrics>,
    /// Sign-in codes by country and outcome, for `/metrics`.
    pub sign_in_codes: Arc<SignInCodeCounts>,
    /// Sign-in codes' texts, sent after the answer (awaited, bounded, when
    /// the server stops).
    pub code_texts: Arc<crate::code_texts::CodeTexts>,
    /// Webhook deliveries by outcome.
    pub webhook_metrics: Arc<crate::webhooks::WebhookMetrics>,
    /// Wrong tokens and guesses, and calls to the anonymous routes, by
    /// address.
    pub limits: Arc<Limits>,
    /// The books being read by this server (at most two at once).
    pub books_reads: BooksReads,
    /// Becomes `true` when the server starts stopping: open feeds close
    /// with 1001 and where to resume.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

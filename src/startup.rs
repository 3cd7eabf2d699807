//! Start-up: builds the core (store, actor threads, registry, supervisors)
//! and the HTTP server on a listener it is handed, so tests can start the
//! real application on port 0.

use std::net::TcpListener;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use sms_credit_actors::billing::checkout::{Billing, BillingSettings};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::supervisor::{SmsSupervisor, StripeSupervisor};
use sms_credit_actors::{AccountSettings, Money, Registry, Store, StoreError, StoreSettings};

use crate::config::Settings;
use crate::error;
use crate::routes;
use crate::stripe::StripeGateway;

/// The running domain core: everything below HTTP.
pub struct Core {
    pub store: Store,
    pub registry: Registry,
    /// The billing flows; `None` when Stripe is not configured.
    pub billing: Option<Billing>,
    pub sms_supervisor: Addr<SmsSupervisor>,
    pub stripe_supervisor: Addr<StripeSupervisor>,
    /// Threads that run the account actors.
    arbiters: Vec<Arbiter>,
}

impl Core {
    /// Opens the store and starts the actors. Must run inside an actix system.
    pub fn start(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Core, StoreError> {
        let store = Store::open(&StoreSettings::new(&settings.database))?;
        let arbiters: Vec<Arbiter> = (0..settings.actor_threads)
            .map(|_| Arbiter::new())
            .collect();
        let account_settings = AccountSettings {
            passivate_after: settings.passivate_after,
            ..AccountSettings::default()
        };
        let registry = Registry::new(
            store.clone(),
            clock,
            account_settings,
            arbiters.iter().map(Arbiter::handle).collect(),
        );
        let billing = match &settings.stripe {
            Some(stripe) => {
                let gateway = StripeGateway::new(stripe).map_err(|reason| StoreError::Open {
                    path: stripe.api_base.clone(),
                    reason: format!("cannot build the Stripe client: {reason}"),
                })?;
                Some(Billing {
                    store: store.clone(),
                    registry: registry.clone(),
                    gateway: Arc::new(gateway),
                    settings: Arc::new(billing_settings(settings, stripe.allow_promotion_codes)),
                })
            }
            None => None,
        };
        let sms_supervisor = SmsSupervisor::new(registry.clone()).start();
        let stripe_supervisor = StripeSupervisor::new(registry.clone(), billing.clone()).start();
        Ok(Core {
            store,
            registry,
            billing,
            sms_supervisor,
            stripe_supervisor,
            arbiters,
        })
    }

    /// Waits for the last commit, then stops the actor threads.
    pub async fn shutdown(self) {
        if let Err(error) = self.store.flush().await {
            tracing::error!(%error, "could not flush the store at shutdown");
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Where Checkout sends customers, and what access and top-ups are worth.
fn billing_settings(settings: &Settings, allow_promotion_codes: bool) -> BillingSettings {
    let base = settings.public_base_url();
    BillingSettings {
        success_url: format!("{base}/checkout/success?session_id={{CHECKOUT_SESSION_ID}}"),
        cancel_url: format!("{base}/checkout/cancel"),
        allow_promotion_codes,
        included_credit: settings.included_credit,
        top_up_amount: Money::from_micros(10_000_000),
    }
}

/// What every request handler can reach.
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub registry: Registry,
    pub billing: Option<Billing>,
    pub stripe_supervisor: Addr<StripeSupervisor>,
    pub clock: Arc<dyn Clock>,
}

/// The running server.
pub struct Application {
    port: u16,
    server: Server,
    core: Core,
}

impl Application {
    /// Builds the core and the HTTP server on `listener`.
    pub fn build(settings: Settings, listener: TcpListener) -> std::io::Result<Application> {
        Application::build_with_clock(settings, listener, Arc::new(SystemClock))
    }

    /// As [`Application::build`], with the clock the core should use.
    pub fn build_with_clock(
        settings: Settings,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Application> {
        let port = listener.local_addr()?.port();
        let core = Core::start(&settings, Arc::clone(&clock)).map_err(std::io::Error::other)?;
        let http_workers = settings.http_workers;
        let state = web::Data::new(AppState {
            settings,
            store: core.store.clone(),
            registry: core.registry.clone(),
            billing: core.billing.clone(),
            stripe_supervisor: core.stripe_supervisor.clone(),
            clock,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(64 * 1024)
                        .error_handler(error::json_error),
                )
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .app_data(web::QueryConfig::default().error_handler(error::query_error))
                .configure(routes::configure)
        })
        .workers(http_workers)
        .listen(listener)?
        .run();
        tracing::info!(port, "listening");
        Ok(Application { port, server, core })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server (gracefully with `stop(true)`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (by the handle or a signal): stops accepting,
    /// finishes requests in flight, then flushes the last commit.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.core.shutdown().await;
        served
    }
}

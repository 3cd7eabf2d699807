//! Start-up: builds the core (store, actor threads, registry, supervisors)
//! and the HTTP server on a listener it is handed, so tests can start the
//! real application on port 0.

use std::net::TcpListener;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer, ResponseError};
use sms_credit_actors::billing::checkout::{Billing, BillingSettings};
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::messaging::reservations::SweepReport;
use sms_credit_actors::messaging::{Messaging, MessagingSettings};
use sms_credit_actors::supervisor::{
    SmsContext, SmsSupervisor, StripeSupervisor, SweepWaitingEvents,
};
use sms_credit_actors::{AccountSettings, Registry, Store, StoreError};

use crate::config::{Settings, StripeSettings};
use crate::error;
use crate::limits::Limits;
use crate::routes;
use crate::state::AppState;
use crate::stripe::StripeGateway;
use crate::telemetry::{self, HttpMetrics};
use crate::twilio::TwilioClient;

/// The running domain core: everything below HTTP.
pub struct Core {
    pub store: Store,
    pub registry: Registry,
    /// The billing flows; `None` when Stripe is not configured.
    pub billing: Option<Billing>,
    /// Sending SMS; `None` when Twilio is not configured.
    pub messaging: Option<Messaging>,
    pub sms_supervisor: Addr<SmsSupervisor>,
    pub stripe_supervisor: Addr<StripeSupervisor>,
    /// Threads that run the account actors.
    arbiters: Vec<Arbiter>,
    /// Held by each heartbeat while it writes, and by the shutdown when it
    /// leaves the instances: once this instance has left (`true`), no
    /// heartbeat writes its row again.
    left: Arc<tokio::sync::Mutex<bool>>,
}

impl Core {
    /// Opens the store and starts the actors. Must run inside an actix system.
    pub fn start(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Core, StoreError> {
        let store = sms_credit_actors::adapters::open(&settings.database.store_settings())?;
        sms_credit_actors::phone::warm_up();
        let arbiters: Vec<Arbiter> = (0..settings.server.actor_threads)
            .map(|_| Arbiter::new())
            .collect();
        let account_settings = AccountSettings {
            passivate_after: settings.server.passivate_after,
            low_balance_threshold: settings.messages.low_balance_threshold,
            low_balance_cooldown: settings.messages.low_balance_cooldown,
            rates: Some(Arc::clone(&settings.messages.rates)),
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
                    settings: Arc::new(billing_settings(settings, stripe)),
                    last_expiry_check_ms: Default::default(),
                    sweep_after: Default::default(),
                })
            }
            None => None,
        };
        let messaging = match &settings.twilio {
            Some(twilio) => {
                let client = TwilioClient::new(
                    twilio,
                    settings
                        .server
                        .public_url
                        .as_ref()
                        .map(|url| format!("{url}/webhooks/twilio/status")),
                )
                .map_err(|reason| StoreError::Open {
                    path: twilio.api_base.clone(),
                    reason: format!("cannot build the Twilio client: {reason}"),
                })?;
                Some(Messaging {
                    store: store.clone(),
                    registry: registry.clone(),
                    rates: Arc::clone(&settings.messages.rates),
                    sender: Arc::new(client),
                    settings: Arc::new(MessagingSettings {
                        price_check_delay: settings.messages.reconcile_delay,
                        web_link: settings.web_link(),
                    }),
                })
            }
            None => None,
        };
        let sms_context = SmsContext {
            store: store.clone(),
            registry: registry.clone(),
            rates: Arc::clone(&settings.messages.rates),
            billing: billing.clone(),
            messaging: messaging.clone(),
            web_link: settings.web_link(),
            known_numbers: Default::default(),
            buys_charging: Default::default(),
        };
        let sms_supervisor = SmsSupervisor::new(sms_context).start();
        let stripe_supervisor = StripeSupervisor::new(billing.clone()).start();
        Ok(Core {
            store,
            registry,
            billing,
            messaging,
            sms_supervisor,
            stripe_supervisor,
            arbiters,
            left: Arc::default(),
        })
    }

    /// Leaves the instances (what this one left is at once anyone's), waits
    /// for the last commit, then stops the actor threads.
    pub async fn shutdown(self) {
        let instance_id = self.store.instance_id().to_string();
        {
            // No heartbeat is written meanwhile, or after.
            let mut left = self.left.lock().await;
            *left = true;
            if let Err(error) = self.store.instances().leave(instance_id).await {
                tracing::warn!(%error, "could not leave the instances");
            }
        }
        match self.store.flush().await {
            Ok(()) => tracing::info!("the last commit is flushed; stopping"),
            Err(error) => tracing::error!(%error, "could not flush the store at shutdown"),
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Where Checkout sends customers, and what access and top-ups are worth.
fn billing_settings(settings: &Settings, stripe: &StripeSettings) -> BillingSettings {
    let base = settings.public_base_url();
    BillingSettings {
        success_url: format!("{base}/checkout/success?session_id={{CHECKOUT_SESSION_ID}}"),
        cancel_url: format!("{base}/checkout/cancel"),
        allow_promotion_codes: stripe.allow_promotion_codes,
        included_credit: stripe.included_credit,
        buy_daily_limit: stripe.buy_daily_limit,
        auto_top_up: settings.auto_top_up.clone(),
    }
}

/// How often Twilio's prices of sent messages are looked up.
const PRICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Sign-in codes texted at once, after their answers (each instance): a
/// burst of requests waits its turn rather than opening as many calls to
/// Twilio.
const CODE_TEXTS_AT_ONCE: usize = 16;

/// How long a stopping server waits for sign-in codes' texts in flight
/// (after the requests in flight): those not sent by then are counted as
/// failed, and logged.
const CODE_TEXTS_AT_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// How often queued notices are looked at when no commit says there are new ones.
const NOTICE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends queued notices (low-balance warnings) as soon as a commit queues
/// them, and now and then for those waiting for a retry.
fn start_notice_worker(messaging: Messaging) {
    actix_rt::spawn(async move {
        loop {
            if let Err(error) = messaging.deliver_notices().await {
                tracing::warn!(%error, "could not deliver notices");
            }
            let ready = messaging.store.notices_ready().notified();
            let _ = actix_rt::time::timeout(NOTICE_INTERVAL, ready).await;
        }
    });
}

/// Resolves reservations a crash left open, then looks up Twilio's prices
/// of sent messages periodically, for reconciliation.
fn start_messaging_jobs(messaging: Messaging, clock: Arc<dyn Clock>) {
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(PRICE_CHECK_INTERVAL).await;
            if let Err(error) = messaging.check_prices(clock.now_ms()).await {
                tracing::warn!(%error, "price check failed");
            }
        }
    });
}

/// Keeps this instance's heartbeat fresh, and resolves the reservations of
/// messages left open (by instances that stopped beating, or by sends of
/// live ones never resolved), at start and then now and then.
fn start_instance_jobs(
    store: Store,
    messaging: Option<Messaging>,
    clock: Arc<dyn Clock>,
    timeout: std::time::Duration,
    left: Arc<tokio::sync::Mutex<bool>>,
) {
    let heartbeat_clock = Arc::clone(&clock);
    let timeout_ms = sms_credit_actors::clock::millis(timeout);
    actix_rt::spawn(async move {
        let mut ticks = actix_rt::time::interval(timeout / 4);
        loop {
            ticks.tick().await;
            let left = left.lock().await;
            if *left {
                break;
            }
            let now_ms = heartbeat_clock.now_ms();
            let instance_id = store.instance_id().to_string();
            let beaten = store
                .instances()
                .heartbeat(instance_id, now_ms, Some(timeout_ms))
                .await;
            drop(left);
            if let Err(error) = beaten {
                tracing::warn!(%error, "could not record this instance's heartbeat");
            }
        }
    });
    if let Some(messaging) = messaging {
        start_reservation_sweep(messaging, clock, timeout);
    }
}

/// At start, then every half of the instance timeout: the reservations of
/// instances that stopped beating, and those of live instances whose send
/// was never resolved, asking Twilio. A task of its own: Twilio's slowness
/// never delays the heartbeat (a late heartbeat would make this instance's
/// sends in flight look abandoned to the others).
fn start_reservation_sweep(
    messaging: Messaging,
    clock: Arc<dyn Clock>,
    timeout: std::time::Duration,
) {
    let timeout_ms = sms_credit_actors::clock::millis(timeout);
    actix_rt::spawn(async move {
        let mut ticks = actix_rt::time::interval(timeout / 2);
        loop {
            ticks.tick().await;
            let now_ms = clock.now_ms();
            match messaging.resolve_reservations(now_ms, timeout_ms).await {
                Ok(report) if report == SweepReport::default() => {}
                Ok(report) => {
                    tracing::warn!(
                        sent = report.sent,
                        given_back = report.given_back,
                        left = report.left,
                        "resolved open reservations of messages, asking Twilio"
                    )
                }
                Err(error) => {
                    tracing::error!(%error, "could not resolve open reservations of messages")
                }
            }
        }
    });
}

/// How often waiting Stripe events are checked for expiry when none arrive.
const EVENT_EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Gives up, now and then, on Stripe events that have waited longer than
/// Stripe retries (they stay visible as `expired`).
fn start_billing_jobs(billing: Billing, clock: Arc<dyn Clock>) {
    actix_rt::spawn(async move {
        loop {
            if let Err(error) = billing.expire_waiting(clock.now_ms()).await {
                tracing::warn!(%error, "could not expire waiting Stripe events");
            }
            if let Err(error) = billing.end_unopened_orders(clock.now_ms()).await {
                tracing::warn!(%error, "could not end orders that never got a Checkout Session");
            }
            actix_rt::time::sleep(EVENT_EXPIRY_INTERVAL).await;
        }
    });
}

/// How often the sweep of waiting Stripe events checks the clock.
const WAKE_SWEEP_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies, every `WAKE_SWEEP_EVERY_MS` of the clock (and at start), the
/// waiting Stripe events whose state exists now that nothing woke: a
/// refund whose order's completion could not wake it (another instance
/// held it, a read or commit failed) is applied within the sweep's time,
/// not given up after three days. Through the Stripe supervisor, between
/// events.
fn start_waiting_event_sweep(supervisor: Addr<StripeSupervisor>, clock: Arc<dyn Clock>) {
    use sms_credit_actors::billing::events::WAKE_SWEEP_EVERY_MS;
    actix_rt::spawn(async move {
        let mut last_sweep = i64::MIN;
        let mut ticks = actix_rt::time::interval(WAKE_SWEEP_TICK);
        loop {
            ticks.tick().await;
            let now_ms = clock.now_ms();
            if now_ms.saturating_sub(last_sweep) < WAKE_SWEEP_EVERY_MS {
                continue;
            }
            last_sweep = now_ms;
            match supervisor.send(SweepWaitingEvents { now_ms }).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not sweep the waiting Stripe events")
                }
                // The supervisor stopped: so does the server.
                Err(_) => return,
            }
        }
    });
}

/// Replaces, every `LEGACY_SWEEP_EVERY_MS` of the clock (the first time
/// that long after the start), a few more orders' legacy refund records
/// (orders refunded before refunds were kept by id) with Stripe's lists of
/// their refunds, settling their credit; once no order is the sweep's
/// (each record replaced and settled, or left for good), it looks again
/// only every `LEGACY_WATCH_EVERY_MS` (a settled order is made the sweep's
/// again by a refund recorded of it whose own settling failed).
fn start_legacy_refund_sweep(billing: Billing, clock: Arc<dyn Clock>) {
    use sms_credit_actors::billing::legacy_refunds::{
        LegacySweep, LEGACY_SWEEP_EVERY_MS, LEGACY_WATCH_EVERY_MS,
    };
    // The start is now, not when the task is first run.
    let started = clock.now_ms();
    actix_rt::spawn(async move {
        let mut last_round = started;
        let mut every_ms = LEGACY_SWEEP_EVERY_MS;
        let mut ticks = actix_rt::time::interval(WAKE_SWEEP_TICK);
        loop {
            ticks.tick().await;
            let now_ms = clock.now_ms();
            if now_ms.saturating_sub(last_round) < every_ms {
                continue;
            }
            last_round = now_ms;
            match billing.replace_legacy_records(now_ms).await {
                Ok(LegacySweep::Done) => {
                    if every_ms != LEGACY_WATCH_EVERY_MS {
                        tracing::info!("no order holds a legacy refund record: that sweep now only looks again every five minutes");
                    }
                    every_ms = LEGACY_WATCH_EVERY_MS;
                }
                Ok(LegacySweep::Replaced(_)) => every_ms = LEGACY_SWEEP_EVERY_MS,
                Err(error) => {
                    tracing::warn!(%error, "could not replace orders' legacy refund records; the next round tries again")
                }
            }
        }
    });
}

/// Expires, every `EXPIRY_SWEEP_EVERY_MS` of the clock (and at the start,
/// so that a grant that expired while no instance ran is expired by the
/// first round), the grants that expired with credit left on accounts
/// nobody touches: each one's account actor is asked to write its expiry
/// rows (`ExpireDue`), the one path that changes a balance.
fn start_expiry_sweep(registry: Registry, clock: Arc<dyn Clock>) {
    use sms_credit_actors::expiry_sweep::{ExpirySweep, EXPIRY_SWEEP_EVERY_MS};
    actix_rt::spawn(async move {
        let mut sweep = ExpirySweep::new(registry);
        let mut last_round = i64::MIN;
        let mut ticks = actix_rt::time::interval(WAKE_SWEEP_TICK);
        loop {
            ticks.tick().await;
            let now_ms = clock.now_ms();
            if now_ms.saturating_sub(last_round) < EXPIRY_SWEEP_EVERY_MS {
                continue;
            }
            last_round = now_ms;
            if let Err(error) = sweep.round(now_ms).await {
                tracing::warn!(%error, "could not sweep the expired credit grants; the next round tries again");
            }
        }
    });
}

/// How often the auto top-up worker looks for attempts to (re)charge when
/// no actor asks.
const AUTO_TOP_UP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How often it refreshes which accounts have auto top-up on and starts
/// attempts for due accounts nobody asked for.
const AUTO_TOP_UP_SWEEP_MS: i64 = 30_000;

/// Starts the attempts account actors ask for and charges them; now and
/// then sweeps for due accounts (another instance's setting, a debit just
/// before a crash) and attempts whose worker stopped (their lease ran out).
fn start_auto_top_up_worker(billing: Billing, clock: Arc<dyn Clock>) {
    start_auto_top_up_follower(billing.clone());
    let Some(mut requests) = billing.registry.auto_triggers().take_requests() else {
        return;
    };
    actix_rt::spawn(async move {
        let mut last_sweep = i64::MIN;
        let mut asked = Vec::new();
        loop {
            let now_ms = clock.now_ms();
            if now_ms.saturating_sub(last_sweep) >= AUTO_TOP_UP_SWEEP_MS {
                last_sweep = now_ms;
                if let Err(error) = billing.sweep_auto_top_ups(now_ms).await {
                    tracing::warn!(%error, "could not sweep auto top-ups");
                }
            }
            while let Ok(account_id) = requests.try_recv() {
                asked.push(account_id);
            }
            for account_id in asked.drain(..) {
                if let Err(error) = billing.request_auto_top_up(account_id, now_ms).await {
                    tracing::warn!(%account_id, %error, "could not start an auto top-up");
                    billing.registry.auto_triggers().settled(account_id, 0);
                }
            }
            if let Err(error) = billing.run_auto_top_ups().await {
                tracing::warn!(%error, "could not run auto top-ups");
            }
            if let Ok(Some(account_id)) =
                actix_rt::time::timeout(AUTO_TOP_UP_INTERVAL, requests.recv()).await
            {
                asked.push(account_id);
            }
        }
    });
}

/// Follows the auto top-up settings other processes change (the CLI, or
/// another instance), as their change notes arrive: the live account
/// actors then ask by the new terms within a second, not at the next sweep.
fn start_auto_top_up_follower(billing: Billing) {
    let Some(mut changes) = billing.store.take_auto_top_up_changes() else {
        return;
    };
    actix_rt::spawn(async move {
        while let Some(account_id) = changes.recv().await {
            match billing.store.auto_top_up().auto_settings(account_id).await {
                Ok(Some(settings)) => billing.registry.auto_triggers().follow(&settings),
                Ok(None) => {}
                Err(error) => {
                    // The next sweep reads every setting again.
                    tracing::warn!(%account_id, %error, "could not read a changed auto top-up setting");
                }
            }
        }
    });
}

/// One clear line at start-up: where the server is, its database and page,
/// and what is on and off (each "off" with the variable that turns it on).
struct StartSummary {
    address: String,
    database: String,
    page: String,
    features: Vec<String>,
}

impl StartSummary {
    fn of(settings: &Settings, local: std::net::SocketAddr) -> StartSummary {
        let address = format!("http://{local}");
        let page = format!(
            "{}/account",
            settings
                .server
                .public_url
                .clone()
                .unwrap_or_else(|| address.clone())
        );
        let on_off = |name: &str, on: bool, variable: &str| {
            if on {
                format!("{name}=on")
            } else {
                format!("{name}=off (set {variable})")
            }
        };
        let metrics = match (
            &settings.access.metrics_bind,
            &settings.access.metrics_token,
        ) {
            (Some(bind), _) => format!("metrics=on at {bind}"),
            (None, Some(_)) => "metrics=on (with the token)".to_string(),
            (None, None) => on_off(
                "metrics",
                false,
                "SMS_CREDIT_METRICS_TOKEN or SMS_CREDIT_METRICS_BIND",
            ),
        };
        StartSummary {
            address,
            database: settings.database.location.to_string(),
            page,
            features: vec![
                on_off(
                    "admin_api",
                    settings.access.admin_token.is_some(),
                    "SMS_CREDIT_ADMIN_TOKEN",
                ),
                on_off(
                    "host_api",
                    settings.access.api_key.is_some(),
                    "SMS_CREDIT_API_KEY",
                ),
                on_off(
                    "stripe",
                    settings.stripe.is_some(),
                    "SMS_CREDIT_STRIPE_SECRET_KEY",
                ),
                on_off(
                    "twilio",
                    settings.twilio.is_some(),
                    "SMS_CREDIT_TWILIO_ACCOUNT_SID",
                ),
                metrics,
            ],
        }
    }

    fn log(&self) {
        tracing::info!(
            address = %self.address,
            database = %self.database,
            page = %self.page,
            "sms-credit is serving; {}",
            self.features.join(", ")
        );
    }
}

/// Stops a running server gracefully, feeds first.
#[derive(Clone)]
pub struct Stopper {
    handle: ServerHandle,
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Stopper {
    pub async fn stop(&self) {
        let _ = self.stopping.send(true);
        self.handle.stop(true).await;
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); answers which.
async fn wait_for_stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; stop with the handle only");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}

/// The running server.
pub struct Application {
    port: u16,
    server: Server,
    /// Tells open feeds the server is stopping.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// The metrics address's port and server, when there is one.
    metrics: Option<(u16, ServerHandle)>,
    /// Sign-in codes' texts after their answers: awaited when stopping.
    code_texts: Arc<crate::code_texts::CodeTexts>,
    core: Core,
}

/// Headers on every answer (where a handler set none of its own): no
/// content sniffing, and nothing kept by a cache — answers carry balances,
/// tokens and tickets; the page and its script say `no-cache` themselves.
fn common_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((actix_web::http::header::CACHE_CONTROL, "no-store"))
}

/// A server of its own for `GET /metrics` (no token: it is for a
/// Prometheus on a network the public cannot reach), like an exporter's.
fn metrics_server(
    state: web::Data<AppState>,
    listener: TcpListener,
) -> std::io::Result<(u16, ServerHandle)> {
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(common_headers())
            .route("/metrics", web::get().to(routes::metrics::metrics))
            .default_service(web::to(|| async {
                error::ApiError::NotFound("this address serves only /metrics".into())
                    .error_response()
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(port, "metrics listening");
    Ok((port, handle))
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
        let local = listener.local_addr()?;
        let port = local.port();
        let summary = StartSummary::of(&settings, local);
        // Bound before anything starts, so that a taken address stops the start.
        let metrics_listener = match &settings.access.metrics_bind {
            Some(address) => Some(TcpListener::bind(address).map_err(|error| {
                std::io::Error::other(format!(
                    "cannot listen on SMS_CREDIT_METRICS_BIND {address}: {error}"
                ))
            })?),
            None => None,
        };
        let core = Core::start(&settings, Arc::clone(&clock)).map_err(std::io::Error::other)?;
        let http_workers = settings.server.http_workers;
        let (stopping, stopping_receiver) = tokio::sync::watch::channel(false);
        let stopping = Arc::new(stopping);
        let limits = Arc::new(Limits::new(
            settings.access.anonymous_calls_per_minute,
            crate::limits::Proxies {
                trusted: settings.access.trusted_proxies.clone(),
                header: settings.access.forwarded_header,
            },
        ));
        let sign_in_codes = Arc::new(crate::telemetry::SignInCodeCounts::default());
        let code_texts = Arc::new(crate::code_texts::CodeTexts::new(
            CODE_TEXTS_AT_ONCE,
            Arc::clone(&sign_in_codes),
        ));
        let state = web::Data::new(AppState {
            settings,
            store: core.store.clone(),
            registry: core.registry.clone(),
            billing: core.billing.clone(),
            messaging: core.messaging.clone(),
            stripe_supervisor: core.stripe_supervisor.clone(),
            sms_supervisor: core.sms_supervisor.clone(),
            clock: Arc::clone(&clock),
            http_metrics: Arc::new(HttpMetrics::new()),
            sign_in_codes,
            code_texts: Arc::clone(&code_texts),
            webhook_metrics: Arc::default(),
            limits,
            books_reads: crate::limits::BooksReads::default(),
            feed_slots: Arc::default(),
            stopping: stopping_receiver,
        });
        start_instance_jobs(
            core.store.clone(),
            core.messaging.clone(),
            Arc::clone(&clock),
            state.settings.database.instance_timeout,
            Arc::clone(&core.left),
        );
        crate::webhooks::start_delivery_worker(
            core.store.clone(),
            Arc::new(crate::webhooks::WebhookSender::new(
                state.settings.webhooks.allow_private,
            )),
            Arc::clone(&clock),
            Arc::clone(&state.webhook_metrics),
            state.settings.webhooks.retention,
        );
        start_expiry_sweep(core.registry.clone(), Arc::clone(&clock));
        if let Some(messaging) = core.messaging.clone() {
            start_notice_worker(messaging.clone());
            start_messaging_jobs(messaging, Arc::clone(&clock));
        }
        if let Some(billing) = core.billing.clone() {
            start_billing_jobs(billing.clone(), Arc::clone(&clock));
            start_waiting_event_sweep(core.stripe_supervisor.clone(), Arc::clone(&clock));
            start_legacy_refund_sweep(billing.clone(), Arc::clone(&clock));
            start_auto_top_up_worker(billing, Arc::clone(&clock));
        }
        let metrics = match metrics_listener {
            Some(listener) => Some(metrics_server(state.clone(), listener)?),
            None => None,
        };
        // The request middleware counts into these (it needs nothing else).
        let http_metrics = web::Data::from(Arc::clone(&state.http_metrics));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(http_metrics.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(64 * 1024)
                        .error_handler(error::json_error),
                )
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .app_data(web::QueryConfig::default().error_handler(error::query_error))
                .configure(routes::configure)
                .wrap(common_headers())
                .wrap_fn(telemetry::observe)
        })
        .workers(http_workers)
        // SIGTERM and Ctrl-C are handled in `run_until_stopped`: both graceful.
        .disable_signals()
        // On SIGTERM/SIGINT: stop accepting, give requests in flight (and
        // open feeds) this long, then the core flushes the last commit.
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
        tracing::info!(port, "listening");
        summary.log();
        Ok(Application {
            port,
            server,
            stopping,
            metrics,
            code_texts,
            core,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store the server writes to (for tests' switches).
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// The port of the metrics address, when there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// A handle that stops the server (gracefully with `stop(true)`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Stops the server as a signal does: feeds are told (1001, where to
    /// resume), then it stops accepting and lets requests finish.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            handle: self.server.handle(),
            stopping: self.stopping.clone(),
        }
    }

    /// Serves until stopped (by the handle or a signal): stops accepting,
    /// finishes requests in flight, waits (bounded) for sign-in codes'
    /// texts in flight, then flushes the last commit.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stopper = self.stopper();
        // SIGTERM and Ctrl-C both stop gracefully: feeds are told first (so
        // their clients reconnect elsewhere at once instead of waiting out
        // the shutdown timeout), then the server stops accepting and lets
        // requests in flight finish.
        actix_rt::spawn(async move {
            let signal = wait_for_stop_signal().await;
            tracing::info!(signal, "stopping gracefully");
            stopper.stop().await;
        });
        let served = self.server.await;
        // Texts of codes already answered: sent, or counted as failed.
        self.code_texts.finish(CODE_TEXTS_AT_STOP).await;
        if let Some((_, metrics)) = self.metrics {
            metrics.stop(true).await;
        }
        self.core.shutdown().await;
        served
    }
}

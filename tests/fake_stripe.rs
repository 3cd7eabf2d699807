//! A small fake of Stripe's API on a free loopback port, answering the
//! endpoints the product calls with objects built from Stripe's own
//! example objects (`tests/fixtures/stripe/fixtures.json`, MIT, with its
//! licence beside it), honouring Idempotency-Key,
//! recording every request, and declining or asking for authentication on
//! demand. Also builds webhook events from the same fixtures and signs them
//! as Stripe does.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

pub const WEBHOOK_SECRET: &str = "whsec_test_secret";

/// What the fake does with the next off-session PaymentIntents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeMode {
    Succeed,
    Decline,
    RequireAuthentication,
    ServerError,
    /// Refuses the API key (a 401, Stripe's own body): nothing charged.
    KeyRefused,
    /// Charges, and keeps the answer for the Idempotency-Key, but the
    /// answer is lost on the way (a 500): a retry with the key gets it.
    AnswerLost,
    /// Charges, keeps the answer for the key, and answers only when the
    /// test calls `release`; meanwhile a request repeating the key is
    /// answered as Stripe answers a key whose first request is still in
    /// progress (409, `idempotency_error`), and afterwards with the answer.
    Held,
}

/// What a charge's running total of refunds (`amount_refunded`) does when
/// one of its refunds fails: Stripe's documents do not say, so the
/// service may assume neither, and the fake serves both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedRefunds {
    /// The failed refund stays in the total ($3 refunded and failed, then
    /// $2 more: 500¢).
    StayInTotal,
    /// The failed refund leaves the total ($3 refunded and failed, then $2
    /// more: 200¢).
    LeaveTheTotal,
}

/// How much of a charge's refunds its `charge.refunded` event lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// All of them (`has_more` false), as older API versions embed them.
    All,
    /// None: the field is left out, as current API versions do.
    Absent,
    /// The newest `n` of them, with `has_more` true when there are more.
    Newest(usize),
}

/// The card every fake payment is made with (Stripe's example card).
pub const SAVED_CARD: &str = "pm_card_visa_saved";

/// One request the product made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

struct State {
    fixtures: Value,
    requests: Vec<Recorded>,
    next_id: u64,
    charge_mode: ChargeMode,
    /// Idempotency-Key → the answer given the first time.
    answered: HashMap<String, (u16, Value)>,
    /// Keys whose first request is still being answered (held).
    in_progress: std::collections::HashSet<String>,
    /// Answers Stripe gave with a 409 (a key's first request in progress).
    conflicts: u64,
    /// Charges actually made (not replayed from an idempotency key).
    charges_made: u64,
    /// Whether retrieving a PaymentIntent fails (Stripe unavailable).
    retrieve_fails: bool,
    /// PaymentIntents are answered without their charge (no receipt yet).
    receipts_withheld: bool,
    /// Asks for a receipt (a PaymentIntent with its charge) wait for
    /// [`FakeStripe::release_receipts`] before they are answered.
    receipts_held: bool,
    /// Whether every request fails, with nothing done (Stripe unreachable).
    unreachable: bool,
    /// Whether the Search API answers 429 (its rate limit reached).
    search_limited: bool,
    /// Whether every request answers 429 before anything else is looked
    /// at (Stripe's rate limit, met before a key's stored answer).
    rate_limited: bool,
    /// Every PaymentIntent made, for the Search API.
    intents: Vec<Value>,
    /// Refunds actually made (not replayed from an idempotency key).
    refunds_made: u64,
    /// Whether refunds are refused (as for a charge disputed or refunded
    /// in full already).
    refuse_refunds: bool,
    /// Whether a refund is made but its answer lost on the way (a 500;
    /// kept for the Idempotency-Key, so a retry with the key gets it).
    refund_answer_lost: bool,
    /// Every refund made, for `GET /v1/refunds`.
    refunds: Vec<Value>,
    /// The most items a list page holds, below what was asked for (`None`:
    /// as many as asked, up to Stripe's 100), so a client is seen to
    /// follow `has_more`.
    page_size: Option<usize>,
    /// The status new refunds are made with (`succeeded`; `pending` for a
    /// refund that settles later, and may fail).
    refund_status: String,
    /// What a charge's `amount_refunded` does when one of its refunds
    /// fails (Stripe does not say; both are served).
    failed_refunds: FailedRefunds,
    /// Whether listing refunds fails with a 500 (the rest answers).
    refund_lists_fail: bool,
    /// The PaymentIntents whose refunds Stripe does not list, each with
    /// the status it answers instead (see [`refusal_of_a_list`]), and how
    /// many times it did not list them.
    refund_lists_refused_for: HashMap<String, (u16, u64)>,
    /// Where Checkout pages are (`None`: Stripe's made-up host, which a
    /// browser cannot open; set: this fake serves them).
    checkout_base: Option<String>,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    gate: Arc<tokio::sync::Semaphore>,
    /// Where held asks for a receipt wait (see `hold_receipts`).
    receipt_gate: Arc<tokio::sync::Semaphore>,
}

/// The receipt link the fake's charge of `payment_intent` carries (shaped
/// like Stripe's).
pub fn receipt_url(payment_intent: &str) -> String {
    format!("https://pay.stripe.com/receipts/payment/{payment_intent}")
}

pub fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/stripe/fixtures.json"))
        .expect("the Stripe fixtures in tests/fixtures/stripe are JSON")
}

fn resource(fixtures: &Value, name: &str) -> Value {
    fixtures["resources"][name].clone()
}

fn metadata_from(form: &[(String, String)], prefix: &str) -> Value {
    let mut metadata = serde_json::Map::new();
    for (key, value) in form {
        if let Some(name) = key
            .strip_prefix(&format!("{prefix}["))
            .and_then(|rest| rest.strip_suffix(']'))
        {
            metadata.insert(name.to_string(), json!(value));
        }
    }
    Value::Object(metadata)
}

/// What Stripe answers instead of a list of `payment_intent`'s refunds,
/// with `status`, as its API says it: 404 `resource_missing` (it knows no
/// such PaymentIntent), 401 (the API key is not one it knows), 403 (a
/// restricted key without the permission), another 4xx (a refusal of the
/// request for another reason), or a server error.
fn refusal_of_a_list(status: u16, payment_intent: &str) -> Value {
    let log_url = "https://dashboard.stripe.com/test/logs/req_fake_list?t=1795253400";
    match status {
        404 => json!({"error": {
            "code": "resource_missing",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "message": format!("No such payment_intent: '{payment_intent}'"),
            "param": "payment_intent",
            "request_log_url": log_url,
            "type": "invalid_request_error"}}),
        401 => json!({"error": {
            "message": "Invalid API Key provided: sk_test_********fake",
            "type": "invalid_request_error"}}),
        403 => json!({"error": {
            "message": "The provided key 'rk_test_********fake' does not have the required \
                        permissions for this endpoint on account 'acct_fake'. Having the \
                        'rak_refund_read' permission would allow this request to continue.",
            "request_log_url": log_url,
            "type": "invalid_request_error"}}),
        400..=499 => json!({"error": {
            "message": "fake: this payment's refunds cannot be listed",
            "request_log_url": log_url,
            "type": "invalid_request_error"}}),
        _ => {
            json!({"error": {"type": "api_error", "message": "fake: this payment's refunds failed"}})
        }
    }
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let state = Arc::new(Mutex::new(State {
            fixtures: fixtures(),
            requests: Vec::new(),
            next_id: 1,
            charge_mode: ChargeMode::Succeed,
            answered: HashMap::new(),
            in_progress: std::collections::HashSet::new(),
            conflicts: 0,
            charges_made: 0,
            retrieve_fails: false,
            receipts_withheld: false,
            receipts_held: false,
            unreachable: false,
            search_limited: false,
            rate_limited: false,
            intents: Vec::new(),
            refunds_made: 0,
            refuse_refunds: false,
            refund_answer_lost: false,
            refunds: Vec::new(),
            page_size: None,
            refund_status: "succeeded".to_string(),
            failed_refunds: FailedRefunds::StayInTotal,
            refund_lists_fail: false,
            refund_lists_refused_for: HashMap::new(),
            checkout_base: None,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = web::Data::from(Arc::clone(&state));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let gate_data = web::Data::from(Arc::clone(&gate));
        let receipt_gate = Arc::new(tokio::sync::Semaphore::new(0));
        let receipt_gate_data = web::Data::new(ReceiptGate(Arc::clone(&receipt_gate)));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(gate_data.clone())
                .app_data(receipt_gate_data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        FakeStripe {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
            gate,
            receipt_gate,
        }
    }

    /// Serves the hosted Checkout pages itself, so a browser sent to one
    /// lands on a page.
    pub fn serve_checkout_pages(&self) {
        self.state.lock().unwrap().checkout_base = Some(self.base_url.clone());
    }

    pub fn set_charge_mode(&self, mode: ChargeMode) {
        self.state.lock().unwrap().charge_mode = mode;
    }

    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }

    /// Lets held charges answer (and every later one, until the mode changes).
    pub fn release(&self) {
        self.gate.add_permits(1_000_000);
    }

    /// PaymentIntents are answered without a charge (Stripe has none yet).
    pub fn set_receipts_withheld(&self, withheld: bool) {
        self.state.lock().unwrap().receipts_withheld = withheld;
    }

    /// Asks for a receipt are recorded, then wait to be answered until
    /// [`FakeStripe::release_receipts`] (as a slow Stripe would leave them).
    pub fn hold_receipts(&self) {
        self.state.lock().unwrap().receipts_held = true;
    }

    /// Answers the held asks for a receipt, and every later one.
    pub fn release_receipts(&self) {
        self.state.lock().unwrap().receipts_held = false;
        self.receipt_gate.add_permits(1_000_000);
    }

    pub fn set_retrieve_fails(&self, fails: bool) {
        self.state.lock().unwrap().retrieve_fails = fails;
    }

    pub fn charges_made(&self) -> u64 {
        self.state.lock().unwrap().charges_made
    }

    /// How many requests were answered 409: their key's first request
    /// was still in progress.
    pub fn conflicts(&self) -> u64 {
        self.state.lock().unwrap().conflicts
    }

    pub fn refunds_made(&self) -> u64 {
        self.state.lock().unwrap().refunds_made
    }

    /// Refunds are refused with a 400 (or made again).
    pub fn set_refuse_refunds(&self, refuse: bool) {
        self.state.lock().unwrap().refuse_refunds = refuse;
    }

    /// Refunds are made but their answer is lost on the way (or answered
    /// again).
    pub fn set_refund_answer_lost(&self, lost: bool) {
        self.state.lock().unwrap().refund_answer_lost = lost;
    }

    /// The status refunds are made with from now on (`pending`: Stripe
    /// takes the refund and settles it later).
    pub fn set_refund_status(&self, status: &str) {
        self.state.lock().unwrap().refund_status = status.to_string();
    }

    /// What a charge's `amount_refunded` does when one of its refunds
    /// fails, from now on.
    pub fn set_failed_refunds(&self, behaviour: FailedRefunds) {
        self.state.lock().unwrap().failed_refunds = behaviour;
    }

    /// `GET /v1/refunds` answers 500 (or answers again); nothing else does.
    pub fn set_refund_lists_fail(&self, fail: bool) {
        self.state.lock().unwrap().refund_lists_fail = fail;
    }

    /// `GET /v1/refunds` of `payment_intent` answers 404
    /// `resource_missing` (Stripe knows no such PaymentIntent) from now on;
    /// `None`: every PaymentIntent's refunds are listed again.
    pub fn set_refund_lists_refused_for(&self, payment_intent: Option<&str>) {
        match payment_intent {
            Some(intent) => self.set_refund_lists_answer_for(intent, 404),
            None => {
                let mut state = self.state.lock().unwrap();
                for (status, _) in state.refund_lists_refused_for.values_mut() {
                    *status = 200;
                }
            }
        }
    }

    /// `GET /v1/refunds` of `payment_intent` answers 500 (Stripe failing
    /// for that payment alone); counted with the refusals.
    pub fn set_refund_lists_failing_for(&self, payment_intent: &str) {
        self.set_refund_lists_answer_for(payment_intent, 500);
    }

    /// `GET /v1/refunds` of `payment_intent` answers `status`, with the
    /// body Stripe gives it (see [`refusal_of_a_list`]), from now on; 200:
    /// its refunds are listed again.
    pub fn set_refund_lists_answer_for(&self, payment_intent: &str, status: u16) {
        let mut state = self.state.lock().unwrap();
        let refused = state
            .refund_lists_refused_for
            .entry(payment_intent.to_string())
            .or_insert((status, 0));
        refused.0 = status;
    }

    /// How many lists of refunds were not given, of every PaymentIntent
    /// (see [`FakeStripe::set_refund_lists_answer_for`]).
    pub fn refund_lists_refused(&self) -> u64 {
        let state = self.state.lock().unwrap();
        state
            .refund_lists_refused_for
            .values()
            .map(|(_, count)| count)
            .sum()
    }

    /// How many lists of `payment_intent`'s refunds were not given (also
    /// after it is listed again).
    pub fn refund_lists_refused_of(&self, payment_intent: &str) -> u64 {
        let state = self.state.lock().unwrap();
        state
            .refund_lists_refused_for
            .get(payment_intent)
            .map_or(0, |(_, count)| *count)
    }

    /// A refund made in Stripe's dashboard (no metadata of this service's)
    /// of `cents` of a payment, `succeeded`: answers the refund object.
    pub fn refund_in_dashboard(&self, payment_intent: &str, charge: &str, cents: i64) -> Value {
        let mut state = self.state.lock().unwrap();
        let id = state.next_id;
        state.next_id += 1;
        let mut refund = resource(&state.fixtures, "refund");
        refund["id"] = json!(format!("re_dash{id}"));
        refund["amount"] = json!(cents);
        refund["charge"] = json!(charge);
        refund["payment_intent"] = json!(payment_intent);
        refund["metadata"] = json!({});
        refund["status"] = json!("succeeded");
        state.refunds.push(refund.clone());
        refund
    }

    /// Stripe fails a refund it had made (the card was closed, say):
    /// answers the refund object as it now stands.
    pub fn fail_refund(&self, refund_id: &str) -> Value {
        let mut state = self.state.lock().unwrap();
        let refund = state
            .refunds
            .iter_mut()
            .find(|refund| refund["id"] == json!(refund_id))
            .unwrap_or_else(|| panic!("the fake made no refund {refund_id}"));
        refund["status"] = json!("failed");
        refund["failure_reason"] = json!("expired_or_canceled_card");
        refund.clone()
    }

    /// A charge's `amount_refunded` as Stripe would show it now: its
    /// refunds in all, less those that failed if failures leave the total.
    pub fn amount_refunded(&self, payment_intent: &str) -> i64 {
        let behaviour = self.state.lock().unwrap().failed_refunds;
        self.refunds_of(payment_intent)
            .iter()
            .filter(|refund| {
                behaviour == FailedRefunds::StayInTotal
                    || !matches!(refund["status"].as_str(), Some("failed" | "canceled"))
            })
            .map(|refund| refund["amount"].as_i64().unwrap())
            .sum()
    }

    /// `charge.refunded` of a charge of `amount` cents, as Stripe would
    /// send it now: its running total as this fake keeps it, and as many
    /// of its refunds (newest first) as `listed` says.
    pub fn charge_refunded(
        &self,
        events: &mut EventFactory,
        charge: &str,
        payment_intent: &str,
        amount: i64,
        listed: Listed,
    ) -> String {
        let mut refunds = self.refunds_of(payment_intent);
        refunds.reverse();
        let total = refunds.len();
        let embedded = match listed {
            Listed::All => Some((refunds, false)),
            Listed::Absent => None,
            Listed::Newest(n) => Some((refunds.into_iter().take(n).collect(), total > n)),
        };
        events.charge_refunded_with(
            charge,
            payment_intent,
            amount,
            self.amount_refunded(payment_intent),
            embedded,
        )
    }

    /// The refunds made of a PaymentIntent, as Stripe's refund objects.
    pub fn refunds_of(&self, payment_intent: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .refunds
            .iter()
            .filter(|refund| refund["payment_intent"] == json!(payment_intent))
            .cloned()
            .collect()
    }

    /// The requests made with `method` to `path`.
    pub fn requests_with(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests(path)
            .into_iter()
            .filter(|request| request.method == method)
            .collect()
    }

    /// Lists answer at most `size` items a page (`None`: as many as asked).
    pub fn set_page_size(&self, size: Option<usize>) {
        self.state.lock().unwrap().page_size = size;
    }

    /// The Search API answers 429, as Stripe does past its rate limit (or
    /// answers again).
    pub fn set_search_limited(&self, limited: bool) {
        self.state.lock().unwrap().search_limited = limited;
    }

    /// Every request answers 429, as Stripe's rate limit does, and does
    /// nothing (or works again).
    pub fn set_rate_limited(&self, limited: bool) {
        self.state.lock().unwrap().rate_limited = limited;
    }

    /// Every request fails with a 500 and does nothing (or works again).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.state.lock().unwrap().unreachable = unreachable;
    }

    /// Forgets every idempotency key, as Stripe may once a key is older
    /// than 24 hours: a request with a forgotten key is a new request.
    pub fn prune_keys(&self) {
        self.state.lock().unwrap().answered.clear();
    }
}

/// `GET /v1/payment_intents/search?query=metadata['sms_credit_order_id']:'12'`:
/// the PaymentIntents made with that order id, as Stripe's search result.
fn search_intents(state: &State, query: &str) -> (u16, Value) {
    if state.search_limited {
        return (
            429,
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit",
                             "message": "Too many requests hit the API too quickly."}}),
        );
    }
    let wanted = query
        .strip_prefix("metadata['sms_credit_order_id']:'")
        .and_then(|rest| rest.strip_suffix('\''));
    let Some(order_id) = wanted else {
        return (
            400,
            json!({"error": {"type": "invalid_request_error", "message": format!("the fake searches only by order id, not {query}")}}),
        );
    };
    let data: Vec<Value> = state
        .intents
        .iter()
        .filter(|intent| intent["metadata"]["sms_credit_order_id"] == json!(order_id))
        .cloned()
        .collect();
    (
        200,
        json!({"object": "search_result", "url": "/v1/payment_intents/search",
               "has_more": false, "next_page": null, "total_count": data.len(), "data": data}),
    )
}

/// Where held asks for a receipt wait (its own type, beside the charges'
/// gate, so that the two are told apart in the app's data).
struct ReceiptGate(Arc<tokio::sync::Semaphore>);

async fn answer(
    state: web::Data<Mutex<State>>,
    gate: web::Data<tokio::sync::Semaphore>,
    receipt_gate: web::Data<ReceiptGate>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let path = request.path().to_string();
    if let Some(session_id) = path.strip_prefix("/c/pay/") {
        // The hosted Checkout page a browser is sent to.
        return HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\">\
             <title>Checkout</title></head><body><h1 id=\"checkout\">Pay {session_id}</h1></body></html>"
        ));
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let idempotency_key = request
        .headers()
        .get("Idempotency-Key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let asks_receipt = request.method() == awc::http::Method::GET
        && path.starts_with("/v1/payment_intents/")
        && request.query_string().contains("latest_charge");
    let (status, body, hold, hold_receipt) = {
        let mut state = state.lock().unwrap();
        let charges_before = state.charges_made;
        let (status, body) =
            answer_locked(&mut state, &request, &path, form, idempotency_key.clone());
        // Only a charge made now is held; while it is, its key is in
        // progress (a request repeating it is answered 409).
        let hold = state.charge_mode == ChargeMode::Held && state.charges_made > charges_before;
        if let (true, Some(key)) = (hold, &idempotency_key) {
            state.in_progress.insert(key.clone());
        }
        (status, body, hold, asks_receipt && state.receipts_held)
    };
    if hold_receipt {
        let _ = receipt_gate.0.acquire().await;
    }
    if hold {
        let _ = gate.acquire().await;
        if let Some(key) = &idempotency_key {
            state.lock().unwrap().in_progress.remove(key);
        }
    }
    let mut response = HttpResponse::build(awc::http::StatusCode::from_u16(status).unwrap());
    if status == 409 {
        // As Stripe marks a conflict worth asking again about.
        response.insert_header(("Stripe-Should-Retry", "true"));
    }
    response.json(body)
}

fn answer_locked(
    state: &mut State,
    request: &HttpRequest,
    path: &str,
    form: Vec<(String, String)>,
    idempotency_key: Option<String>,
) -> (u16, Value) {
    let path = path.to_string();
    state.requests.push(Recorded {
        method: request.method().to_string(),
        path: path.clone(),
        form: form.clone(),
        idempotency_key: idempotency_key.clone(),
    });
    if state.unreachable {
        return (
            500,
            json!({"error": {"type": "api_error", "message": "fake: Stripe cannot be reached"}}),
        );
    }
    if state.rate_limited {
        return (
            429,
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit",
                             "message": "Too many requests hit the API too quickly."}}),
        );
    }
    if let Some(key) = idempotency_key
        .as_ref()
        .filter(|key| state.in_progress.contains(*key))
    {
        state.conflicts += 1;
        return (
            409,
            json!({"error": {"type": "idempotency_error", "message": format!(
                "There is currently another in-progress request using this Idempotent Key \
                 (that probably means you submitted twice, and the other request is still \
                 going through): {key}. Please try again later."
            )}}),
        );
    }
    if let Some((status, body)) = idempotency_key
        .as_ref()
        .and_then(|key| state.answered.get(key))
        .cloned()
    {
        return (status, body);
    }
    if request.method() == awc::http::Method::GET && path == "/v1/payment_intents/search" {
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(request.query_string()).unwrap_or_default();
        let query = field(&query, "query").unwrap_or_default().to_string();
        return search_intents(state, &query);
    }
    if request.method() == awc::http::Method::GET
        && path == "/v1/refunds"
        && state.refund_lists_fail
    {
        return (
            500,
            json!({"error": {"type": "api_error", "message": "fake: listing refunds failed"}}),
        );
    }
    if request.method() == awc::http::Method::GET && path == "/v1/refunds" {
        // `GET /v1/refunds?payment_intent=pi_…`: a list, newest first, a
        // page of `limit` (10 unless asked) after `starting_after`.
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(request.query_string()).unwrap_or_default();
        let wanted = field(&query, "payment_intent").map(str::to_string);
        if let Some((status, count)) = wanted
            .as_deref()
            .and_then(|intent| state.refund_lists_refused_for.get_mut(intent))
            .filter(|(status, _)| *status != 200)
        {
            *count += 1;
            let status = *status;
            return (
                status,
                refusal_of_a_list(status, wanted.as_deref().unwrap_or_default()),
            );
        }
        let limit = field(&query, "limit")
            .and_then(|limit| limit.parse::<usize>().ok())
            .unwrap_or(10)
            .min(100)
            .min(state.page_size.unwrap_or(100));
        let after = field(&query, "starting_after").map(str::to_string);
        let all: Vec<Value> = state
            .refunds
            .iter()
            .rev()
            .filter(|refund| {
                wanted
                    .as_deref()
                    .is_none_or(|intent| refund["payment_intent"] == json!(intent))
            })
            .cloned()
            .collect();
        let from = match &after {
            Some(after) => match all.iter().position(|refund| refund["id"] == json!(after)) {
                Some(at) => at + 1,
                None => {
                    return (
                        400,
                        json!({"error": {"type": "invalid_request_error",
                               "message": format!("No such refund: '{after}'")}}),
                    )
                }
            },
            None => 0,
        };
        let data: Vec<Value> = all.iter().skip(from).take(limit).cloned().collect();
        let has_more = from + data.len() < all.len();
        return (
            200,
            json!({"object": "list", "url": "/v1/refunds", "has_more": has_more, "data": data}),
        );
    }
    if request.method() == awc::http::Method::GET {
        return match path.strip_prefix("/v1/payment_intents/") {
            Some(_) if state.retrieve_fails => (
                500,
                json!({"error": {"type": "api_error", "message": "fake outage"}}),
            ),
            Some(intent_id) => {
                let mut intent = resource(&state.fixtures, "payment_intent");
                let mut method = resource(&state.fixtures, "payment_method");
                method["id"] = json!(SAVED_CARD);
                intent["id"] = json!(intent_id);
                intent["status"] = json!("succeeded");
                intent["payment_method"] = method;
                // Asked with its charge expanded (for the receipt): the
                // charge as Stripe gives it, with its receipt's link.
                if request.query_string().contains("latest_charge") {
                    intent["latest_charge"] = if state.receipts_withheld {
                        Value::Null
                    } else {
                        let mut charge = resource(&state.fixtures, "charge");
                        charge["id"] = json!(format!("ch_{}", intent_id.trim_start_matches("pi_")));
                        charge["payment_intent"] = json!(intent_id);
                        charge["receipt_url"] = json!(receipt_url(intent_id));
                        charge
                    };
                }
                (200, intent)
            }
            None => (
                404,
                json!({"error": {"type": "invalid_request_error", "message": format!("no fake for GET {path}")}}),
            ),
        };
    }
    let id = state.next_id;
    state.next_id += 1;
    let (status, body) = match path.as_str() {
        "/v1/customers" => {
            let mut customer = resource(&state.fixtures, "customer");
            customer["id"] = json!(format!("cus_fake{id}"));
            customer["email"] = json!(field(&form, "email"));
            customer["phone"] = json!(field(&form, "phone"));
            customer["metadata"] = metadata_from(&form, "metadata");
            (200, customer)
        }
        "/v1/checkout/sessions" => {
            let mut session = resource(&state.fixtures, "checkout.session");
            let session_id = format!("cs_test_fake{id}");
            let unit_amount: i64 = field(&form, "line_items[0][price_data][unit_amount]")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let quantity: i64 = field(&form, "line_items[0][quantity]")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let base = state
                .checkout_base
                .clone()
                .unwrap_or_else(|| "https://checkout.stripe.test".to_string());
            session["url"] = json!(format!("{base}/c/pay/{session_id}"));
            session["id"] = json!(session_id);
            session["customer"] = json!(field(&form, "customer"));
            session["amount_total"] = json!(unit_amount * quantity);
            session["amount_subtotal"] = json!(unit_amount * quantity);
            session["metadata"] = metadata_from(&form, "metadata");
            session["client_reference_id"] = json!(field(&form, "client_reference_id"));
            session["payment_intent"] = Value::Null;
            (200, session)
        }
        "/v1/refunds" if state.refuse_refunds => (
            400,
            json!({"error": {"type": "invalid_request_error", "code": "charge_disputed",
                "message": "Charge ch_fake has been disputed; it cannot be refunded."}}),
        ),
        "/v1/refunds" => {
            state.refunds_made += 1;
            let mut refund = resource(&state.fixtures, "refund");
            refund["id"] = json!(format!("re_fake{id}"));
            refund["amount"] = json!(field(&form, "amount").and_then(|v| v.parse::<i64>().ok()));
            refund["payment_intent"] = json!(field(&form, "payment_intent"));
            refund["metadata"] = metadata_from(&form, "metadata");
            refund["status"] = json!(state.refund_status);
            state.refunds.push(refund.clone());
            if state.refund_answer_lost {
                if let Some(key) = &idempotency_key {
                    state.answered.insert(key.clone(), (200, refund));
                }
                return (
                    500,
                    json!({"error": {"type": "api_error", "message": "the answer was lost"}}),
                );
            }
            (200, refund)
        }
        "/v1/payment_intents" => {
            let mut intent = resource(&state.fixtures, "payment_intent");
            let amount: i64 = field(&form, "amount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            intent["id"] = json!(format!("pi_fake{id}"));
            intent["amount"] = json!(amount);
            intent["customer"] = json!(field(&form, "customer"));
            intent["payment_method"] = json!(field(&form, "payment_method"));
            intent["metadata"] = metadata_from(&form, "metadata");
            match state.charge_mode {
                ChargeMode::Succeed => {
                    state.charges_made += 1;
                    intent["status"] = json!("succeeded");
                    intent["amount_received"] = json!(amount);
                    state.intents.push(intent.clone());
                    (200, intent)
                }
                ChargeMode::Decline => {
                    intent["status"] = json!("requires_payment_method");
                    state.intents.push(intent.clone());
                    (
                        402,
                        json!({"error": {
                            "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                            "message": "Your card was declined.", "payment_intent": intent
                        }}),
                    )
                }
                ChargeMode::RequireAuthentication => {
                    intent["status"] = json!("requires_payment_method");
                    (
                        402,
                        json!({"error": {
                            "type": "card_error", "code": "authentication_required",
                            "message": "This payment requires authentication.", "payment_intent": intent
                        }}),
                    )
                }
                ChargeMode::ServerError => (
                    500,
                    json!({"error": {"type": "api_error", "message": "fake outage"}}),
                ),
                ChargeMode::KeyRefused => (
                    401,
                    json!({"error": {
                        "message": "Invalid API Key provided: sk_live_********fake",
                        "type": "invalid_request_error"}}),
                ),
                ChargeMode::AnswerLost => {
                    state.charges_made += 1;
                    intent["status"] = json!("succeeded");
                    intent["amount_received"] = json!(amount);
                    state.intents.push(intent.clone());
                    if let Some(key) = &idempotency_key {
                        state.answered.insert(key.clone(), (200, intent));
                    }
                    return (
                        500,
                        json!({"error": {"type": "api_error", "message": "the answer was lost"}}),
                    );
                }
                ChargeMode::Held => {
                    state.charges_made += 1;
                    intent["status"] = json!("succeeded");
                    intent["amount_received"] = json!(amount);
                    state.intents.push(intent.clone());
                    (200, intent)
                }
            }
        }
        _ => (
            404,
            json!({"error": {"type": "invalid_request_error", "message": format!("no fake for {path}")}}),
        ),
    };
    // As Stripe: an answer is kept for its key only once the request
    // started executing (never a server error, nor a key it refused).
    if let Some(key) = idempotency_key {
        if status < 500 && status != 401 && status != 403 {
            state.answered.insert(key, (status, body.clone()));
        }
    }
    (status, body)
}

/// Builds Stripe webhook events from the fixtures.
pub struct EventFactory {
    fixtures: Value,
    next_id: u64,
    /// The refunds `charge_refunded` made of each charge, oldest first: a
    /// refund made in Stripe's dashboard for each rise of the total.
    refunds: HashMap<String, Vec<Value>>,
}

impl EventFactory {
    pub fn new() -> EventFactory {
        EventFactory {
            fixtures: fixtures(),
            next_id: 1,
            refunds: HashMap::new(),
        }
    }

    /// The refunds `charge_refunded` made of a charge, oldest first.
    pub fn refunds_of_charge(&self, charge_id: &str) -> Vec<Value> {
        self.refunds.get(charge_id).cloned().unwrap_or_default()
    }

    fn event(&mut self, event_type: &str, object: Value) -> String {
        let mut event = resource(&self.fixtures, "event");
        event["id"] = json!(format!("evt_fake{}", self.next_id));
        self.next_id += 1;
        event["type"] = json!(event_type);
        event["data"] = json!({ "object": object });
        event.to_string()
    }

    /// `checkout.session.completed` (paid) for a session the product created.
    pub fn checkout_completed(
        &mut self,
        session_id: &str,
        order_id: i64,
        customer: &str,
        amount_total: i64,
        payment_intent: &str,
    ) -> String {
        let mut session = resource(&self.fixtures, "checkout.session");
        session["id"] = json!(session_id);
        session["metadata"] = json!({"sms_credit_order_id": order_id.to_string()});
        session["customer"] = json!(customer);
        session["amount_total"] = json!(amount_total);
        session["payment_status"] = json!("paid");
        session["status"] = json!("complete");
        session["payment_intent"] = json!(payment_intent);
        self.event("checkout.session.completed", session)
    }

    pub fn checkout_expired(&mut self, session_id: &str, order_id: i64) -> String {
        let mut session = resource(&self.fixtures, "checkout.session");
        session["id"] = json!(session_id);
        session["metadata"] = json!({"sms_credit_order_id": order_id.to_string()});
        session["status"] = json!("expired");
        self.event("checkout.session.expired", session)
    }

    /// `checkout.session.async_payment_failed`: the payment (a bank debit,
    /// say) did not go through after the session completed.
    pub fn checkout_failed(&mut self, session_id: &str, order_id: i64) -> String {
        let mut session = resource(&self.fixtures, "checkout.session");
        session["id"] = json!(session_id);
        session["metadata"] = json!({"sms_credit_order_id": order_id.to_string()});
        session["status"] = json!("complete");
        session["payment_status"] = json!("unpaid");
        self.event("checkout.session.async_payment_failed", session)
    }

    pub fn payment_intent_succeeded(
        &mut self,
        intent_id: &str,
        amount: i64,
        customer: &str,
        metadata: Value,
    ) -> String {
        let mut intent = resource(&self.fixtures, "payment_intent");
        intent["id"] = json!(intent_id);
        intent["amount"] = json!(amount);
        intent["amount_received"] = json!(amount);
        intent["status"] = json!("succeeded");
        intent["customer"] = json!(customer);
        intent["payment_method"] = json!(SAVED_CARD);
        intent["metadata"] = metadata;
        self.event("payment_intent.succeeded", intent)
    }

    /// `charge.refunded` of a charge whose refunds now come to
    /// `amount_refunded` cents: a rise over what this factory refunded of
    /// the charge before is a refund of its own (made in Stripe's
    /// dashboard), and the charge lists all its refunds, newest first.
    pub fn charge_refunded(
        &mut self,
        charge_id: &str,
        payment_intent: &str,
        amount: i64,
        amount_refunded: i64,
    ) -> String {
        let made = self.refunds.entry(charge_id.to_string()).or_default();
        let before: i64 = made
            .iter()
            .map(|refund| refund["amount"].as_i64().unwrap())
            .sum();
        if amount_refunded > before {
            let mut refund = resource(&self.fixtures, "refund");
            refund["id"] = json!(format!("re_{charge_id}_{}", made.len() + 1));
            refund["amount"] = json!(amount_refunded - before);
            refund["charge"] = json!(charge_id);
            refund["payment_intent"] = json!(payment_intent);
            refund["metadata"] = json!({});
            refund["status"] = json!("succeeded");
            made.push(refund);
        }
        let mut listed = made.clone();
        listed.reverse();
        self.charge_refunded_with(
            charge_id,
            payment_intent,
            amount,
            amount_refunded,
            Some((listed, false)),
        )
    }

    /// `charge.refunded` of a charge: its running total, and the refunds
    /// it embeds with whether it has more (`None`: the field left out, as
    /// Stripe's current API versions do).
    pub fn charge_refunded_with(
        &mut self,
        charge_id: &str,
        payment_intent: &str,
        amount: i64,
        amount_refunded: i64,
        refunds: Option<(Vec<Value>, bool)>,
    ) -> String {
        let mut charge = resource(&self.fixtures, "charge");
        charge["id"] = json!(charge_id);
        charge["payment_intent"] = json!(payment_intent);
        charge["amount"] = json!(amount);
        charge["amount_captured"] = json!(amount);
        charge["amount_refunded"] = json!(amount_refunded);
        charge["refunded"] = json!(amount_refunded >= amount);
        match refunds {
            Some((data, has_more)) => {
                charge["refunds"]["data"] = json!(data);
                charge["refunds"]["has_more"] = json!(has_more);
                charge["refunds"]["url"] = json!(format!("/v1/charges/{charge_id}/refunds"));
            }
            None => {
                charge.as_object_mut().unwrap().remove("refunds");
            }
        }
        self.event("charge.refunded", charge)
    }

    /// `charge.refunded` whose charge lists its refunds (Stripe's refund
    /// objects, as the fake made them).
    pub fn charge_refunded_listing(
        &mut self,
        charge_id: &str,
        payment_intent: &str,
        amount: i64,
        amount_refunded: i64,
        refunds: Vec<Value>,
    ) -> String {
        self.charge_refunded_with(
            charge_id,
            payment_intent,
            amount,
            amount_refunded,
            Some((refunds, false)),
        )
    }

    /// `refund.updated` (or another `refund.*` type) of a refund object.
    pub fn refund_event(&mut self, event_type: &str, refund: Value) -> String {
        self.event(event_type, refund)
    }

    /// A `charge.dispute.*` event (`event_type`) of a dispute of
    /// `amount` cents of a charge, in `status`.
    pub fn dispute(
        &mut self,
        event_type: &str,
        dispute_id: &str,
        charge_id: &str,
        payment_intent: &str,
        amount: i64,
        status: &str,
    ) -> String {
        let mut dispute = resource(&self.fixtures, "dispute");
        dispute["id"] = json!(dispute_id);
        dispute["charge"] = json!(charge_id);
        dispute["payment_intent"] = json!(payment_intent);
        dispute["amount"] = json!(amount);
        dispute["status"] = json!(status);
        dispute["reason"] = json!("fraudulent");
        dispute["is_charge_refundable"] = json!(false);
        self.event(event_type, dispute)
    }

    /// `payment_method.detached`: the customer removed the card.
    pub fn payment_method_detached(&mut self, payment_method_id: &str) -> String {
        let mut method = resource(&self.fixtures, "payment_method");
        method["id"] = json!(payment_method_id);
        method["customer"] = Value::Null;
        self.event("payment_method.detached", method)
    }

    pub fn other(&mut self) -> String {
        let object = resource(&self.fixtures, "customer");
        self.event("customer.created", object)
    }

    /// An event Stripe sends around a payment that the product has no use
    /// for (`payment_intent.created`, `charge.succeeded`, `refund.created`,
    /// …): the fixture object named `resource_name` with the given fields set.
    pub fn companion(
        &mut self,
        event_type: &str,
        resource_name: &str,
        fields: &[(&str, Value)],
    ) -> String {
        let mut object = resource(&self.fixtures, resource_name);
        for (name, value) in fields {
            object[*name] = value.clone();
        }
        self.event(event_type, object)
    }
}

/// The `Stripe-Signature` header for a payload, as Stripe computes it.
pub fn sign(payload: &str, secret: &str, timestamp: i64) -> String {
    stripe_webhook::Webhook::generate_test_header(payload, secret, Some(timestamp))
}

//! A small fake of Twilio's Messages API on a free loopback port: it checks
//! basic auth, records every message, answers like Twilio (a queued message
//! resource, `price` null until told otherwise), lists the messages it
//! took (filtered by `To` and `From`, newest first, in pages), and fails on
//! demand: refusing, failing, or losing its answer with or without taking
//! the message.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use serde_json::json;
use sms_credit_actors::clock::{Clock, SystemClock};

pub const ACCOUNT_SID: &str = "ACfa4e0000000000000000000000000000";
pub const AUTH_TOKEN: &str = "twilio-auth-token";
pub const FROM: &str = "+15005550006";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    Accept,
    /// 400 with Twilio's error body (for example an unreachable number).
    Refuse,
    ServerError,
    /// Takes the message (it is recorded and listed), then drops the
    /// connection before answering: the sender cannot know it was taken.
    TakeThenDrop,
    /// Drops the connection without taking the message.
    DropUntaken,
}

#[derive(Clone, Debug)]
pub struct SentSms {
    pub sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    pub status_callback: Option<String>,
    /// When it was taken, by the fake's clock.
    pub created_at_ms: i64,
}

struct State {
    mode: SendMode,
    /// Messages whose body contains this wait for `gate` before they are answered.
    held: Option<String>,
    /// Messages waiting at the gate now.
    waiting: usize,
    /// Held messages are taken (recorded) before they wait, not after.
    take_before_hold: bool,
    /// The list of messages answers 500.
    lists_fail: bool,
    /// The status the list gives every message (`delivered` unless set).
    listed_status: Option<String>,
    /// Lists asked for so far.
    lists: usize,
    /// What "now" is for the messages taken (the app's clock in tests that
    /// move it).
    clock: Arc<dyn Clock>,
    /// Messages whose body contains this are refused as an unreachable
    /// number is, whatever the mode.
    refused: Option<String>,
    /// Numbers that texted STOP to the service's number: Twilio refuses to
    /// send to them (error 21610) until they text START.
    opted_out: Vec<String>,
    /// Attempts to send to an opted-out number, each refused.
    refused_opted_out: usize,
    /// The next sends are answered with these statuses (a 5xx or a 429:
    /// Twilio briefly unavailable), one each, first to last, and not taken.
    failing_next: std::collections::VecDeque<u16>,
    sent: Vec<SentSms>,
    prices: HashMap<String, String>,
    next_id: u64,
}

#[derive(Clone)]
pub struct FakeTwilio {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        let state = Arc::new(Mutex::new(State {
            mode: SendMode::Accept,
            held: None,
            waiting: 0,
            take_before_hold: false,
            lists_fail: false,
            listed_status: None,
            lists: 0,
            clock: Arc::new(SystemClock),
            refused: None,
            opted_out: Vec::new(),
            refused_opted_out: 0,
            failing_next: std::collections::VecDeque::new(),
            sent: Vec::new(),
            prices: HashMap::new(),
            next_id: 1,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = web::Data::from(Arc::clone(&state));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let shared_gate = web::Data::from(Arc::clone(&gate));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(shared_gate.clone())
                .service(
                    web::resource("/2010-04-01/Accounts/{account}/Messages.json")
                        .route(web::post().to(create_message))
                        .route(web::get().to(list_messages)),
                )
                .route(
                    "/2010-04-01/Accounts/{account}/Messages/{sid}.json",
                    web::get().to(fetch_message),
                )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        FakeTwilio {
            base_url: format!("http://127.0.0.1:{port}"),
            state,
            gate,
        }
    }

    /// From now on, messages whose body contains `text` are answered only
    /// after [`FakeTwilio::release`] (they are not recorded before).
    pub fn hold(&self, text: &str) {
        self.state.lock().unwrap().held = Some(text.to_string());
    }

    /// As [`FakeTwilio::hold`], but the messages are taken (recorded, and
    /// listed) at once: only Twilio's answer waits.
    pub fn hold_taken(&self, text: &str) {
        let mut state = self.state.lock().unwrap();
        state.held = Some(text.to_string());
        state.take_before_hold = true;
    }

    /// Whether the list of messages answers 500 from now on.
    /// The list gives every message this status (`None`: `delivered`).
    pub fn list_status(&self, status: Option<&str>) {
        self.state.lock().unwrap().listed_status = status.map(str::to_string);
    }

    pub fn fail_lists(&self, failing: bool) {
        self.state.lock().unwrap().lists_fail = failing;
    }

    /// How many times the list of messages was asked for.
    pub fn lists_asked(&self) -> usize {
        self.state.lock().unwrap().lists
    }

    /// Stamps the messages it takes by `clock` (the app's, when a test moves it).
    pub fn use_clock(&self, clock: Arc<dyn Clock>) {
        self.state.lock().unwrap().clock = clock;
    }

    /// Lets held messages (and any later ones) through.
    pub fn release(&self) {
        self.state.lock().unwrap().held = None;
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// Lets one held message through (those held after it stay held).
    pub fn let_one_through(&self) {
        self.gate.add_permits(1);
    }

    /// Waits (up to 10 s) until `count` messages are held, waiting to be
    /// answered.
    pub async fn wait_for_held(&self, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting = self.state.lock().unwrap().waiting;
            if waiting == count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{waiting} messages held, not {count}, within 10 s"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Waits (up to 10 s) until at least `count` messages were sent, and
    /// answers them.
    pub async fn wait_for(&self, count: usize) -> Vec<SentSms> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let sent = self.sent();
            if sent.len() >= count {
                return sent;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {count} messages were sent: {sent:?}",
                sent.len()
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// From now on, messages whose body contains `text` are refused (400,
    /// an unreachable number), whatever the mode (`None`: none).
    pub fn refuse(&self, text: Option<&str>) {
        self.state.lock().unwrap().refused = text.map(str::to_string);
    }

    /// The number texted STOP to the service's number (`true`) or START
    /// (`false`): as Twilio does, messages to it are refused with error
    /// 21610 while it is opted out.
    pub fn opt_out(&self, number: &str, opted_out: bool) {
        let mut state = self.state.lock().unwrap();
        state.opted_out.retain(|known| known != number);
        if opted_out {
            state.opted_out.push(number.to_string());
        }
    }

    /// How many sends to an opted-out number Twilio refused (21610).
    pub fn refused_opted_out(&self) -> usize {
        self.state.lock().unwrap().refused_opted_out
    }

    /// The next sends (one each) are answered with these statuses, as
    /// Twilio does when it is briefly unavailable (`500`, `503`) or limits
    /// the account's rate (`429`), and are not taken.
    pub fn fail_next_sends(&self, statuses: &[u16]) {
        self.state.lock().unwrap().failing_next = statuses.iter().copied().collect();
    }

    pub fn set_mode(&self, mode: SendMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn sent(&self) -> Vec<SentSms> {
        self.state.lock().unwrap().sent.clone()
    }

    /// What Twilio will say a message cost (a negative decimal string).
    /// The sid the next accepted message will get.
    pub fn next_sid(&self) -> String {
        format!("SM{:032x}", self.state.lock().unwrap().next_id)
    }

    pub fn set_price(&self, sid: &str, price: &str) {
        self.state
            .lock()
            .unwrap()
            .prices
            .insert(sid.to_string(), price.to_string());
    }
}

fn authorized(request: &HttpRequest, account: &str) -> bool {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    account == ACCOUNT_SID
        && request
            .headers()
            .get("Authorization")
            .and_then(|value| value.to_str().ok())
            == Some(expected.as_str())
}

async fn create_message(
    state: web::Data<Mutex<State>>,
    gate: web::Data<tokio::sync::Semaphore>,
    request: HttpRequest,
    path: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    if !authorized(&request, &path) {
        return HttpResponse::Unauthorized()
            .json(json!({"code": 20003, "message": "Authenticate", "status": 401}));
    }
    let body = form.get("Body").cloned().unwrap_or_default();
    let (held, take_first) = {
        let state = state.lock().unwrap();
        let held = state
            .held
            .as_ref()
            .is_some_and(|text| body.contains(text.as_str()));
        (held, held && state.take_before_hold)
    };
    let mut taken = None;
    if take_first {
        taken = Some(take(&mut state.lock().unwrap(), &form));
    }
    if held {
        state.lock().unwrap().waiting += 1;
        // One permit lets one message through.
        gate.acquire().await.unwrap().forget();
        state.lock().unwrap().waiting -= 1;
    }
    let mut state = state.lock().unwrap();
    if taken.is_none() {
        if let Some(status) = state.failing_next.pop_front() {
            let status = actix_web::http::StatusCode::from_u16(status).unwrap();
            return HttpResponse::build(status).json(json!({
                "code": 20429, "message": "Too Many Requests or Service Unavailable", "status": status.as_u16()
            }));
        }
    }
    let to = form.get("To").cloned().unwrap_or_default();
    if taken.is_none() && state.opted_out.contains(&to) {
        state.refused_opted_out += 1;
        return HttpResponse::BadRequest().json(json!({
            "code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400
        }));
    }
    let refused = state
        .refused
        .as_ref()
        .is_some_and(|text| body.contains(text.as_str()));
    let mode = if refused && taken.is_none() {
        SendMode::Refuse
    } else {
        state.mode
    };
    match mode {
        SendMode::Refuse if taken.is_none() => return HttpResponse::BadRequest().json(json!({
            "code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400
        })),
        SendMode::ServerError if taken.is_none() => {
            return HttpResponse::InternalServerError().finish()
        }
        SendMode::DropUntaken if taken.is_none() => return dropped_connection(),
        _ => {}
    }
    let message = match taken {
        Some(message) => message,
        None => take(&mut state, &form),
    };
    if mode == SendMode::TakeThenDrop {
        return dropped_connection();
    }
    let sid = message.sid.clone();
    HttpResponse::Created().json(json!({
        "account_sid": ACCOUNT_SID, "sid": sid, "to": message.to, "from": message.from, "body": message.body,
        "status": "queued", "num_segments": "1", "price": null, "price_unit": "USD", "direction": "outbound-api",
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json")
    }))
}

/// Records a message as taken, with the next sid.
fn take(state: &mut State, form: &HashMap<String, String>) -> SentSms {
    let sid = format!("SM{:032x}", state.next_id);
    state.next_id += 1;
    let message = SentSms {
        sid,
        to: form.get("To").cloned().unwrap_or_default(),
        from: form.get("From").cloned().unwrap_or_default(),
        body: form.get("Body").cloned().unwrap_or_default(),
        status_callback: form.get("StatusCallback").cloned(),
        created_at_ms: state.clock.now_ms(),
    };
    state.sent.push(message.clone());
    message
}

/// An answer whose body fails as it is sent: the server drops the
/// connection, and the client gets no answer it can read.
fn dropped_connection() -> HttpResponse {
    let failing = futures_util::stream::once(async {
        Err::<actix_web::web::Bytes, _>(std::io::Error::other("the connection was dropped"))
    });
    HttpResponse::Created()
        .content_type("application/json")
        .streaming(failing)
}

/// Twilio's date format (RFC 2822, always `+0000`).
fn twilio_date(unix_ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_ms.div_euclid(sms_credit_actors::clock::DAY_MS);
    let (year, month, day) = sms_credit_actors::clock::civil_from_days(days);
    let seconds = unix_ms.rem_euclid(sms_credit_actors::clock::DAY_MS) / 1_000;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `GET …/Messages.json`: the messages taken, filtered by `To` and `From`,
/// newest first, `PageSize` a page, with Twilio's `next_page_uri`.
async fn list_messages(
    state: web::Data<Mutex<State>>,
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    if !authorized(&request, &path) {
        return HttpResponse::Unauthorized()
            .json(json!({"code": 20003, "message": "Authenticate", "status": 401}));
    }
    let mut state = state.lock().unwrap();
    state.lists += 1;
    if state.lists_fail {
        return HttpResponse::InternalServerError().finish();
    }
    let wanted = |key: &str, value: &str| query.get(key).is_none_or(|wanted| wanted == value);
    let mut listed: Vec<&SentSms> = state
        .sent
        .iter()
        .filter(|message| wanted("To", &message.to) && wanted("From", &message.from))
        .collect();
    listed.sort_by(|one, other| {
        (other.created_at_ms, &other.sid).cmp(&(one.created_at_ms, &one.sid))
    });
    let page_size: usize = query
        .get("PageSize")
        .map_or(50, |size| size.parse().unwrap());
    let page: usize = query.get("Page").map_or(0, |page| page.parse().unwrap());
    let messages: Vec<_> = listed
        .iter()
        .skip(page * page_size)
        .take(page_size)
        .map(|message| {
            json!({
                "account_sid": ACCOUNT_SID, "sid": message.sid, "to": message.to, "from": message.from,
                "body": message.body, "status": state.listed_status.as_deref().unwrap_or("delivered"), "direction": "outbound-api",
                "num_segments": "1", "price": state.prices.get(&message.sid), "price_unit": "USD",
                "date_created": twilio_date(message.created_at_ms),
                "date_updated": twilio_date(message.created_at_ms),
                "date_sent": twilio_date(message.created_at_ms),
                "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{}.json", message.sid)
            })
        })
        .collect();
    let base = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json");
    let page_uri = |page: usize| {
        let mut fields: Vec<(String, String)> = query
            .iter()
            .filter(|(key, _)| key.as_str() != "Page")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        fields.sort();
        fields.push(("Page".to_string(), page.to_string()));
        format!("{base}?{}", serde_urlencoded::to_string(&fields).unwrap())
    };
    let more = listed.len() > (page + 1) * page_size;
    HttpResponse::Ok().json(json!({
        "messages": messages,
        "page": page,
        "page_size": page_size,
        "start": page * page_size,
        "end": page * page_size + messages.len().saturating_sub(1),
        "uri": page_uri(page),
        "first_page_uri": page_uri(0),
        "previous_page_uri": if page > 0 { Some(page_uri(page - 1)) } else { None },
        "next_page_uri": if more { Some(page_uri(page + 1)) } else { None },
    }))
}

async fn fetch_message(
    state: web::Data<Mutex<State>>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (account, sid) = path.into_inner();
    if !authorized(&request, &account) {
        return HttpResponse::Unauthorized().finish();
    }
    let state = state.lock().unwrap();
    HttpResponse::Ok().json(json!({
        "account_sid": ACCOUNT_SID, "sid": sid, "status": "delivered",
        "price": state.prices.get(&sid), "price_unit": "USD"
    }))
}

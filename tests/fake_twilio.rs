//! A small fake of Twilio's Messages API on a free loopback port: it checks
//! basic auth, records every message, answers like Twilio (a queued message
//! resource, `price` null until told otherwise), and fails on demand.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use serde_json::json;

pub const ACCOUNT_SID: &str = "ACfa4e0000000000000000000000000000";
pub const AUTH_TOKEN: &str = "twilio-auth-token";
pub const FROM: &str = "+15005550006";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    Accept,
    /// 400 with Twilio's error body (for example an unreachable number).
    Refuse,
    ServerError,
}

#[derive(Clone, Debug)]
pub struct SentSms {
    pub sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    pub status_callback: Option<String>,
}

struct State {
    mode: SendMode,
    /// Messages whose body contains this wait for `gate` before they are answered.
    held: Option<String>,
    /// Messages waiting at the gate now.
    waiting: usize,
    /// Messages whose body contains this are refused as an unreachable
    /// number is, whatever the mode.
    refused: Option<String>,
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
            refused: None,
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
                .route(
                    "/2010-04-01/Accounts/{account}/Messages.json",
                    web::post().to(create_message),
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

    pub fn set_mode(&self, mode: SendMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn sent(&self) -> Vec<SentSms> {
        self.state.lock().unwrap().sent.clone()
    }

    /// What Twilio will say a message cost (a negative decimal string).
    /// The sid the next accepted message will get.
    pub fn next_sid(&self) -> String {
        format!("SMfake{:026}", self.state.lock().unwrap().next_id)
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
    let held = {
        let state = state.lock().unwrap();
        state
            .held
            .as_ref()
            .is_some_and(|text| body.contains(text.as_str()))
    };
    if held {
        state.lock().unwrap().waiting += 1;
        // One permit lets one message through.
        gate.acquire().await.unwrap().forget();
        state.lock().unwrap().waiting -= 1;
    }
    let mut state = state.lock().unwrap();
    let refused = state
        .refused
        .as_ref()
        .is_some_and(|text| body.contains(text.as_str()));
    match if refused {
        SendMode::Refuse
    } else {
        state.mode
    } {
        SendMode::Refuse => return HttpResponse::BadRequest().json(json!({
            "code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400
        })),
        SendMode::ServerError => return HttpResponse::InternalServerError().finish(),
        SendMode::Accept => {}
    }
    let sid = format!("SMfake{:026}", state.next_id);
    state.next_id += 1;
    let message = SentSms {
        sid: sid.clone(),
        to: form.get("To").cloned().unwrap_or_default(),
        from: form.get("From").cloned().unwrap_or_default(),
        body: form.get("Body").cloned().unwrap_or_default(),
        status_callback: form.get("StatusCallback").cloned(),
    };
    state.sent.push(message.clone());
    HttpResponse::Created().json(json!({
        "account_sid": ACCOUNT_SID, "sid": sid, "to": message.to, "from": message.from, "body": message.body,
        "status": "queued", "num_segments": "1", "price": null, "price_unit": "USD", "direction": "outbound-api",
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json")
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

//! A host application's webhook receiver on a free loopback port. It
//! verifies every delivery's signature twice: with the `standardwebhooks`
//! crate, and with the few lines docs/integrating.md gives a receiver (HMAC-SHA256
//! over `id.timestamp.body`). It answers as planned (a status, or a hang
//! past the sender's timeout) and records what it was sent.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;

/// How the receiver answers one delivery.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Answers 200 only after this long (longer than the 10 s timeout).
    Hang(Duration),
}

/// One delivery as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub body: Value,
    /// The secrets (by index in the receiver's list) that verified it.
    pub verified_by: Vec<usize>,
    /// What the receiver answered.
    pub answered: u16,
}

impl Received {
    pub fn kind(&self) -> &str {
        // A body without a type matches no kind a test asks for.
        self.body["type"].as_str().unwrap_or_default()
    }
}

struct State {
    /// Requests that reached the handler (before they are answered).
    started: usize,
    secrets: Vec<String>,
    plan: VecDeque<Reply>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
}

/// The verification docs/integrating.md gives, for a receiver without the library.
pub fn readme_verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .any(|signature| signature.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    // A missing header reads as empty, which no signature check accepts:
    // the delivery is counted as refused, as a real receiver would.
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("webhook-id", &id),
        ("webhook-timestamp", &timestamp),
        ("webhook-signature", &signature),
    ] {
        headers.insert(name, http::HeaderValue::from_str(value).unwrap());
    }
    let (reply, verified_by) = {
        let mut state = state.lock().unwrap();
        state.started += 1;
        let verified_by: Vec<usize> = state
            .secrets
            .iter()
            .enumerate()
            .filter(|(_, secret)| {
                let by_crate = standardwebhooks::Webhook::new(secret)
                    .unwrap()
                    .verify(&body, &headers)
                    .is_ok();
                let by_readme = readme_verify(secret, &id, &timestamp, &body, &signature);
                assert_eq!(by_crate, by_readme, "the two verifications disagree");
                by_crate
            })
            .map(|(index, _)| index)
            .collect();
        (
            state.plan.pop_front().unwrap_or(Reply::Status(200)),
            verified_by,
        )
    };
    let answered = match reply {
        Reply::Status(status) => status,
        Reply::Hang(wait) => {
            actix_rt::time::sleep(wait).await;
            200
        }
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["id"], id.as_str(), "webhook-id is the event's id");
    state.lock().unwrap().received.push(Received {
        id,
        body: parsed,
        verified_by,
        answered,
    });
    HttpResponse::build(actix_web::http::StatusCode::from_u16(answered).unwrap()).finish()
}

impl Receiver {
    /// A receiver on a free port.
    pub async fn start() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// A port nothing listens on yet: deliveries to it are refused until
    /// [`Receiver::start_on_port`].
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub fn start_on_port(port: u16) -> Receiver {
        Receiver::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap())
    }

    fn start_on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            started: 0,
            secrets: Vec::new(),
            plan: VecDeque::new(),
            received: Vec::new(),
        }));
        let shared = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hooks"),
            state,
        }
    }

    /// Secrets to verify with (the index of each is what `verified_by` says).
    pub fn trust(&self, secret: &str) {
        self.state.lock().unwrap().secrets.push(secret.to_string());
    }

    /// The next deliveries are answered so, in order (then 200).
    pub fn plan(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .plan
            .extend(replies.iter().copied());
    }

    /// Requests that arrived, answered or not.
    pub fn started(&self) -> usize {
        self.state.lock().unwrap().started
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits (up to 30 s) until `done` holds of what was received.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited 30 s for {what}; received: {:#?}",
                received
                    .iter()
                    .map(|r| (&r.id, r.kind(), r.answered))
                    .collect::<Vec<_>>()
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `count` accepted deliveries of `kind`.
    pub async fn accepted(&self, kind: &str, count: usize) -> Vec<Received> {
        // An event may arrive twice (a try whose lease ran out while it was
        // in flight, as when a test moves the clock by hours): a receiver
        // dedupes on the id, as docs/integrating.md tells the host application to.
        let distinct = |received: &[Received]| {
            let mut seen = std::collections::HashSet::new();
            received
                .iter()
                .filter(|r| r.kind() == kind && r.answered < 300 && seen.insert(r.id.clone()))
                .cloned()
                .collect::<Vec<_>>()
        };
        let found = self
            .wait_until(&format!("{count} accepted {kind}"), |received| {
                distinct(received).len() >= count
            })
            .await;
        distinct(&found)
    }
}

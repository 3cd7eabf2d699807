//! One try of one delivery: `POST` the event's body to the endpoint with
//! the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256>`, one signature per live
//! secret), within [`TIMEOUT_MS`]. Names are resolved by a resolver that
//! refuses every address that is not public (`is_public`: loopback,
//! private, link-local where metadata services answer, reserved; unless
//! they are allowed, for development), so a name cannot be pointed at the
//! inside after the endpoint was accepted.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{header, Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sms_credit_actors::webhooks::delivery::{TryResult, TIMEOUT_MS};
use sms_credit_actors::webhooks::endpoints::{check_url, is_public};
use sms_credit_actors::webhooks::ClaimedDelivery;

/// Resolves names with the system's resolver and keeps only the addresses
/// a delivery may reach.
#[derive(Clone)]
pub struct GuardedResolver {
    allow_private: bool,
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|address| allow_private || is_public(address.ip()))
                .collect();
            if found.is_empty() {
                return Err(std::io::Error::other(
                    "the name resolves to no address a webhook may be sent to",
                ));
            }
            Ok(found.into_iter())
        })
    }
}

pub struct WebhookSender {
    http: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    allow_private: bool,
}

impl WebhookSender {
    pub fn new(allow_private: bool) -> WebhookSender {
        let mut resolving = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        resolving.enforce_http(false);
        resolving.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(resolving);
        WebhookSender {
            http: Client::builder(TokioExecutor::new()).build(connector),
            allow_private,
        }
    }

    /// Tries the delivery once. What the endpoint answered is kept as its
    /// status only: its body is never read into a record or a log.
    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> TryResult {
        let endpoint = &delivery.endpoint;
        if let Err(refused) = check_url(&endpoint.url, self.allow_private) {
            // An endpoint added by a process whose setting allows what this
            // server's does not: said in the log at every try, or every
            // delivery would fail without a word where the operator looks.
            tracing::warn!(
                endpoint = %endpoint.id,
                url = %endpoint.url,
                event = %delivery.event_id,
                "webhook delivery refused: {}",
                sms_credit_actors::webhooks::endpoints::undeliverable(&refused)
            );
            return TryResult::NoAnswer(format!("the endpoint's URL {refused}"));
        }
        // The signature's time is the wall clock's (receivers check it
        // against theirs), not the service's clock; a clock before 1970 is
        // a fault to say, not a timestamp of 0 every receiver would refuse.
        let timestamp = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => elapsed.as_secs() as i64,
            Err(_) => return TryResult::NoAnswer("this server's clock is before 1970".into()),
        };
        let mut signatures = Vec::new();
        for secret in endpoint.signing_secrets(now_ms) {
            let signed = standardwebhooks::Webhook::new(secret.expose()).and_then(|webhook| {
                webhook.sign(&delivery.event_id, timestamp, delivery.payload.as_bytes())
            });
            match signed {
                Ok(signature) => signatures.push(signature),
                Err(_) => return TryResult::NoAnswer("the endpoint's secret is unusable".into()),
            }
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(&endpoint.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "sms-credit-webhooks/1")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(Full::new(Bytes::from(delivery.payload.clone())));
        let request = match request {
            Ok(request) => request,
            Err(_) => return TryResult::NoAnswer("the endpoint's URL is not usable".into()),
        };
        let timeout = Duration::from_millis(TIMEOUT_MS as u64);
        match tokio::time::timeout(timeout, self.http.request(request)).await {
            Ok(Ok(response)) => TryResult::Answered(response.status().as_u16()),
            Ok(Err(error)) => TryResult::NoAnswer(describe(&error)),
            Err(_) => TryResult::NoAnswer(format!("no answer within {} s", timeout.as_secs())),
        }
    }
}

/// A short, stable description of a failed connection (the deepest cause:
/// "Connection refused", the resolver's refusal, …).
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(deeper) = source.source() {
        source = deeper;
    }
    let text = source.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    format!("could not connect: {text}")
}

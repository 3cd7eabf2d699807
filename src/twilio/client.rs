//! Twilio's Messages API over hyper (the same HTTP stack as the Stripe
//! client), with a configurable base URL so that tests use a local fake.

use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sms_credit_actors::messaging::reconcile::parse_twilio_price;
use sms_credit_actors::messaging::{Accepted, SenderError, SenderFuture, SmsSender};
use sms_credit_actors::Money;

use crate::config::TwilioSettings;

/// How long one call to Twilio may take.
const TIMEOUT: Duration = Duration::from_secs(15);

pub struct TwilioClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    messages_url: String,
    authorization: String,
    from: String,
    /// Where Twilio posts the message's status changes; `None` when the
    /// server has no public URL Twilio could reach.
    status_callback: Option<String>,
}

#[derive(Deserialize)]
struct MessageResource {
    sid: String,
    status: Option<String>,
    price: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResource {
    code: Option<i64>,
    message: Option<String>,
}

impl TwilioClient {
    pub fn new(
        settings: &TwilioSettings,
        status_callback: Option<String>,
    ) -> Result<TwilioClient, String> {
        let from = settings
            .from
            .clone()
            .ok_or("SMS_CREDIT_TWILIO_FROM is needed to send messages")?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let credentials = format!("{}:{}", settings.account_sid, settings.auth_token.expose());
        Ok(TwilioClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages",
                settings.api_base, settings.account_sid
            ),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            from,
            status_callback,
        })
    }

    async fn call(
        &self,
        method: Method,
        url: String,
        form: Option<String>,
    ) -> Result<(u16, Bytes), SenderError> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::ACCEPT, "application/json");
        if form.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|error| SenderError::Unavailable(error.to_string()))?;
        let response = actix_rt::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| SenderError::Unanswered("no answer in time".into()))?
            .map_err(|error| {
                // Only a failed connection is sure to have sent nothing.
                if error.is_connect() {
                    SenderError::Unavailable(error.to_string())
                } else {
                    SenderError::Unanswered(error.to_string())
                }
            })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| SenderError::Unanswered(error.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

fn refusal(status: u16, body: &[u8]) -> SenderError {
    // Twilio's error resource, as far as it says anything; never an empty
    // message or a made-up code 0.
    let detail = match serde_json::from_slice::<ErrorResource>(body) {
        Ok(ErrorResource {
            message: Some(message),
            code: Some(code),
        }) => format!("{message} (code {code}, status {status})"),
        Ok(ErrorResource {
            message: Some(message),
            code: None,
        }) => format!("{message} (status {status})"),
        Ok(ErrorResource {
            message: None,
            code: Some(code),
        }) => format!("code {code}, status {status}"),
        _ => format!("status {status}"),
    };
    if status >= 500 || status == 429 {
        SenderError::Unavailable(detail)
    } else {
        SenderError::Refused(detail)
    }
}

impl SmsSender for TwilioClient {
    fn send(&self, to: &str, body: &str) -> SenderFuture<'_, Accepted> {
        let mut fields = vec![("To", to), ("From", self.from.as_str()), ("Body", body)];
        if let Some(url) = &self.status_callback {
            fields.push(("StatusCallback", url.as_str()));
        }
        let form = serde_urlencoded::to_string(fields);
        Box::pin(async move {
            let form = form.map_err(|error| SenderError::Refused(error.to_string()))?;
            let (status, response) = self
                .call(
                    Method::POST,
                    format!("{}.json", self.messages_url),
                    Some(form),
                )
                .await?;
            if !(200..300).contains(&status) {
                return Err(refusal(status, &response));
            }
            let message: MessageResource = serde_json::from_slice(&response)
                .map_err(|error| SenderError::Unanswered(format!("unreadable answer: {error}")))?;
            Ok(Accepted {
                sid: message.sid,
                status: message.status.unwrap_or_else(|| "queued".to_string()),
            })
        })
    }

    fn fetch_price(&self, sid: &str) -> SenderFuture<'_, Option<Money>> {
        let url = format!("{}/{sid}.json", self.messages_url);
        Box::pin(async move {
            let (status, response) = self.call(Method::GET, url, None).await?;
            if !(200..300).contains(&status) {
                return Err(refusal(status, &response));
            }
            let message: MessageResource = serde_json::from_slice(&response)
                .map_err(|error| SenderError::Unavailable(format!("unreadable answer: {error}")))?;
            let _ = message.sid;
            Ok(message.price.as_deref().and_then(parse_twilio_price))
        })
    }
}

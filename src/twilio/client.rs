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
use sms_credit_actors::messaging::{Accepted, ListedMessage, SenderError, SenderFuture, SmsSender};
use sms_credit_actors::Money;

use crate::config::TwilioSettings;

/// How long one call to Twilio may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Pages of Twilio's list of messages read back at most, looking for a
/// send whose answer was lost (a number that was sent more than this many
/// pages since is not read to the end: "not known", asked again later).
const MAX_LIST_PAGES: usize = 20;
/// Messages on one page of the list.
const LIST_PAGE_SIZE: usize = 100;

pub struct TwilioClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Where Twilio's API is (the `next_page_uri` of a list is a path on it).
    api_base: String,
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

/// A page of Twilio's list of messages.
#[derive(Deserialize)]
struct MessagePage {
    messages: Vec<ListedResource>,
    next_page_uri: Option<String>,
}

/// A message as Twilio's list shows it: what is needed to tell a send.
#[derive(Deserialize)]
struct ListedResource {
    sid: String,
    from: Option<String>,
    body: Option<String>,
    status: Option<String>,
    direction: Option<String>,
    date_created: Option<String>,
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
            api_base: settings.api_base.trim_end_matches('/').to_string(),
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

/// Twilio's error for a number that texted STOP to the sender: "Attempt
/// to send to unsubscribed recipient".
const OPTED_OUT: i64 = 21610;

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
    let code = serde_json::from_slice::<ErrorResource>(body)
        .ok()
        .and_then(|error| error.code);
    if status >= 500 || status == 429 {
        SenderError::Unavailable(detail)
    } else if code == Some(OPTED_OUT) {
        SenderError::OptedOut(detail)
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

    fn sent_to(&self, to: &str, since_ms: i64) -> SenderFuture<'_, Vec<ListedMessage>> {
        // Filtered by number only, read back by when each was created: a
        // message Twilio still queues has no `date_sent` to filter on yet.
        let query = serde_urlencoded::to_string([
            ("To", to),
            ("From", self.from.as_str()),
            ("PageSize", &LIST_PAGE_SIZE.to_string()),
        ]);
        let to = to.to_string();
        Box::pin(async move {
            let query = query.map_err(|error| SenderError::Refused(error.to_string()))?;
            let mut url = format!("{}.json?{query}", self.messages_url);
            let mut found = Vec::new();
            for _ in 0..MAX_LIST_PAGES {
                let (status, response) = self.call(Method::GET, url, None).await?;
                if !(200..300).contains(&status) {
                    return Err(refusal(status, &response));
                }
                let page: MessagePage = serde_json::from_slice(&response).map_err(|error| {
                    SenderError::Unavailable(format!("unreadable list of messages: {error}"))
                })?;
                let mut older_only = !page.messages.is_empty();
                for listed in page.messages {
                    let created_at_ms = listed
                        .date_created
                        .as_deref()
                        .and_then(parse_twilio_date)
                        .ok_or_else(|| {
                            SenderError::Unavailable(format!(
                                "Twilio's message {} has no creation date this client reads ({:?})",
                                listed.sid, listed.date_created
                            ))
                        })?;
                    if created_at_ms >= since_ms {
                        older_only = false;
                    }
                    // Sent by this service through the API from its own
                    // number (not an inbound SMS, not a TwiML reply).
                    let ours = listed.direction.as_deref() == Some("outbound-api")
                        && listed.from.as_deref() == Some(self.from.as_str());
                    if !ours || created_at_ms < since_ms {
                        continue;
                    }
                    let (Some(body), Some(status)) = (listed.body, listed.status) else {
                        return Err(SenderError::Unavailable(format!(
                            "Twilio's message {} is listed without its body or status",
                            listed.sid
                        )));
                    };
                    found.push(ListedMessage {
                        sid: listed.sid,
                        body,
                        status,
                        created_at_ms,
                    });
                }
                // Newest first: a page of older messages only ends the look.
                match page.next_page_uri {
                    Some(next) if !older_only => url = format!("{}{next}", self.api_base),
                    _ => return Ok(found),
                }
            }
            Err(SenderError::Unavailable(format!(
                "more than {MAX_LIST_PAGES} pages of messages to {to} to read back"
            )))
        })
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A date as Twilio writes them (RFC 2822: `Wed, 18 Aug 2010 20:01:40
/// +0000`), in Unix milliseconds; `None` for anything else.
fn parse_twilio_date(text: &str) -> Option<i64> {
    let rest = text.split_once(", ").map_or(text, |(_, rest)| rest);
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok().filter(|day| (1..=31).contains(day))?;
    let month = MONTHS.iter().position(|name| name == month)? as i64 + 1;
    let year: i64 = year
        .parse()
        .ok()
        .filter(|year| (1970..=9999).contains(year))?;
    let clock: Vec<i64> = time
        .split(':')
        .map(|part| part.parse::<i64>().ok())
        .collect::<Option<_>>()?;
    let [hour, minute, second] = clock.as_slice() else {
        return None;
    };
    if !(0..24).contains(hour) || !(0..60).contains(minute) || !(0..61).contains(second) {
        return None;
    }
    let (sign, offset) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if offset.len() != 4 || !offset.bytes().all(|digit| digit.is_ascii_digit()) {
        return None;
    }
    let offset_minutes: i64 =
        offset[..2].parse::<i64>().ok()? * 60 + offset[2..].parse::<i64>().ok()?;
    let days = sms_credit_actors::clock::days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - sign * offset_minutes * 60;
    Some(seconds * 1_000)
}

#[cfg(test)]
mod tests {
    use super::parse_twilio_date;

    #[test]
    fn twilio_dates_are_read_with_their_offset_and_nothing_else_is() {
        // 2010-08-18T20:01:40Z
        assert_eq!(
            parse_twilio_date("Wed, 18 Aug 2010 20:01:40 +0000"),
            Some(1_282_161_700_000)
        );
        assert_eq!(
            parse_twilio_date("Wed, 18 Aug 2010 13:01:40 -0700"),
            Some(1_282_161_700_000)
        );
        for unreadable in [
            "",
            "2010-08-18T20:01:40Z",
            "Wed, 18 Foo 2010 20:01:40 +0000",
            "Wed, 32 Aug 2010 20:01:40 +0000",
            "Wed, 18 Aug 2010 24:01:40 +0000",
            "Wed, 18 Aug 2010 20:01:40 GMT",
            "Wed, 18 Aug 2010 20:01 +0000",
        ] {
            assert_eq!(parse_twilio_date(unreadable), None, "{unreadable}");
        }
    }
}

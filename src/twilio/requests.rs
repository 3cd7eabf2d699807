//! What a signed Twilio request must look like before it is believed.
//!
//! Twilio's signature is the URL followed by each field's name and value,
//! sorted, with no separator, and it carries no time. A body seen once can
//! therefore be sent again with the boundaries between its fields moved
//! (`MessageSid=SM…NumMedia0` and no `NumMedia`) under the same signature,
//! and would pass for a new message. So only the shapes Twilio sends are
//! accepted: its message SIDs (`SM` or `MM` and 32 hexadecimal
//! characters), the SMS sids it repeats equal to the `MessageSid`, this
//! account's `AccountSid`, and every field Twilio always sends, once each.

use thiserror::Error;

/// A signed form that is not one Twilio sends.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct NotTwilios(String);

/// An inbound message, as Twilio described it.
#[derive(Debug, PartialEq, Eq)]
pub struct Inbound {
    pub message_sid: String,
    pub from: String,
    pub body: String,
}

/// A status callback of a message this service sent.
#[derive(Debug, PartialEq, Eq)]
pub struct StatusReport {
    pub message_sid: String,
    pub status: String,
    /// Twilio's error code, when it gave one (`21610`: the number said STOP).
    pub error_code: Option<String>,
    /// The number the message went to, when the callback says.
    pub to: Option<String>,
    /// The number it was sent from, when the callback says.
    pub from: Option<String>,
}

/// Whether `sid` is `prefix` followed by 32 hexadecimal characters, the
/// shape of every Twilio SID.
fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

/// Whether `sid` is a Message SID: `SM` (a text) or `MM` (with media).
pub fn is_message_sid(sid: &str) -> bool {
    is_sid(sid, "SM") || is_sid(sid, "MM")
}

/// The fields of a verified form, read strictly.
struct Fields<'a>(&'a [(String, String)]);

impl<'a> Fields<'a> {
    /// The field's value, if it was sent once; two of one name is not
    /// Twilio's.
    fn optional(&self, name: &str) -> Result<Option<&'a str>, NotTwilios> {
        let mut values = self
            .0
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(NotTwilios(format!("the form has {name} twice")));
        }
        Ok(first)
    }

    /// A field Twilio always sends (possibly empty, like an SMS's `Body`).
    fn present(&self, name: &str) -> Result<&'a str, NotTwilios> {
        self.optional(name)?
            .ok_or_else(|| NotTwilios(format!("the form has no {name}")))
    }

    /// A field Twilio always sends with a value.
    fn required(&self, name: &str) -> Result<&'a str, NotTwilios> {
        let value = self.present(name)?;
        if value.is_empty() {
            return Err(NotTwilios(format!("the form's {name} is empty")));
        }
        Ok(value)
    }

    /// The `MessageSid`, of Twilio's shape, which `SmsSid` and
    /// `SmsMessageSid` repeat when they are sent; and the `AccountSid`,
    /// which must be `account_sid`.
    fn message_of(&self, account_sid: &str) -> Result<String, NotTwilios> {
        let account = self.required("AccountSid")?;
        if account != account_sid {
            return Err(NotTwilios(
                "the form's AccountSid is not this service's Twilio account".to_string(),
            ));
        }
        let sid = self.required("MessageSid")?;
        if !is_message_sid(sid) {
            return Err(NotTwilios(
                "the form's MessageSid is not a Twilio message SID (SM or MM and 32 hexadecimal characters)"
                    .to_string(),
            ));
        }
        for repeated in ["SmsSid", "SmsMessageSid"] {
            if self.optional(repeated)?.is_some_and(|value| value != sid) {
                return Err(NotTwilios(format!(
                    "the form's {repeated} is not its MessageSid"
                )));
            }
        }
        Ok(sid.to_string())
    }
}

/// An inbound SMS: `MessageSid`, `AccountSid`, `From`, `To`, `Body` and
/// `NumMedia` are always sent by Twilio.
pub fn inbound(fields: &[(String, String)], account_sid: &str) -> Result<Inbound, NotTwilios> {
    let fields = Fields(fields);
    let message_sid = fields.message_of(account_sid)?;
    let from = fields.required("From")?.to_string();
    fields.required("To")?;
    let body = fields.present("Body")?.to_string();
    let media = fields.required("NumMedia")?;
    if !media.bytes().all(|byte| byte.is_ascii_digit()) || media.len() > 2 {
        return Err(NotTwilios("the form's NumMedia is not a count".to_string()));
    }
    Ok(Inbound {
        message_sid,
        from,
        body,
    })
}

/// A status callback: `MessageSid`, `AccountSid` and `MessageStatus` are
/// always sent by Twilio; `ErrorCode` when the message failed; `To` and
/// `From`.
pub fn status(fields: &[(String, String)], account_sid: &str) -> Result<StatusReport, NotTwilios> {
    let fields = Fields(fields);
    let message_sid = fields.message_of(account_sid)?;
    let status = fields.required("MessageStatus")?.to_string();
    let error_code = fields
        .optional("ErrorCode")?
        .filter(|code| !code.is_empty())
        .map(str::to_string);
    let to = fields
        .optional("To")?
        .filter(|to| !to.is_empty())
        .map(str::to_string);
    let from = fields
        .optional("From")?
        .filter(|from| !from.is_empty())
        .map(str::to_string);
    Ok(StatusReport {
        message_sid,
        status,
        error_code,
        to,
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const SID: &str = "SM0123456789abcdef0123456789abcdef";

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn twilios() -> Vec<(String, String)> {
        form(&[
            ("AccountSid", ACCOUNT),
            ("Body", "BUY $10"),
            ("From", "+14155550100"),
            ("MessageSid", SID),
            ("NumMedia", "0"),
            ("SmsSid", SID),
            ("To", "+15005550006"),
        ])
    }

    #[test]
    fn twilios_own_form_is_read() {
        let inbound = inbound(&twilios(), ACCOUNT).unwrap();
        assert_eq!(inbound.message_sid, SID);
        assert_eq!(inbound.body, "BUY $10");
    }

    #[test]
    fn sids_have_twilios_shape() {
        assert!(is_message_sid(SID));
        assert!(is_message_sid(&SID.replacen("SM", "MM", 1)));
        for bad in [
            "hello",
            "SM1",
            &SID[..33],
            &format!("{SID}0"),
            &format!("{SID}NumMedia0"),
            &SID.replacen("SM", "CA", 1),
            &SID.replacen('0', "g", 1),
        ] {
            assert!(!is_message_sid(bad), "{bad}");
        }
    }

    #[test]
    fn a_form_twilio_would_not_send_is_refused() {
        let mut twice = twilios();
        twice.push(("MessageSid".to_string(), SID.to_string()));
        let cases: Vec<Vec<(String, String)>> = vec![
            twilios()
                .into_iter()
                .filter(|(name, _)| name != "NumMedia")
                .collect(),
            twilios()
                .into_iter()
                .filter(|(name, _)| name != "AccountSid")
                .collect(),
            twilios()
                .into_iter()
                .filter(|(name, _)| name != "Body")
                .collect(),
            twice,
        ];
        for fields in cases {
            assert!(inbound(&fields, ACCOUNT).is_err(), "{fields:?}");
        }
        assert!(inbound(&twilios(), "AC00000000000000000000000000000000").is_err());
    }
}

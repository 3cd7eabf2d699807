//! Numbers that opted out of texts. A number that texts STOP (or another of
//! the carriers' opt-out words) to the service's number, or that Twilio
//! refuses to text because it did (error 21610), is sent nothing more but
//! the reply to that STOP, to HELP and to START (or UNSTOP), which opts it
//! back in: no warning, no auto top-up notice, no sign-in code, no message
//! of the host application, no reply to another command.

use serde::Serialize;

/// The words that opt a number out, as carriers and Twilio know them.
pub const OPT_OUT_WORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPTOUT",
    "REVOKE",
];

/// The words that opt a number back in.
pub const OPT_IN_WORDS: &[&str] = &["START", "UNSTOP"];

/// How a number came to be opted out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OptOutVia {
    /// It texted an opt-out word to the service's number.
    Keyword,
    /// Twilio refused to text it (21610): it opted out at the carrier.
    Carrier,
}

impl OptOutVia {
    pub fn as_str(self) -> &'static str {
        match self {
            OptOutVia::Keyword => "keyword",
            OptOutVia::Carrier => "carrier",
        }
    }

    pub fn parse(text: &str) -> Option<OptOutVia> {
        match text {
            "keyword" => Some(OptOutVia::Keyword),
            "carrier" => Some(OptOutVia::Carrier),
            _ => None,
        }
    }
}

/// A number's opt-out, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OptOut {
    /// When (Unix milliseconds).
    pub opted_out_at_ms: i64,
    pub via: OptOutVia,
    /// The word texted (`STOP`, `UNSUBSCRIBE`, …), for `keyword`.
    pub keyword: Option<String>,
}

/// A change an inbound text makes to its number's subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptChange {
    /// An opt-out word, as texted (upper case).
    Out(String),
    /// `START` or `UNSTOP`.
    In,
}

impl OptChange {
    /// The change a text makes, if it is one of the words alone (case and
    /// surrounding spaces do not matter, as with Twilio).
    pub fn of(text: &str) -> Option<OptChange> {
        let word = text.trim().to_uppercase();
        if OPT_OUT_WORDS.contains(&word.as_str()) {
            Some(OptChange::Out(word))
        } else if OPT_IN_WORDS.contains(&word.as_str()) {
            Some(OptChange::In)
        } else {
            None
        }
    }
}

/// The one reply to an opt-out (what carriers' rules allow: a confirmation).
pub fn opted_out_reply() -> String {
    "You are unsubscribed and will get no more texts from this number. Text START to get them again."
        .to_string()
}

/// The reply to START or UNSTOP.
pub fn opted_in_reply() -> String {
    "You will get texts from this number again. Text STOP to stop them, HELP for help.".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_alone_change_the_subscription() {
        for text in [
            "STOP",
            " stop ",
            "Unsubscribe",
            "cancel\n",
            "QUIT",
            "StopAll",
        ] {
            assert!(
                matches!(OptChange::of(text), Some(OptChange::Out(_))),
                "{text:?}"
            );
        }
        assert_eq!(OptChange::of("stop"), Some(OptChange::Out("STOP".into())));
        assert_eq!(OptChange::of("start"), Some(OptChange::In));
        assert_eq!(OptChange::of(" UNSTOP "), Some(OptChange::In));
        for text in ["STOP IT", "please stop", "STOPP", "BALANCE", "", "yes"] {
            assert_eq!(OptChange::of(text), None, "{text:?}");
        }
        for via in [OptOutVia::Keyword, OptOutVia::Carrier] {
            assert_eq!(OptOutVia::parse(via.as_str()), Some(via));
        }
        assert_eq!(OptOutVia::parse("other"), None);
    }
}

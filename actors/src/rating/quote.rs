//! A quote: what one message to one number will cost, before it is sent.
//! The CLI's `quote` and `POST /v1/quote` answer with this same shape.

use serde::Serialize;

use super::rates::RateTable;
use super::segments::{count_segments, smart_encode, Encoding};
use crate::money::Money;
use crate::phone::{CountryCode, InvalidPhoneNumber, PhoneNumber};

/// Twilio refuses message bodies longer than this many characters.
pub const MAX_BODY_CHARACTERS: usize = 1600;

/// What to quote.
#[derive(Clone, Copy, Debug)]
pub struct QuoteRequest<'a> {
    /// The destination, in international form.
    pub to: &'a str,
    pub body: &'a str,
    /// Quote the message as it would be sent after smart encoding.
    pub smart_encoding: bool,
}

/// Why a message cannot be quoted (and so cannot be sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error(transparent)]
    InvalidNumber(#[from] InvalidPhoneNumber),
    #[error("{number} is not in a country this service sends to")]
    NoCountry { number: String },
    #[error("messages to {country} are not supported (no rate for this destination)")]
    UnsupportedDestination { country: CountryCode },
    #[error("the body has {characters} characters; at most 1600 can be sent")]
    BodyTooLong { characters: usize },
    #[error("the cost is out of range")]
    Overflow,
}

/// The same message after smart encoding, and what that changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SmartEncodingQuote {
    pub encoding: Encoding,
    pub segments: u32,
    pub total_micros: i64,
    /// Characters replaced by GSM-7 look-alikes.
    pub replacements: u32,
    /// Segments saved by smart encoding (negative if it would cost more).
    pub saved_segments: i64,
    pub saved_micros: i64,
}

/// What a message costs: `segments × price_per_segment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quote {
    /// The destination in E.164 form.
    pub to: String,
    pub country: CountryCode,
    pub encoding: Encoding,
    pub segments: u32,
    pub price_per_segment_micros: i64,
    pub total_micros: i64,
    pub segments_per_10_dollars: i64,
    /// Whether the figures above are for the smart-encoded text.
    pub smart_encoding_applied: bool,
    pub smart_encoding: SmartEncodingQuote,
}

impl Quote {
    pub fn total(&self) -> Money {
        Money::from_micros(self.total_micros)
    }
}

/// Prices a message to a number with a rate table. A destination the table
/// does not serve is refused, never charged a default rate.
pub fn quote(request: QuoteRequest<'_>, table: &RateTable) -> Result<Quote, RatingError> {
    let characters = request.body.chars().count();
    if characters > MAX_BODY_CHARACTERS {
        return Err(RatingError::BodyTooLong { characters });
    }
    let number = PhoneNumber::parse(request.to)?;
    quote_to(&number, request.body, request.smart_encoding, table)
}

/// [`quote`] for a number already parsed.
pub fn quote_to(
    number: &PhoneNumber,
    body: &str,
    smart_encoding: bool,
    table: &RateTable,
) -> Result<Quote, RatingError> {
    let characters = body.chars().count();
    if characters > MAX_BODY_CHARACTERS {
        return Err(RatingError::BodyTooLong { characters });
    }
    let request = QuoteRequest {
        to: number.as_str(),
        body,
        smart_encoding,
    };
    let country = number.country().ok_or_else(|| RatingError::NoCountry {
        number: number.to_string(),
    })?;
    let rate = table
        .rate_for(country)
        .ok_or(RatingError::UnsupportedDestination { country })?;
    let price = rate.customer_rate;
    let cost = |segments: u32| {
        price
            .checked_mul(i64::from(segments))
            .map_err(|_| RatingError::Overflow)
    };

    let plain = count_segments(request.body);
    let plain_total = cost(plain.segments)?;
    let encoded = smart_encode(request.body);
    let smart = count_segments(&encoded.text);
    let smart_total = cost(smart.segments)?;
    let (charged, charged_total) = if request.smart_encoding {
        (smart, smart_total)
    } else {
        (plain, plain_total)
    };
    Ok(Quote {
        to: number.to_string(),
        country,
        encoding: charged.encoding,
        segments: charged.segments,
        price_per_segment_micros: price.micros(),
        total_micros: charged_total.micros(),
        segments_per_10_dollars: rate.segments_per_10_dollars(),
        smart_encoding_applied: request.smart_encoding,
        smart_encoding: SmartEncodingQuote {
            encoding: smart.encoding,
            segments: smart.segments,
            total_micros: smart_total.micros(),
            replacements: encoded.replacements,
            saved_segments: i64::from(plain.segments) - i64::from(smart.segments),
            saved_micros: plain_total.micros() - smart_total.micros(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RateTable {
        RateTable::embedded().unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn prices_segments_at_the_destination_rate() {
        let body = "a".repeat(161);
        let quoted = quote(
            QuoteRequest {
                to: "+14155551234",
                body: &body,
                smart_encoding: false,
            },
            &table(),
        );
        let quoted = quoted.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            (
                quoted.country.as_str(),
                quoted.segments,
                quoted.total_micros
            ),
            ("US", 2, 113_000)
        );
        assert_eq!(quoted.segments_per_10_dollars, 176);
        let canada = quote(
            QuoteRequest {
                to: "+14165551234",
                body: "hi",
                smart_encoding: false,
            },
            &table(),
        );
        assert_eq!(
            canada.map(|quoted| (quoted.country.to_string(), quoted.total_micros)),
            Ok(("CA".into(), 85_000))
        );
    }

    #[test]
    fn smart_encoding_reports_and_optionally_applies_the_saving() {
        let body = format!("{} it’s", "a".repeat(60));
        let plain = quote(
            QuoteRequest {
                to: "+447400123456",
                body: &body,
                smart_encoding: false,
            },
            &table(),
        );
        let plain = plain.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!((plain.encoding, plain.segments), (Encoding::Ucs2, 1));
        let long = format!("{} it’s", "a".repeat(100));
        let plain = quote(
            QuoteRequest {
                to: "+447400123456",
                body: &long,
                smart_encoding: false,
            },
            &table(),
        );
        let plain = plain.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            (plain.encoding, plain.segments, plain.total_micros),
            (Encoding::Ucs2, 2, 524_000)
        );
        assert_eq!(plain.smart_encoding.segments, 1);
        assert_eq!(
            (
                plain.smart_encoding.saved_segments,
                plain.smart_encoding.saved_micros
            ),
            (1, 262_000)
        );
        let smart = quote(
            QuoteRequest {
                to: "+447400123456",
                body: &long,
                smart_encoding: true,
            },
            &table(),
        );
        let smart = smart.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            (smart.encoding, smart.segments, smart.total_micros),
            (Encoding::Gsm7, 1, 262_000)
        );
    }

    #[test]
    fn refuses_what_cannot_be_priced() {
        let refuse = |to: &str, body: &str| {
            quote(
                QuoteRequest {
                    to,
                    body,
                    smart_encoding: false,
                },
                &table(),
            )
            .err()
        };
        assert!(matches!(
            refuse("+4915112345678", "hi"),
            Some(RatingError::UnsupportedDestination { .. })
        ));
        assert!(matches!(
            refuse("not a number", "hi"),
            Some(RatingError::InvalidNumber(_))
        ));
        assert!(matches!(
            refuse("+1415", "hi"),
            Some(RatingError::InvalidNumber(_))
        ));
        assert!(matches!(
            refuse("+14155551234", &"a".repeat(1601)),
            Some(RatingError::BodyTooLong { characters: 1601 })
        ));
    }
}

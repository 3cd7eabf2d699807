//! Phone numbers and the countries they ring in, parsed with libphonenumber's
//! metadata (the `phonenumber` crate), not by prefix: `+1 416…` is Canada,
//! `+1 415…` the United States.

use std::fmt;

use phonenumber::Mode;
use serde::{Serialize, Serializer};

/// A valid phone number, held in E.164 form (`+14155551234`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
    country: Option<CountryCode>,
}

/// Why a string is not a phone number this server accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid phone number in international form (for example +14155551234)")]
pub struct InvalidPhoneNumber(pub String);

/// Loads libphonenumber's metadata now (it is parsed on first use, which
/// takes long enough to stall the first request that needs it).
pub fn warm_up() {
    let _ = PhoneNumber::parse("+14155550100");
}

impl PhoneNumber {
    /// Parses a number in international form (`+` and the country code);
    /// spaces, dashes and brackets are allowed and dropped. Numbers that
    /// libphonenumber does not consider valid for their country are refused.
    pub fn parse(text: &str) -> Result<PhoneNumber, InvalidPhoneNumber> {
        let invalid = || InvalidPhoneNumber(text.chars().take(40).collect());
        if !text.trim_start().starts_with('+') || text.len() > 64 {
            return Err(invalid());
        }
        let number = phonenumber::parse(None, text).map_err(|_| invalid())?;
        if !number.is_valid() {
            return Err(invalid());
        }
        let country = number
            .country()
            .id()
            .and_then(|id| CountryCode::parse(id.as_ref()).ok());
        Ok(PhoneNumber {
            e164: number.format().mode(Mode::E164).to_string(),
            country,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The ISO country the number belongs to, where libphonenumber knows
    /// one (numbers of non-geographic codes such as +882 have none).
    pub fn country(&self) -> Option<CountryCode> {
        self.country
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.e164)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.e164)
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case (`US`, `GB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

/// Why a string is not a country code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an ISO country code (two letters, such as US or GB)")]
pub struct InvalidCountryCode(pub String);

impl CountryCode {
    pub fn parse(text: &str) -> Result<CountryCode, InvalidCountryCode> {
        match text.as_bytes() {
            [first, second] if first.is_ascii_alphabetic() && second.is_ascii_alphabetic() => {
                Ok(CountryCode([
                    first.to_ascii_uppercase(),
                    second.to_ascii_uppercase(),
                ]))
            }
            _ => Err(InvalidCountryCode(text.chars().take(10).collect())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// In the API's schema: two capital letters.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for CountryCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z]{2}$"))
            .description(Some("An ISO 3166-1 alpha-2 country code"))
            .examples([serde_json::json!("US")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for CountryCode {}

impl Serialize for CountryCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn country_of(text: &str) -> Option<String> {
        PhoneNumber::parse(text)
            .ok()
            .and_then(|number| number.country())
            .map(|code| code.to_string())
    }

    #[test]
    fn plus_one_splits_the_united_states_from_canada() {
        assert_eq!(country_of("+14155551234").as_deref(), Some("US"));
        assert_eq!(country_of("+14165551234").as_deref(), Some("CA"));
        assert_eq!(country_of("+16045551234").as_deref(), Some("CA"));
        assert_eq!(country_of("+12125551234").as_deref(), Some("US"));
    }

    #[test]
    fn finds_the_seed_countries() {
        for (number, country) in [
            ("+447400123456", "GB"),
            ("+447911123456", "GG"),
            ("+33612345678", "FR"),
            ("+393123456789", "IT"),
            ("+41781234567", "CH"),
            ("+64211234567", "NZ"),
            ("+27821234567", "ZA"),
        ] {
            assert_eq!(country_of(number).as_deref(), Some(country), "{number}");
        }
    }

    #[test]
    fn refuses_invalid_numbers() {
        for bad in [
            "",
            "+",
            "14155551234",
            "+1415",
            "+999123456789",
            "+1 (415) 555-12345",
            "+44 20 7946",
            "hello",
            "+0123456789",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalizes_to_e164() {
        assert_eq!(
            PhoneNumber::parse("+1 (415) 555-1234").map(|number| number.to_string()),
            Ok("+14155551234".to_string())
        );
    }

    #[test]
    fn country_codes_are_two_letters() {
        assert_eq!(
            CountryCode::parse("gb").map(|code| code.to_string()),
            Ok("GB".to_string())
        );
        assert!(CountryCode::parse("GBR").is_err());
        assert!(CountryCode::parse("G1").is_err());
    }
}

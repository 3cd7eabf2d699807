//! The proptest versions of the fuzz targets (`fuzz/`), run in CI: the SMS
//! command parser, the phone parser, and the Twilio form and signature path
//! take anything without panicking and keep their promises. (The segment
//! counter's are in `segment_properties`.)

use proptest::prelude::*;
use sms_credit::twilio::{form, signature};
use sms_credit_actors::commands::{BuyAmount, Command};
use sms_credit_actors::phone::PhoneNumber;

/// Flips the case of ASCII letters where `mask` says so.
fn flip_case(text: &str, mask: u64) -> String {
    text.chars()
        .enumerate()
        .map(|(index, character)| {
            if mask >> (index % 64) & 1 == 1 {
                if character.is_ascii_lowercase() {
                    character.to_ascii_uppercase()
                } else {
                    character.to_ascii_lowercase()
                }
            } else {
                character
            }
        })
        .collect()
}

fn command_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(buy|BUY|Buy|bal|BALANCE|help|HeLp)[ \t\n$]{0,3}[0-9$.,a-z]{0,8}",
        "[ \t]{0,3}buy[ ]{0,2}\\$?(10|10\\.00|10\\.0|010|1e1|10\\.001|9\\.99|-10)[ \t]{0,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn commands_ignore_case_and_surrounding_space(text in command_text(), mask in any::<u64>(), pad in "[ \t\r\n]{0,4}") {
        let parsed = Command::parse(&text);
        prop_assert_eq!(Command::parse(&flip_case(&text, mask)), parsed.clone());
        prop_assert_eq!(Command::parse(&format!("{pad}{text}{pad}")), parsed.clone());
        if let Command::Buy(BuyAmount::Ten) = parsed {
            prop_assert!(text.to_uppercase().contains("BUY"));
            prop_assert!(text.contains("10"));
        }
    }

    #[test]
    fn phone_numbers_parse_to_canonical_e164_or_refuse(text in prop_oneof![
        any::<String>(),
        "\\+[0-9 ()-]{0,20}",
        "\\+1[2-9][0-9]{9}",
        "\\+44 ?7[0-9]{3} ?[0-9]{6}",
    ]) {
        if let Ok(phone) = PhoneNumber::parse(&text) {
            let e164 = phone.as_str();
            prop_assert!(e164.starts_with('+'));
            prop_assert!(e164[1..].chars().all(|digit| digit.is_ascii_digit()));
            prop_assert!(e164.len() <= 16);
            let again = PhoneNumber::parse(e164).unwrap();
            prop_assert_eq!(again, phone);
        }
    }

    #[test]
    fn twilio_forms_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = form::parse(&bytes);
    }

    #[test]
    fn twilio_forms_read_back_what_was_encoded(fields in proptest::collection::vec((any::<String>(), any::<String>()), 0..12)) {
        let encoded = serde_urlencoded::to_string(&fields).unwrap();
        let parsed = form::parse(encoded.as_bytes()).unwrap();
        prop_assert_eq!(parsed, fields);
    }

    #[test]
    fn a_signature_holds_for_its_fields_only(
        fields in proptest::collection::vec(("[A-Za-z]{1,12}", any::<String>()), 1..10),
        token in "[a-f0-9]{32}",
        changed in any::<prop::sample::Index>(),
        extra in "[a-z]{1,5}",
        presented in any::<String>(),
    ) {
        let url = "https://sms.example.com/webhooks/twilio/sms";
        let signed = signature::compute(&token, url, &fields);
        prop_assert!(signature::is_valid(&token, url, &fields, &signed));
        prop_assert!(signature::is_valid(&token, "https://sms.example.com:443/webhooks/twilio/sms", &fields, &signed));
        let mut tampered = fields.clone();
        let index = changed.index(tampered.len());
        tampered[index].1.push_str(&extra);
        prop_assert!(!signature::is_valid(&token, url, &tampered, &signed));
        prop_assert!(!signature::is_valid(&token, "https://sms.example.com/webhooks/twilio/status", &fields, &signed));
        let _ = signature::is_valid(&token, url, &fields, &presented);
    }
}

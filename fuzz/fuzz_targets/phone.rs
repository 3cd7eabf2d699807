//! The phone parser takes any text; what it accepts is canonical E.164
//! that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sms_credit_actors::phone::PhoneNumber;

fuzz_target!(|text: &str| {
    if let Ok(phone) = PhoneNumber::parse(text) {
        let e164 = phone.as_str();
        assert!(e164.starts_with('+') && e164[1..].bytes().all(|digit| digit.is_ascii_digit()));
        assert_eq!(PhoneNumber::parse(e164).ok(), Some(phone));
    }
});

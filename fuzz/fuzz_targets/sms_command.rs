//! The SMS command parser takes any text; case and surrounding space never matter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sms_credit_actors::commands::Command;

fuzz_target!(|text: &str| {
    let parsed = Command::parse(text);
    assert_eq!(Command::parse(&text.to_ascii_lowercase()), parsed);
    assert_eq!(Command::parse(&format!(" \t{text}\n ")), parsed);
});

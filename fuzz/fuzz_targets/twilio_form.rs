//! The Twilio webhook path before any account is touched: any bytes as a
//! form, then the signature check over what was parsed, never panic; a
//! signature computed over the parsed fields verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sms_credit::twilio::{form, signature};

const URL: &str = "https://sms.example.com/webhooks/twilio/sms";

fuzz_target!(|data: &[u8]| {
    let (presented, body) = data.split_at(data.len().min(28));
    let Ok(fields) = form::parse(body) else { return };
    let presented = String::from_utf8_lossy(presented);
    let _ = signature::is_valid("token", URL, &fields, &presented);
    let signed = signature::compute("token", URL, &fields);
    assert!(signature::is_valid("token", URL, &fields, &signed));
});

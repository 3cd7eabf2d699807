//! The segment counter takes any text and counts at least one segment;
//! smart encoding is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sms_credit_actors::rating::{count_segments, smart_encode};

fuzz_target!(|text: &str| {
    let counted = count_segments(text);
    assert!(counted.segments >= 1);
    let smart = smart_encode(text);
    assert_eq!(smart_encode(&smart.text).text, smart.text);
});

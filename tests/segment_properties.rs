//! Properties of the segment counter and smart encoding over arbitrary Unicode.

use proptest::prelude::*;
use sms_credit_actors::rating::segments::gsm7_septets;
use sms_credit_actors::rating::{count_segments, smart_encode, Encoding};

/// Text that mixes GSM-7 (basic and extension) with anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9 {}\\[\\]~|^€\r\n@£$¥èéùìò]{0,400}",
        "[a-z😀é“”—…\u{00A0}]{0,300}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn counts_are_sound(text in text()) {
        let counted = count_segments(&text);
        prop_assert!(counted.segments >= 1);
        let segments = counted.segments as usize;
        match counted.encoding {
            Encoding::Gsm7 => {
                prop_assert!(text.chars().all(|character| gsm7_septets(character).is_some()));
                let septets: usize = text.chars().filter_map(gsm7_septets).map(|septets| septets as usize).sum();
                if segments == 1 {
                    prop_assert!(septets <= 160);
                } else {
                    // Every part but the last is full up to a split escape pair.
                    prop_assert!(septets > 160 && septets <= segments * 153);
                    prop_assert!(septets > (segments - 1) * 152);
                }
            }
            Encoding::Ucs2 => {
                prop_assert!(text.chars().any(|character| gsm7_septets(character).is_none()));
                let units: usize = text.chars().map(char::len_utf16).sum();
                if segments == 1 {
                    prop_assert!(units <= 70);
                } else {
                    prop_assert!(units > 70 && units <= segments * 67);
                    prop_assert!(units > (segments - 1) * 66);
                }
            }
        }
    }

    #[test]
    fn smart_encoding_is_idempotent_and_keeps_gsm7_text(text in text()) {
        let once = smart_encode(&text);
        let twice = smart_encode(&once.text);
        prop_assert_eq!(&twice.text, &once.text);
        prop_assert_eq!(twice.replacements, 0);
        if count_segments(&text).encoding == Encoding::Gsm7 {
            prop_assert_eq!(once.text, text);
        }
    }
}

//! Counts SMS segments as Twilio counts them: GSM-7 (160 septets alone,
//! 153 per part, escape pairs never split) or UCS-2 (70 UTF-16 units alone,
//! 67 per part, surrogate pairs never split), and the optional smart
//! encoding that swaps look-alike characters for GSM-7 ones.

use std::fmt;

use serde::Serialize;

/// How a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How many segments a message takes, and in which encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentCount {
    pub encoding: Encoding,
    /// At least 1 (the empty message is one segment).
    pub segments: u32,
}

/// The GSM 03.38 basic character set (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table (an escape and a septet: two each).
const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// Septets in a lone GSM-7 segment, and in each part of a longer message.
const GSM7_SINGLE: u32 = 160;
const GSM7_PART: u32 = 153;
/// UTF-16 code units in a lone UCS-2 segment, and in each part.
const UCS2_SINGLE: u32 = 70;
const UCS2_PART: u32 = 67;

/// Septets a character takes in GSM-7, or `None` if GSM-7 cannot carry it.
pub fn gsm7_septets(character: char) -> Option<u32> {
    if character.is_ascii() {
        // Fast path for the common case; the ASCII characters GSM-7 lacks
        // are the control characters (but LF, CR, FF) and the backtick.
        return match character {
            '\n' | '\r' => Some(1),
            '\u{0C}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' => Some(2),
            '`' => None,
            ' '..='~' => Some(1),
            _ => None,
        };
    }
    if GSM7_BASIC.contains(character) {
        Some(1)
    } else if GSM7_EXTENSION.contains(character) {
        Some(2)
    } else {
        None
    }
}

/// Counts the segments of `text` as Twilio does.
pub fn count_segments(text: &str) -> SegmentCount {
    match gsm7_segments(text) {
        Some(segments) => SegmentCount {
            encoding: Encoding::Gsm7,
            segments,
        },
        None => SegmentCount {
            encoding: Encoding::Ucs2,
            segments: ucs2_segments(text),
        },
    }
}

/// Segments in GSM-7, or `None` if some character needs UCS-2.
fn gsm7_segments(text: &str) -> Option<u32> {
    let mut total: u32 = 0;
    for character in text.chars() {
        total = total.saturating_add(gsm7_septets(character)?);
    }
    if total <= GSM7_SINGLE {
        return Some(1);
    }
    // Fill parts of 153 septets; a two-septet character that does not fit
    // whole moves to the next part.
    let mut segments = 1;
    let mut used = 0;
    for character in text.chars() {
        let septets = gsm7_septets(character)?;
        if used + septets > GSM7_PART {
            segments += 1;
            used = 0;
        }
        used += septets;
    }
    Some(segments)
}

fn ucs2_segments(text: &str) -> u32 {
    let total: usize = text.chars().map(char::len_utf16).sum();
    if total <= UCS2_SINGLE as usize {
        return 1;
    }
    // Fill parts of 67 code units; a surrogate pair that does not fit whole
    // moves to the next part.
    let mut segments = 1;
    let mut used = 0;
    for character in text.chars() {
        let units = character.len_utf16() as u32;
        if used + units > UCS2_PART {
            segments += 1;
            used = 0;
        }
        used += units;
    }
    segments
}

/// The GSM-7 look-alike of a character smart encoding replaces, if any
/// (the empty string removes it).
fn smart_replacement(character: char) -> Option<&'static str> {
    let replacement = match character {
        // Quotation marks.
        '\u{00AB}' | '\u{00BB}' | '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}'
        | '\u{2033}' | '\u{2036}' | '\u{301D}' | '\u{301E}' | '\u{301F}' | '\u{FF02}' => "\"",
        '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{2032}' | '\u{2035}' | '\u{02B9}'
        | '\u{02BC}' | '\u{02C8}' | '\u{FF07}' => "'",
        '\u{201A}' => ",",
        '\u{2039}' => "<",
        '\u{203A}' => ">",
        // Dashes and hyphens.
        '\u{2010}' | '\u{2011}' | '\u{2012}' | '\u{2013}' | '\u{2014}' | '\u{2015}'
        | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' | '\u{00AD}' => "-",
        // Odd spaces.
        '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => " ",
        // Invisible characters.
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' => "",
        '\u{2026}' => "...",
        '\u{2022}' | '\u{2023}' | '\u{2043}' => "-",
        '\u{02C6}' => "^",
        '\u{02DC}' => "~",
        '\u{2044}' | '\u{2215}' | '\u{FF0F}' => "/",
        '\u{FF3C}' => "\\",
        '\u{00B4}' | '\u{02CB}' | '\u{0060}' => "'",
        _ => return None,
    };
    Some(replacement)
}

/// What smart encoding makes of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartEncoded {
    pub text: String,
    /// How many characters were replaced or removed.
    pub replacements: u32,
}

/// Replaces look-alike characters (curly quotes, long dashes, odd spaces,
/// ellipsis, fullwidth ASCII, …) with GSM-7 equivalents, as Twilio's smart
/// encoding does. Characters with no look-alike are kept.
pub fn smart_encode(text: &str) -> SmartEncoded {
    let mut encoded = String::with_capacity(text.len());
    let mut replacements = 0;
    for character in text.chars() {
        if let Some(replacement) = smart_replacement(character) {
            encoded.push_str(replacement);
            replacements += 1;
        } else if let Some(ascii) = fullwidth_to_ascii(character) {
            encoded.push(ascii);
            replacements += 1;
        } else {
            encoded.push(character);
        }
    }
    SmartEncoded {
        text: encoded,
        replacements,
    }
}

/// Fullwidth forms (U+FF01..U+FF5E) are ASCII shifted by 0xFEE0.
fn fullwidth_to_ascii(character: char) -> Option<char> {
    let code = u32::from(character);
    if (0xFF01..=0xFF5E).contains(&code) {
        let ascii = char::from_u32(code - 0xFEE0)?;
        // Keep only what GSM-7 can carry, else smart encoding would not help.
        gsm7_septets(ascii).map(|_| ascii)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str) -> (Encoding, u32) {
        let counted = count_segments(text);
        (counted.encoding, counted.segments)
    }

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(count(""), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(307)), (Encoding::Gsm7, 3));
        assert_eq!(count(&"a".repeat(459)), (Encoding::Gsm7, 3));
    }

    #[test]
    fn extension_characters_take_two_septets_and_never_split() {
        assert_eq!(count(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(
            count(&format!("{}{}", "a".repeat(159), "€")),
            (Encoding::Gsm7, 2)
        );
        // 152 septets then an escape pair: the pair moves to the second part.
        let text = format!("{}{}{}", "a".repeat(152), "{", "a".repeat(152));
        assert_eq!(count(&text), (Encoding::Gsm7, 3));
        let text = format!("{}{}{}", "a".repeat(151), "{", "a".repeat(153));
        assert_eq!(count(&text), (Encoding::Gsm7, 2));
    }

    #[test]
    fn gsm7_covers_its_tables_and_nothing_else() {
        assert_eq!(
            count("Prévisions: 12°C ÄÖÜ ñ £5 @ § ¿¡ Ω"),
            (Encoding::Ucs2, 1),
            "° is not GSM-7"
        );
        assert_eq!(
            count("Prévisions: 12C ÄÖÜ ñ £5 @ § ¿¡ Ω"),
            (Encoding::Gsm7, 1)
        );
        assert_eq!(count("back`tick"), (Encoding::Ucs2, 1));
        assert_eq!(count("line\r\nbreak"), (Encoding::Gsm7, 1));
        assert_eq!(gsm7_septets('\u{0C}'), Some(2));
        assert_eq!(gsm7_septets('ç'), None, "only the capital Ç is GSM-7");
    }

    #[test]
    fn crlf_counts_as_two_characters() {
        assert_eq!(count(&"\r\n".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(
            count(&format!("{}\r\n", "a".repeat(159))),
            (Encoding::Gsm7, 2)
        );
    }

    #[test]
    fn ucs2_boundaries_and_surrogates() {
        assert_eq!(count(&"é".repeat(70)), (Encoding::Gsm7, 1), "é is GSM-7");
        assert_eq!(count(&"ç".repeat(70)), (Encoding::Ucs2, 1));
        assert_eq!(count(&"ç".repeat(71)), (Encoding::Ucs2, 2));
        assert_eq!(count(&"ç".repeat(134)), (Encoding::Ucs2, 2));
        assert_eq!(count(&"ç".repeat(135)), (Encoding::Ucs2, 3));
        assert_eq!(count(&"😀".repeat(35)), (Encoding::Ucs2, 1));
        assert_eq!(count(&"😀".repeat(36)), (Encoding::Ucs2, 2));
        // 66 units then an emoji: the pair moves to the next part.
        let text = format!("{}😀{}", "ç".repeat(66), "ç".repeat(66));
        assert_eq!(count(&text), (Encoding::Ucs2, 3));
        let text = format!("{}😀{}", "ç".repeat(65), "ç".repeat(66));
        assert_eq!(count(&text), (Encoding::Ucs2, 2));
    }

    #[test]
    fn smart_encoding_replaces_look_alikes() {
        let encoded = smart_encode("“Storm” — expect 40\u{00A0}km/h… it’s ＯＫ");
        assert_eq!(encoded.text, "\"Storm\" - expect 40 km/h... it's OK");
        assert_eq!(encoded.replacements, 8);
        assert_eq!(count(&encoded.text).0, Encoding::Gsm7);
        assert_eq!(smart_encode("plain").replacements, 0);
        assert_eq!(smart_encode("zero\u{200B}width").text, "zerowidth");
    }
}

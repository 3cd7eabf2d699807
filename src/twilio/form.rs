//! Strict parsing of the `application/x-www-form-urlencoded` bodies Twilio
//! posts: every field kept in order (the signature covers them all), a bad
//! percent escape or a value that is not UTF-8 refused rather than replaced.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormError {
    #[error("bad percent escape at byte {0}")]
    BadEscape(usize),
    #[error("a field is not valid UTF-8")]
    NotUtf8,
}

/// Parses a form body into its (name, value) pairs, in the order sent.
pub fn parse(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut fields = Vec::new();
    let mut offset = 0;
    for pair in body.split(|byte| *byte == b'&') {
        if !pair.is_empty() {
            let (name, value) = match pair.iter().position(|byte| *byte == b'=') {
                Some(equals) => (&pair[..equals], &pair[equals + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            let value_offset = offset + name.len() + 1;
            fields.push((decode(name, offset)?, decode(value, value_offset)?));
        }
        offset += pair.len() + 1;
    }
    Ok(fields)
}

fn decode(encoded: &[u8], offset: usize) -> Result<String, FormError> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut index = 0;
    while index < encoded.len() {
        match encoded[index] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = encoded.get(index + 1).and_then(|digit| hex(*digit));
                let low = encoded.get(index + 2).and_then(|digit| hex(*digit));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(FormError::BadEscape(offset + index));
                };
                bytes.push(high << 4 | low);
                index += 2;
            }
            other => bytes.push(other),
        }
        index += 1;
    }
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn decodes_what_twilio_sends() {
        let body = b"Body=BUY+%2410&From=%2B14155550100&NumMedia=0&Empty=&Flag";
        assert_eq!(
            parse(body).unwrap(),
            pairs(&[
                ("Body", "BUY $10"),
                ("From", "+14155550100"),
                ("NumMedia", "0"),
                ("Empty", ""),
                ("Flag", "")
            ])
        );
        assert_eq!(
            parse("Body=%F0%9F%8C%A7%EF%B8%8F".as_bytes()).unwrap(),
            pairs(&[("Body", "🌧️")])
        );
        assert_eq!(parse(b"").unwrap(), pairs(&[]));
    }

    #[test]
    fn refuses_bad_escapes_and_invalid_utf8() {
        assert_eq!(parse(b"Body=%ZZ"), Err(FormError::BadEscape(5)));
        assert_eq!(parse(b"A=1&Body=%4"), Err(FormError::BadEscape(9)));
        assert_eq!(parse(b"Body=%FF%FE"), Err(FormError::NotUtf8));
        assert_eq!(parse(&[b'B', b'=', 0xC3]), Err(FormError::NotUtf8));
    }

    #[test]
    fn agrees_with_serde_urlencoded_on_valid_forms() {
        let body = b"a=1&b=x+y&c=%26%3D&a=2";
        let reference: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap();
        assert_eq!(parse(body).unwrap(), reference);
    }
}

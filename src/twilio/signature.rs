//! Twilio's request signature: HMAC-SHA1, keyed by the auth token, over the
//! full URL Twilio called followed by every POST parameter's name and value
//! sorted by name, in base64; compared in constant time.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::auth::constant_time_eq;

/// The signature Twilio sends for this URL and these parameters.
pub fn compute(auth_token: &str, url: &str, parameters: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = parameters.iter().collect();
    sorted.sort();
    let mut signed = String::with_capacity(url.len() + parameters.len() * 24);
    signed.push_str(url);
    for (name, value) in sorted {
        signed.push_str(name);
        signed.push_str(value);
    }
    let mut mac = match Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(signed.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as called, and the same with its default port written out or
/// left out: Twilio may sign either form.
fn url_forms(url: &str) -> Vec<String> {
    let mut forms = vec![url.to_string()];
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        let Some(rest) = url.strip_prefix(scheme) else {
            continue;
        };
        let (host, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        match host.strip_suffix(port) {
            Some(bare) => forms.push(format!("{scheme}{bare}{path}")),
            None if !host.contains(':') => forms.push(format!("{scheme}{host}{port}{path}")),
            None => {}
        }
    }
    forms
}

/// Whether `presented` is Twilio's signature of this request.
pub fn is_valid(
    auth_token: &str,
    url: &str,
    parameters: &[(String, String)],
    presented: &str,
) -> bool {
    url_forms(url).iter().any(|form| {
        constant_time_eq(
            compute(auth_token, form, parameters).as_bytes(),
            presented.as_bytes(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_parameters() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
    }

    #[test]
    fn twilios_documented_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            compute("12345", url, &example_parameters()),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(is_valid(
            "12345",
            url,
            &example_parameters(),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!is_valid(
            "12346",
            url,
            &example_parameters(),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        let mut changed = example_parameters();
        changed[2].1 = "1235".into();
        assert!(!is_valid(
            "12345",
            url,
            &changed,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn accepts_the_url_with_and_without_its_default_port() {
        let signed_without = compute(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &example_parameters(),
        );
        assert!(is_valid(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &example_parameters(),
            &signed_without
        ));
        let signed_with = compute(
            "12345",
            "https://mycompany.com:443/myapp.php",
            &example_parameters(),
        );
        assert!(is_valid(
            "12345",
            "https://mycompany.com/myapp.php",
            &example_parameters(),
            &signed_with
        ));
        let other_port = compute(
            "12345",
            "https://mycompany.com:8443/myapp.php",
            &example_parameters(),
        );
        assert!(!is_valid(
            "12345",
            "https://mycompany.com/myapp.php",
            &example_parameters(),
            &other_port
        ));
    }
}

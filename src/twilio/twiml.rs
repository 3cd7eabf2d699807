//! TwiML replies: `<Response><Message>…</Message></Response>` with the text
//! XML-escaped, or `<Response/>` for no reply.

pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

pub fn render(reply: Option<&str>) -> String {
    match reply {
        Some(text) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            escape(text)
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_reply() {
        assert_eq!(
            render(Some("Balance <$5> & \"more\" 'ok'")),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>Balance &lt;$5&gt; &amp; &quot;more&quot; &apos;ok&apos;</Message></Response>"
        );
        assert_eq!(
            render(None),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"
        );
    }
}

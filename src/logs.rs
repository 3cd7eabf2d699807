//! Log lines: to standard error, filtered by `RUST_LOG`, as text for people
//! or as one JSON object a line for a log collector (`log_format`). Colour
//! only where a person reads them: on a terminal, unless `NO_COLOR` says
//! otherwise; a file, journald or a container's log gets plain text.

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Starts logging to standard error in `format`; `RUST_LOG` filters the
/// lines, else `default_level`. Called once, before anything logs.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second start (as in tests) keeps the first: nothing to report.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .try_init(),
    };
}

/// Whether text lines are coloured: only on a terminal, and not when
/// `NO_COLOR` is set to anything but nothing (<https://no-color.org>).
/// Escape codes in a file or a collector's store are noise that every
/// search must step around.
pub fn colours(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The fields of a span, kept as one JSON object, so that each line of
/// the span can carry them as fields of its own.
struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut values = Map::new();
        fields.record(&mut JsonValues(&mut values));
        write!(writer, "{}", Value::Object(values))
    }

    /// A field recorded after the span began (`account_id`, once the
    /// caller is known) joins the object instead of trailing it.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        // `format_fields` above wrote them as one object, or the span had
        // no fields yet (an empty string): then there is nothing to keep.
        let mut values = match serde_json::from_str(&current.fields) {
            Ok(Value::Object(values)) => values,
            _ => Map::new(),
        };
        fields.record(&mut JsonValues(&mut values));
        current.fields = Value::Object(values).to_string();
        Ok(())
    }
}

/// One JSON object a line: `timestamp`, `level`, `target` and `message`
/// first, then the fields of the spans the event happened in (a request's
/// `request_id`, `method`, `path` and `account_id`) with the event's own,
/// which win a clash of names.
struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        for span in context
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
        {
            let extensions = span.extensions();
            let formatted = extensions.get::<FormattedFields<JsonFields>>();
            if let Some(Ok(Value::Object(values))) =
                formatted.map(|formatted| serde_json::from_str(&formatted.fields))
            {
                fields.extend(values);
            }
        }
        event.record(&mut JsonValues(&mut fields));
        let metadata = event.metadata();
        fields.insert(
            "timestamp".into(),
            format_rfc3339_ms(SystemClock.now_ms()).into(),
        );
        fields.insert("level".into(), metadata.level().as_str().into());
        fields.insert("target".into(), metadata.target().into());
        // serde_json's map is sorted by name: these come first, by hand,
        // so that a person reading the raw line finds them.
        let first = ["timestamp", "level", "target", "message"];
        let in_order = first
            .iter()
            .filter_map(|name| Some((*name, fields.get(*name)?)))
            .chain(
                fields
                    .iter()
                    .map(|(name, value)| (name.as_str(), value))
                    .filter(|(name, _)| !first.contains(name)),
            );
        let mut text = String::from("{");
        for (name, value) in in_order {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&Value::from(name).to_string());
            text.push(':');
            text.push_str(&value.to_string());
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// Records fields as JSON values: numbers and booleans as such, the rest
/// as the text they show.
struct JsonValues<'fields>(&'fields mut Map<String, Value>);

impl Visit for JsonValues<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.0.insert(field.name().into(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_without_no_color() {
        assert!(colours(true, None));
        assert!(
            colours(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None), "a file, journald or a pipe");
        assert!(!colours(false, Some(OsStr::new("1"))));
    }
}

//! `sms-credit config`: every setting's effective value and where it came
//! from (as `git config --show-origin` does), then whether it checks.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::output::print_json;
use crate::config::{Options, Settings, Values};

#[derive(Args, Debug)]
pub struct ConfigCommand {
    /// The server's settings, as `serve` takes them.
    #[command(flatten)]
    pub options: Options,
    /// Print JSON (for programs): {"settings": [{"key", "variable", "value", "source"}, …]}.
    #[arg(long)]
    json: bool,
}

impl ConfigCommand {
    /// Prints the view; exits 2 (after printing) when the settings do not check.
    pub fn run(&self, values: &Values) -> ExitCode {
        let view = values.view();
        if self.json {
            let settings: Vec<_> = view
                .iter()
                .map(|(setting, value, source)| {
                    json!({"key": setting.key, "variable": setting.variable(),
                           "section": setting.section.title(), "value": value, "source": source})
                })
                .collect();
            if let Err(error) = print_json(&json!({ "settings": settings })) {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        } else {
            // Each column as wide as its widest value, so that a long file
            // path or Postgres URL does not push the others out of line.
            let value =
                |value: &Option<String>| value.as_deref().unwrap_or("(not set)").to_string();
            let key_width = view.iter().map(|(setting, _, _)| setting.key.len());
            let value_width = view
                .iter()
                .map(|(_, shown, _)| value(shown).chars().count());
            let source_width = view.iter().map(|(_, _, source)| source.chars().count());
            let (key_width, value_width, source_width) = (
                key_width.max().unwrap_or(0),
                value_width.max().unwrap_or(0),
                source_width.max().unwrap_or(0),
            );
            let mut section = None;
            for (setting, shown, source) in &view {
                if section != Some(setting.section) {
                    section = Some(setting.section);
                    say!("# {}", setting.section.title());
                }
                say!(
                    "{:<key_width$}  {:<value_width$}  {:<source_width$}  {}",
                    setting.key,
                    value(shown),
                    source,
                    setting.variable()
                );
            }
        }
        match Settings::check(values) {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("configuration error: {error}");
                ExitCode::from(2)
            }
        }
    }
}

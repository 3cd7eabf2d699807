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
            let mut section = None;
            for (setting, value, source) in &view {
                if section != Some(setting.section) {
                    section = Some(setting.section);
                    println!("# {}", setting.section.title());
                }
                println!(
                    "{:<30} {:<40} {:<14} {}",
                    setting.key,
                    value.as_deref().unwrap_or("(not set)"),
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

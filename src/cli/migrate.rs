//! `sms-credit migrate`: applies the migrations the database lacks.

use clap::Args;
use serde_json::json;
use sms_credit_actors::adapters;

use super::output::print_json;
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct MigrateCommand {
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

impl MigrateCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let database = &settings.database.location;
        let applied = adapters::migrate(database).map_err(|error| error.to_string())?;
        if self.json {
            return print_json(&json!({"database": database.to_string(), "applied": applied}));
        }
        if applied.is_empty() {
            say!("{database}: up to date");
        }
        for name in applied {
            say!("{database}: applied {name}");
        }
        Ok(())
    }
}

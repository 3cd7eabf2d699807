//! `sms-credit migrate`: applies the migrations the database lacks, makes
//! the credit grants of accounts that have none, and, while no instance
//! runs, makes again those of accounts an earlier release's server wrote
//! to after the upgrade.

use clap::Args;
use serde_json::json;
use sms_credit_actors::adapters::{self, MigrateOptions};
use sms_credit_actors::backfill::{AccountLeft, LEFT_WITHOUT_GRANTS, NOT_MADE_AGAIN};

use super::output::{counted, print_json};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct MigrateCommand {
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

/// Accounts left, as JSON: each one's id and why.
fn left_json(left: &[AccountLeft]) -> serde_json::Value {
    left.iter()
        .map(|left| json!({"account_id": left.account_id.0, "why": left.why.to_string()}))
        .collect()
}

impl MigrateCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let database = &settings.database.location;
        let migrated = adapters::migrate(
            database,
            MigrateOptions::command(settings.database.instance_timeout),
        )
        .map_err(|error| error.to_string())?;
        let ids = |accounts: &[sms_credit_actors::AccountId]| -> Vec<i64> {
            accounts.iter().map(|account| account.0).collect()
        };
        if self.json {
            return print_json(&json!({
                "database": database.to_string(),
                "applied": migrated.applied,
                "grants_made": ids(&migrated.grants_made),
                "left_without_grants": left_json(&migrated.left_without_grants),
                "grants_made_again": ids(&migrated.grants_made_again),
                "not_made_again": left_json(&migrated.not_made_again),
                "grants_wait_for_instances": migrated.remake_waits.as_ref().map(|waits| json!({
                    "accounts": ids(&waits.accounts),
                    "message": waits.to_string(),
                })),
            }));
        }
        if migrated.applied.is_empty() {
            say!("{database}: up to date");
        }
        for name in &migrated.applied {
            say!("{database}: applied {name}");
        }
        if !migrated.grants_made.is_empty() {
            say!(
                "{database}: made the credit grants of {} from their ledgers",
                counted(migrated.grants_made.len() as u64, "account", "accounts")
            );
        }
        for left in &migrated.left_without_grants {
            say!(
                "{database}: account {}: {LEFT_WITHOUT_GRANTS} ({})",
                left.account_id,
                left.why
            );
        }
        if !migrated.grants_made_again.is_empty() {
            let accounts: Vec<String> = migrated
                .grants_made_again
                .iter()
                .map(ToString::to_string)
                .collect();
            say!(
                "{database}: made again from their ledgers the credit grants of {} an earlier \
                 release's server wrote to after the upgrade: {}",
                if accounts.len() == 1 {
                    "the account"
                } else {
                    "the accounts"
                },
                accounts.join(", ")
            );
        }
        for left in &migrated.not_made_again {
            say!(
                "{database}: account {}: {NOT_MADE_AGAIN} ({})",
                left.account_id,
                left.why
            );
        }
        if let Some(waits) = &migrated.remake_waits {
            say!("{database}: {waits}");
        }
        Ok(())
    }
}

//! `sms-credit accounts token`: issue, revoke or rotate sign-in tokens.

use clap::Args;
use serde_json::json;
use sms_credit_actors::clock::{Clock, SystemClock};
use sms_credit_actors::store::Store;
use sms_credit_actors::{access_tokens, AccountId};

use crate::cli::output::{print_json, with_store};
use crate::config::Settings;

#[derive(Args, Debug)]
pub struct TokenCommand {
    /// issue: a new token (shown once); revoke: every token; rotate: revoke all, issue one.
    #[arg(value_parser = ["issue", "revoke", "rotate"])]
    action: String,
    /// The account.
    id: i64,
    /// Print JSON (for programs) instead of a summary for people.
    #[arg(long)]
    json: bool,
}

/// Tokens revoked and the new token, or `None` when the account does not exist.
type Outcome = Option<(usize, Option<String>)>;

async fn apply(
    store: Store,
    action: &str,
    account_id: AccountId,
    now_ms: i64,
) -> Result<Outcome, String> {
    let outcome = match action {
        "issue" => access_tokens::issue(&store, account_id, now_ms)
            .await
            .map_err(|error| error.to_string())?
            .map(|token| (0, Some(token))),
        "rotate" => access_tokens::rotate(&store, account_id, now_ms)
            .await
            .map_err(|error| error.to_string())?
            .map(|(revoked, token)| (revoked, Some(token))),
        _ => {
            let exists = store
                .accounts()
                .get(account_id)
                .await
                .map_err(|error| error.to_string())?
                .is_some();
            if !exists {
                return Ok(None);
            }
            let revoked = access_tokens::revoke_all(&store, account_id, now_ms)
                .await
                .map_err(|error| error.to_string())?;
            Some((revoked, None))
        }
    };
    Ok(outcome)
}

impl TokenCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        let (id, account_id) = (self.id, AccountId(self.id));
        let now_ms = SystemClock.now_ms();
        let action = self.action;
        let (revoked, token) = with_store(settings, |store| async move {
            apply(store, &action, account_id, now_ms)
                .await?
                .ok_or_else(|| format!("account {id} does not exist"))
        })?;
        if self.json {
            return print_json(
                &json!({"account_id": account_id, "token": token, "revoked": revoked}),
            );
        }
        match &token {
            Some(token) => {
                println!("account {account_id}: token {token} (shown once; {revoked} revoked)")
            }
            None => println!("account {account_id}: {revoked} tokens revoked"),
        }
        Ok(())
    }
}

//! `sms-credit accounts token`: list, issue, revoke or rotate an account's
//! tokens (those made by signing in by phone among them).

use clap::Args;
use serde_json::json;
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};
use sms_credit_actors::store::Store;
use sms_credit_actors::{access_tokens, AccountId};

use crate::cli::output::{print_json, with_store};
use crate::config::Settings;
use crate::routes::admin::tokens::{IssuedToken, RevokedTokens};

#[derive(Args, Debug)]
pub struct TokenCommand {
    /// list: what is known of each token (never the token); issue: a new token (shown once); revoke: every token; rotate: revoke all, issue one.
    #[arg(value_parser = ["list", "issue", "revoke", "rotate"])]
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
        if self.action == "list" {
            return list(settings, account_id, self.json);
        }
        let now_ms = SystemClock.now_ms();
        let action = self.action;
        let issuing = action == "issue";
        let (revoked, token) = with_store(settings, |store| async move {
            apply(store, &action, account_id, now_ms)
                .await?
                .ok_or_else(|| format!("account {id} does not exist"))
        })?;
        if self.json {
            // As the API answers the same: an issued token alone; what was
            // revoked (and the new token, on rotation).
            return match (issuing, token) {
                (true, Some(token)) => print_json(&IssuedToken::new(account_id, token)),
                (_, token) => print_json(&RevokedTokens::new(account_id, revoked, token)),
            };
        }
        match &token {
            Some(token) => {
                say!("account {account_id}: token {token} (shown once; {revoked} revoked)")
            }
            None => say!("account {account_id}: {revoked} tokens revoked"),
        }
        Ok(())
    }
}

/// Prints what is known of an account's tokens, newest first.
fn list(settings: &Settings, account_id: AccountId, json: bool) -> Result<(), String> {
    let tokens = with_store(settings, |store| async move {
        let exists = store
            .accounts()
            .get(account_id)
            .await
            .map_err(|error| error.to_string())?
            .is_some();
        if !exists {
            return Err(format!("account {account_id} does not exist"));
        }
        store
            .tokens()
            .list(account_id)
            .await
            .map_err(|error| error.to_string())
    })?;
    if json {
        return print_json(&json!({"account_id": account_id, "tokens": tokens}));
    }
    if tokens.is_empty() {
        say!("account {account_id}: no tokens");
    }
    let when = |ms: Option<i64>| ms.map_or("-".to_string(), format_rfc3339_ms);
    for token in &tokens {
        say!(
            "token {}: {} · made {} · expires {} · revoked {}",
            token.id,
            token.source.as_str(),
            format_rfc3339_ms(token.created_at_ms),
            when(token.expires_at_ms),
            when(token.revoked_at_ms),
        );
    }
    Ok(())
}

//! Accounts, account tokens and instances in Postgres.

use tokio_postgres::{GenericClient, Row, Transaction};

use super::{boxed, is_unique_violation, PostgresStore};
use crate::access_tokens::{LiveToken, TokenRecord, TokenSource};
use crate::accounts::{Account, AccountStatus, Card, Email, NewAccount, PhoneNumber};
use crate::ledger::AccountId;
use crate::money::Money;
use crate::opt_outs::{OptOut, OptOutVia};
use crate::store::change_notes;
use crate::store::{
    AccountStore, CreateAccountError, InstanceBeat, InstanceStore, StoreError, StoreFuture,
    TokenStore, UnknownValue,
};

/// Where an account's columns come from: its row, its balance and its
/// number's opt-out, if any.
pub(super) const ACCOUNT_TABLES: &str = "accounts a JOIN account_balances b ON b.account_id = a.id
     LEFT JOIN opt_outs o ON o.phone = a.phone";

pub(super) const ACCOUNT_COLUMNS: &str =
    "a.id, a.phone, a.email, a.stripe_customer_id, a.status, a.created_at,
     b.balance, b.seq, b.low_balance_warned_at, a.stripe_payment_method_id,
     a.card_brand, a.card_last4, a.card_exp_month, a.card_exp_year,
     o.opted_out_at, o.via, o.keyword";

pub(super) fn account_from_row(row: &Row) -> Result<Account, StoreError> {
    let id: i64 = row.try_get(0)?;
    let unknown = |column: &'static str, value: &str| {
        StoreError::UnknownValue(UnknownValue::new("accounts", id, column, value))
    };
    let phone_text: String = row.try_get(1)?;
    let email_text: Option<String> = row.try_get(2)?;
    let status_text: String = row.try_get(4)?;
    Ok(Account {
        id: AccountId(id),
        phone: PhoneNumber::parse(&phone_text).map_err(|_| unknown("phone", &phone_text))?,
        email: match email_text {
            Some(text) => Some(Email::parse(&text).map_err(|_| unknown("email", &text))?),
            None => None,
        },
        stripe_customer_id: row.try_get(3)?,
        status: AccountStatus::parse(&status_text)
            .ok_or_else(|| unknown("status", &status_text))?,
        created_at_ms: row.try_get(5)?,
        balance: Money::from_micros(row.try_get(6)?),
        seq: row.try_get(7)?,
        low_balance_warned_at_ms: row.try_get(8)?,
        stripe_payment_method_id: row.try_get(9)?,
        card: Card::from_columns(
            row.try_get(10)?,
            row.try_get(11)?,
            row.try_get(12)?,
            row.try_get(13)?,
        ),
        opt_out: match row.try_get::<_, Option<i64>>(14)? {
            None => None,
            Some(opted_out_at_ms) => {
                let via: String = row.try_get(15)?;
                Some(OptOut {
                    opted_out_at_ms,
                    via: OptOutVia::parse(&via).ok_or_else(|| unknown("opt_outs.via", &via))?,
                    keyword: row.try_get(16)?,
                })
            }
        },
    })
}

pub(super) async fn get_account(
    client: &impl GenericClient,
    account_id: AccountId,
) -> Result<Option<Account>, StoreError> {
    client
        .query_opt(
            &format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_TABLES}
                  WHERE a.id = $1"
            ),
            &[&account_id.0],
        )
        .await?
        .map(|row| account_from_row(&row))
        .transpose()
}

pub(super) async fn find_account_by_phone(
    client: &impl GenericClient,
    phone: &PhoneNumber,
) -> Result<Option<Account>, StoreError> {
    client
        .query_opt(
            &format!(
                "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_TABLES}
                  WHERE a.phone = $1"
            ),
            &[&phone.as_str()],
        )
        .await?
        .map(|row| account_from_row(&row))
        .transpose()
}

/// Inserts an account with a zero balance (inside a write's savepoint).
pub(super) async fn insert_account(
    client: &impl GenericClient,
    new_account: &NewAccount,
    created_at_ms: i64,
) -> Result<Account, CreateAccountError> {
    let inserted = client
        .query_one(
            "INSERT INTO accounts (phone, email, status, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                &new_account.phone.as_str(),
                &new_account.email.as_ref().map(Email::as_str),
                &new_account.status.as_str(),
                &created_at_ms,
            ],
        )
        .await;
    let id: i64 = match inserted {
        Ok(row) => row.try_get(0).map_err(StoreError::from)?,
        Err(error) if is_unique_violation(&error) => {
            return Err(CreateAccountError::PhoneTaken(
                new_account.phone.as_str().to_string(),
            ))
        }
        Err(error) => return Err(StoreError::from(error).into()),
    };
    let created = crate::webhooks::events::account_created(
        AccountId(id),
        new_account.phone.as_str(),
        new_account.status.as_str(),
        created_at_ms,
    )?;
    super::webhooks::insert_events(client, &[created]).await?;
    client
        .execute(
            "INSERT INTO account_balances (account_id, balance, seq, low_balance_warned_at, updated_at)
             VALUES ($1, 0, 0, NULL, $2)",
            &[&id, &created_at_ms],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(Account {
        id: AccountId(id),
        phone: new_account.phone.clone(),
        email: new_account.email.clone(),
        stripe_customer_id: None,
        status: new_account.status,
        created_at_ms,
        balance: Money::ZERO,
        seq: 0,
        low_balance_warned_at_ms: None,
        stripe_payment_method_id: None,
        card: None,
        // The number may have opted out before it had an account.
        opt_out: super::opt_outs::opt_out_of(client, &new_account.phone).await?,
    })
}

pub(super) async fn set_stripe_customer(
    client: &impl GenericClient,
    account_id: AccountId,
    customer_id: &str,
) -> Result<String, StoreError> {
    let row = client
        .query_one(
            "UPDATE accounts SET stripe_customer_id = COALESCE(stripe_customer_id, $2) WHERE id = $1
             RETURNING stripe_customer_id",
            &[&account_id.0, &customer_id],
        )
        .await?;
    let stored: Option<String> = row.try_get(0)?;
    Ok(stored.unwrap_or_else(|| customer_id.to_string()))
}

pub(super) async fn activate(
    client: &impl GenericClient,
    account_id: AccountId,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE accounts SET status = 'active' WHERE id = $1 AND status = 'pending'",
            &[&account_id.0],
        )
        .await?;
    Ok(())
}

async fn account_exists(
    client: &impl GenericClient,
    account_id: AccountId,
) -> Result<bool, StoreError> {
    Ok(client
        .query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&account_id.0])
        .await?
        .is_some())
}

/// Stores a token's hash; `expires_at_ms` only for one made by signing in.
pub(super) async fn insert_token(
    client: &impl GenericClient,
    account_id: AccountId,
    token_hash: &str,
    now_ms: i64,
    expires_at_ms: Option<i64>,
) -> Result<(), StoreError> {
    let source = if expires_at_ms.is_some() {
        TokenSource::SignIn
    } else {
        TokenSource::Admin
    };
    client
        .execute(
            "INSERT INTO account_tokens (account_id, token_hash, created_at, expires_at, source)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &account_id.0,
                &token_hash,
                &now_ms,
                &expires_at_ms,
                &source.as_str(),
            ],
        )
        .await?;
    Ok(())
}

fn token_from_row(row: &Row) -> Result<TokenRecord, StoreError> {
    let id: i64 = row.try_get(0)?;
    let source: String = row.try_get(1)?;
    Ok(TokenRecord {
        id,
        source: TokenSource::parse(&source).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new("account_tokens", id, "source", &source))
        })?,
        created_at_ms: row.try_get(2)?,
        expires_at_ms: row.try_get(3)?,
        revoked_at_ms: row.try_get(4)?,
    })
}

async fn revoke_tokens(
    client: &Transaction<'_>,
    account_id: AccountId,
    now_ms: i64,
) -> Result<usize, StoreError> {
    // It deletes the phone's sign-up tokens, as sign-in writes do: the
    // sign-in lock first (see `sign_in::lock_sign_in`).
    super::sign_in::lock_sign_in(client).await?;
    let revoked = client
        .execute(
            "UPDATE account_tokens SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL",
            &[&account_id.0, &now_ms],
        )
        .await?;
    // The sign-up tokens of its phone would be exchanged for new ones.
    client
        .execute(
            "DELETE FROM sign_up_tokens WHERE phone = (SELECT phone FROM accounts WHERE id = $1)",
            &[&account_id.0],
        )
        .await?;
    Ok(revoked as usize)
}

impl AccountStore for PostgresStore {
    fn create(&self, account: NewAccount, now_ms: i64) -> StoreFuture<Account, CreateAccountError> {
        self.write(move |transaction| {
            let account = account.clone();
            boxed(async move { insert_account(transaction, &account, now_ms).await })
        })
    }

    fn get(&self, account_id: AccountId) -> StoreFuture<Option<Account>> {
        self.read(move |client| async move { get_account(&*client, account_id).await })
    }

    fn by_phone(&self, phone: PhoneNumber) -> StoreFuture<Option<Account>> {
        self.read(move |client| async move { find_account_by_phone(&*client, &phone).await })
    }

    fn list(&self, search: Option<String>, after_id: i64, limit: i64) -> StoreFuture<Vec<Account>> {
        self.read(move |client| async move {
            let pattern = search.as_ref().map(|text| {
                let escaped = text
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("%{escaped}%")
            });
            let exact_id = search.as_deref().and_then(|text| text.trim().parse::<i64>().ok());
            let rows = client
                .query(
                    &format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_TABLES}
                          WHERE a.id > $1
                            AND ($2::text IS NULL OR a.phone LIKE $2 ESCAPE '\\' OR a.email LIKE $2 ESCAPE '\\'
                                 OR a.id = $3)
                          ORDER BY a.id LIMIT $4"
                    ),
                    &[&after_id, &pattern, &exact_id, &limit],
                )
                .await?;
            rows.iter().map(account_from_row).collect()
        })
    }

    fn balance_totals(&self, threshold: Money) -> StoreFuture<(Money, i64)> {
        self.read(move |client| async move {
            let row = client
                .query_one(
                    "SELECT COALESCE(SUM(CASE WHEN balance > 0 THEN balance ELSE 0 END), 0)::BIGINT,
                            COUNT(*) FILTER (WHERE balance < $1)
                       FROM account_balances",
                    &[&threshold.micros()],
                )
                .await?;
            Ok((Money::from_micros(row.try_get(0)?), row.try_get(1)?))
        })
    }

    fn set_stripe_customer(
        &self,
        account_id: AccountId,
        customer_id: String,
    ) -> StoreFuture<String> {
        self.write(move |transaction| {
            let customer_id = customer_id.clone();
            boxed(async move { set_stripe_customer(transaction, account_id, &customer_id).await })
        })
    }
}

impl TokenStore for PostgresStore {
    fn issue(&self, account_id: AccountId, token_hash: String, now_ms: i64) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let token_hash = token_hash.clone();
            boxed(async move {
                if !account_exists(transaction, account_id).await? {
                    return Ok(false);
                }
                insert_token(transaction, account_id, &token_hash, now_ms, None).await?;
                Ok(true)
            })
        })
    }

    fn revoke_all(&self, account_id: AccountId, now_ms: i64) -> StoreFuture<usize> {
        let origin = self.origin.clone();
        self.write(move |transaction| {
            let origin = origin.clone();
            boxed(async move {
                let revoked = revoke_tokens(transaction, account_id, now_ms).await?;
                let note = change_notes::tokens(account_id);
                super::writer::notify_note(transaction, &origin, &note).await?;
                Ok(revoked)
            })
        })
    }

    fn rotate(
        &self,
        account_id: AccountId,
        token_hash: String,
        now_ms: i64,
    ) -> StoreFuture<Option<usize>> {
        let origin = self.origin.clone();
        self.write(move |transaction| {
            let token_hash = token_hash.clone();
            let origin = origin.clone();
            boxed(async move {
                if !account_exists(transaction, account_id).await? {
                    return Ok(None);
                }
                let revoked = revoke_tokens(transaction, account_id, now_ms).await?;
                insert_token(transaction, account_id, &token_hash, now_ms, None).await?;
                let note = change_notes::tokens(account_id);
                super::writer::notify_note(transaction, &origin, &note).await?;
                Ok(Some(revoked))
            })
        })
    }

    fn account_of(&self, token_hash: String, now_ms: i64) -> StoreFuture<Option<LiveToken>> {
        self.read(move |client| async move {
            let found = client
                .query_opt(
                    "SELECT account_id, expires_at FROM account_tokens
                      WHERE token_hash = $1 AND revoked_at IS NULL
                        AND (expires_at IS NULL OR expires_at > $2)",
                    &[&token_hash, &now_ms],
                )
                .await?;
            found
                .map(|row| {
                    Ok(LiveToken {
                        account_id: AccountId(row.try_get(0)?),
                        expires_at_ms: row.try_get(1)?,
                    })
                })
                .transpose()
        })
    }

    fn list(&self, account_id: AccountId) -> StoreFuture<Vec<TokenRecord>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT id, source, created_at, expires_at, revoked_at FROM account_tokens
                      WHERE account_id = $1 ORDER BY id DESC",
                    &[&account_id.0],
                )
                .await?;
            rows.iter().map(token_from_row).collect()
        })
    }
}

/// An `instances` row's own timeout: the one its heartbeat wrote, or for a
/// row without it (an earlier release's server) the one its name ends
/// with (`3f9a…-30000ms`); NULL when neither says.
pub(super) const INSTANCE_TIMEOUT: &str =
    "COALESCE(timeout_ms, NULLIF(substring(id from '-([0-9]{1,15})ms$')::bigint, 0))";

/// Every instance's row (see [`InstanceStore::beats`]).
pub(super) async fn instance_beats(
    client: &impl GenericClient,
) -> Result<Vec<InstanceBeat>, StoreError> {
    instance_beats_from(client, "instances").await
}

/// Every instance's row, read from `source`: the `instances` table, or a
/// query with its columns (`id`, `heartbeat_at`, `timeout_ms`).
pub(super) async fn instance_beats_from(
    client: &impl GenericClient,
    source: &str,
) -> Result<Vec<InstanceBeat>, StoreError> {
    let rows = client
        .query(
            &format!("SELECT id, heartbeat_at, {INSTANCE_TIMEOUT} FROM {source} ORDER BY id"),
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(InstanceBeat {
                id: row.try_get(0)?,
                heartbeat_ms: row.try_get(1)?,
                timeout_ms: row.try_get(2)?,
            })
        })
        .collect()
}

impl InstanceStore for PostgresStore {
    /// On a reader connection (one statement, committed by itself), not the
    /// writer: a heartbeat must not wait behind a backlog of ledger batches,
    /// or a busy instance would look gone and its sends be given back.
    fn heartbeat(
        &self,
        instance_id: String,
        now_ms: i64,
        timeout_ms: Option<i64>,
    ) -> StoreFuture<()> {
        self.read(move |client| async move {
            client
                .execute(
                    "INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
                     VALUES ($1, $2, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                                                    timeout_ms = excluded.timeout_ms",
                    &[&instance_id, &now_ms, &timeout_ms],
                )
                .await?;
            Ok(())
        })
    }

    fn leave(&self, instance_id: String) -> StoreFuture<()> {
        self.write(move |transaction| {
            let instance_id = instance_id.clone();
            boxed(async move {
                transaction
                    .execute("DELETE FROM instances WHERE id = $1", &[&instance_id])
                    .await?;
                Ok(())
            })
        })
    }
}

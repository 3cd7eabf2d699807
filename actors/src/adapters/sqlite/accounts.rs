//! Accounts and account tokens in SQLite.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteStore;
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

/// Inserts an account with a zero balance. Runs inside a store write.
pub(super) fn insert_account(
    connection: &Connection,
    new_account: &NewAccount,
    created_at_ms: i64,
) -> Result<Account, CreateAccountError> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO accounts (phone, email, status, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                new_account.phone.as_str(),
                new_account.email.as_ref().map(Email::as_str),
                new_account.status.as_str(),
                created_at_ms,
            ])
        });
    match inserted {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(failure, _))
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            return Err(CreateAccountError::PhoneTaken(
                new_account.phone.as_str().to_string(),
            ));
        }
        Err(error) => return Err(StoreError::from(error).into()),
    }
    let id = AccountId(connection.last_insert_rowid());
    let created = crate::webhooks::events::account_created(
        id,
        new_account.phone.as_str(),
        new_account.status.as_str(),
        created_at_ms,
    )?;
    super::webhooks::insert_events(connection, &[created]).map_err(StoreError::from)?;
    connection
        .prepare_cached(
            "INSERT INTO account_balances (account_id, balance, seq, low_balance_warned_at, updated_at)
             VALUES (?1, 0, 0, NULL, ?2)",
        )
        .and_then(|mut statement| statement.execute(params![id.0, created_at_ms]))
        .map_err(StoreError::from)?;
    Ok(Account {
        id,
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
        opt_out: super::opt_outs::opt_out_of(connection, &new_account.phone)?,
    })
}

/// Where an account's columns come from: its row, its balance and its
/// number's opt-out, if any.
const ACCOUNT_TABLES: &str = "accounts a JOIN account_balances b ON b.account_id = a.id
     LEFT JOIN opt_outs o ON o.phone = a.phone";

const ACCOUNT_COLUMNS: &str =
    "a.id, a.phone, a.email, a.stripe_customer_id, a.status, a.created_at,
                               b.balance, b.seq, b.low_balance_warned_at, a.stripe_payment_method_id,
     a.card_brand, a.card_last4, a.card_exp_month, a.card_exp_year,
     o.opted_out_at, o.via, o.keyword";

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    let id: i64 = row.get(0)?;
    let unknown = |index: usize, column: &'static str, value: &str| {
        UnknownValue::new("accounts", id, column, value).into_sql_error(index)
    };
    let phone_text: String = row.get(1)?;
    let email_text: Option<String> = row.get(2)?;
    let status_text: String = row.get(4)?;
    Ok(Account {
        id: AccountId(id),
        phone: PhoneNumber::parse(&phone_text).map_err(|_| unknown(1, "phone", &phone_text))?,
        email: match email_text {
            Some(text) => Some(Email::parse(&text).map_err(|_| unknown(2, "email", &text))?),
            None => None,
        },
        stripe_customer_id: row.get(3)?,
        status: AccountStatus::parse(&status_text)
            .ok_or_else(|| unknown(4, "status", &status_text))?,
        created_at_ms: row.get(5)?,
        balance: Money::from_micros(row.get(6)?),
        seq: row.get(7)?,
        low_balance_warned_at_ms: row.get(8)?,
        stripe_payment_method_id: row.get(9)?,
        card: Card::from_columns(row.get(10)?, row.get(11)?, row.get(12)?, row.get(13)?),
        opt_out: match row.get::<_, Option<i64>>(14)? {
            None => None,
            Some(opted_out_at_ms) => {
                let via: String = row.get(15)?;
                Some(OptOut {
                    opted_out_at_ms,
                    via: OptOutVia::parse(&via).ok_or_else(|| unknown(15, "opt_outs.via", &via))?,
                    keyword: row.get(16)?,
                })
            }
        },
    })
}

pub(super) fn get_account(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<Account>, StoreError> {
    let account = connection
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_TABLES} WHERE a.id = ?1"
        ))?
        .query_row([account_id.0], account_from_row)
        .optional()?;
    Ok(account)
}

/// Accounts in id order after `after_id`, at most `limit`; with `search`,
/// only those whose phone or email contains it (or whose id it is).
pub(super) fn list_accounts(
    connection: &Connection,
    search: Option<&str>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Account>, StoreError> {
    let pattern = search.map(|text| {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let exact_id = search.and_then(|text| text.trim().parse::<i64>().ok());
    let accounts = connection
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_TABLES}
              WHERE a.id > ?1
                AND (?2 IS NULL OR a.phone LIKE ?2 ESCAPE '\\' OR a.email LIKE ?2 ESCAPE '\\' OR a.id = ?3)
              ORDER BY a.id LIMIT ?4"
        ))?
        .query_map(params![after_id, pattern, exact_id, limit], account_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(accounts)
}

pub(super) fn find_account_by_phone(
    connection: &Connection,
    phone: &PhoneNumber,
) -> Result<Option<Account>, StoreError> {
    let account = connection
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_TABLES} WHERE a.phone = ?1"
        ))?
        .query_row([phone.as_str()], account_from_row)
        .optional()?;
    Ok(account)
}

/// Links an account to its Stripe customer, unless it has one already;
/// returns the customer id the account ends up with.
pub(super) fn set_stripe_customer(
    connection: &Connection,
    account_id: AccountId,
    customer_id: &str,
) -> Result<String, StoreError> {
    connection
        .prepare_cached("UPDATE accounts SET stripe_customer_id = COALESCE(stripe_customer_id, ?2) WHERE id = ?1")?
        .execute(params![account_id.0, customer_id])?;
    let stored: Option<String> = connection
        .prepare_cached("SELECT stripe_customer_id FROM accounts WHERE id = ?1")?
        .query_row([account_id.0], |row| row.get(0))?;
    Ok(stored.unwrap_or_else(|| customer_id.to_string()))
}

/// Makes a pending account active (access was paid).
pub(super) fn activate(connection: &Connection, account_id: AccountId) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE accounts SET status = 'active' WHERE id = ?1 AND status = 'pending'",
        )?
        .execute([account_id.0])?;
    Ok(())
}

/// Stores a token's hash; `expires_at_ms` only for one made by signing in.
pub(super) fn insert_token(
    connection: &Connection,
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
    connection
        .prepare_cached(
            "INSERT INTO account_tokens (account_id, token_hash, created_at, expires_at, source)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            account_id.0,
            token_hash,
            now_ms,
            expires_at_ms,
            source.as_str()
        ])?;
    Ok(())
}

fn token_from_row(row: &Row<'_>) -> Result<TokenRecord, StoreError> {
    let id: i64 = row.get(0)?;
    let source: String = row.get(1)?;
    Ok(TokenRecord {
        id,
        source: TokenSource::parse(&source).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue {
                table: "account_tokens",
                column: "source",
                row: id.to_string(),
                value: source.clone(),
            })
        })?,
        created_at_ms: row.get(2)?,
        expires_at_ms: row.get(3)?,
        revoked_at_ms: row.get(4)?,
    })
}

fn revoke_tokens(
    connection: &Connection,
    account_id: AccountId,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let revoked = connection
        .prepare_cached(
            "UPDATE account_tokens SET revoked_at = ?2 WHERE account_id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![account_id.0, now_ms])?;
    // The sign-up tokens of its phone would be exchanged for new ones.
    connection
        .prepare_cached(
            "DELETE FROM sign_up_tokens WHERE phone = (SELECT phone FROM accounts WHERE id = ?1)",
        )?
        .execute([account_id.0])?;
    Ok(revoked)
}

fn account_exists(connection: &Connection, account_id: AccountId) -> Result<bool, StoreError> {
    Ok(connection
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row([account_id.0], |_| Ok(()))
        .optional()?
        .is_some())
}

impl AccountStore for SqliteStore {
    fn create(&self, account: NewAccount, now_ms: i64) -> StoreFuture<Account, CreateAccountError> {
        self.write(move |connection| insert_account(connection, &account, now_ms))
    }

    fn get(&self, account_id: AccountId) -> StoreFuture<Option<Account>> {
        self.read(move |connection| get_account(connection, account_id))
    }

    fn by_phone(&self, phone: PhoneNumber) -> StoreFuture<Option<Account>> {
        self.read(move |connection| find_account_by_phone(connection, &phone))
    }

    fn list(&self, search: Option<String>, after_id: i64, limit: i64) -> StoreFuture<Vec<Account>> {
        self.read(move |connection| list_accounts(connection, search.as_deref(), after_id, limit))
    }

    fn balance_totals(&self, threshold: Money) -> StoreFuture<(Money, i64)> {
        self.read(move |connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT COALESCE(SUM(CASE WHEN balance > 0 THEN balance ELSE 0 END), 0),
                            COALESCE(SUM(CASE WHEN balance < ?1 THEN 1 ELSE 0 END), 0)
                       FROM account_balances",
                )?
                .query_row([threshold.micros()], |row| {
                    Ok((Money::from_micros(row.get(0)?), row.get(1)?))
                })?)
        })
    }

    fn set_stripe_customer(
        &self,
        account_id: AccountId,
        customer_id: String,
    ) -> StoreFuture<String> {
        self.write(move |connection| set_stripe_customer(connection, account_id, &customer_id))
    }
}

/// An `instances` row's own timeout: the one its heartbeat wrote, or for a
/// row without it (an earlier release's server) the one its name ends
/// with (`3f9a…-30000ms`); NULL when neither says.
pub(super) const INSTANCE_TIMEOUT: &str = "COALESCE(timeout_ms,
    CASE WHEN id GLOB '*-[1-9]*ms'
              AND rtrim(substr(id, instr(id, '-') + 1), 'ms') NOT GLOB '*[^0-9]*'
         THEN CAST(rtrim(substr(id, instr(id, '-') + 1), 'ms') AS INTEGER) END)";

/// Every instance's row (see [`InstanceStore::beats`]).
pub(super) fn instance_beats(connection: &Connection) -> Result<Vec<InstanceBeat>, StoreError> {
    instance_beats_from(connection, "instances")
}

/// Every instance's row, read from `source`: the `instances` table, or a
/// query with its columns (`id`, `heartbeat_at`, `timeout_ms`).
pub(super) fn instance_beats_from(
    connection: &Connection,
    source: &str,
) -> Result<Vec<InstanceBeat>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT id, heartbeat_at, {INSTANCE_TIMEOUT} FROM {source} ORDER BY id"
    ))?;
    let instances = statement
        .query_map([], |row| {
            Ok(InstanceBeat {
                id: row.get(0)?,
                heartbeat_ms: row.get(1)?,
                timeout_ms: row.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(instances)
}

impl InstanceStore for SqliteStore {
    fn heartbeat(
        &self,
        instance_id: String,
        now_ms: i64,
        timeout_ms: Option<i64>,
    ) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached(
                    "INSERT INTO instances (id, started_at, heartbeat_at, timeout_ms)
                     VALUES (?1, ?2, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                                                    timeout_ms = excluded.timeout_ms",
                )?
                .execute(params![instance_id, now_ms, timeout_ms])?;
            Ok(())
        })
    }

    fn leave(&self, instance_id: String) -> StoreFuture<()> {
        self.write(move |connection| {
            connection
                .prepare_cached("DELETE FROM instances WHERE id = ?1")?
                .execute([instance_id])?;
            Ok(())
        })
    }
}

impl TokenStore for SqliteStore {
    fn issue(&self, account_id: AccountId, token_hash: String, now_ms: i64) -> StoreFuture<bool> {
        self.write(move |connection| {
            if !account_exists(connection, account_id)? {
                return Ok(false);
            }
            insert_token(connection, account_id, &token_hash, now_ms, None)?;
            Ok(true)
        })
    }

    fn revoke_all(&self, account_id: AccountId, now_ms: i64) -> StoreFuture<usize> {
        let origin = self.origin.clone();
        self.write(move |connection| {
            let revoked = revoke_tokens(connection, account_id, now_ms)?;
            let note = change_notes::tokens(account_id);
            super::watcher::leave_note(connection, &origin, &note, now_ms)?;
            Ok(revoked)
        })
    }

    fn rotate(
        &self,
        account_id: AccountId,
        token_hash: String,
        now_ms: i64,
    ) -> StoreFuture<Option<usize>> {
        let origin = self.origin.clone();
        self.write(move |connection| {
            if !account_exists(connection, account_id)? {
                return Ok(None);
            }
            let revoked = revoke_tokens(connection, account_id, now_ms)?;
            insert_token(connection, account_id, &token_hash, now_ms, None)?;
            let note = change_notes::tokens(account_id);
            super::watcher::leave_note(connection, &origin, &note, now_ms)?;
            Ok(Some(revoked))
        })
    }

    fn account_of(&self, token_hash: String, now_ms: i64) -> StoreFuture<Option<LiveToken>> {
        self.read(move |connection| {
            let found = connection
                .prepare_cached(
                    "SELECT account_id, expires_at FROM account_tokens
                      WHERE token_hash = ?1 AND revoked_at IS NULL
                        AND (expires_at IS NULL OR expires_at > ?2)",
                )?
                .query_row(params![token_hash, now_ms], |row| {
                    Ok(LiveToken {
                        account_id: AccountId(row.get(0)?),
                        expires_at_ms: row.get(1)?,
                    })
                })
                .optional()?;
            Ok(found)
        })
    }

    fn list(&self, account_id: AccountId) -> StoreFuture<Vec<TokenRecord>> {
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, source, created_at, expires_at, revoked_at FROM account_tokens
                  WHERE account_id = ?1 ORDER BY id DESC",
            )?;
            let mut rows = statement.query([account_id.0])?;
            let mut tokens = Vec::new();
            while let Some(row) = rows.next()? {
                tokens.push(token_from_row(row)?);
            }
            Ok(tokens)
        })
    }
}

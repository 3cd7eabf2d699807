//! The SQL of the core tables, one function per statement, used by the
//! store's threads and by one-off commands.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{StoreError, UnknownValue};
use crate::accounts::{Account, AccountStatus, Email, NewAccount, PhoneNumber};
use crate::ledger::{AccountId, LedgerEntry, Snapshot, TransactionKind};
use crate::money::Money;

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let account_id = AccountId(row.get(0)?);
    let seq: i64 = row.get(1)?;
    let kind_text: String = row.get(2)?;
    let kind = TransactionKind::parse(&kind_text).ok_or_else(|| {
        UnknownValue::new(
            "transactions",
            format!("account {account_id} seq {seq}"),
            "type",
            kind_text,
        )
        .into_sql_error(2)
    })?;
    Ok(LedgerEntry {
        account_id,
        seq,
        kind,
        amount: Money::from_micros(row.get(3)?),
        balance_after: Money::from_micros(row.get(4)?),
        idempotency_key: row.get(5)?,
        order_id: row.get(6)?,
        description: row.get(7)?,
        created_at_ms: row.get(8)?,
    })
}

const ENTRY_COLUMNS: &str =
    "account_id, seq, type, amount, balance_after, idempotency_key, order_id, description, created_at";

/// Appends one ledger row and moves the snapshot from `previous` to `next`.
/// Returns `false`, changing nothing, if the snapshot on disk is no longer
/// `previous` (someone else wrote to this account).
pub fn append_entry(
    connection: &Connection,
    entry: &LedgerEntry,
    previous: &Snapshot,
    next: &Snapshot,
) -> Result<bool, rusqlite::Error> {
    // The guarded snapshot update goes first, so that a conflict is found
    // before anything has changed.
    let moved = connection
        .prepare_cached(
            "UPDATE account_balances
                SET balance = ?2, seq = ?3, low_balance_warned_at = ?4, updated_at = ?5
              WHERE account_id = ?1 AND seq = ?6 AND balance = ?7",
        )?
        .execute(params![
            entry.account_id.0,
            next.balance.micros(),
            next.seq,
            next.low_balance_warned_at_ms,
            entry.created_at_ms,
            previous.seq,
            previous.balance.micros(),
        ])?;
    if moved != 1 {
        return Ok(false);
    }
    let inserted = connection
        .prepare_cached(
            "INSERT INTO transactions (account_id, seq, type, amount, balance_after,
                                       idempotency_key, order_id, description, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            entry.account_id.0,
            entry.seq,
            entry.kind.as_str(),
            entry.amount.micros(),
            entry.balance_after.micros(),
            entry.idempotency_key,
            entry.order_id,
            entry.description,
            entry.created_at_ms,
        ]);
    if let Err(error) = inserted {
        // Put the snapshot back so that the failed write leaves no trace.
        if !connection.is_autocommit() {
            connection
                .prepare_cached(
                    "UPDATE account_balances SET balance = ?2, seq = ?3, low_balance_warned_at = ?4
                      WHERE account_id = ?1",
                )?
                .execute(params![
                    entry.account_id.0,
                    previous.balance.micros(),
                    previous.seq,
                    previous.low_balance_warned_at_ms,
                ])?;
        }
        return Err(error);
    }
    Ok(true)
}

pub fn load_snapshot(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<Snapshot>, StoreError> {
    let snapshot = connection
        .prepare_cached("SELECT balance, seq, low_balance_warned_at FROM account_balances WHERE account_id = ?1")?
        .query_row([account_id.0], |row| {
            Ok(Snapshot {
                balance: Money::from_micros(row.get(0)?),
                seq: row.get(1)?,
                low_balance_warned_at_ms: row.get(2)?,
            })
        })
        .optional()?;
    Ok(snapshot)
}

pub fn find_entry_by_key(
    connection: &Connection,
    account_id: AccountId,
    key: &str,
) -> Result<Option<LedgerEntry>, StoreError> {
    let entry = connection
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = ?1 AND idempotency_key = ?2"
        ))?
        .query_row(params![account_id.0, key], entry_from_row)
        .optional()?;
    Ok(entry)
}

/// Ledger rows of an account with `seq > after_seq`, oldest first, at most `limit`.
pub fn list_entries(
    connection: &Connection,
    account_id: AccountId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let entries = statement
        .query_map(params![account_id.0, after_seq, limit], entry_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries)
}

/// The newest ledger rows of an account, newest first, at most `limit`.
pub fn recent_entries(
    connection: &Connection,
    account_id: AccountId,
    limit: i64,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM transactions WHERE account_id = ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let entries = statement
        .query_map(params![account_id.0, limit], entry_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries)
}

/// Why an account could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateAccountError {
    #[error("an account with phone number {0} already exists")]
    PhoneTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Inserts an account with a zero balance. Runs inside a store write.
pub fn insert_account(
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
    })
}

const ACCOUNT_COLUMNS: &str =
    "a.id, a.phone, a.email, a.stripe_customer_id, a.status, a.created_at,
                               b.balance, b.seq, b.low_balance_warned_at, a.stripe_payment_method_id";

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
    })
}

pub fn get_account(
    connection: &Connection,
    account_id: AccountId,
) -> Result<Option<Account>, StoreError> {
    let account = connection
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a JOIN account_balances b ON b.account_id = a.id WHERE a.id = ?1"
        ))?
        .query_row([account_id.0], account_from_row)
        .optional()?;
    Ok(account)
}

/// Accounts in id order after `after_id`, at most `limit`; with `search`,
/// only those whose phone or email contains it (or whose id it is).
pub fn list_accounts(
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
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a JOIN account_balances b ON b.account_id = a.id
              WHERE a.id > ?1
                AND (?2 IS NULL OR a.phone LIKE ?2 ESCAPE '\\' OR a.email LIKE ?2 ESCAPE '\\' OR a.id = ?3)
              ORDER BY a.id LIMIT ?4"
        ))?
        .query_map(params![after_id, pattern, exact_id, limit], account_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(accounts)
}

pub fn find_account_by_phone(
    connection: &Connection,
    phone: &PhoneNumber,
) -> Result<Option<Account>, StoreError> {
    let account = connection
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a JOIN account_balances b ON b.account_id = a.id WHERE a.phone = ?1"
        ))?
        .query_row([phone.as_str()], account_from_row)
        .optional()?;
    Ok(account)
}

/// Links an account to its Stripe customer, unless it has one already;
/// returns the customer id the account ends up with.
pub fn set_stripe_customer(
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

pub fn find_account_by_customer(
    connection: &Connection,
    customer_id: &str,
) -> Result<Option<AccountId>, StoreError> {
    let found = connection
        .prepare_cached("SELECT id FROM accounts WHERE stripe_customer_id = ?1")?
        .query_row([customer_id], |row| row.get(0))
        .optional()?;
    Ok(found.map(AccountId))
}

/// Saves the card to charge off-session.
pub fn set_payment_method(
    connection: &Connection,
    account_id: AccountId,
    payment_method_id: &str,
) -> Result<(), StoreError> {
    connection
        .prepare_cached("UPDATE accounts SET stripe_payment_method_id = ?2 WHERE id = ?1")?
        .execute(params![account_id.0, payment_method_id])?;
    Ok(())
}

/// Makes a pending account active (access was paid).
pub fn activate(connection: &Connection, account_id: AccountId) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "UPDATE accounts SET status = 'active' WHERE id = ?1 AND status = 'pending'",
        )?
        .execute([account_id.0])?;
    Ok(())
}

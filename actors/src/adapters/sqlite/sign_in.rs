//! Sign-in codes and sign-up tokens in SQLite. Every check and the write
//! it allows run in one write transaction, and SQLite has one writer, so
//! two requests cannot both pass a limit.

use rusqlite::{params, Connection, OptionalExtension};

use super::accounts::{find_account_by_phone, insert_token};
use super::SqliteStore;
use crate::accounts::{AccountStatus, PhoneNumber};
use crate::phone::CountryCode;
use crate::sign_in::{CodeOpened, CodeRequest, Proof, Redeem, Redeemed, MAX_WRONG_CODES};
use crate::store::{SignInStore, StoreError, StoreFuture, UnknownValue};

const HOUR_MS: i64 = 3_600_000;
/// Codes older than this are of no use to any limit: they are deleted.
const KEPT_MS: i64 = 24 * HOUR_MS;

/// A country read back from `sign_in_codes`.
fn stored_country(country: &str) -> Result<CountryCode, StoreError> {
    CountryCode::parse(country).map_err(|_| {
        StoreError::UnknownValue(UnknownValue::new(
            "sign_in_codes",
            country,
            "country",
            country,
        ))
    })
}

impl SignInStore for SqliteStore {
    fn lift_limits(&self, phone: PhoneNumber) -> StoreFuture<i64> {
        self.write(move |connection| {
            let lifted = connection
                .prepare_cached(
                    "UPDATE sign_in_codes SET lifted = 1 WHERE phone = ?1 AND lifted = 0",
                )?
                .execute([phone.as_str()])?;
            Ok(lifted as i64)
        })
    }

    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<(CountryCode, i64)>> {
        self.read(move |connection| {
            let rows: Vec<(String, i64)> = connection
                .prepare_cached(
                    "SELECT country, COUNT(*) FROM sign_in_codes
                      WHERE created_at > ?1 AND country IS NOT NULL
                      GROUP BY country ORDER BY COUNT(*) DESC, country",
                )?
                .query_map([since_ms], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(country, count)| Ok((stored_country(&country)?, count)))
                .collect()
        })
    }

    fn open_code(&self, request: CodeRequest) -> StoreFuture<CodeOpened> {
        self.write(move |connection| open_code(connection, &request))
    }

    fn redeem(&self, request: Redeem) -> StoreFuture<Redeemed> {
        self.write(move |connection| redeem(connection, &request))
    }

    fn sign_up_phone(&self, token_hash: String, now_ms: i64) -> StoreFuture<Option<PhoneNumber>> {
        self.read(move |connection| {
            let phone: Option<String> = connection
                .prepare_cached(
                    "SELECT phone FROM sign_up_tokens WHERE token_hash = ?1 AND expires_at > ?2",
                )?
                .query_row(params![token_hash, now_ms], |row| row.get(0))
                .optional()?;
            phone.map(|phone| stored_phone(&phone)).transpose()
        })
    }
}

fn stored_phone(phone: &str) -> Result<PhoneNumber, StoreError> {
    PhoneNumber::parse(phone).map_err(|_| {
        StoreError::UnknownValue(UnknownValue {
            table: "sign_up_tokens",
            row: phone.to_string(),
            column: "phone",
            value: phone.to_string(),
        })
    })
}

/// How many codes matched since an hour ago, the oldest and the newest.
fn codes_since(
    connection: &Connection,
    column: &str,
    value: &str,
    since_ms: i64,
) -> Result<(i64, Option<i64>, Option<i64>), StoreError> {
    let sql = format!(
        "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
          WHERE {column} = ?1 AND created_at > ?2"
    );
    Ok(connection
        .prepare_cached(&sql)?
        .query_row(params![value, since_ms], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?)
}

fn open_code(connection: &Connection, request: &CodeRequest) -> Result<CodeOpened, StoreError> {
    let now = request.now_ms;
    let limits = request.limits;
    connection
        .prepare_cached("DELETE FROM sign_in_codes WHERE created_at < ?1")?
        .execute([now - KEPT_MS])?;
    let hour_ago = now - HOUR_MS;
    // The phone's own codes, but those the admin lifted.
    let (count, oldest, newest): (i64, Option<i64>, Option<i64>) = connection
        .prepare_cached(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
              WHERE phone = ?1 AND created_at > ?2 AND lifted = 0",
        )?
        .query_row(params![request.phone.as_str(), hour_ago], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    if let Some(wait) = crate::sign_in::wait_for(
        count,
        oldest,
        newest,
        limits.per_phone_per_hour,
        limits.min_gap_ms,
        now,
    ) {
        return Ok(CodeOpened::Wait {
            retry_after_ms: wait,
        });
    }
    let (count, oldest, _) = codes_since(
        connection,
        "client_address",
        &request.client_address,
        hour_ago,
    )?;
    if let Some(wait) =
        crate::sign_in::wait_for(count, oldest, None, limits.per_address_per_hour, 0, now)
    {
        return Ok(CodeOpened::Wait {
            retry_after_ms: wait,
        });
    }
    // The caps of the hour: every caller's codes, and the country's.
    let (count, oldest): (i64, Option<i64>) = connection
        .prepare_cached(
            "SELECT COUNT(*), MIN(created_at) FROM sign_in_codes WHERE created_at > ?1",
        )?
        .query_row([hour_ago], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let (country_count, country_oldest, _) =
        codes_since(connection, "country", request.country.as_str(), hour_ago)?;
    for (count, oldest, cap) in [
        (count, oldest, limits.per_hour),
        (country_count, country_oldest, limits.per_country_per_hour),
    ] {
        if let Some(wait) = crate::sign_in::wait_for(count, oldest, None, cap, 0, now) {
            return Ok(CodeOpened::Capped {
                retry_after_ms: wait,
            });
        }
    }
    // A new code replaces the phone's earlier ones.
    connection
        .prepare_cached(
            "UPDATE sign_in_codes SET used_at = ?2 WHERE phone = ?1 AND used_at IS NULL",
        )?
        .execute(params![request.phone.as_str(), now])?;
    connection
        .prepare_cached(
            "INSERT INTO sign_in_codes (phone, code_hash, client_address, created_at, expires_at, country)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            request.phone.as_str(),
            request.code_hash,
            request.client_address,
            now,
            now + crate::sign_in::CODE_LIFETIME_MS,
            request.country.as_str()
        ])?;
    Ok(CodeOpened::Opened)
}

fn redeem(connection: &Connection, request: &Redeem) -> Result<Redeemed, StoreError> {
    let now = request.now_ms;
    let phone = request.phone.as_str();
    let by_code = match &request.proof {
        Proof::Code(code_hash) => {
            let live: Option<(i64, String)> = connection
                .prepare_cached(
                    "SELECT id, code_hash FROM sign_in_codes
                      WHERE phone = ?1 AND used_at IS NULL AND expires_at > ?2
                        AND wrong_attempts < ?3
                      ORDER BY id DESC LIMIT 1",
                )?
                .query_row(params![phone, now, MAX_WRONG_CODES], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            let Some((id, stored)) = live else {
                return Ok(Redeemed::Invalid);
            };
            if &stored != code_hash {
                connection
                    .prepare_cached(
                        "UPDATE sign_in_codes SET wrong_attempts = wrong_attempts + 1 WHERE id = ?1",
                    )?
                    .execute([id])?;
                return Ok(Redeemed::Invalid);
            }
            connection
                .prepare_cached("UPDATE sign_in_codes SET used_at = ?2 WHERE id = ?1")?
                .execute(params![id, now])?;
            true
        }
        Proof::SignUpToken(token_hash) => {
            let proved: Option<String> = connection
                .prepare_cached(
                    "SELECT phone FROM sign_up_tokens WHERE token_hash = ?1 AND expires_at > ?2",
                )?
                .query_row(params![token_hash, now], |row| row.get(0))
                .optional()?;
            if proved.as_deref() != Some(phone) {
                return Ok(Redeemed::Invalid);
            }
            false
        }
    };
    let account = find_account_by_phone(connection, &request.phone)?;
    match account {
        Some(account) if account.status == AccountStatus::Active => {
            // A sign-up token is used up by its exchange.
            if let Proof::SignUpToken(token_hash) = &request.proof {
                connection
                    .prepare_cached("DELETE FROM sign_up_tokens WHERE token_hash = ?1")?
                    .execute([token_hash])?;
            }
            insert_token(
                connection,
                account.id,
                &request.account_token_hash,
                now,
                Some(request.account_token_expires_at_ms),
            )?;
            Ok(Redeemed::Account(account.id))
        }
        _ if by_code => {
            // Expired sign-up tokens are of no use: the table keeps only
            // the live ones.
            connection
                .prepare_cached("DELETE FROM sign_up_tokens WHERE expires_at <= ?1")?
                .execute([now])?;
            connection
                .prepare_cached(
                    "INSERT INTO sign_up_tokens (token_hash, phone, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    request.sign_up_token_hash,
                    phone,
                    now,
                    request.sign_up_token_expires_at_ms
                ])?;
            Ok(Redeemed::SignUp)
        }
        _ => Ok(Redeemed::NotYet),
    }
}

//! Sign-in codes, the wrong codes tried and sign-up tokens in SQLite. Every
//! check and the write it allows run in one write transaction, and SQLite
//! has one writer, so two requests cannot both pass a limit.

use rusqlite::{params, Connection, OptionalExtension};

use super::accounts::{find_account_by_phone, insert_token};
use super::SqliteStore;
use crate::accounts::{AccountStatus, PhoneNumber};
use crate::phone::CountryCode;
use crate::sign_in::{
    CodeOpened, CodeRequest, CountryCodes, Proof, Redeem, Redeemed, LIVE_CODES_PER_PHONE,
    WRONG_CODES_PER_ADDRESS, WRONG_CODES_PER_CODE,
};
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
            connection
                .prepare_cached("DELETE FROM sign_in_wrong_codes WHERE phone = ?1")?
                .execute([phone.as_str()])?;
            Ok(lifted as i64)
        })
    }

    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<CountryCodes>> {
        self.read(move |connection| {
            let rows: Vec<(String, i64, i64)> = connection
                .prepare_cached(
                    "SELECT country, COUNT(*) FILTER (WHERE capped = 0),
                            COUNT(*) FILTER (WHERE capped = 1)
                       FROM sign_in_codes
                      WHERE created_at > ?1 AND country IS NOT NULL AND customer = 0
                      GROUP BY country ORDER BY 2 DESC, country",
                )?
                .query_map([since_ms], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(country, texted, capped)| {
                    Ok(CountryCodes {
                        country: stored_country(&country)?,
                        texted,
                        capped,
                    })
                })
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

/// How many codes matched `condition` (SQL over `?1`, `?2` and more)
/// since an hour ago (`?1`), the oldest and the newest.
fn codes_since(
    connection: &Connection,
    condition: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<(i64, Option<i64>, Option<i64>), StoreError> {
    let sql = format!(
        "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
          WHERE created_at > ?1 AND {condition}"
    );
    Ok(connection
        .prepare_cached(&sql)?
        .query_row(values, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?)
}

fn open_code(connection: &Connection, request: &CodeRequest) -> Result<CodeOpened, StoreError> {
    let now = request.now_ms;
    let limits = request.limits;
    let phone = request.phone.as_str();
    let address = request.client_address.as_str();
    connection
        .prepare_cached("DELETE FROM sign_in_codes WHERE created_at < ?1")?
        .execute([now - KEPT_MS])?;
    let hour_ago = now - HOUR_MS;
    connection
        .prepare_cached("DELETE FROM sign_in_wrong_codes WHERE created_at <= ?1")?
        .execute([hour_ago])?;
    // The limits of the phone and the address, the same for every phone:
    // the phone's codes asked for from this address; the phone's codes in
    // all, but those the admin lifted; the address's codes.
    let (count, oldest, newest) = codes_since(
        connection,
        "phone = ?2 AND client_address = ?3",
        params![hour_ago, phone, address],
    )?;
    let mut wait = crate::sign_in::wait_for(
        count,
        oldest,
        newest,
        limits.per_phone_per_hour,
        limits.min_gap_ms,
        now,
    );
    if wait.is_none() {
        let (count, oldest, _) = codes_since(
            connection,
            "phone = ?2 AND lifted = 0",
            params![hour_ago, phone],
        )?;
        wait =
            crate::sign_in::wait_for(count, oldest, None, limits.per_phone_total_per_hour, 0, now);
    }
    if wait.is_none() {
        let (count, oldest, _) = codes_since(
            connection,
            "client_address = ?2",
            params![hour_ago, address],
        )?;
        wait = crate::sign_in::wait_for(count, oldest, None, limits.per_address_per_hour, 0, now);
    }
    if let Some(wait) = wait {
        return Ok(CodeOpened::Wait {
            retry_after_ms: wait,
        });
    }
    // The caps of the hour hold only for phones without an account (a
    // customer proved the phone already): the codes texted to such phones,
    // all of them and to this destination. Read for every phone, so that
    // the work is the same.
    let customer = find_account_by_phone(connection, &request.phone)?.is_some();
    let (all, _, _) = codes_since(connection, "customer = 0 AND capped = 0", params![hour_ago])?;
    let (to_country, _, _) = codes_since(
        connection,
        "customer = 0 AND capped = 0 AND country = ?2",
        params![hour_ago, request.country.as_str()],
    )?;
    let capped = !customer && (all >= limits.per_hour || to_country >= limits.per_country_per_hour);
    // The asking address's earlier codes for the phone are replaced; the
    // other addresses' stay live, up to a few (the oldest go). A capped
    // code replaces nothing, but the same statements run (matching
    // nothing), so that the work is the same.
    let replacing = i64::from(!capped);
    connection
        .prepare_cached(
            "UPDATE sign_in_codes SET used_at = ?3
              WHERE phone = ?1 AND client_address = ?2 AND used_at IS NULL AND ?4 = 1",
        )?
        .execute(params![phone, address, now, replacing])?;
    connection
        .prepare_cached(
            "UPDATE sign_in_codes SET used_at = ?2
              WHERE phone = ?1 AND used_at IS NULL AND ?4 = 1 AND id NOT IN (
                    SELECT id FROM sign_in_codes
                     WHERE phone = ?1 AND used_at IS NULL AND expires_at > ?2
                     ORDER BY id DESC LIMIT ?3)",
        )?
        .execute(params![phone, now, LIVE_CODES_PER_PHONE - 1, replacing])?;
    // A capped code is stored used: it counts like any other, and never
    // works.
    connection
        .prepare_cached(
            "INSERT INTO sign_in_codes
                    (phone, code_hash, client_address, created_at, expires_at, country,
                     customer, capped, used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            phone,
            request.code_hash,
            address,
            now,
            now + crate::sign_in::CODE_LIFETIME_MS,
            request.country.as_str(),
            i64::from(customer),
            i64::from(capped),
            capped.then_some(now),
        ])?;
    Ok(if capped {
        CodeOpened::Capped
    } else {
        CodeOpened::Opened
    })
}

fn redeem(connection: &Connection, request: &Redeem) -> Result<Redeemed, StoreError> {
    let now = request.now_ms;
    let phone = request.phone.as_str();
    let by_code = match &request.proof {
        Proof::Code(code_hash) => {
            let address = request.client_address.as_str();
            let hour_ago = now - HOUR_MS;
            let wrong: i64 = connection
                .prepare_cached(
                    "SELECT COUNT(*) FROM sign_in_wrong_codes
                      WHERE phone = ?1 AND client_address = ?2 AND created_at > ?3",
                )?
                .query_row(params![phone, address, hour_ago], |row| row.get(0))?;
            if wrong >= WRONG_CODES_PER_ADDRESS {
                // This address may no longer try codes for the phone: not
                // even looked at, nor counted against the phone's codes.
                return Ok(Redeemed::Invalid);
            }
            let live: Vec<(i64, String)> = connection
                .prepare_cached(
                    "SELECT id, code_hash FROM sign_in_codes
                      WHERE phone = ?1 AND used_at IS NULL AND expires_at > ?2
                        AND (wrong_attempts < ?3 OR client_address = ?4)",
                )?
                .query_map(params![phone, now, WRONG_CODES_PER_CODE, address], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some((id, _)) = live.iter().find(|(_, stored)| stored == code_hash) else {
                connection
                    .prepare_cached(
                        "INSERT INTO sign_in_wrong_codes (phone, client_address, created_at)
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![phone, address, now])?;
                for (id, _) in &live {
                    connection
                        .prepare_cached(
                            "UPDATE sign_in_codes SET wrong_attempts = wrong_attempts + 1
                              WHERE id = ?1",
                        )?
                        .execute([id])?;
                }
                return Ok(Redeemed::Invalid);
            };
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

//! Sign-in codes, the wrong codes tried and sign-up tokens in SQLite. Every
//! check and the write it allows run in one write transaction, and SQLite
//! has one writer, so two requests cannot both pass a limit.

use rusqlite::{params, Connection, OptionalExtension};

use super::accounts::{find_account_by_phone, insert_token};
use super::SqliteStore;
use crate::accounts::{AccountStatus, PhoneNumber};
use crate::phone::CountryCode;
use crate::sign_in::{
    wait_until, CodeOpened, CodeRequest, Counted, CountryCodes, PhoneCodesQuery, Proof, Redeem,
    Redeemed, WrongCodes, DAY_MS, HOUR_MS, LIVE_CODES_PER_ADDRESS, LIVE_CODES_PER_PHONE,
    WRONG_CODES_PER_CODE,
};
use crate::store::{SignInStore, StoreError, StoreFuture, UnknownValue};

/// Codes older than this are of no use to any limit (the longest is the
/// phone's total of the day): they are deleted.
const KEPT_MS: i64 = DAY_MS;

/// Past [`LIVE_CODES_PER_PHONE`], a phone's live codes go (`?1` the
/// phone, `?2` now, `?3` how many stay, `?4` 1 to trim, `?5` the asking
/// address): an address's previous code first (the asking address's live
/// one is about to be previous), the oldest first; then the oldest. So one
/// address asking again pushes out only its own codes, and it takes
/// three other addresses to push out the customer's newest.
const PHONE_LIVE_CODES_TRIMMED: &str = "UPDATE sign_in_codes SET used_at = ?2
  WHERE phone = ?1 AND used_at IS NULL AND ?4 = 1 AND id NOT IN (
        SELECT id FROM sign_in_codes AS code
         WHERE phone = ?1 AND used_at IS NULL AND expires_at > ?2
         ORDER BY (code.client_address <> ?5 AND code.id = (
                    SELECT MAX(newer.id) FROM sign_in_codes AS newer
                     WHERE newer.phone = ?1 AND newer.client_address = code.client_address
                       AND newer.used_at IS NULL AND newer.expires_at > ?2)) DESC,
                  id DESC
         LIMIT ?3)";

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
    fn lift_limits(&self, phone: PhoneNumber, now_ms: i64) -> StoreFuture<i64> {
        self.write(move |connection| {
            let lifted = connection
                .prepare_cached(
                    "UPDATE sign_in_codes SET lifted = 1 WHERE phone = ?1 AND lifted = 0",
                )?
                .execute([phone.as_str()])?;
            // Its live codes end, and the wrong tries against them with
            // them: the customer asks for a new one.
            connection
                .prepare_cached(
                    "UPDATE sign_in_codes SET used_at = ?2 WHERE phone = ?1 AND used_at IS NULL",
                )?
                .execute(params![phone.as_str(), now_ms])?;
            connection
                .prepare_cached(
                    "UPDATE sign_in_wrong_codes SET lifted = 1 WHERE phone = ?1 AND lifted = 0",
                )?
                .execute([phone.as_str()])?;
            Ok(lifted as i64)
        })
    }

    fn wrong_discount_code(&self, token_hash: String, limit: i64) -> StoreFuture<bool> {
        self.write(move |connection| {
            let wrong: Option<i64> = connection
                .prepare_cached(
                    "UPDATE sign_up_tokens SET wrong_discount_codes = wrong_discount_codes + 1
                      WHERE token_hash = ?1 RETURNING wrong_discount_codes",
                )?
                .query_row([&token_hash], |row| row.get(0))
                .optional()?;
            let used_up = wrong.is_some_and(|wrong| wrong >= limit);
            if used_up {
                connection
                    .prepare_cached("DELETE FROM sign_up_tokens WHERE token_hash = ?1")?
                    .execute([&token_hash])?;
            }
            Ok(used_up)
        })
    }

    fn codes_by_phone(&self, query: PhoneCodesQuery) -> StoreFuture<Vec<(PhoneNumber, i64, i64)>> {
        self.read(move |connection| {
            let rows: Vec<(String, i64, i64)> = connection
                .prepare_cached(
                    "SELECT phone, COUNT(*) FILTER (WHERE created_at > ?1), COUNT(*)
                       FROM sign_in_codes WHERE created_at > ?2
                      GROUP BY phone
                     HAVING COUNT(*) FILTER (WHERE created_at > ?1) >= ?3 OR COUNT(*) >= ?4
                      ORDER BY 3 DESC, 2 DESC, phone LIMIT ?5",
                )?
                .query_map(
                    params![
                        query.hour_since_ms,
                        query.day_since_ms,
                        query.at_least_in_hour,
                        query.at_least_in_day,
                        query.limit
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(phone, hour, day)| Ok((stored_code_phone(&phone)?, hour, day)))
                .collect()
        })
    }

    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<CountryCodes>> {
        self.read(move |connection| {
            let rows: Vec<(String, i64, i64)> = connection
                .prepare_cached(
                    "SELECT country, COUNT(*) FILTER (WHERE capped = 0),
                            COUNT(*) FILTER (WHERE capped = 1 AND customer = 0)
                       FROM sign_in_codes
                      WHERE created_at > ?1 AND country IS NOT NULL
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

/// A phone read back from `sign_in_codes`.
fn stored_code_phone(phone: &str) -> Result<PhoneNumber, StoreError> {
    PhoneNumber::parse(phone).map_err(|_| {
        StoreError::UnknownValue(UnknownValue::new("sign_in_codes", phone, "phone", phone))
    })
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

/// The codes that matched `condition` (SQL over `?1`, `?2` and more)
/// since `?1`: how many, the oldest and the newest.
fn codes_since(
    connection: &Connection,
    condition: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<Counted, StoreError> {
    let sql = format!(
        "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
          WHERE created_at > ?1 AND {condition}"
    );
    Ok(connection.prepare_cached(&sql)?.query_row(values, |row| {
        Ok(Counted {
            count: row.get(0)?,
            oldest_ms: row.get(1)?,
            newest_ms: row.get(2)?,
        })
    })?)
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
    // all, of the hour and of the day, but those the admin lifted; the
    // address's codes.
    let day_ago = now - DAY_MS;
    let mut wait = codes_since(
        connection,
        "phone = ?2 AND client_address = ?3",
        params![hour_ago, phone, address],
    )?
    .wait(limits.per_phone_per_hour, HOUR_MS, limits.min_gap_ms, now);
    if wait.is_none() {
        wait = codes_since(
            connection,
            "phone = ?2 AND lifted = 0",
            params![hour_ago, phone],
        )?
        .wait(limits.per_phone_total_per_hour, HOUR_MS, 0, now);
    }
    if wait.is_none() {
        wait = codes_since(
            connection,
            "phone = ?2 AND lifted = 0",
            params![day_ago, phone],
        )?
        .wait(limits.per_phone_per_day, DAY_MS, 0, now);
    }
    if wait.is_none() {
        wait = codes_since(
            connection,
            "client_address = ?2",
            params![hour_ago, address],
        )?
        .wait(limits.per_address_per_hour, HOUR_MS, 0, now);
    }
    if let Some(wait) = wait {
        return Ok(CodeOpened::Wait {
            retry_after_ms: wait,
        });
    }
    // The caps of the hour count every code within them, a customer's too,
    // so that whether a code was a customer's changes nothing for the next
    // caller; past a cap only a phone without an account goes untexted (a
    // customer proved the phone already). Read for every phone, so that
    // the work is the same.
    let customer = find_account_by_phone(connection, &request.phone)?.is_some();
    let all = codes_since(connection, "capped = 0", params![hour_ago])?.count;
    let to_country = codes_since(
        connection,
        "capped = 0 AND country = ?2",
        params![hour_ago, request.country.as_str()],
    )?
    .count;
    let capped = all >= limits.per_hour || to_country >= limits.per_country_per_hour;
    let texted = customer || !capped;
    // The asking address's live codes for the phone are replaced but its
    // newest (a late text still works); the other addresses' stay live,
    // up to a few (the oldest go). A code not texted replaces nothing,
    // but the same statements run (matching nothing), so that the work is
    // the same.
    let replacing = i64::from(texted);
    connection
        .prepare_cached(
            "UPDATE sign_in_codes SET used_at = ?3
              WHERE phone = ?1 AND client_address = ?2 AND used_at IS NULL AND ?4 = 1
                AND id NOT IN (
                    SELECT id FROM sign_in_codes
                     WHERE phone = ?1 AND client_address = ?2 AND used_at IS NULL
                       AND expires_at > ?3
                     ORDER BY id DESC LIMIT ?5)",
        )?
        .execute(params![
            phone,
            address,
            now,
            replacing,
            LIVE_CODES_PER_ADDRESS - 1
        ])?;
    connection
        .prepare_cached(PHONE_LIVE_CODES_TRIMMED)?
        .execute(params![
            phone,
            now,
            LIVE_CODES_PER_PHONE - 1,
            replacing,
            address
        ])?;
    // A code not texted is stored used: it counts like any other, and
    // never works.
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
            (!texted).then_some(now),
        ])?;
    Ok(if texted {
        CodeOpened::Opened
    } else {
        CodeOpened::Capped
    })
}

fn redeem(connection: &Connection, request: &Redeem) -> Result<Redeemed, StoreError> {
    let now = request.now_ms;
    let phone = request.phone.as_str();
    let by_code = match &request.proof {
        Proof::Code(code_hash) => {
            let address = request.client_address.as_str();
            let tried: Vec<(i64, bool)> = connection
                .prepare_cached(
                    "SELECT created_at, lifted FROM sign_in_wrong_codes
                      WHERE phone = ?1 AND client_address = ?2 AND created_at > ?3
                      ORDER BY created_at, id",
                )?
                .query_map(params![phone, address, now - HOUR_MS], |row| {
                    Ok((row.get(0)?, row.get::<_, i64>(1)? == 1))
                })?
                .collect::<Result<_, _>>()?;
            let own_only = match WrongCodes::standing(&tried) {
                // This address may no longer try codes for the phone: not
                // even looked at, nor counted against the phone's codes.
                WrongCodes::Stopped { until_ms } => {
                    return Ok(Redeemed::Wait {
                        retry_after_ms: wait_until(until_ms, now),
                    })
                }
                WrongCodes::OwnCodesOnly { until_ms } => Some(until_ms),
                WrongCodes::Free => None,
            };
            let live: Vec<(i64, String, String)> = connection
                .prepare_cached(
                    "SELECT id, code_hash, client_address FROM sign_in_codes
                      WHERE phone = ?1 AND used_at IS NULL AND expires_at > ?2
                        AND (wrong_attempts < ?3 OR client_address = ?4)
                        AND (?5 = 0 OR client_address = ?4)",
                )?
                .query_map(
                    params![
                        phone,
                        now,
                        WRONG_CODES_PER_CODE,
                        address,
                        i64::from(own_only.is_some())
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?
                .collect::<Result<_, _>>()?;
            let Some((id, _, asked_from)) = live.iter().find(|(_, stored, _)| stored == code_hash)
            else {
                connection
                    .prepare_cached(
                        "INSERT INTO sign_in_wrong_codes (phone, client_address, created_at)
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![phone, address, now])?;
                for (id, _, _) in &live {
                    connection
                        .prepare_cached(
                            "UPDATE sign_in_codes SET wrong_attempts = wrong_attempts + 1
                              WHERE id = ?1",
                        )?
                        .execute([id])?;
                }
                // An address with no code of its own to try is stopped.
                return Ok(match own_only {
                    Some(until_ms) if live.is_empty() => Redeemed::Wait {
                        retry_after_ms: wait_until(until_ms, now),
                    },
                    _ => Redeemed::Invalid,
                });
            };
            // Used, with the other codes its address asked for the phone
            // (they were for this sign-in).
            connection
                .prepare_cached(
                    "UPDATE sign_in_codes SET used_at = ?2
                      WHERE phone = ?3 AND used_at IS NULL AND (id = ?1 OR client_address = ?4)",
                )?
                .execute(params![id, now, phone, asked_from])?;
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

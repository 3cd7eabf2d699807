//! Sign-in codes, the wrong codes tried and sign-up tokens in Postgres.
//! Instances share them: every write here takes one transaction-scoped
//! advisory lock, the sign-in lock, before anything else, so two
//! instances cannot both pass a limit and two tries are counted one after
//! the other. One lock, first: the writer commits several writes in one
//! transaction (group commit), and locks taken per phone or address in
//! each write's order would let two instances' transactions wait for each
//! other (a deadlock). Sign-in writes are few; they wait their turn.

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Transaction};

use super::accounts::{find_account_by_phone, insert_token};
use super::{boxed, PostgresStore};
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

/// Past [`LIVE_CODES_PER_PHONE`], a phone's live codes go (`$1` the
/// phone, `$2` now, `$3` how many stay, `$4` 1 to trim, `$5` the asking
/// address): an address's previous code first (the asking address's live
/// one is about to be previous), the oldest first; then the oldest. So one
/// address asking again pushes out only its own codes, and it takes
/// three other addresses to push out the customer's newest.
const PHONE_LIVE_CODES_TRIMMED: &str = "UPDATE sign_in_codes SET used_at = $2
  WHERE phone = $1 AND used_at IS NULL AND $4::BIGINT = 1 AND id NOT IN (
        SELECT id FROM sign_in_codes AS code
         WHERE phone = $1 AND used_at IS NULL AND expires_at > $2
         ORDER BY (code.client_address <> $5 AND code.id = (
                    SELECT MAX(newer.id) FROM sign_in_codes AS newer
                     WHERE newer.phone = $1 AND newer.client_address = code.client_address
                       AND newer.used_at IS NULL AND newer.expires_at > $2)) DESC,
                  id DESC
         LIMIT $3)";

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

impl SignInStore for PostgresStore {
    fn lift_limits(&self, phone: PhoneNumber, now_ms: i64) -> StoreFuture<i64> {
        self.write(move |transaction| {
            let phone = phone.clone();
            boxed(async move {
                lock_sign_in(transaction).await?;
                let lifted = transaction
                    .execute(
                        "UPDATE sign_in_codes SET lifted = 1 WHERE phone = $1 AND lifted = 0",
                        &[&phone.as_str()],
                    )
                    .await?;
                // Its live codes end, and the wrong tries against them
                // with them: the customer asks for a new one.
                transaction
                    .execute(
                        "UPDATE sign_in_codes SET used_at = $2 WHERE phone = $1 AND used_at IS NULL",
                        &[&phone.as_str(), &now_ms],
                    )
                    .await?;
                transaction
                    .execute(
                        "UPDATE sign_in_wrong_codes SET lifted = 1 WHERE phone = $1 AND lifted = 0",
                        &[&phone.as_str()],
                    )
                    .await?;
                Ok(lifted as i64)
            })
        })
    }

    fn wrong_discount_code(&self, token_hash: String, limit: i64) -> StoreFuture<bool> {
        self.write(move |transaction| {
            let token_hash = token_hash.clone();
            boxed(async move {
                lock_sign_in(transaction).await?;
                let wrong: Option<i64> = transaction
                    .query_opt(
                        "UPDATE sign_up_tokens SET wrong_discount_codes = wrong_discount_codes + 1
                          WHERE token_hash = $1 RETURNING wrong_discount_codes",
                        &[&token_hash],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                let used_up = wrong.is_some_and(|wrong| wrong >= limit);
                if used_up {
                    transaction
                        .execute(
                            "DELETE FROM sign_up_tokens WHERE token_hash = $1",
                            &[&token_hash],
                        )
                        .await?;
                }
                Ok(used_up)
            })
        })
    }

    fn codes_by_phone(&self, query: PhoneCodesQuery) -> StoreFuture<Vec<(PhoneNumber, i64, i64)>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT phone, COUNT(*) FILTER (WHERE created_at > $1) AS hour,
                            COUNT(*) AS day
                       FROM sign_in_codes WHERE created_at > $2
                      GROUP BY phone
                     HAVING COUNT(*) FILTER (WHERE created_at > $1) >= $3 OR COUNT(*) >= $4
                      ORDER BY day DESC, hour DESC, phone LIMIT $5",
                    &[
                        &query.hour_since_ms,
                        &query.day_since_ms,
                        &query.at_least_in_hour,
                        &query.at_least_in_day,
                        &query.limit,
                    ],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let phone: String = row.try_get(0)?;
                    let phone = PhoneNumber::parse(&phone).map_err(|_| {
                        StoreError::UnknownValue(UnknownValue::new(
                            "sign_in_codes",
                            &phone,
                            "phone",
                            &phone,
                        ))
                    })?;
                    Ok((phone, row.try_get(1)?, row.try_get(2)?))
                })
                .collect()
        })
    }

    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<CountryCodes>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT country, COUNT(*) FILTER (WHERE capped = 0) AS texted,
                            COUNT(*) FILTER (WHERE capped = 1 AND customer = 0)
                       FROM sign_in_codes
                      WHERE created_at > $1 AND country IS NOT NULL
                      GROUP BY country ORDER BY texted DESC, country",
                    &[&since_ms],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let country: String = row.try_get(0)?;
                    Ok(CountryCodes {
                        country: stored_country(&country)?,
                        texted: row.try_get(1)?,
                        capped: row.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn open_code(&self, request: CodeRequest) -> StoreFuture<CodeOpened> {
        self.write(move |transaction| {
            let request = request.clone();
            boxed(async move { open_code(transaction, &request).await })
        })
    }

    fn redeem(&self, request: Redeem) -> StoreFuture<Redeemed> {
        self.write(move |transaction| {
            let request = request.clone();
            boxed(async move { redeem(transaction, &request).await })
        })
    }

    fn sign_up_phone(&self, token_hash: String, now_ms: i64) -> StoreFuture<Option<PhoneNumber>> {
        self.read(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT phone FROM sign_up_tokens WHERE token_hash = $1 AND expires_at > $2",
                    &[&token_hash, &now_ms],
                )
                .await?;
            row.map(|row| stored_phone(&row.try_get::<_, String>(0)?))
                .transpose()
        })
    }
}

fn stored_phone(phone: &str) -> Result<PhoneNumber, StoreError> {
    PhoneNumber::parse(phone).map_err(|_| {
        StoreError::UnknownValue(UnknownValue::new("sign_up_tokens", phone, "phone", phone))
    })
}

/// The codes that matched `condition` (SQL over `$1`, `$2` and more)
/// since `$1`: how many, the oldest and the newest.
async fn codes_since(
    client: &impl GenericClient,
    condition: &str,
    values: &[&(dyn ToSql + Sync)],
) -> Result<Counted, StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
                  WHERE created_at > $1 AND {condition}"
            ),
            values,
        )
        .await?;
    Ok(Counted {
        count: row.try_get(0)?,
        oldest_ms: row.try_get(1)?,
        newest_ms: row.try_get(2)?,
    })
}

/// Takes the transaction's sign-in lock: every write to the sign-in
/// tables (and to a phone's sign-up tokens) takes it first, before any
/// other lock, so that transactions of several such writes on two
/// instances never wait for each other's.
pub(super) async fn lock_sign_in(transaction: &Transaction<'_>) -> Result<(), StoreError> {
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&"sms-credit sign-in"],
        )
        .await?;
    Ok(())
}

async fn open_code(
    transaction: &Transaction<'_>,
    request: &CodeRequest,
) -> Result<CodeOpened, StoreError> {
    let now = request.now_ms;
    let limits = request.limits;
    let phone = request.phone.as_str();
    let address = request.client_address.as_str();
    lock_sign_in(transaction).await?;
    transaction
        .execute(
            "DELETE FROM sign_in_codes WHERE created_at < $1",
            &[&(now - KEPT_MS)],
        )
        .await?;
    let hour_ago = now - HOUR_MS;
    transaction
        .execute(
            "DELETE FROM sign_in_wrong_codes WHERE created_at <= $1",
            &[&hour_ago],
        )
        .await?;
    // The limits of the phone and the address, the same for every phone:
    // the phone's codes asked for from this address; the phone's codes in
    // all, of the hour and of the day, but those the admin lifted; the
    // address's codes.
    let day_ago = now - DAY_MS;
    let mut wait = codes_since(
        transaction,
        "phone = $2 AND client_address = $3",
        &[&hour_ago, &phone, &address],
    )
    .await?
    .wait(limits.per_phone_per_hour, HOUR_MS, limits.min_gap_ms, now);
    if wait.is_none() {
        wait = codes_since(
            transaction,
            "phone = $2 AND lifted = 0",
            &[&hour_ago, &phone],
        )
        .await?
        .wait(limits.per_phone_total_per_hour, HOUR_MS, 0, now);
    }
    if wait.is_none() {
        wait = codes_since(
            transaction,
            "phone = $2 AND lifted = 0",
            &[&day_ago, &phone],
        )
        .await?
        .wait(limits.per_phone_per_day, DAY_MS, 0, now);
    }
    if wait.is_none() {
        wait = codes_since(transaction, "client_address = $2", &[&hour_ago, &address])
            .await?
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
    let customer = find_account_by_phone(transaction, &request.phone)
        .await?
        .is_some();
    let all = codes_since(transaction, "capped = 0", &[&hour_ago])
        .await?
        .count;
    let to_country = codes_since(
        transaction,
        "capped = 0 AND country = $2",
        &[&hour_ago, &request.country.as_str()],
    )
    .await?
    .count;
    let capped = all >= limits.per_hour || to_country >= limits.per_country_per_hour;
    let texted = customer || !capped;
    // The asking address's live codes for the phone are replaced but its
    // newest (a late text still works); the other addresses' stay live,
    // up to a few (the oldest go). A code not texted replaces nothing,
    // but the same statements run (matching nothing), so that the work is
    // the same.
    let replacing = i64::from(texted);
    transaction
        .execute(
            "UPDATE sign_in_codes SET used_at = $3
              WHERE phone = $1 AND client_address = $2 AND used_at IS NULL AND $4::BIGINT = 1
                AND id NOT IN (
                    SELECT id FROM sign_in_codes
                     WHERE phone = $1 AND client_address = $2 AND used_at IS NULL
                       AND expires_at > $3
                     ORDER BY id DESC LIMIT $5)",
            &[
                &phone,
                &address,
                &now,
                &replacing,
                &(LIVE_CODES_PER_ADDRESS - 1),
            ],
        )
        .await?;
    transaction
        .execute(
            PHONE_LIVE_CODES_TRIMMED,
            &[
                &phone,
                &now,
                &(LIVE_CODES_PER_PHONE - 1),
                &replacing,
                &address,
            ],
        )
        .await?;
    // A code not texted is stored used: it counts like any other, and
    // never works.
    transaction
        .execute(
            "INSERT INTO sign_in_codes
                    (phone, code_hash, client_address, created_at, expires_at, country,
                     customer, capped, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &phone,
                &request.code_hash,
                &address,
                &now,
                &(now + crate::sign_in::CODE_LIFETIME_MS),
                &request.country.as_str(),
                &i64::from(customer),
                &i64::from(capped),
                &(!texted).then_some(now),
            ],
        )
        .await?;
    Ok(if texted {
        CodeOpened::Opened
    } else {
        CodeOpened::Capped
    })
}

async fn redeem(transaction: &Transaction<'_>, request: &Redeem) -> Result<Redeemed, StoreError> {
    let now = request.now_ms;
    let phone = request.phone.as_str();
    lock_sign_in(transaction).await?;
    let by_code = match &request.proof {
        Proof::Code(code_hash) => {
            let address = request.client_address.as_str();
            let tried = transaction
                .query(
                    "SELECT created_at, lifted FROM sign_in_wrong_codes
                      WHERE phone = $1 AND client_address = $2 AND created_at > $3
                      ORDER BY created_at, id",
                    &[&phone, &address, &(now - HOUR_MS)],
                )
                .await?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get::<_, i64>(1)? == 1)))
                .collect::<Result<Vec<(i64, bool)>, StoreError>>()?;
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
            let live = transaction
                .query(
                    "SELECT id, code_hash, client_address FROM sign_in_codes
                      WHERE phone = $1 AND used_at IS NULL AND expires_at > $2
                        AND (wrong_attempts < $3 OR client_address = $4)
                        AND ($5::BIGINT = 0 OR client_address = $4)
                      FOR UPDATE",
                    &[
                        &phone,
                        &now,
                        &WRONG_CODES_PER_CODE,
                        &address,
                        &i64::from(own_only.is_some()),
                    ],
                )
                .await?;
            let mut tried = Vec::with_capacity(live.len());
            let mut matched = None;
            for row in &live {
                let (id, stored, asked_from): (i64, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if &stored == code_hash {
                    matched = Some((id, asked_from));
                }
                tried.push(id);
            }
            let Some((id, asked_from)) = matched else {
                transaction
                    .execute(
                        "INSERT INTO sign_in_wrong_codes (phone, client_address, created_at)
                         VALUES ($1, $2, $3)",
                        &[&phone, &address, &now],
                    )
                    .await?;
                transaction
                    .execute(
                        "UPDATE sign_in_codes SET wrong_attempts = wrong_attempts + 1
                          WHERE id = ANY($1)",
                        &[&tried],
                    )
                    .await?;
                // An address with no code of its own to try is stopped.
                return Ok(match own_only {
                    Some(until_ms) if tried.is_empty() => Redeemed::Wait {
                        retry_after_ms: wait_until(until_ms, now),
                    },
                    _ => Redeemed::Invalid,
                });
            };
            // Used, with the other codes its address asked for the phone
            // (they were for this sign-in).
            transaction
                .execute(
                    "UPDATE sign_in_codes SET used_at = $2
                      WHERE phone = $3 AND used_at IS NULL AND (id = $1 OR client_address = $4)",
                    &[&id, &now, &phone, &asked_from],
                )
                .await?;
            true
        }
        Proof::SignUpToken(token_hash) => {
            let proved = transaction
                .query_opt(
                    // Locked: an exchange of the same token at the same
                    // moment waits, then finds it used up.
                    "SELECT phone FROM sign_up_tokens WHERE token_hash = $1 AND expires_at > $2
                        FOR UPDATE",
                    &[token_hash, &now],
                )
                .await?
                .map(|row| row.try_get::<_, String>(0))
                .transpose()?;
            if proved.as_deref() != Some(phone) {
                return Ok(Redeemed::Invalid);
            }
            false
        }
    };
    match find_account_by_phone(transaction, &request.phone).await? {
        Some(account) if account.status == AccountStatus::Active => {
            // A sign-up token is used up by its exchange.
            if let Proof::SignUpToken(token_hash) = &request.proof {
                transaction
                    .execute(
                        "DELETE FROM sign_up_tokens WHERE token_hash = $1",
                        &[token_hash],
                    )
                    .await?;
            }
            insert_token(
                transaction,
                account.id,
                &request.account_token_hash,
                now,
                Some(request.account_token_expires_at_ms),
            )
            .await?;
            Ok(Redeemed::Account(account.id))
        }
        _ if by_code => {
            // Expired sign-up tokens are of no use: the table keeps only
            // the live ones.
            transaction
                .execute("DELETE FROM sign_up_tokens WHERE expires_at <= $1", &[&now])
                .await?;
            transaction
                .execute(
                    "INSERT INTO sign_up_tokens (token_hash, phone, created_at, expires_at)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        &request.sign_up_token_hash,
                        &phone,
                        &now,
                        &request.sign_up_token_expires_at_ms,
                    ],
                )
                .await?;
            Ok(Redeemed::SignUp)
        }
        _ => Ok(Redeemed::NotYet),
    }
}

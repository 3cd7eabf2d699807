//! Sign-in codes, the wrong codes tried and sign-up tokens in Postgres.
//! Instances share them: a request for a code takes transaction-scoped
//! advisory locks on its phone and its client address before it counts,
//! so two instances cannot both pass a limit; checking a code takes the
//! phone's lock too, so that two tries from one address are counted one
//! after the other.

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Transaction};

use super::accounts::{find_account_by_phone, insert_token};
use super::{boxed, PostgresStore};
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

impl SignInStore for PostgresStore {
    fn lift_limits(&self, phone: PhoneNumber) -> StoreFuture<i64> {
        self.write(move |transaction| {
            let phone = phone.clone();
            boxed(async move {
                let lifted = transaction
                    .execute(
                        "UPDATE sign_in_codes SET lifted = 1 WHERE phone = $1 AND lifted = 0",
                        &[&phone.as_str()],
                    )
                    .await?;
                transaction
                    .execute(
                        "DELETE FROM sign_in_wrong_codes WHERE phone = $1",
                        &[&phone.as_str()],
                    )
                    .await?;
                Ok(lifted as i64)
            })
        })
    }

    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<CountryCodes>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT country, COUNT(*) FILTER (WHERE capped = 0) AS texted,
                            COUNT(*) FILTER (WHERE capped = 1)
                       FROM sign_in_codes
                      WHERE created_at > $1 AND country IS NOT NULL AND customer = 0
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

/// How many codes matched `condition` (SQL over `$1`, `$2` and more) since
/// an hour ago (`$1`), the oldest and the newest.
async fn codes_since(
    client: &impl GenericClient,
    condition: &str,
    values: &[&(dyn ToSql + Sync)],
) -> Result<(i64, Option<i64>, Option<i64>), StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
                  WHERE created_at > $1 AND {condition}"
            ),
            values,
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Takes the transaction's advisory lock on `key`.
async fn lock(transaction: &Transaction<'_>, key: &str) -> Result<(), StoreError> {
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&key],
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
    // Always in this order (phone, address, then every code), so that
    // two requests never wait for each other's.
    lock(transaction, &format!("sign-in phone {phone}")).await?;
    lock(transaction, &format!("sign-in address {address}")).await?;
    lock(transaction, "sign-in codes").await?;
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
    // all, but those the admin lifted; the address's codes.
    let (count, oldest, newest) = codes_since(
        transaction,
        "phone = $2 AND client_address = $3",
        &[&hour_ago, &phone, &address],
    )
    .await?;
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
            transaction,
            "phone = $2 AND lifted = 0",
            &[&hour_ago, &phone],
        )
        .await?;
        wait =
            crate::sign_in::wait_for(count, oldest, None, limits.per_phone_total_per_hour, 0, now);
    }
    if wait.is_none() {
        let (count, oldest, _) =
            codes_since(transaction, "client_address = $2", &[&hour_ago, &address]).await?;
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
    let customer = find_account_by_phone(transaction, &request.phone)
        .await?
        .is_some();
    let (all, _, _) = codes_since(transaction, "customer = 0 AND capped = 0", &[&hour_ago]).await?;
    let (to_country, _, _) = codes_since(
        transaction,
        "customer = 0 AND capped = 0 AND country = $2",
        &[&hour_ago, &request.country.as_str()],
    )
    .await?;
    let capped = !customer && (all >= limits.per_hour || to_country >= limits.per_country_per_hour);
    // The asking address's earlier codes for the phone are replaced; the
    // other addresses' stay live, up to a few (the oldest go). A capped
    // code replaces nothing, but the same statements run (matching
    // nothing), so that the work is the same.
    let replacing = i64::from(!capped);
    transaction
        .execute(
            "UPDATE sign_in_codes SET used_at = $3
              WHERE phone = $1 AND client_address = $2 AND used_at IS NULL AND $4::BIGINT = 1",
            &[&phone, &address, &now, &replacing],
        )
        .await?;
    transaction
        .execute(
            "UPDATE sign_in_codes SET used_at = $2
              WHERE phone = $1 AND used_at IS NULL AND $4::BIGINT = 1 AND id NOT IN (
                    SELECT id FROM sign_in_codes
                     WHERE phone = $1 AND used_at IS NULL AND expires_at > $2
                     ORDER BY id DESC LIMIT $3)",
            &[&phone, &now, &(LIVE_CODES_PER_PHONE - 1), &replacing],
        )
        .await?;
    // A capped code is stored used: it counts like any other, and never
    // works.
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
                &capped.then_some(now),
            ],
        )
        .await?;
    Ok(if capped {
        CodeOpened::Capped
    } else {
        CodeOpened::Opened
    })
}

async fn redeem(transaction: &Transaction<'_>, request: &Redeem) -> Result<Redeemed, StoreError> {
    let now = request.now_ms;
    let phone = request.phone.as_str();
    let by_code = match &request.proof {
        Proof::Code(code_hash) => {
            let address = request.client_address.as_str();
            // The phone's lock, as a request for a code takes it: tries
            // for one phone are counted one after the other.
            lock(transaction, &format!("sign-in phone {phone}")).await?;
            let wrong: i64 = transaction
                .query_one(
                    "SELECT COUNT(*) FROM sign_in_wrong_codes
                      WHERE phone = $1 AND client_address = $2 AND created_at > $3",
                    &[&phone, &address, &(now - HOUR_MS)],
                )
                .await?
                .try_get(0)?;
            if wrong >= WRONG_CODES_PER_ADDRESS {
                // This address may no longer try codes for the phone: not
                // even looked at, nor counted against the phone's codes.
                return Ok(Redeemed::Invalid);
            }
            let live = transaction
                .query(
                    "SELECT id, code_hash FROM sign_in_codes
                      WHERE phone = $1 AND used_at IS NULL AND expires_at > $2
                        AND (wrong_attempts < $3 OR client_address = $4)
                      FOR UPDATE",
                    &[&phone, &now, &WRONG_CODES_PER_CODE, &address],
                )
                .await?;
            let mut tried = Vec::with_capacity(live.len());
            let mut matched = None;
            for row in &live {
                let (id, stored): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
                if &stored == code_hash {
                    matched = Some(id);
                }
                tried.push(id);
            }
            let Some(id) = matched else {
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
                return Ok(Redeemed::Invalid);
            };
            transaction
                .execute(
                    "UPDATE sign_in_codes SET used_at = $2 WHERE id = $1",
                    &[&id, &now],
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

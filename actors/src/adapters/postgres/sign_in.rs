//! Sign-in codes and sign-up tokens in Postgres. Instances share them: a
//! request for a code takes transaction-scoped advisory locks on its phone
//! and its client address before it counts, so two instances cannot both
//! pass a limit; checking a code locks the code's row.

use tokio_postgres::{GenericClient, Transaction};

use super::accounts::{find_account_by_phone, insert_token};
use super::{boxed, PostgresStore};
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
                Ok(lifted as i64)
            })
        })
    }

    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<(CountryCode, i64)>> {
        self.read(move |client| async move {
            let rows = client
                .query(
                    "SELECT country, COUNT(*) FROM sign_in_codes
                      WHERE created_at > $1 AND country IS NOT NULL
                      GROUP BY country ORDER BY COUNT(*) DESC, country",
                    &[&since_ms],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let country: String = row.try_get(0)?;
                    Ok((stored_country(&country)?, row.try_get(1)?))
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

/// How many codes matched since an hour ago, the oldest and the newest.
async fn codes_since(
    client: &impl GenericClient,
    column: &str,
    value: &str,
    since_ms: i64,
) -> Result<(i64, Option<i64>, Option<i64>), StoreError> {
    let row = client
        .query_one(
            &format!(
                "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
                  WHERE {column} = $1 AND created_at > $2"
            ),
            &[&value, &since_ms],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

async fn open_code(
    transaction: &Transaction<'_>,
    request: &CodeRequest,
) -> Result<CodeOpened, StoreError> {
    let now = request.now_ms;
    let limits = request.limits;
    let phone = request.phone.as_str();
    // Always in this order (phone, address, then every code), so that
    // two requests never wait for each other's.
    for key in [
        format!("sign-in phone {phone}"),
        format!("sign-in address {}", request.client_address),
        "sign-in codes".to_string(),
    ] {
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await?;
    }
    transaction
        .execute(
            "DELETE FROM sign_in_codes WHERE created_at < $1",
            &[&(now - KEPT_MS)],
        )
        .await?;
    let hour_ago = now - HOUR_MS;
    // The phone's own codes, but those the admin lifted.
    let row = transaction
        .query_one(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM sign_in_codes
              WHERE phone = $1 AND created_at > $2 AND lifted = 0",
            &[&phone, &hour_ago],
        )
        .await?;
    let (count, oldest, newest): (i64, Option<i64>, Option<i64>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
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
        transaction,
        "client_address",
        &request.client_address,
        hour_ago,
    )
    .await?;
    if let Some(wait) =
        crate::sign_in::wait_for(count, oldest, None, limits.per_address_per_hour, 0, now)
    {
        return Ok(CodeOpened::Wait {
            retry_after_ms: wait,
        });
    }
    // The caps of the hour: every caller's codes, and the country's.
    let row = transaction
        .query_one(
            "SELECT COUNT(*), MIN(created_at) FROM sign_in_codes WHERE created_at > $1",
            &[&hour_ago],
        )
        .await?;
    let (count, oldest): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    let (country_count, country_oldest, _) =
        codes_since(transaction, "country", request.country.as_str(), hour_ago).await?;
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
    transaction
        .execute(
            "UPDATE sign_in_codes SET used_at = $2 WHERE phone = $1 AND used_at IS NULL",
            &[&phone, &now],
        )
        .await?;
    transaction
        .execute(
            "INSERT INTO sign_in_codes (phone, code_hash, client_address, created_at, expires_at, country)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &phone,
                &request.code_hash,
                &request.client_address,
                &now,
                &(now + crate::sign_in::CODE_LIFETIME_MS),
                &request.country.as_str(),
            ],
        )
        .await?;
    Ok(CodeOpened::Opened)
}

async fn redeem(transaction: &Transaction<'_>, request: &Redeem) -> Result<Redeemed, StoreError> {
    let now = request.now_ms;
    let phone = request.phone.as_str();
    let by_code = match &request.proof {
        Proof::Code(code_hash) => {
            let live = transaction
                .query_opt(
                    "SELECT id, code_hash FROM sign_in_codes
                      WHERE phone = $1 AND used_at IS NULL AND expires_at > $2
                        AND wrong_attempts < $3
                      ORDER BY id DESC LIMIT 1
                      FOR UPDATE",
                    &[&phone, &now, &MAX_WRONG_CODES],
                )
                .await?;
            let Some(live) = live else {
                return Ok(Redeemed::Invalid);
            };
            let (id, stored): (i64, String) = (live.try_get(0)?, live.try_get(1)?);
            if &stored != code_hash {
                transaction
                    .execute(
                        "UPDATE sign_in_codes SET wrong_attempts = wrong_attempts + 1 WHERE id = $1",
                        &[&id],
                    )
                    .await?;
                return Ok(Redeemed::Invalid);
            }
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

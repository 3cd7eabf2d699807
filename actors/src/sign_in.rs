//! Sign-in by phone: a six-digit code texted to the phone proves it. A
//! proved phone with access gets an account token that expires; one
//! without gets a short-lived sign-up token, the only way an anonymous
//! caller may buy access for that phone. Codes, their wrong attempts and
//! the limits on asking for them live in the store, so every instance
//! shares them; codes and tokens are kept only as hashes.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::accounts::PhoneNumber;
use crate::ledger::AccountId;
use crate::messaging::records::MessageKind;
use crate::messaging::{Messaging, MessagingError};
use crate::opt_outs::OptOutVia;
use crate::phone::CountryCode;
use crate::rating::RatingError;
use crate::store::{Store, StoreError};

/// How long a texted code may be used.
pub const CODE_LIFETIME_MS: i64 = 10 * 60 * 1000;
/// How long a sign-up token may be used (to buy access).
pub const SIGN_UP_LIFETIME_MS: i64 = 30 * 60 * 1000;
/// Wrong codes tried against one code before it is dead.
pub const MAX_WRONG_CODES: i64 = 5;
/// Every sign-up token starts with this.
const SIGN_UP_PREFIX: &str = "sup_";

/// How often codes may be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLimits {
    /// At least this long between two codes for one phone.
    pub min_gap_ms: i64,
    /// At most this many codes for one phone in an hour.
    pub per_phone_per_hour: i64,
    /// At most this many codes asked for from one client address (an IPv6
    /// client: its /64) in an hour.
    pub per_address_per_hour: i64,
    /// At most this many codes in an hour, whoever asks: what texting codes
    /// may cost the service in an hour is bounded (SMS pumping).
    pub per_hour: i64,
    /// At most this many codes to one destination country in an hour.
    pub per_country_per_hour: i64,
}

impl Default for CodeLimits {
    fn default() -> CodeLimits {
        CodeLimits {
            min_gap_ms: 30_000,
            per_phone_per_hour: 5,
            per_address_per_hour: 30,
            per_hour: 100,
            per_country_per_hour: 50,
        }
    }
}

/// What signing in is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignInPolicy {
    pub limits: CodeLimits,
    /// How long an account token made by signing in lives.
    pub token_lifetime_ms: i64,
}

/// A code to store, if the limits allow it.
#[derive(Clone, Debug)]
pub struct CodeRequest {
    pub phone: PhoneNumber,
    /// The phone's country, which the rate table prices.
    pub country: CountryCode,
    pub code_hash: String,
    pub client_address: String,
    pub now_ms: i64,
    pub limits: CodeLimits,
}

/// What the store made of a [`CodeRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeOpened {
    Opened,
    /// A limit of the phone or the address was reached: nothing stored;
    /// ask again after this long.
    Wait {
        retry_after_ms: i64,
    },
    /// The codes of the hour, of all callers or to the phone's country,
    /// reached their cap: nothing stored; ask again after this long.
    Capped {
        retry_after_ms: i64,
    },
}

/// What proves the phone.
#[derive(Clone, Debug)]
pub enum Proof {
    /// The hash of a texted code.
    Code(String),
    /// The hash of a sign-up token this phone got earlier.
    SignUpToken(String),
}

/// A proof to check and what to keep if it holds. Both tokens are made
/// ahead; the store keeps the one the phone's account calls for.
#[derive(Clone, Debug)]
pub struct Redeem {
    pub phone: PhoneNumber,
    pub proof: Proof,
    pub now_ms: i64,
    pub account_token_hash: String,
    pub account_token_expires_at_ms: i64,
    pub sign_up_token_hash: String,
    pub sign_up_token_expires_at_ms: i64,
}

/// What a proof came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// The phone has access: the account token was stored.
    Account(AccountId),
    /// The phone has no access: the sign-up token was stored.
    SignUp,
    /// A sign-up token for a phone that has no access yet: nothing stored.
    NotYet,
    /// No live code or token matched (a wrong code counts against its code).
    Invalid,
}

/// What a caller who proved the phone gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum SignedIn {
    /// The phone has access: an account token.
    Account {
        account_id: AccountId,
        token: String,
        /// RFC 3339.
        expires_at: String,
    },
    /// No access yet: a token to buy it with (`POST /v1/checkout/access`).
    SignUp {
        sign_up_token: String,
        /// RFC 3339.
        expires_at: String,
    },
}

/// Why signing in did not work.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("that code is not right, or no longer valid; ask for a new one")]
    InvalidCode,
    #[error("this phone has no access yet: finish paying first")]
    NotYet,
    #[error("too many codes asked for; try again later")]
    Wait { retry_after_ms: i64 },
    #[error("sign-in codes are paused for a while; try again later")]
    Capped { retry_after_ms: i64 },
    /// The rate table does not price the phone's country: no code is
    /// texted there (what a code costs would be unknown).
    #[error(transparent)]
    Destination(RatingError),
    #[error("the code could not be sent: {0}")]
    NotSent(MessagingError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long to wait before another code, given the codes counted in the
/// last hour (how many, the oldest, the newest): `None` if one may be
/// sent now. Both adapters decide with this, so they decide alike.
pub fn wait_for(
    count: i64,
    oldest_ms: Option<i64>,
    newest_ms: Option<i64>,
    per_hour: i64,
    min_gap_ms: i64,
    now_ms: i64,
) -> Option<i64> {
    if let Some(newest) = newest_ms {
        let gap_ends = newest.saturating_add(min_gap_ms);
        if gap_ends > now_ms {
            return Some(gap_ends - now_ms);
        }
    }
    if count >= per_hour {
        let frees = oldest_ms.unwrap_or(now_ms).saturating_add(3_600_000);
        return Some((frees - now_ms).max(1_000));
    }
    None
}

/// Codes texted in the last hour that the operator should look at: all of
/// them (`country` none) once they reach half the cap of the hour, and a
/// country's once they reach half the country's cap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeRate {
    /// The destination country; absent: every country.
    pub country: Option<CountryCode>,
    pub codes_last_hour: i64,
    /// The cap of the hour (past it, codes are refused).
    pub cap: i64,
}

/// The rates of the last hour that are unusual, given the codes by country
/// (`codes_by_country`) and the caps.
pub fn unusual_rates(by_country: &[(CountryCode, i64)], limits: &CodeLimits) -> Vec<CodeRate> {
    let total: i64 = by_country.iter().map(|(_, count)| count).sum();
    let half = |cap: i64| (cap + 1) / 2;
    let mut unusual = Vec::new();
    if total >= half(limits.per_hour) {
        unusual.push(CodeRate {
            country: None,
            codes_last_hour: total,
            cap: limits.per_hour,
        });
    }
    unusual.extend(
        by_country
            .iter()
            .filter(|(_, count)| *count >= half(limits.per_country_per_hour))
            .map(|(country, count)| CodeRate {
                country: Some(*country),
                codes_last_hour: *count,
                cap: limits.per_country_per_hour,
            }),
    );
    unusual
}

/// What the store keeps of a code: bound to its phone, so a code is worth
/// nothing for another number.
pub fn code_hash(phone: &PhoneNumber, code: &str) -> String {
    hex::encode(Sha256::digest(format!("{}:{code}", phone.as_str())))
}

/// A uniformly random six-digit code, from the operating system.
fn new_code() -> Result<String, StoreError> {
    loop {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes)
            .map_err(|error| StoreError::Database(format!("no randomness: {error}")))?;
        let value = u32::from_le_bytes(bytes);
        // Below the largest multiple of a million: no digit more likely.
        if value < 4_294_000_000 {
            return Ok(format!("{:06}", value % 1_000_000));
        }
    }
}

/// The text a code is sent in.
fn code_text(service_name: &str, code: &str) -> String {
    format!("{code} is your {service_name} sign-in code. It works for 10 minutes. Never share it.")
}

/// What became of a code that was stored. The caller is answered alike
/// either way, so that nobody learns which phones once used the service;
/// the outcome is for the log and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeOutcome {
    Sent,
    /// Twilio would not text the number: it opted out (`opted_out`), or
    /// cannot be texted. Nothing went out.
    Refused {
        opted_out: bool,
        detail: String,
    },
}

/// Stores a code for the phone (if the limits allow) and texts it. The
/// answer is the same whether or not the phone has an account, and
/// whether or not Twilio will text it.
pub async fn request_code(
    store: &Store,
    messaging: &Messaging,
    service_name: &str,
    phone: &PhoneNumber,
    client_address: &str,
    limits: CodeLimits,
    now_ms: i64,
) -> Result<CodeOutcome, SignInError> {
    // Only where the rate table prices a text: the same for every phone of
    // a country, so it tells nothing of the phone.
    let country = phone.country().ok_or_else(|| {
        SignInError::Destination(RatingError::NoCountry {
            number: phone.as_str().to_string(),
        })
    })?;
    if messaging.rates.rate_for(country).is_none() {
        return Err(SignInError::Destination(
            RatingError::UnsupportedDestination { country },
        ));
    }
    let code = new_code()?;
    let opened = store
        .sign_in()
        .open_code(CodeRequest {
            phone: phone.clone(),
            country,
            code_hash: code_hash(phone, &code),
            client_address: client_address.to_string(),
            now_ms,
            limits,
        })
        .await?;
    match opened {
        CodeOpened::Opened => {}
        CodeOpened::Wait { retry_after_ms } => return Err(SignInError::Wait { retry_after_ms }),
        CodeOpened::Capped { retry_after_ms } => {
            return Err(SignInError::Capped { retry_after_ms })
        }
    }
    // Counted like any other, but nothing goes to a number that opted out.
    if store.opt_outs().opt_out_of(phone.clone()).await?.is_some() {
        return Ok(CodeOutcome::Refused {
            opted_out: true,
            detail: "the number opted out of texts".to_string(),
        });
    }
    let sent = messaging
        .send_service(
            None,
            phone.as_str(),
            &code_text(service_name, &code),
            MessageKind::Reply,
            now_ms,
        )
        .await;
    match sent {
        Ok(_) => Ok(CodeOutcome::Sent),
        Err(MessagingError::Refused { opted_out, detail }) => {
            if opted_out {
                // Final: recorded, so that nothing more is tried.
                store
                    .opt_outs()
                    .record_opt_out(phone.clone(), OptOutVia::Carrier, None, now_ms)
                    .await?;
            }
            Ok(CodeOutcome::Refused { opted_out, detail })
        }
        Err(error) => Err(SignInError::NotSent(error)),
    }
}

/// Checks a code (or an earlier sign-up token) for the phone and answers
/// an account token or a sign-up token.
pub async fn sign_in(
    store: &Store,
    phone: &PhoneNumber,
    proof: &str,
    policy: &SignInPolicy,
    now_ms: i64,
) -> Result<SignedIn, SignInError> {
    let proof = if proof.starts_with(SIGN_UP_PREFIX) {
        Proof::SignUpToken(crate::access_tokens::hash(proof))
    } else {
        Proof::Code(code_hash(phone, proof))
    };
    let token = crate::access_tokens::generate()?;
    let sign_up_token = crate::random::random_secret(SIGN_UP_PREFIX)?;
    let account_token_expires_at_ms = now_ms.saturating_add(policy.token_lifetime_ms);
    let sign_up_token_expires_at_ms = now_ms.saturating_add(SIGN_UP_LIFETIME_MS);
    let redeemed = store
        .sign_in()
        .redeem(Redeem {
            phone: phone.clone(),
            proof,
            now_ms,
            account_token_hash: crate::access_tokens::hash(&token),
            account_token_expires_at_ms,
            sign_up_token_hash: crate::access_tokens::hash(&sign_up_token),
            sign_up_token_expires_at_ms,
        })
        .await?;
    match redeemed {
        Redeemed::Account(account_id) => Ok(SignedIn::Account {
            account_id,
            token,
            expires_at: crate::clock::format_rfc3339_ms(account_token_expires_at_ms),
        }),
        Redeemed::SignUp => Ok(SignedIn::SignUp {
            sign_up_token,
            expires_at: crate::clock::format_rfc3339_ms(sign_up_token_expires_at_ms),
        }),
        Redeemed::NotYet => Err(SignInError::NotYet),
        Redeemed::Invalid => Err(SignInError::InvalidCode),
    }
}

/// Lifts the phone's sign-in limits (what the admin does for a customer a
/// stranger locked out): the codes it was sent so far no longer count
/// against it, so it may ask for a code at once, which replaces a code
/// killed by wrong guesses. The address that asked and the caps of the hour
/// still count them. Answers how many codes were lifted.
pub async fn lift_limits(store: &Store, phone: &PhoneNumber) -> Result<i64, StoreError> {
    store.sign_in().lift_limits(phone.clone()).await
}

/// The phone a live sign-up token proved, if it is one.
pub async fn proved_phone(
    store: &Store,
    sign_up_token: &str,
    now_ms: i64,
) -> Result<Option<PhoneNumber>, StoreError> {
    if !sign_up_token.starts_with(SIGN_UP_PREFIX) {
        return Ok(None);
    }
    store
        .sign_in()
        .sign_up_phone(crate::access_tokens::hash(sign_up_token), now_ms)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_bound_to_their_phone() {
        for _ in 0..1000 {
            let code = new_code().unwrap();
            assert_eq!(code.len(), 6);
            assert!(code.chars().all(|c| c.is_ascii_digit()));
        }
        let one = PhoneNumber::parse("+14155550100").unwrap();
        let other = PhoneNumber::parse("+14155550101").unwrap();
        assert_ne!(code_hash(&one, "123456"), code_hash(&other, "123456"));
        assert_eq!(code_hash(&one, "123456"), code_hash(&one, "123456"));
    }
}

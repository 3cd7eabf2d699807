//! Sign-in by phone: a six-digit code texted to the phone proves it. A
//! proved phone with access gets an account token that expires; one
//! without gets a short-lived sign-up token, the only way an anonymous
//! caller may buy access for that phone. Codes, their wrong attempts and
//! the limits on asking for them live in the store, so every instance
//! shares them; codes and tokens are kept only as hashes.
//!
//! What a stranger who knows a customer's phone does is counted against
//! the stranger's address, not the customer: codes asked for are counted
//! per asking address (plus a higher total per phone), a new code leaves
//! the other addresses' live ones alone, and wrong codes are counted per
//! guessing address (plus a larger total per code, against brute force).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::accounts::PhoneNumber;
use crate::ledger::AccountId;
use crate::messaging::records::MessageKind;
use crate::messaging::{Messaging, MessagingError};
use crate::opt_outs::OptOutVia;
use crate::phone::CountryCode;
use crate::rating::{RateTable, RatingError};
use crate::store::{Store, StoreError};

/// How long a texted code may be used.
pub const CODE_LIFETIME_MS: i64 = 10 * 60 * 1000;
/// How long a sign-up token may be used (to buy access).
pub const SIGN_UP_LIFETIME_MS: i64 = 30 * 60 * 1000;
/// Wrong codes one address (an IPv6 client: its /64) may try for one
/// phone in an hour; past them, that address cannot sign the phone in
/// (whatever it presents) until the oldest is an hour old.
pub const WRONG_CODES_PER_ADDRESS: i64 = 5;
/// Wrong codes, from every address, one code may be tried against before
/// it works only for the address that asked for it (whose own wrong codes
/// are [`WRONG_CODES_PER_ADDRESS`]): no code is tried more than 25 times,
/// so a guess at it has at most 25 chances in a million.
pub const WRONG_CODES_PER_CODE: i64 = 20;
/// A phone's codes live at once: a new one from an address replaces that
/// address's earlier ones, and past this many the oldest is dropped.
pub const LIVE_CODES_PER_PHONE: i64 = 3;
/// Every sign-up token starts with this.
const SIGN_UP_PREFIX: &str = "sup_";

/// How often codes may be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLimits {
    /// At least this long between two codes for one phone asked for from
    /// one address.
    pub min_gap_ms: i64,
    /// At most this many codes for one phone asked for from one client
    /// address in an hour.
    pub per_phone_per_hour: i64,
    /// At most this many codes for one phone in an hour, from every
    /// address (until the admin lifts the phone's limits): higher than
    /// `per_phone_per_hour`, so that one address cannot use a phone's codes
    /// up.
    pub per_phone_total_per_hour: i64,
    /// At most this many codes asked for from one client address (an IPv6
    /// client: its /64) in an hour.
    pub per_address_per_hour: i64,
    /// At most this many codes texted in an hour to phones that have no
    /// account, whoever asks: what texting codes to numbers that are not
    /// customers may cost the service in an hour is bounded (SMS pumping).
    /// Past it a request is answered as any other and nothing is texted.
    pub per_hour: i64,
    /// At most this many of those codes to one priced destination (the
    /// country the rate table prices the phone as) in an hour.
    pub per_country_per_hour: i64,
}

impl Default for CodeLimits {
    fn default() -> CodeLimits {
        CodeLimits {
            min_gap_ms: 30_000,
            per_phone_per_hour: 5,
            per_phone_total_per_hour: 10,
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
    /// The destination the rate table prices the phone as (its country, or
    /// the country an alias charges it as: GG → GB).
    pub country: CountryCode,
    pub code_hash: String,
    pub client_address: String,
    pub now_ms: i64,
    pub limits: CodeLimits,
}

/// What the store made of a [`CodeRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeOpened {
    /// Stored, to be texted.
    Opened,
    /// Stored, but not to be texted: the phone has no account and the codes
    /// of the hour to such phones, of all callers or to its destination,
    /// reached their cap. Answered as [`CodeOpened::Opened`] is, and
    /// counted like it by every limit of the phone and the address; the
    /// code never works.
    Capped,
    /// A limit of the phone or the address was reached: nothing stored;
    /// ask again after this long.
    Wait { retry_after_ms: i64 },
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
    /// Who presents it (an IPv6 client: its /64): wrong codes are counted
    /// against it.
    pub client_address: String,
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
    /// No live code or token matched (a wrong code counts against the
    /// address that tried it and against the live codes it was tried
    /// against), or the address may no longer try codes for the phone.
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
    /// The rate table does not price the phone's country: no code is
    /// texted there (what a code costs would be unknown).
    #[error(transparent)]
    Destination(RatingError),
    /// Twilio did not take the text (after the answer: for the log).
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

/// The codes of a time to phones that have no account, to one priced
/// destination: what the caps count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountryCodes {
    pub country: CountryCode,
    /// Texted (or to be): what the caps count.
    pub texted: i64,
    /// Asked for past a cap: answered alike, never texted.
    pub capped: i64,
}

/// Codes texted in the last hour to phones without an account that the
/// operator should look at: all of them (`country` none) once they reach
/// half the cap of the hour, and a destination's once they reach half the
/// destination's cap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeRate {
    /// The priced destination; absent: every destination.
    pub country: Option<CountryCode>,
    pub codes_last_hour: i64,
    /// The cap of the hour (past it, nothing is texted).
    pub cap: i64,
    /// Codes asked for past a cap in the last hour: answered as any other,
    /// and not texted.
    pub capped_last_hour: i64,
}

/// The rates of the last hour that are unusual, given the codes by
/// destination (`codes_by_country`) and the caps.
pub fn unusual_rates(by_country: &[CountryCodes], limits: &CodeLimits) -> Vec<CodeRate> {
    let texted: i64 = by_country.iter().map(|codes| codes.texted).sum();
    let capped: i64 = by_country.iter().map(|codes| codes.capped).sum();
    let half = |cap: i64| (cap + 1) / 2;
    let mut unusual = Vec::new();
    // A code held back by a cap is listed with it: the cap was reached,
    // so its texted codes are past half of it.
    if texted >= half(limits.per_hour) {
        unusual.push(CodeRate {
            country: None,
            codes_last_hour: texted,
            cap: limits.per_hour,
            capped_last_hour: capped,
        });
    }
    unusual.extend(
        by_country
            .iter()
            .filter(|codes| codes.texted >= half(limits.per_country_per_hour))
            .map(|codes| CodeRate {
                country: Some(codes.country),
                codes_last_hour: codes.texted,
                cap: limits.per_country_per_hour,
                capped_last_hour: codes.capped,
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

/// What became of a code's text, after the answer. The caller was
/// answered alike whatever it is, so that nobody learns which phones once
/// used the service; the outcome is for the log and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeOutcome {
    Sent,
    /// Twilio would not text the number: it opted out (`opted_out`: known
    /// already, and Twilio was not asked; or Twilio's 21610, now recorded),
    /// or cannot be texted. Nothing went out.
    Refused {
        opted_out: bool,
        detail: String,
    },
}

/// A code stored for a phone, to be texted after the answer. Holds the
/// code itself, which is never stored nor logged: no `Debug`.
pub struct PendingCode {
    phone: PhoneNumber,
    destination: CountryCode,
    code: String,
}

impl PendingCode {
    /// The destination the rate table prices the phone as.
    pub fn destination(&self) -> CountryCode {
        self.destination
    }
}

/// What a request for a code came to: the answer is the same either way.
pub enum CodeAsked {
    /// Stored: text it after the answer ([`send_code`]).
    ToText(PendingCode),
    /// Stored, but a cap of the hour for phones without an account was
    /// reached: nothing is texted.
    Capped { destination: CountryCode },
}

/// Stores a code for the phone, if the limits of the phone and the asking
/// address allow. The work is the same for every number, customer's or
/// not, opted out or not (the store's one write): the text is sent after
/// the answer, by [`send_code`]. Only a country the rate table does not
/// price is refused (the same for every phone there).
pub async fn request_code(
    store: &Store,
    rates: &RateTable,
    phone: &PhoneNumber,
    client_address: &str,
    limits: CodeLimits,
    now_ms: i64,
) -> Result<CodeAsked, SignInError> {
    let region = phone.country().ok_or_else(|| {
        SignInError::Destination(RatingError::NoCountry {
            number: phone.as_str().to_string(),
        })
    })?;
    // The destination the table prices: an alias's region counts with the
    // country it is charged as, for the caps too.
    let destination = rates
        .rate_for(region)
        .ok_or(SignInError::Destination(
            RatingError::UnsupportedDestination { country: region },
        ))?
        .country;
    let code = new_code()?;
    let opened = store
        .sign_in()
        .open_code(CodeRequest {
            phone: phone.clone(),
            country: destination,
            code_hash: code_hash(phone, &code),
            client_address: client_address.to_string(),
            now_ms,
            limits,
        })
        .await?;
    match opened {
        CodeOpened::Opened => Ok(CodeAsked::ToText(PendingCode {
            phone: phone.clone(),
            destination,
            code,
        })),
        CodeOpened::Capped => Ok(CodeAsked::Capped { destination }),
        CodeOpened::Wait { retry_after_ms } => Err(SignInError::Wait { retry_after_ms }),
    }
}

/// Texts a stored code (after the answer), unless the number opted out.
/// A 21610 from Twilio is recorded as the number's opt-out.
pub async fn send_code(
    store: &Store,
    messaging: &Messaging,
    service_name: &str,
    pending: &PendingCode,
    now_ms: i64,
) -> Result<CodeOutcome, SignInError> {
    let phone = &pending.phone;
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
            &code_text(service_name, &pending.code),
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
    client_address: &str,
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
            client_address: client_address.to_string(),
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

/// Lifts the phone's sign-in limits (what the admin does for a customer
/// strangers locked out): the codes it was sent so far no longer count
/// against its total of the hour, so the customer may ask for a code at
/// once, and the wrong codes tried for it are forgotten (a customer who
/// mistyped five times signs in at once). What each address asked for
/// still counts against that address, so a stranger's addresses cannot
/// start again at once; the caps still count the codes. Answers how many
/// codes were lifted.
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

//! Sign-in by phone: a six-digit code texted to the phone proves it. A
//! proved phone with access gets an account token that expires; one
//! without gets a short-lived sign-up token, the only way an anonymous
//! caller may buy access for that phone. Codes, their wrong attempts and
//! the limits on asking for them live in the store, so every instance
//! shares them; codes and tokens are kept only as hashes.
//!
//! What a stranger who knows a customer's phone does is counted against
//! the stranger's address, not the customer: codes asked for are counted
//! per asking address (plus higher totals per phone, of the hour and of
//! the day), a new code leaves the other addresses' live ones alone, and
//! wrong codes are counted per guessing address (plus a larger total per
//! code, against brute force).

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
/// (whatever it presents: `429` with how long to wait) until the oldest
/// is an hour old. Those tried before the admin lifted the phone's limits
/// still count, but let the address use a code it asked for after the
/// lift (see [`WrongCodes::standing`]).
pub const WRONG_CODES_PER_ADDRESS: i64 = 5;
/// Wrong codes, from every address, one code may be tried against before
/// it works only for the address that asked for it (whose own wrong codes
/// are [`WRONG_CODES_PER_ADDRESS`]): no code is tried more than 25 times,
/// so a guess at it has at most 25 chances in a million.
pub const WRONG_CODES_PER_CODE: i64 = 20;
/// A phone's codes live at once: past this many the oldest is dropped.
pub const LIVE_CODES_PER_PHONE: i64 = 3;
/// An address's codes for one phone live at once: a new one replaces the
/// address's codes but its previous one, which stays live until it
/// expires, so that a text that arrives late (after the customer asked
/// again) still works. A code that signs in ends the others its address
/// asked for.
pub const LIVE_CODES_PER_ADDRESS: i64 = 2;
/// Wrong discount codes an anonymous buyer may try with one sign-up token
/// (from any addresses): the tenth uses the token up, and the buyer signs
/// in again for another.
pub const WRONG_DISCOUNT_CODES_PER_TOKEN: i64 = 10;
/// An hour, the window of most sign-in limits.
pub const HOUR_MS: i64 = 3_600_000;
/// A day, the window of a phone's total of the day.
pub const DAY_MS: i64 = 24 * HOUR_MS;
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
    /// At most this many codes for one phone in a day (24 hours), from
    /// every address (until the admin lifts the phone's limits): customers
    /// are texted past the caps of the hour, so this bounds what one
    /// number, a customer's included, can be sent.
    pub per_phone_per_day: i64,
    /// At most this many codes asked for from one client address (an IPv6
    /// client: its /64) in an hour.
    pub per_address_per_hour: i64,
    /// The cap of the hour on codes, whoever asks and for whichever phone
    /// (a customer's too): past it, a phone that has no account is not
    /// texted (SMS pumping: what texting numbers that are not customers
    /// may cost in an hour is bounded). Such a request is answered as any
    /// other; a customer is still texted. Every code counts, so whether
    /// one was a customer's changes nothing for the next caller.
    pub per_hour: i64,
    /// The same, for the codes to one priced destination (the country the
    /// rate table prices the phone as).
    pub per_country_per_hour: i64,
}

impl Default for CodeLimits {
    fn default() -> CodeLimits {
        CodeLimits {
            min_gap_ms: 30_000,
            per_phone_per_hour: 5,
            per_phone_total_per_hour: 10,
            per_phone_per_day: 24,
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
    /// Stored, but not to be texted: the codes of the hour, of all callers
    /// or to its destination, reached their cap, and the phone has no
    /// account. Answered as [`CodeOpened::Opened`] is, and counted like
    /// it by every limit of the phone and the address; the code never
    /// works.
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
    /// against).
    Invalid,
    /// The address may no longer sign the phone in (its wrong codes): ask
    /// again after this long.
    Wait { retry_after_ms: i64 },
}

/// Where an address stands with a phone, by the wrong codes it tried for
/// it in the last hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrongCodes {
    /// It may try codes.
    Free,
    /// Its wrong codes, those before the admin's lift included, reached
    /// [`WRONG_CODES_PER_ADDRESS`]: it may use only a code it asked for
    /// itself (after the lift), until `until_ms`.
    OwnCodesOnly { until_ms: i64 },
    /// Its wrong codes since the lift reached [`WRONG_CODES_PER_ADDRESS`]:
    /// it cannot sign the phone in until `until_ms`.
    Stopped { until_ms: i64 },
}

impl WrongCodes {
    /// Where an address stands, given its wrong codes for the phone in the
    /// last hour (when each was tried, and whether the admin lifted the
    /// phone's limits since), oldest first. Both adapters decide with this.
    pub fn standing(tried: &[(i64, bool)]) -> WrongCodes {
        let limit = WRONG_CODES_PER_ADDRESS as usize;
        // The moment the count falls below the limit again: when the
        // limit-th newest is an hour old.
        let until = |times: &[i64]| times[times.len() - limit].saturating_add(HOUR_MS);
        let since_lift: Vec<i64> = tried
            .iter()
            .filter(|(_, lifted)| !lifted)
            .map(|(at, _)| *at)
            .collect();
        if since_lift.len() >= limit {
            return WrongCodes::Stopped {
                until_ms: until(&since_lift),
            };
        }
        let all: Vec<i64> = tried.iter().map(|(at, _)| *at).collect();
        if all.len() >= limit {
            return WrongCodes::OwnCodesOnly {
                until_ms: until(&all),
            };
        }
        WrongCodes::Free
    }
}

/// How long to wait until `until_ms`, at least a second.
pub fn wait_until(until_ms: i64, now_ms: i64) -> i64 {
    (until_ms - now_ms).max(1_000)
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
    /// Too many wrong codes from this address: it cannot sign in for a
    /// while, whatever it presents (a new code would not help).
    #[error("too many wrong codes; wait before trying again")]
    TooManyWrongCodes { retry_after_ms: i64 },
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

/// The codes a limit counts in its window: how many, the oldest, the
/// newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    pub count: i64,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
}

impl Counted {
    /// How long to wait before another code, given `limit` codes in
    /// `window_ms` and at least `min_gap_ms` after the newest: `None` if
    /// one may be sent now. Both adapters decide with this, so they decide
    /// alike. (The window is always the one the codes were counted in.)
    pub fn wait(&self, limit: i64, window_ms: i64, min_gap_ms: i64, now_ms: i64) -> Option<i64> {
        if let Some(newest) = self.newest_ms {
            let gap_ends = newest.saturating_add(min_gap_ms);
            if gap_ends > now_ms {
                return Some(gap_ends - now_ms);
            }
        }
        if self.count >= limit {
            let frees = self.oldest_ms.unwrap_or(now_ms).saturating_add(window_ms);
            return Some(wait_until(frees, now_ms));
        }
        None
    }
}

/// The codes of a time to one priced destination: what the caps count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountryCodes {
    pub country: CountryCode,
    /// Asked for within the caps (customers' too): what the caps count.
    pub texted: i64,
    /// Asked for past a cap for phones without an account: answered
    /// alike, never texted.
    pub capped: i64,
}

/// Codes of the last hour that the operator should look at: all of them
/// (`country` none) once they reach half the cap of the hour, and a
/// destination's once they reach half the destination's cap.
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

/// A phone asked for many codes: listed on the console's Needs attention,
/// customers' phones included (someone may be having the service text one
/// number at its expense, or locking a customer out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhoneRate {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub phone: PhoneNumber,
    /// Codes asked for in the last hour (texted or not).
    pub codes_last_hour: i64,
    /// Codes asked for in the last 24 hours.
    pub codes_last_day: i64,
    /// The phone's total of the hour (past it, `429`).
    pub hour_limit: i64,
    /// The phone's total of the day (past it, `429`).
    pub day_limit: i64,
}

/// Phones listed on Needs attention at most.
pub const UNUSUAL_PHONES_LISTED: i64 = 20;

/// The phones asked for at an unusual rate (half their total of the hour
/// or of the day, or more), every instance's codes, the most asked for
/// first.
pub async fn unusual_phones(
    store: &Store,
    limits: &CodeLimits,
    now_ms: i64,
) -> Result<Vec<PhoneRate>, StoreError> {
    let half = |limit: i64| (limit + 1) / 2;
    let rows = store
        .sign_in()
        .codes_by_phone(PhoneCodesQuery {
            hour_since_ms: now_ms - HOUR_MS,
            day_since_ms: now_ms - DAY_MS,
            at_least_in_hour: half(limits.per_phone_total_per_hour),
            at_least_in_day: half(limits.per_phone_per_day),
            limit: UNUSUAL_PHONES_LISTED,
        })
        .await?;
    Ok(rows
        .into_iter()
        .map(|(phone, codes_last_hour, codes_last_day)| PhoneRate {
            phone,
            codes_last_hour,
            codes_last_day,
            hour_limit: limits.per_phone_total_per_hour,
            day_limit: limits.per_phone_per_day,
        })
        .collect())
}

/// Which phones' codes to count ([`crate::store::SignInStore::codes_by_phone`]).
#[derive(Clone, Copy, Debug)]
pub struct PhoneCodesQuery {
    pub hour_since_ms: i64,
    pub day_since_ms: i64,
    /// A phone is listed with at least this many codes since `hour_since_ms`…
    pub at_least_in_hour: i64,
    /// …or this many since `day_since_ms`.
    pub at_least_in_day: i64,
    /// The most phones listed (the most codes of the day first).
    pub limit: i64,
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
        Redeemed::Wait { retry_after_ms } => Err(SignInError::TooManyWrongCodes { retry_after_ms }),
    }
}

/// Lifts the phone's sign-in limits (what the admin does for a customer
/// strangers locked out, or who mistyped their code too often): the codes
/// it was sent so far no longer count against its totals (of the hour and
/// of the day), so the customer may ask for a code at once, and its live
/// codes end (with the wrong tries against them). What each address did
/// still counts against that address: the codes it asked for (so a
/// stranger's addresses cannot start again at once), and its wrong codes,
/// except that an address whose wrong codes stopped it may still sign the
/// phone in with a code it asks for after the lift (the customer's own;
/// a stranger's address gets five tries at a code texted to the customer,
/// no more than any new address, and never the customer's). The caps
/// still count the codes. Answers how many codes were lifted.
pub async fn lift_limits(
    store: &Store,
    phone: &PhoneNumber,
    now_ms: i64,
) -> Result<i64, StoreError> {
    store.sign_in().lift_limits(phone.clone(), now_ms).await
}

/// Counts a discount code an anonymous buyer could not use against the
/// sign-up token presented with it: at [`WRONG_DISCOUNT_CODES_PER_TOKEN`]
/// the token is used up. Answers whether it was.
pub async fn wrong_discount_code(store: &Store, sign_up_token: &str) -> Result<bool, StoreError> {
    store
        .sign_in()
        .wrong_discount_code(
            crate::access_tokens::hash(sign_up_token),
            WRONG_DISCOUNT_CODES_PER_TOKEN,
        )
        .await
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

    #[test]
    fn an_address_is_stopped_by_five_wrong_codes_and_after_a_lift_keeps_its_own() {
        let at = |minutes: i64| minutes * 60_000;
        assert_eq!(WrongCodes::standing(&[]), WrongCodes::Free);
        let four: Vec<(i64, bool)> = (0..4).map(|minute| (at(minute), false)).collect();
        assert_eq!(WrongCodes::standing(&four), WrongCodes::Free);
        // Five since the lift (or with no lift): stopped until the first
        // of the last five is an hour old (minutes 1, 2, 3, 10 and 11).
        let mut six = four.clone();
        six.extend([(at(10), false), (at(11), false)]);
        assert_eq!(
            WrongCodes::standing(&six),
            WrongCodes::Stopped {
                until_ms: at(1) + HOUR_MS
            }
        );
        // Five with those before a lift: its own codes only.
        let lifted: Vec<(i64, bool)> = (0..5).map(|minute| (at(minute), true)).collect();
        assert_eq!(
            WrongCodes::standing(&lifted),
            WrongCodes::OwnCodesOnly {
                until_ms: at(0) + HOUR_MS
            }
        );
        let mut then = lifted.clone();
        then.extend((20..25).map(|minute| (at(minute), false)));
        assert_eq!(
            WrongCodes::standing(&then),
            WrongCodes::Stopped {
                until_ms: at(20) + HOUR_MS
            }
        );
    }

    #[test]
    fn a_limit_waits_for_its_own_window_and_the_gap() {
        let counted = Counted {
            count: 24,
            oldest_ms: Some(1_000),
            newest_ms: Some(50_000),
        };
        assert_eq!(
            counted.wait(24, DAY_MS, 0, 60_000),
            Some(1_000 + DAY_MS - 60_000)
        );
        assert_eq!(counted.wait(25, DAY_MS, 0, 60_000), None);
        assert_eq!(counted.wait(25, DAY_MS, 30_000, 60_000), Some(20_000));
        // Never less than a second.
        assert_eq!(counted.wait(24, HOUR_MS, 0, HOUR_MS + 900), Some(1_000));
    }
}

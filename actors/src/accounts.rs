//! Accounts as stored: who they are (E.164 phone, email) and in what state,
//! with newtypes that can only hold valid values.

use serde::{Serialize, Serializer};

use crate::ledger::AccountId;
use crate::money::Money;
use crate::opt_outs::OptOut;
pub use crate::phone::{InvalidPhoneNumber, PhoneNumber};

/// An email address: one `@` with something on both sides, no spaces,
/// at most 254 characters. (Deliverability is Stripe's business.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

/// Why a string is not an email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an email address")]
pub struct InvalidEmail(pub String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, InvalidEmail> {
        let invalid = || InvalidEmail(text.chars().take(60).collect());
        let (local, domain) = text.split_once('@').ok_or_else(invalid)?;
        let valid = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && text.len() <= 254
            && text
                .chars()
                .all(|character| !character.is_whitespace() && !character.is_control());
        if valid {
            Ok(Email(text.to_string()))
        } else {
            Err(invalid())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Where an account is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Signed up, access not yet paid.
    Pending,
    Active,
    Suspended,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Pending => "pending",
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<AccountStatus> {
        match text {
            "pending" => Some(AccountStatus::Pending),
            "active" => Some(AccountStatus::Active),
            "suspended" => Some(AccountStatus::Suspended),
            "closed" => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

/// An account to be created.
#[derive(Clone, Debug)]
pub struct NewAccount {
    pub phone: PhoneNumber,
    pub email: Option<Email>,
    pub status: AccountStatus,
}

/// An account with its committed balance.
#[derive(Clone, Debug, Serialize)]
pub struct Account {
    pub id: AccountId,
    pub phone: PhoneNumber,
    pub email: Option<Email>,
    pub stripe_customer_id: Option<String>,
    pub status: AccountStatus,
    pub created_at_ms: i64,
    #[serde(rename = "balance_micros")]
    pub balance: Money,
    pub seq: i64,
    pub low_balance_warned_at_ms: Option<i64>,
    /// The saved card that off-session charges use.
    pub stripe_payment_method_id: Option<String>,
    /// What the customer knows that card by, when Stripe has said.
    pub card: Option<Card>,
    /// The account's number opted out of texts (it texted STOP): nothing
    /// but the replies the rules allow is sent to it.
    pub opt_out: Option<OptOut>,
}

/// A saved card as its holder recognises it: "visa ending 4242, 08/2030".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Card {
    #[cfg_attr(feature = "openapi", schema(examples("visa")))]
    pub brand: String,
    #[cfg_attr(feature = "openapi", schema(examples("4242")))]
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

impl Card {
    /// Whether the card's last valid month is before `(year, month)`.
    pub fn expired_before(&self, year: i64, month: i64) -> bool {
        (self.exp_year, self.exp_month) < (year, month)
    }

    /// "card ending 4242".
    pub fn ending(&self) -> String {
        format!("card ending {}", self.last4)
    }
}

impl Card {
    /// A card from its stored columns, when all are there.
    pub fn from_columns(
        brand: Option<String>,
        last4: Option<String>,
        exp_month: Option<i64>,
        exp_year: Option<i64>,
    ) -> Option<Card> {
        Some(Card {
            brand: brand?,
            last4: last4?,
            exp_month: exp_month?,
            exp_year: exp_year?,
        })
    }
}

/// "card ending 4242", or "saved card" when Stripe has not said which.
pub fn card_words(card: Option<&Card>) -> String {
    card.map_or_else(|| "saved card".to_string(), Card::ending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_loosely() {
        assert!(Email::parse("hiker@example.com").is_ok());
        for bad in [
            "",
            "hiker",
            "@example.com",
            "hiker@example",
            "a b@example.com",
            "a@b@c.com",
            "a@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}

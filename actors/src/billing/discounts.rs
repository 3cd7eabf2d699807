//! Discount codes: percent or fixed, with a use limit that is never
//! exceeded because a use is reserved when a checkout starts (in the same
//! transaction that checks the limit, see `BillingStore::open_access_order`)
//! and given back if it expires or fails.

use serde::Serialize;

use crate::money::Money;

/// What a code takes off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Discount {
    /// Whole percent, 1 to 100.
    Percent { percent: i64 },
    /// A whole-cent amount.
    Fixed {
        #[serde(rename = "amount_micros")]
        amount: Money,
    },
}

impl Discount {
    pub fn new_percent(percent: i64) -> Result<Discount, String> {
        if (1..=100).contains(&percent) {
            Ok(Discount::Percent { percent })
        } else {
            Err("a percent discount is 1 to 100".to_string())
        }
    }

    pub fn new_fixed(amount: Money) -> Result<Discount, String> {
        if amount.is_positive() && amount.micros() % 10_000 == 0 {
            Ok(Discount::Fixed { amount })
        } else {
            Err("a fixed discount is a positive amount in whole cents".to_string())
        }
    }

    /// Refuses a fixed discount larger than what access costs now: it would
    /// make access free, which a 100% discount says plainly (and, at a
    /// higher price later, it would not). A percent always fits.
    pub fn fits(self, price_now: Money) -> Result<Discount, String> {
        match self {
            Discount::Fixed { amount } if amount > price_now => Err(format!(
                "a fixed discount of {amount} is more than access costs now ({price_now}); \
                 a 100% discount makes access free"
            )),
            _ => Ok(self),
        }
    }

    /// The price after this discount, in whole cents (rounded in the
    /// seller's favour), never below zero.
    pub fn apply(self, price: Money) -> Money {
        let price_cents = price.cents_toward_zero();
        let off_cents = match self {
            Discount::Percent { percent } => price_cents * percent / 100,
            Discount::Fixed { amount } => amount.cents_toward_zero(),
        };
        Money::from_micros((price_cents - off_cents).max(0) * 10_000)
    }
}

/// A code as typed by a customer: trimmed, upper-cased, letters, digits,
/// `-` and `_`, 1 to 64 characters.
pub fn normalize_code(text: &str) -> Result<String, String> {
    let code = text.trim().to_ascii_uppercase();
    let valid = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        Ok(code)
    } else {
        Err("a discount code is 1 to 64 letters, digits, '-' or '_'".to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiscountCode {
    pub id: i64,
    pub code: String,
    #[serde(flatten)]
    pub discount: Discount,
    pub max_uses: Option<i64>,
    pub current_uses: i64,
    pub active: bool,
    pub stripe_coupon_id: Option<String>,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discounts_apply_in_whole_cents() {
        let launch = Money::from_micros(29_990_000);
        let percent =
            |value| Discount::new_percent(value).map(|discount| discount.apply(launch).micros());
        assert_eq!(
            percent(10),
            Ok(27_000_000),
            "10% of 2999¢ is 299¢ off, rounded for the seller"
        );
        assert_eq!(percent(100), Ok(0));
        let fixed = Discount::new_fixed(Money::from_micros(5_000_000))
            .map(|discount| discount.apply(launch).micros());
        assert_eq!(fixed, Ok(24_990_000));
        let too_much = Discount::new_fixed(Money::from_micros(50_000_000))
            .map(|discount| discount.apply(launch).micros());
        assert_eq!(too_much, Ok(0));
        assert!(Discount::new_percent(0).is_err());
        assert!(Discount::new_percent(101).is_err());
        assert!(Discount::new_fixed(Money::from_micros(5_000_001)).is_err());
        let fifty = Discount::new_fixed(Money::from_micros(50_000_000));
        assert!(fifty.and_then(|discount| discount.fits(launch)).is_err());
        let exact = Discount::new_fixed(launch);
        assert!(exact.and_then(|discount| discount.fits(launch)).is_ok());
    }

    #[test]
    fn codes_are_normalized() {
        assert_eq!(normalize_code(" hiker-10 "), Ok("HIKER-10".to_string()));
        assert!(normalize_code("").is_err());
        assert!(normalize_code("no spaces").is_err());
        assert!(normalize_code(&"A".repeat(65)).is_err());
    }
}

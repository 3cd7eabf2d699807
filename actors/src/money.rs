//! Exact amounts of US dollars as whole micro-dollars (1 µ$ = 10⁻⁶ USD).
//!
//! A micro-dollar is fine enough for 5.65¢ per segment and for Twilio prices
//! such as $0.00750, and Stripe's cents convert exactly (×10 000). No float
//! ever touches a `Money`.

use std::fmt;
use std::ops::Neg;

use serde::{Deserialize, Serialize};

/// Micro-dollars in one cent.
pub const MICROS_PER_CENT: i64 = 10_000;
/// Micro-dollars in one dollar.
pub const MICROS_PER_DOLLAR: i64 = 1_000_000;

/// A signed, exact amount of money in micro-dollars.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Money(i64);

/// Why an amount could not be made or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is out of range")]
    Overflow,
    #[error("'{0}' is not an amount of dollars (examples: 10, $10, 10.00, 0.0565)")]
    Unparseable(String),
}

impl Money {
    pub const ZERO: Money = Money(0);

    /// An amount of micro-dollars.
    pub const fn from_micros(micros: i64) -> Money {
        Money(micros)
    }

    /// An amount of whole cents, as Stripe counts them.
    pub fn from_cents(cents: i64) -> Result<Money, MoneyError> {
        cents
            .checked_mul(MICROS_PER_CENT)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// An amount of whole dollars.
    pub fn from_dollars(dollars: i64) -> Result<Money, MoneyError> {
        dollars
            .checked_mul(MICROS_PER_DOLLAR)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Whole cents, rounded toward zero (for Stripe, which takes cents).
    pub const fn cents_toward_zero(self) -> i64 {
        self.0 / MICROS_PER_CENT
    }

    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.0
            .checked_sub(other.0)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// This amount times a whole count (for example segments × rate).
    pub fn checked_mul(self, count: i64) -> Result<Money, MoneyError> {
        self.0
            .checked_mul(count)
            .map(Money)
            .ok_or(MoneyError::Overflow)
    }

    /// How many whole times `unit` fits into this amount (for example
    /// how many segments a balance buys); `None` for a unit that is not positive.
    pub fn whole_times(self, unit: Money) -> Option<i64> {
        if unit.0 <= 0 {
            return None;
        }
        Some(self.0.max(0) / unit.0)
    }

    /// Parses a dollar amount such as `10`, `$10`, `$10.00` or `0.0565`,
    /// with at most six decimal places. Used at the edges (CLI, SMS).
    pub fn parse_dollars(text: &str) -> Result<Money, MoneyError> {
        let unparseable = || MoneyError::Unparseable(text.to_string());
        let trimmed = text.trim();
        let (negative, unsigned) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let digits = unsigned.strip_prefix('$').unwrap_or(unsigned);
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (digits, ""),
        };
        let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 6 {
            return Err(unparseable());
        }
        if digits.contains('.') && fraction.is_empty() {
            return Err(unparseable());
        }
        let whole_dollars: i64 = whole.parse().map_err(|_| MoneyError::Overflow)?;
        let mut fraction_micros: i64 = 0;
        for (place, digit) in fraction.bytes().enumerate() {
            let digit_value = i64::from(digit - b'0');
            let scale = 10_i64.pow(5 - place as u32);
            fraction_micros += digit_value * scale;
        }
        let magnitude = Money::from_dollars(whole_dollars)?.checked_add(Money(fraction_micros))?;
        Ok(if negative { -magnitude } else { magnitude })
    }
}

impl Neg for Money {
    type Output = Money;

    fn neg(self) -> Money {
        // i64::MIN micro-dollars is far beyond any real amount; saturate
        // rather than panic so hostile input cannot crash the server.
        Money(self.0.saturating_neg())
    }
}

/// The one way an amount is shown, wherever it is (the command line, the
/// API's strings, replies, CSV; the pages' scripts follow the same rule):
/// exactly, with at least two decimals and no trailing zeros beyond them.
/// Whole cents look as cents do (`$2.35`, `$10.00`); a sub-cent part is
/// shown, never cut or rounded away (`$0.0565`, `-$82.266`, `-$0.000001`).
impl fmt::Display for Money {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let dollars = magnitude / MICROS_PER_DOLLAR as u64;
        let fraction = format!("{:06}", magnitude % MICROS_PER_DOLLAR as u64);
        let trimmed = fraction.trim_end_matches('0');
        let decimals = if trimmed.len() < 2 {
            &fraction[..2]
        } else {
            trimmed
        };
        write!(formatter, "{sign}${dollars}.{decimals}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_a_sub_cent_part_exactly_and_cents_as_cents() {
        assert_eq!(Money::from_micros(2_359_999).to_string(), "$2.359999");
        assert_eq!(Money::from_micros(-2_359_999).to_string(), "-$2.359999");
        assert_eq!(Money::from_micros(-82_266_000).to_string(), "-$82.266");
        assert_eq!(Money::from_micros(56_500).to_string(), "$0.0565");
        assert_eq!(Money::from_micros(-9_999).to_string(), "-$0.009999");
        assert_eq!(Money::ZERO.to_string(), "$0.00");
        assert_eq!(Money::from_micros(10_000_000).to_string(), "$10.00");
        assert_eq!(Money::from_micros(2_350_000).to_string(), "$2.35");
    }

    #[test]
    fn display_shows_every_micro_dollar() {
        assert_eq!(Money::from_micros(113_000).to_string(), "$0.113");
        assert_eq!(Money::from_micros(-1).to_string(), "-$0.000001");
        assert_eq!(
            Money::from_micros(i64::MIN).to_string(),
            "-$9223372036854.775808"
        );
    }

    #[test]
    fn cents_convert_exactly() {
        assert_eq!(Money::from_cents(2999), Ok(Money::from_micros(29_990_000)));
        assert_eq!(Money::from_cents(i64::MAX), Err(MoneyError::Overflow));
        assert_eq!(Money::from_micros(29_990_000).cents_toward_zero(), 2999);
    }

    #[test]
    fn fine_enough_for_segment_rates_and_twilio_prices() {
        let rate = Money::from_micros(56_500);
        assert_eq!(rate.checked_mul(3), Ok(Money::from_micros(169_500)));
        assert_eq!(
            Money::parse_dollars("0.00750"),
            Ok(Money::from_micros(7_500))
        );
        assert_eq!(
            Money::from_dollars(10)
                .ok()
                .and_then(|ten| ten.whole_times(rate)),
            Some(176)
        );
    }

    #[test]
    fn parses_dollar_amounts() {
        assert_eq!(
            Money::parse_dollars("$10"),
            Ok(Money::from_micros(10_000_000))
        );
        assert_eq!(
            Money::parse_dollars(" 10.00 "),
            Ok(Money::from_micros(10_000_000))
        );
        assert_eq!(
            Money::parse_dollars("-$1.5"),
            Ok(Money::from_micros(-1_500_000))
        );
        assert_eq!(
            Money::parse_dollars("0.0565"),
            Ok(Money::from_micros(56_500))
        );
        for bad in [
            "",
            "$",
            "ten",
            "10.",
            "1.2345678",
            "1e3",
            "$-1",
            "99999999999999999999",
        ] {
            assert!(Money::parse_dollars(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(
            Money::from_micros(i64::MAX).checked_add(Money::from_micros(1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::from_micros(i64::MIN).checked_sub(Money::from_micros(1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(-Money::from_micros(i64::MIN), Money::from_micros(i64::MAX));
    }
}

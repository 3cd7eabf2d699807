//! Discount codes: percent or fixed, with a use limit that is never
//! exceeded because a use is reserved when a checkout starts (in the same
//! transaction that checks the limit) and given back if it expires or fails.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::BillingError;
use crate::money::Money;
use crate::store::{StoreError, UnknownValue};

/// What a code takes off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
pub struct DiscountCode {
    pub id: i64,
    pub code: String,
    #[serde(flatten)]
    pub discount: Discount,
    pub max_uses: Option<i64>,
    pub current_uses: i64,
    pub active: bool,
    pub stripe_coupon_id: Option<String>,
    pub created_at_ms: i64,
}

const COLUMNS: &str =
    "id, code, discount_type, value, max_uses, current_uses, active, stripe_coupon_id, created_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<DiscountCode> {
    let id: i64 = row.get(0)?;
    let kind: String = row.get(2)?;
    let value: i64 = row.get(3)?;
    let discount = match kind.as_str() {
        "percent" => Discount::Percent { percent: value },
        "fixed" => Discount::Fixed {
            amount: Money::from_micros(value),
        },
        _ => {
            return Err(
                UnknownValue::new("discount_codes", id, "discount_type", kind).into_sql_error(2),
            )
        }
    };
    Ok(DiscountCode {
        id,
        code: row.get(1)?,
        discount,
        max_uses: row.get(4)?,
        current_uses: row.get(5)?,
        active: row.get::<_, i64>(6)? == 1,
        stripe_coupon_id: row.get(7)?,
        created_at_ms: row.get(8)?,
    })
}

/// Creates a code; `Ok(None)` if the code exists already.
pub fn create(
    connection: &Connection,
    code: &str,
    discount: Discount,
    max_uses: Option<i64>,
    now_ms: i64,
) -> Result<Option<DiscountCode>, StoreError> {
    let (kind, value) = match discount {
        Discount::Percent { percent } => ("percent", percent),
        Discount::Fixed { amount } => ("fixed", amount.micros()),
    };
    let inserted = connection
        .prepare_cached(
            "INSERT INTO discount_codes (code, discount_type, value, max_uses, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (code) DO NOTHING",
        )?
        .execute(params![code, kind, value, max_uses, now_ms])?;
    if inserted == 0 {
        return Ok(None);
    }
    find(connection, code)
}

pub fn find(connection: &Connection, code: &str) -> Result<Option<DiscountCode>, StoreError> {
    let found = connection
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM discount_codes WHERE code = ?1"
        ))?
        .query_row([code], from_row)
        .optional()?;
    Ok(found)
}

pub fn list(connection: &Connection) -> Result<Vec<DiscountCode>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM discount_codes ORDER BY code"
    ))?;
    let codes = statement
        .query_map([], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(codes)
}

/// Turns a code on or off; `false` if there is no such code.
pub fn set_active(connection: &Connection, code: &str, active: bool) -> Result<bool, StoreError> {
    let changed = connection
        .prepare_cached("UPDATE discount_codes SET active = ?2 WHERE code = ?1")?
        .execute(params![code, i64::from(active)])?;
    Ok(changed == 1)
}

/// Takes one use of a code, refusing unknown, inactive and used-up codes
/// with distinct errors. Runs inside a store write, so no two checkouts can
/// take the last use.
pub fn reserve(connection: &Connection, code: &str) -> Result<DiscountCode, BillingError> {
    let reserved = connection
        .prepare_cached(
            "UPDATE discount_codes SET current_uses = current_uses + 1
              WHERE code = ?1 AND active = 1 AND (max_uses IS NULL OR current_uses < max_uses)",
        )
        .and_then(|mut statement| statement.execute([code]))
        .map_err(StoreError::from)?;
    let found = find(connection, code)?;
    match found {
        Some(discount_code) if reserved == 1 => Ok(discount_code),
        Some(discount_code) if !discount_code.active => {
            Err(BillingError::InactiveDiscountCode(code.to_string()))
        }
        Some(_) => Err(BillingError::DiscountCodeUsedUp(code.to_string())),
        None => Err(BillingError::UnknownDiscountCode(code.to_string())),
    }
}

/// Gives back the use an order reserved, once.
pub fn release_for_order(connection: &Connection, order_id: i64) -> Result<(), StoreError> {
    let claimed = connection
        .prepare_cached(
            "UPDATE orders SET discount_released = 1
              WHERE id = ?1 AND discount_code_id IS NOT NULL AND discount_released = 0",
        )?
        .execute([order_id])?;
    if claimed == 1 {
        connection
            .prepare_cached(
                "UPDATE discount_codes SET current_uses = current_uses - 1
                  WHERE id = (SELECT discount_code_id FROM orders WHERE id = ?1) AND current_uses > 0",
            )?
            .execute([order_id])?;
    }
    Ok(())
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
    }

    #[test]
    fn codes_are_normalized() {
        assert_eq!(normalize_code(" hiker-10 "), Ok("HIKER-10".to_string()));
        assert!(normalize_code("").is_err());
        assert!(normalize_code("no spaces").is_err());
        assert!(normalize_code(&"A".repeat(65)).is_err());
    }
}

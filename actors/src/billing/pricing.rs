//! The price of initial access, set by a pricing mode that is persisted and
//! changed at run time.

use std::fmt;

use serde::Serialize;

use crate::money::Money;

/// The launch price of access: $29.99.
pub const LAUNCH_PRICE: Money = Money::from_micros(29_990_000);
/// The recommended retail price of access: $49.99.
pub const RRP_PRICE: Money = Money::from_micros(49_990_000);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PricingMode {
    Launch,
    Rrp,
    Sale,
}

impl PricingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PricingMode::Launch => "launch",
            PricingMode::Rrp => "rrp",
            PricingMode::Sale => "sale",
        }
    }

    pub fn parse(text: &str) -> Option<PricingMode> {
        match text {
            "launch" => Some(PricingMode::Launch),
            "rrp" => Some(PricingMode::Rrp),
            "sale" => Some(PricingMode::Sale),
            _ => None,
        }
    }
}

impl fmt::Display for PricingMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The current pricing of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pricing {
    pub mode: PricingMode,
    /// Set with the `sale` mode.
    #[serde(rename = "sale_price_micros")]
    pub sale_price: Option<Money>,
}

impl Pricing {
    /// Checks a mode and its sale price: `sale` needs a positive whole-cent
    /// price below the recommended retail price (at or above it is no
    /// sale), the others take none.
    pub fn new(mode: PricingMode, sale_price: Option<Money>) -> Result<Pricing, String> {
        match (mode, sale_price) {
            (PricingMode::Sale, Some(price)) if price >= RRP_PRICE => Err(format!(
                "a sale price is below the recommended retail price ({RRP_PRICE}); {price} is not"
            )),
            (PricingMode::Sale, Some(price))
                if price.is_positive() && price.micros() % 10_000 == 0 =>
            {
                Ok(Pricing {
                    mode,
                    sale_price: Some(price),
                })
            }
            (PricingMode::Sale, _) => {
                Err("the sale mode needs a positive price in whole cents".to_string())
            }
            (_, Some(_)) => Err(format!(
                "the {mode} mode has a fixed price; only the sale mode takes one"
            )),
            (_, None) => Ok(Pricing {
                mode,
                sale_price: None,
            }),
        }
    }

    /// The price of access in this mode.
    pub fn price(&self) -> Money {
        match self.mode {
            PricingMode::Launch => LAUNCH_PRICE,
            PricingMode::Rrp => RRP_PRICE,
            PricingMode::Sale => self.sale_price.unwrap_or(RRP_PRICE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_its_price() {
        assert_eq!(
            Pricing::new(PricingMode::Launch, None).map(|p| p.price()),
            Ok(LAUNCH_PRICE)
        );
        assert_eq!(
            Pricing::new(PricingMode::Rrp, None).map(|p| p.price()),
            Ok(RRP_PRICE)
        );
        let sale = Money::from_micros(19_990_000);
        assert_eq!(
            Pricing::new(PricingMode::Sale, Some(sale)).map(|p| p.price()),
            Ok(sale)
        );
        assert!(Pricing::new(PricingMode::Sale, None).is_err());
        assert!(Pricing::new(PricingMode::Sale, Some(Money::from_micros(19_990_001))).is_err());
        assert!(Pricing::new(PricingMode::Launch, Some(sale)).is_err());
        assert!(Pricing::new(PricingMode::Sale, Some(RRP_PRICE)).is_err());
        assert!(Pricing::new(PricingMode::Sale, Some(Money::from_micros(59_990_000))).is_err());
    }
}

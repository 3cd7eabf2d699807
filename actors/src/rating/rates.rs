//! The rate table: per ISO country, its name, the carrier's cost per
//! segment and the customer's rate per segment. Data, not code: an embedded
//! default, or a TOML file named in the configuration.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::money::Money;
use crate::phone::CountryCode;

const EMBEDDED: &str = include_str!("default_rates.toml");

/// What one country costs per segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rate {
    pub country: CountryCode,
    pub name: String,
    /// What the carrier charges us per segment.
    pub carrier_cost: Money,
    /// What the customer pays per segment.
    pub customer_rate: Money,
}

impl Rate {
    /// Whole segments that $10 buys at this rate.
    pub fn segments_per_10_dollars(&self) -> i64 {
        // A loaded rate is positive (the table refuses a rate below a
        // positive carrier cost), so `whole_times` always answers; 0 is
        // only for a rate made by hand with no price.
        Money::from_micros(10_000_000)
            .whole_times(self.customer_rate)
            .unwrap_or(0)
    }
}

/// Why a rate table could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateTableError {
    #[error("cannot read the rate table {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the rate table is not valid TOML of the expected shape: {0}")]
    Format(String),
    #[error("the rate table is invalid: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    margin_percent: i64,
    countries: BTreeMap<String, CountryFile>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountryFile {
    name: String,
    carrier_cost_micros: i64,
    customer_rate_micros: Option<i64>,
}

/// Rates by destination country, with aliases from region to country.
#[derive(Clone, Debug)]
pub struct RateTable {
    rates: HashMap<CountryCode, Rate>,
    /// A region charged at another country's rate (GG → GB).
    aliases: HashMap<CountryCode, CountryCode>,
}

impl RateTable {
    /// The table the binary ships with.
    pub fn embedded() -> Result<RateTable, RateTableError> {
        RateTable::from_toml(EMBEDDED)
    }

    /// A table from a TOML file.
    pub fn load(path: &Path) -> Result<RateTable, RateTableError> {
        let text = std::fs::read_to_string(path).map_err(|error| RateTableError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        RateTable::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<RateTable, RateTableError> {
        let file: TableFile =
            toml::from_str(text).map_err(|error| RateTableError::Format(error.to_string()))?;
        let invalid = |message: String| RateTableError::Invalid(message);
        if !(0..100).contains(&file.margin_percent) {
            return Err(invalid(format!(
                "margin_percent must be 0 to 99, not {}",
                file.margin_percent
            )));
        }
        let mut rates = HashMap::new();
        for (code, country) in file.countries {
            let country_code =
                CountryCode::parse(&code).map_err(|error| invalid(error.to_string()))?;
            if country.carrier_cost_micros <= 0 {
                return Err(invalid(format!(
                    "{code}: carrier_cost_micros must be positive"
                )));
            }
            let customer_rate = match country.customer_rate_micros {
                Some(rate) => rate,
                None => customer_rate_from_margin(country.carrier_cost_micros, file.margin_percent)
                    .ok_or_else(|| invalid(format!("{code}: the customer rate is out of range")))?,
            };
            if customer_rate < country.carrier_cost_micros {
                return Err(invalid(format!(
                    "{code}: the customer rate is below the carrier cost"
                )));
            }
            rates.insert(
                country_code,
                Rate {
                    country: country_code,
                    name: country.name,
                    carrier_cost: Money::from_micros(country.carrier_cost_micros),
                    customer_rate: Money::from_micros(customer_rate),
                },
            );
        }
        let mut aliases = HashMap::new();
        for (region, target) in file.aliases {
            let region_code =
                CountryCode::parse(&region).map_err(|error| invalid(error.to_string()))?;
            let target_code =
                CountryCode::parse(&target).map_err(|error| invalid(error.to_string()))?;
            if rates.contains_key(&region_code) {
                return Err(invalid(format!(
                    "{region} has a rate of its own and cannot also be an alias"
                )));
            }
            if !rates.contains_key(&target_code) {
                return Err(invalid(format!(
                    "alias {region} → {target}: {target} has no rate"
                )));
            }
            aliases.insert(region_code, target_code);
        }
        Ok(RateTable { rates, aliases })
    }

    /// The rate for a destination country, following an alias; `None` for a
    /// destination this table does not serve (never a default rate).
    pub fn rate_for(&self, country: CountryCode) -> Option<&Rate> {
        let charged_as = self.aliases.get(&country).copied().unwrap_or(country);
        self.rates.get(&charged_as)
    }

    /// Why messages to `phone` cannot be priced with this table, for an
    /// operator (what to add), or `None` when they can.
    pub fn pricing_gap(&self, phone: &crate::phone::PhoneNumber) -> Option<String> {
        match phone.country() {
            Some(country) if self.rate_for(country).is_some() => None,
            Some(country) => Some(format!(
                "messages to {phone} ({country}) cannot be priced yet: add a rate for {country} to the rate table, or an alias from {country} to a country that has one"
            )),
            None => Some(format!(
                "messages to {phone} cannot be priced: its country is not known from the number"
            )),
        }
    }

    /// Every rate, by country code.
    pub fn rates(&self) -> Vec<&Rate> {
        let mut rates: Vec<&Rate> = self.rates.values().collect();
        rates.sort_by_key(|rate| rate.country);
        rates
    }
}

/// carrier / (1 - margin), rounded up to the micro-dollar, in integers.
fn customer_rate_from_margin(carrier_cost_micros: i64, margin_percent: i64) -> Option<i64> {
    let numerator = carrier_cost_micros.checked_mul(100)?;
    let denominator = 100 - margin_percent;
    Some((numerator + denominator - 1) / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RateTable {
        RateTable::embedded().unwrap_or_else(|error| panic!("{error}"))
    }

    fn code(text: &str) -> CountryCode {
        CountryCode::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn the_seed_table_is_exact() {
        let expected = [
            ("US", 11_300, 56_500, 176),
            ("CA", 17_000, 85_000, 117),
            ("GB", 52_400, 262_000, 38),
            ("FR", 79_800, 399_000, 25),
            ("IT", 92_700, 463_500, 21),
            ("CH", 72_500, 362_500, 27),
            ("NZ", 105_000, 525_000, 19),
            ("ZA", 108_900, 544_500, 18),
        ];
        let table = table();
        assert_eq!(table.rates().len(), 8);
        for (country, carrier, customer, per_ten) in expected {
            let rate = table
                .rate_for(code(country))
                .unwrap_or_else(|| panic!("{country}"));
            assert_eq!(rate.carrier_cost.micros(), carrier, "{country}");
            assert_eq!(rate.customer_rate.micros(), customer, "{country}");
            // 80% margin: the carrier cost is exactly a fifth of the rate.
            assert_eq!(rate.customer_rate.micros() * 20, carrier * 100, "{country}");
            assert_eq!(rate.segments_per_10_dollars(), per_ten, "{country}");
        }
    }

    #[test]
    fn unknown_destinations_have_no_rate() {
        assert!(table().rate_for(code("DE")).is_none());
        assert!(table().rate_for(code("GG")).is_none());
    }

    #[test]
    fn aliases_charge_a_region_at_another_rate() {
        let text = format!("{EMBEDDED}GG = \"GB\"\nJE = \"GB\"\nIM = \"GB\"\n");
        let table = RateTable::from_toml(&text).unwrap_or_else(|error| panic!("{error}"));
        let rate = table
            .rate_for(code("JE"))
            .map(|rate| rate.customer_rate.micros());
        assert_eq!(rate, Some(262_000));
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(matches!(
            RateTable::from_toml("margin_percent = 80"),
            Err(RateTableError::Format(_))
        ));
        let zero = "margin_percent = 80\n[countries.US]\nname = \"US\"\ncarrier_cost_micros = 0\n";
        assert!(matches!(
            RateTable::from_toml(zero),
            Err(RateTableError::Invalid(_))
        ));
        let dangling = "margin_percent = 80\n[countries.US]\nname = \"US\"\ncarrier_cost_micros = 1\n[aliases]\nGG = \"GB\"\n";
        assert!(matches!(
            RateTable::from_toml(dangling),
            Err(RateTableError::Invalid(_))
        ));
        let below = "margin_percent = 80\n[countries.US]\nname = \"US\"\ncarrier_cost_micros = 10\ncustomer_rate_micros = 9\n";
        assert!(matches!(
            RateTable::from_toml(below),
            Err(RateTableError::Invalid(_))
        ));
    }

    #[test]
    fn margins_round_up_to_the_micro_dollar() {
        assert_eq!(customer_rate_from_margin(11_300, 80), Some(56_500));
        assert_eq!(customer_rate_from_margin(10, 70), Some(34));
        assert_eq!(customer_rate_from_margin(10, 0), Some(10));
    }
}

//! `BALANCE`: the balance, and how many segments it buys at the account's
//! own country's rate.

use crate::money::Money;
use crate::rating::Rate;

pub fn reply(balance: Money, own_rate: Option<&Rate>) -> String {
    match own_rate {
        Some(rate) => format!(
            "Your balance is {balance}: about {} SMS segments to {} at {} each.",
            // Rates from the table are positive: `whole_times` answers.
            balance.whole_times(rate.customer_rate).unwrap_or(0),
            rate.country,
            rate.customer_rate
        ),
        None => format!("Your balance is {balance}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::CountryCode;

    #[test]
    fn tells_balance_and_segments() {
        let rate = Rate {
            country: CountryCode::parse("US").unwrap_or_else(|error| panic!("{error}")),
            name: "United States".into(),
            carrier_cost: Money::from_micros(11_300),
            customer_rate: Money::from_micros(56_500),
        };
        assert_eq!(
            reply(Money::from_micros(10_000_000), Some(&rate)),
            "Your balance is $10.00: about 176 SMS segments to US at $0.0565 each."
        );
        assert_eq!(
            reply(Money::from_micros(-1_000_000), Some(&rate))
                .split(':')
                .nth(1),
            Some(" about 0 SMS segments to US at $0.0565 each.")
        );
        assert_eq!(
            reply(Money::from_micros(2_350_000), None),
            "Your balance is $2.35."
        );
    }
}

//! `BUY $10`: charge the saved card for $10 off-session. Only $10 can be
//! bought by SMS; other amounts are for the web.

use crate::accounts::{card_words, Card};
use crate::money::Money;

/// What followed `BUY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuyAmount {
    /// `$10`, `10`, `$10.00`.
    Ten,
    /// Any other amount or word.
    Other(String),
    /// Nothing.
    Missing,
}

impl BuyAmount {
    pub fn parse(text: &str) -> BuyAmount {
        let text = text.trim();
        if text.is_empty() {
            return BuyAmount::Missing;
        }
        match Money::parse_dollars(text) {
            Ok(amount) if amount == crate::billing::TOP_UP => BuyAmount::Ten,
            _ => BuyAmount::Other(text.to_string()),
        }
    }
}

/// How a `BUY $10` went, for the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuyOutcome {
    Credited {
        balance: Money,
        card: Option<Card>,
    },
    Pending,
    AuthenticationRequired,
    Declined {
        message: String,
    },
    NoSavedCard,
    /// The account's `BUY`s today have reached the daily limit.
    DailyLimit {
        limit: Money,
    },
    /// Payments are not configured, or Stripe refused the request: nothing
    /// was charged.
    Unavailable,
    /// Stripe has not said whether the card was charged (no answer in
    /// time, a 5xx, its first answer still in progress): it may have been.
    /// Never a MessageSid's stored answer; asked again, it settles.
    Unconfirmed,
}

pub fn reply(outcome: &BuyOutcome, web_link: &str) -> String {
    match outcome {
        BuyOutcome::Credited { balance, card } => {
            format!(
                "Thanks! {} was added from your {}. Your balance is {balance}.",
                crate::billing::TOP_UP,
                card_words(card.as_ref())
            )
        }
        BuyOutcome::Pending => {
            format!(
                "Your {} payment is processing; your balance will update shortly.",
                crate::billing::TOP_UP
            )
        }
        BuyOutcome::AuthenticationRequired => {
            format!("Your bank needs you to confirm this payment. Finish it on the web: {web_link}")
        }
        BuyOutcome::Declined { message } => {
            format!("Your card was not charged: {message} Update your card at {web_link}")
        }
        BuyOutcome::NoSavedCard => format!(
            "There is no saved card on your account yet. Top up on the web first: {web_link}"
        ),
        BuyOutcome::DailyLimit { limit } => format!(
            "You have bought {limit} by SMS today, the most in a day. Top up on the web: {web_link}"
        ),
        BuyOutcome::Unavailable => {
            format!("Top-ups by SMS are not available right now. Top up on the web: {web_link}")
        }
        // No link to pay on the web: if this payment went through, a
        // second one would charge twice.
        BuyOutcome::Unconfirmed => format!(
            "We could not confirm your {} payment yet. If it went through, your balance will show it soon: text BALANCE to check before you buy again.",
            crate::billing::TOP_UP
        ),
    }
}

pub fn other_amount_reply(web_link: &str) -> String {
    format!("By SMS you can buy $10 of credit: text BUY $10. For other amounts, top up on the web: {web_link}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfirmed_payment_is_told_as_one_in_one_segment() {
        let reply = reply(&BuyOutcome::Unconfirmed, "https://sms.example.com/account");
        assert!(reply.contains("could not confirm"), "{reply}");
        assert!(!reply.contains("not available"), "{reply}");
        assert!(!reply.contains("https://"), "no way to pay again: {reply}");
        assert!(reply.len() <= 160, "{} characters: {reply}", reply.len());
    }

    #[test]
    fn only_ten_dollars() {
        assert_eq!(BuyAmount::parse("$10"), BuyAmount::Ten);
        assert_eq!(BuyAmount::parse("10.00"), BuyAmount::Ten);
        assert_eq!(
            BuyAmount::parse("$10.001"),
            BuyAmount::Other("$10.001".into())
        );
        assert_eq!(BuyAmount::parse("$5"), BuyAmount::Other("$5".into()));
        assert_eq!(BuyAmount::parse(""), BuyAmount::Missing);
    }
}

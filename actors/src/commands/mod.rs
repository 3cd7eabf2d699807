//! The SMS commands an account holder can text, one file per command,
//! behind one `Command` enum and its `parse`. Case does not matter and
//! surrounding spaces are ignored.

pub mod auto;
pub mod balance;
pub mod buy;
pub mod help;

pub use auto::AutoCommand;
pub use buy::BuyAmount;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `BALANCE` or `BAL`.
    Balance,
    /// `BUY <amount>`.
    Buy(BuyAmount),
    /// `AUTO`, `AUTO ON`, `AUTO OFF` (`None`: `AUTO` and something else).
    Auto(Option<AutoCommand>),
    /// `HELP`.
    Help,
    /// Anything else.
    Unknown,
}

impl Command {
    pub fn parse(text: &str) -> Command {
        let upper = text.trim().to_uppercase();
        let mut words = upper.split_whitespace();
        let first = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        match (first, rest.as_slice()) {
            ("BALANCE" | "BAL", []) => Command::Balance,
            ("HELP", []) => Command::Help,
            ("AUTO", rest) => Command::Auto(AutoCommand::parse(rest)),
            ("BUY", amount) => Command::Buy(BuyAmount::parse(&amount.join(" "))),
            _ => match first.strip_prefix("BUY$") {
                // "BUY$10" without a space.
                Some(amount) if rest.is_empty() => {
                    Command::Buy(BuyAmount::parse(&format!("${amount}")))
                }
                _ => Command::Unknown,
            },
        }
    }
}

/// The one-line hint for anything that is not a command.
pub fn unknown_reply() -> String {
    "Sorry, that is not a command. Text HELP to see what you can do.".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_case_insensitively() {
        for text in ["BALANCE", "balance", "  Bal  ", "bal\n"] {
            assert_eq!(Command::parse(text), Command::Balance, "{text:?}");
        }
        assert_eq!(Command::parse(" help "), Command::Help);
        for text in ["BUY $10", "buy 10", "Buy $10.00", "BUY  10.00", "buy$10"] {
            assert_eq!(
                Command::parse(text),
                Command::Buy(BuyAmount::Ten),
                "{text:?}"
            );
        }
        assert_eq!(
            Command::parse("BUY $20"),
            Command::Buy(BuyAmount::Other("$20".into()))
        );
        assert_eq!(Command::parse("BUY"), Command::Buy(BuyAmount::Missing));
        assert_eq!(
            Command::parse(" auto "),
            Command::Auto(Some(AutoCommand::Status))
        );
        assert_eq!(
            Command::parse("Auto On"),
            Command::Auto(Some(AutoCommand::On))
        );
        assert_eq!(
            Command::parse("AUTO off"),
            Command::Auto(Some(AutoCommand::Off))
        );
        assert_eq!(Command::parse("AUTO maybe"), Command::Auto(None));
        assert_eq!(
            Command::parse("buy lots"),
            Command::Buy(BuyAmount::Other("LOTS".into()))
        );
        for text in ["", "hello", "BALANCE please", "HELP ME", "STOPP"] {
            assert_eq!(Command::parse(text), Command::Unknown, "{text:?}");
        }
    }
}

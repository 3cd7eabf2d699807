//! `HELP`: what can be texted.

pub fn reply() -> String {
    "Commands: BALANCE - your credit and how many messages it buys. \
     BUY $10 - add $10 with your saved card. HELP - this list."
        .to_string()
}

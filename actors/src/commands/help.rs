//! `HELP`: what can be texted.

pub fn reply() -> String {
    "Commands: BALANCE - your credit and how many messages it buys. \
     BUY $10 - add $10 with your saved card. \
     AUTO - your auto top-up; AUTO ON / AUTO OFF - turn it on or off. \
     STOP - no more texts (START to get them again). \
     HELP - this list."
        .to_string()
}

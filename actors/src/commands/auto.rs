//! `AUTO`, `AUTO ON`, `AUTO OFF`: see, turn on and turn off auto top-up
//! (a charge of the saved card when the credit runs low).

use crate::accounts::card_words;
use crate::billing::auto_charge::AutoTopUpView;
use crate::money::Money;

/// What followed `AUTO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoCommand {
    /// `AUTO`: the setting and this month's total.
    Status,
    /// `AUTO ON`.
    On,
    /// `AUTO OFF`.
    Off,
}

impl AutoCommand {
    /// `None` for anything but nothing, `ON` or `OFF`.
    pub fn parse(rest: &[&str]) -> Option<AutoCommand> {
        match rest {
            [] => Some(AutoCommand::Status),
            ["ON"] => Some(AutoCommand::On),
            ["OFF"] => Some(AutoCommand::Off),
            _ => None,
        }
    }
}

fn terms(view: &AutoTopUpView) -> String {
    format!(
        "when your credit falls below {}, {} from your {} (at most {} a month)",
        Money::from_micros(view.threshold_micros),
        Money::from_micros(view.amount_micros),
        card_words(view.card.as_ref()),
        Money::from_micros(view.monthly_cap_micros),
    )
}

/// The reply to `AUTO`.
pub fn status_reply(view: &AutoTopUpView) -> String {
    let month = Money::from_micros(view.month_charged_micros);
    if view.enabled {
        format!(
            "Auto top-up is on: {}. This month: {month}. Text AUTO OFF to stop.",
            terms(view)
        )
    } else {
        format!(
            "Auto top-up is off. Text AUTO ON to charge {} to your {} whenever your credit falls below {} (at most {} a month). This month: {month}.",
            Money::from_micros(view.amount_micros),
            card_words(view.card.as_ref()),
            Money::from_micros(view.threshold_micros),
            Money::from_micros(view.monthly_cap_micros),
        )
    }
}

/// The reply to `AUTO ON` that worked: what will be charged, how to stop.
pub fn on_reply(view: &AutoTopUpView) -> String {
    format!(
        "Auto top-up is on: {}. Text AUTO OFF to stop at any time.",
        terms(view)
    )
}

pub fn off_reply() -> String {
    "Auto top-up is off: your card will not be charged automatically. Text AUTO ON to turn it on again.".to_string()
}

pub fn no_card_reply(web_link: &str) -> String {
    format!("Auto top-up needs a saved card. Top up on the web first: {web_link}")
}

pub fn unavailable_reply() -> String {
    "Auto top-up is not available right now.".to_string()
}

pub fn unknown_reply() -> String {
    "Text AUTO to see your auto top-up, AUTO ON to turn it on, AUTO OFF to turn it off.".to_string()
}

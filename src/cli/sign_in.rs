//! `sms-credit sign-in lift PHONE`: lifts a phone's sign-in limits, for a
//! customer a stranger locked out (as `POST /v1/admin/sign-in/lift`).

use clap::{Args, Subcommand};
use serde_json::json;
use sms_credit_actors::accounts::PhoneNumber;
use sms_credit_actors::sign_in;

use super::output::{print_json, with_store};
use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum SignInCommand {
    /// Lift a phone's sign-in limits: the codes it was sent so far no
    /// longer count against its total, so it may ask for a code at once,
    /// and the wrong codes tried for it are forgotten (what each address
    /// asked for still counts against that address).
    Lift(LiftCommand),
}

#[derive(Args, Debug)]
pub struct LiftCommand {
    /// The phone, in international form (+14155551234).
    phone: String,
    /// Print JSON (for programs) instead of a line for people.
    #[arg(long)]
    json: bool,
}

impl SignInCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        match self {
            SignInCommand::Lift(command) => command.run(settings),
        }
    }
}

impl LiftCommand {
    fn run(self, settings: &Settings) -> Result<(), String> {
        let phone = PhoneNumber::parse(&self.phone).map_err(|error| error.to_string())?;
        let lifted = with_store(settings, |store| {
            let phone = phone.clone();
            async move {
                let now_ms =
                    sms_credit_actors::clock::Clock::now_ms(&sms_credit_actors::clock::SystemClock);
                sign_in::lift_limits(&store, &phone, now_ms)
                    .await
                    .map_err(|error| error.to_string())
            }
        })?;
        if self.json {
            return print_json(&json!({"phone": phone.as_str(), "codes_lifted": lifted}));
        }
        say!(
            "{}: sign-in limits lifted ({lifted} codes no longer count against it)",
            phone.as_str()
        );
        Ok(())
    }
}

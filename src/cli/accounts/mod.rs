//! `sms-credit accounts …`: one file per subcommand.

mod adjust;
mod auto_top_up;
mod create;
mod export;
mod list;
mod show;
mod token;

use clap::Subcommand;

use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Create an active account with a zero balance.
    Create(create::CreateCommand),
    /// Show an account, its balance and its newest ledger rows.
    Show(show::ShowCommand),
    /// List accounts, or search them by part of a phone number or email.
    List(list::ListCommand),
    /// Write an account's whole ledger as CSV to standard output.
    Export(export::ExportCommand),
    /// List, issue, revoke or rotate an account's account tokens (those made
    /// by signing in by phone among them).
    Token(token::TokenCommand),
    /// Show an account's auto top-up, or turn it on or off and change its terms
    /// (a running server's actors follow it within a second).
    AutoTopUp(auto_top_up::AutoTopUpCommand),
    /// Adjust a balance by a signed amount of dollars (e.g. 5, -1.50).
    Adjust(adjust::AdjustCommand),
}

impl AccountsCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        match self {
            AccountsCommand::Create(command) => command.run(settings),
            AccountsCommand::Show(command) => command.run(settings),
            AccountsCommand::List(command) => command.run(settings),
            AccountsCommand::Export(command) => command.run(settings),
            AccountsCommand::Token(command) => command.run(settings),
            AccountsCommand::AutoTopUp(command) => command.run(settings),
            AccountsCommand::Adjust(command) => command.run(settings),
        }
    }
}

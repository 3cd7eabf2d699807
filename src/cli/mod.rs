//! The command line: `serve` (the default), `config`, `verify`, and the
//! commands that work on the database through the same core as the
//! server. One file per command; `output` holds what they share.

/// `println!` for what a command prints: a closed pipe (`| head`) or a
/// failing standard output never ends the command (see
/// [`output::write_line`]), so what it does is done and an error it meets is
/// told on standard error, whatever became of its output.
macro_rules! say {
    () => {
        $crate::cli::output::write_line(format_args!(""))
    };
    ($($argument:tt)*) => {
        $crate::cli::output::write_line(format_args!($($argument)*))
    };
}

mod accounts;
mod backup;
mod config;
mod copy;
mod discount_codes;
mod interrupt;
mod migrate;
mod orders;
mod output;
mod pricing;
mod quote;
mod reconcile;
mod reports;
mod restore;
mod serve;
mod sign_in;
mod stripe_events;
mod verify;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{GlobalOptions, Options, Settings, Values};

#[derive(Parser, Debug)]
#[command(
    name = "sms-credit",
    version,
    about = "Sells and spends prepaid SMS credit."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    /// The server's options, when `serve` is left out.
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve(serve::ServeCommand),
    /// Print every setting with its value and where it came from (default,
    /// the config file, the environment or a flag); secrets as ***.
    Config(config::ConfigCommand),
    /// Recompute every account from its ledger; exit 1 if any account's
    /// ledger does not sum to its snapshot or its seq has a gap.
    Verify(verify::VerifyCommand),
    /// What a message will cost: segments × the destination's rate.
    Quote(quote::QuoteCommand),
    /// Compare what messages were charged with what Twilio actually
    /// charged, per country and overall.
    Reconcile(reconcile::ReconcileCommand),
    /// The books: each category of credit's opening balance, granted,
    /// consumed, expired, refunded and closing balance, for a month or a
    /// period.
    #[command(subcommand)]
    Reports(reports::ReportsCommand),
    /// The Stripe events received and what became of each (applied,
    /// ignored, waiting, expired, failed), newest first.
    StripeEvents(stripe_events::StripeEventsCommand),
    /// Apply the database migrations this release has and the database has
    /// not, then exit (the server applies them at start too).
    Migrate(migrate::MigrateCommand),
    /// Copy every row of one database into another that holds no data yet
    /// (an SQLite file into Postgres, say), then verify both. Stop the
    /// servers on the source first.
    Copy(copy::CopyCommand),
    /// Write a backup of the database while servers run: one moment of
    /// every table into an SQLite file, verified, then put in place under
    /// its name (--to DIR/ names it by the time; --keep N keeps the newest N).
    Backup(backup::BackupCommand),
    /// Restore a backup into an empty database (an SQLite file or
    /// Postgres: --database), then verify it. A database that holds data
    /// is refused and left as it was.
    Restore(restore::RestoreCommand),
    /// Accounts: create, show, list, export the ledger, adjust the balance,
    /// manage their account tokens and auto top-up.
    #[command(subcommand)]
    Accounts(accounts::AccountsCommand),
    /// Show or set the pricing mode of access: launch ($29.99), rrp ($49.99) or sale.
    Pricing(pricing::PricingCommand),
    /// Create, list, activate and deactivate discount codes.
    #[command(subcommand)]
    DiscountCodes(discount_codes::DiscountCodesCommand),
    /// Refund a paid order through Stripe, and list an order's refunds.
    #[command(subcommand)]
    Orders(orders::OrdersCommand),
    /// Lift a phone's sign-in limits (a customer a stranger locked out).
    #[command(subcommand)]
    SignIn(sign_in::SignInCommand),
    /// The host application's webhook endpoints: add, list, show, deliveries,
    /// replay, rotate-secret, enable, disable, remove, test.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
}

impl Cli {
    /// Whether the command is `serve` (the default).
    pub fn serves(&self) -> bool {
        matches!(self.command, None | Some(Command::Serve(_)))
    }
}

/// What is left of a panic on a closed pipe: the commands print with
/// `say!`, which never panics, but anything that still prints with
/// `println!` (a library) would panic when the reader has gone; that one
/// panic ends the process quietly, as other Unix tools end (restoring
/// SIGPIPE's default needs unsafe code, which this workspace forbids).
/// Every other panic is reported as before.
fn end_quietly_on_a_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if payload.starts_with("failed printing to stdout") && payload.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// Runs a parsed command line; the exit code says how it went.
pub fn run(cli: Cli) -> ExitCode {
    if !cli.serves() {
        end_quietly_on_a_closed_pipe();
    }
    // `RUST_LOG` filters the log, else `info` for the server and `warn`
    // for other commands, whose output is their own.
    let default_level = if cli.serves() { "info" } else { "warn" };
    let (options, command) = match cli.command {
        Some(Command::Serve(serve)) => (serve.options.over(cli.options), None),
        Some(Command::Config(mut config)) => (
            std::mem::take(&mut config.options).over(cli.options),
            Some(Command::Config(config)),
        ),
        other => (cli.options, other),
    };
    let values = match Values::load(&cli.global, &options) {
        Ok(values) => values,
        Err(error) => return configuration_error(&error),
    };
    if let Some(Command::Config(command)) = &command {
        return output::exit_code(command.run(&values));
    }
    let settings = match Settings::check(&values) {
        Ok(settings) => settings,
        Err(error) => return configuration_error(&error),
    };
    // Only now is the format known; nothing before logs (a mistake in the
    // settings is told on standard error as it is).
    crate::logs::init(settings.server.log_format, default_level);
    let outcome = match command {
        None | Some(Command::Serve(_)) => serve::serve(settings),
        Some(Command::Config(_)) => Ok(()),
        Some(Command::Verify(command)) => return output::exit_code(command.run(&settings)),
        Some(Command::Quote(command)) => command.run(&settings),
        Some(Command::Accounts(command)) => command.run(&settings),
        Some(Command::Reconcile(command)) => command.run(&settings),
        Some(Command::Reports(command)) => command.run(&settings),
        Some(Command::StripeEvents(command)) => command.run(&settings),
        Some(Command::Migrate(command)) => command.run(&settings),
        Some(Command::Copy(command)) => command.run(&settings),
        Some(Command::Backup(command)) => command.run(&settings),
        Some(Command::Restore(command)) => command.run(&settings),
        Some(Command::Pricing(command)) => command.run(&settings),
        Some(Command::DiscountCodes(command)) => command.run(&settings),
        Some(Command::Webhooks(command)) => command.run(&settings),
        Some(Command::Orders(command)) => command.run(&settings),
        Some(Command::SignIn(command)) => command.run(&settings),
    };
    output::exit_code(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    })
}

fn configuration_error(error: &crate::config::ConfigError) -> ExitCode {
    eprintln!("configuration error: {error}");
    ExitCode::from(2)
}

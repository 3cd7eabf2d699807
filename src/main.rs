//! The `sms-credit` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sms_credit::cli::Cli::parse();
    sms_credit::cli::run(cli)
}

//! `sms-credit reports credit`: the books of a month (UTC) or a period, as
//! `GET /v1/admin/reports/credit` answers them: for each category, the
//! opening balance, granted, consumed, expired, refunded and the closing
//! balance; for people, as JSON or as CSV.

use std::io::Write;

use clap::{Args, Subcommand};
use sms_credit_actors::books::{self, BookLine, CreditBooks, OpenBecause, Period};
use sms_credit_actors::clock::{format_rfc3339_ms, Clock, SystemClock};

use super::output::{counted, print_json, print_table, with_store, Align};
use crate::config::Settings;

#[derive(Subcommand, Debug)]
pub enum ReportsCommand {
    /// The books of a month (UTC) or a period: each category's (paid,
    /// promotional, owed) opening balance, credit granted, consumed,
    /// expired and refunded, and closing balance, exactly.
    Credit(CreditCommand),
}

#[derive(Args, Debug)]
pub struct CreditCommand {
    /// A calendar month in UTC: 2026-11 (in place of --from and --to).
    #[arg(long)]
    month: Option<String>,
    /// The period's start, included: RFC 3339 (2026-11-01T00:00:00Z) or a
    /// date (its midnight UTC).
    #[arg(long)]
    from: Option<String>,
    /// The period's end, not included (as --from).
    #[arg(long)]
    to: Option<String>,
    /// Print the books as JSON (the same as GET /v1/admin/reports/credit).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the books as CSV (the same as GET /v1/admin/reports/credit.csv).
    #[arg(long)]
    csv: bool,
}

impl ReportsCommand {
    pub fn run(self, settings: &Settings) -> Result<(), String> {
        match self {
            ReportsCommand::Credit(command) => command.run(settings),
        }
    }
}

impl CreditCommand {
    fn run(self, settings: &Settings) -> Result<(), String> {
        // The API's rules, checked before the database is opened.
        let period = Period::parse(
            self.from.as_deref(),
            self.to.as_deref(),
            self.month.as_deref(),
        )
        .map_err(|refused| format!("invalid period: {refused}"))?;
        let books = with_store(settings, |store| async move {
            store
                .reports()
                .credit_books(period, SystemClock.now_ms())
                .await
                .map_err(|error| error.to_string())
        })?;
        if self.json {
            return print_json(&books);
        }
        if self.csv {
            let mut out = std::io::stdout().lock();
            if let Err(error) = out
                .write_all(books::csv(&books).as_bytes())
                .and_then(|()| out.flush())
            {
                crate::cli::output::note_write_error(&error);
            }
            return Ok(());
        }
        print_books(&books);
        Ok(())
    }
}

/// The books for people: the period, whether it is closed, then a table
/// of the lines.
fn print_books(books: &CreditBooks) {
    say!(
        "credit from {} to {} (UTC; {} in the period)",
        format_rfc3339_ms(books.from_ms),
        format_rfc3339_ms(books.to_ms),
        counted(books.transactions_in_period, "ledger row", "ledger rows")
    );
    say!("{}", standing(books));
    let columns = [
        ("category", Align::Left),
        ("opening", Align::Right),
        ("granted", Align::Right),
        ("consumed", Align::Right),
        ("expired", Align::Right),
        ("refunded", Align::Right),
        ("closing", Align::Right),
    ];
    let line = |line: &BookLine| {
        [
            line.opening,
            line.granted,
            line.consumed,
            line.expired,
            line.refunded,
            line.closing,
        ]
        .iter()
        .fold(
            vec![line.category.as_str().to_string()],
            |mut cells, figure| {
                cells.push(figure.to_string());
                cells
            },
        )
    };
    let rows: Vec<Vec<String>> = books
        .categories
        .iter()
        .chain([&books.total])
        .map(line)
        .collect();
    print_table(&columns, &rows);
    say!("opening + granted - consumed - expired - refunded = closing; paid's closing is what customers have paid for and not yet used");
}

/// Whether the period is closed, for people: when the books were read, and
/// if the period is open, why (its closing balances are so far).
fn standing(books: &CreditBooks) -> String {
    let as_of = format_rfc3339_ms(books.as_of_ms);
    let why = match books.open_because {
        None => {
            return format!(
                "closed: read at {as_of}, nothing more can be dated in it (the servers' clocks in step; but for an expiry the sweep passed)"
            )
        }
        Some(OpenBecause::PeriodNotEnded) => "the period has not ended",
        Some(OpenBecause::Settling) => {
            "the period ended less than five minutes ago, and a row dated in it may still be committed"
        }
        Some(OpenBecause::ExpiriesNotSwept) => {
            "a server's expiry sweep has not yet passed every grant that expired in it, so their expiry rows may still be written"
        }
    };
    format!("open period, figures as of {as_of}: {why}; the closing balances are so far")
}

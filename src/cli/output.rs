//! What the commands share: opening the store or the core for one command,
//! and printing for people or as JSON.

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use sms_credit_actors::adapters::{self, IfMissing, StoreSettings};
use sms_credit_actors::clock::SystemClock;
use sms_credit_actors::store::{Store, StoreError};

use crate::config::Settings;
use crate::startup::Core;

/// Opens the store (no actors), runs `work`, and waits for its last commit.
/// A database that does not exist is refused, naming where it was looked
/// for, and none is made: a command that reads or changes what exists must
/// not answer from an empty database made by a mistyped path.
pub fn with_store<T, F, Fut>(settings: &Settings, work: F) -> Result<T, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    with_store_if(settings, IfMissing::Refuse, work)
}

/// As [`with_store`], making (and migrating) the database if there is
/// none: for the commands that create something.
pub fn with_store_creating<T, F, Fut>(settings: &Settings, work: F) -> Result<T, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    with_store_if(settings, IfMissing::Create, work)
}

/// As [`with_store`], doing what `if_missing` says where there is no database.
pub fn with_store_if<T, F, Fut>(
    settings: &Settings,
    if_missing: IfMissing,
    work: F,
) -> Result<T, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let store_settings = StoreSettings {
        if_missing,
        ..settings.database.store_settings()
    };
    actix_rt::System::new().block_on(async move {
        let store = adapters::open(&store_settings).map_err(opening_error)?;
        let outcome = work(store.clone()).await;
        store.flush().await.map_err(|error| error.to_string())?;
        outcome
    })
}

/// Why the store did not open, with what to do about a missing database.
pub fn opening_error(error: StoreError) -> String {
    match error {
        StoreError::Missing { .. } => format!(
            "{error} (check --database or SMS_CREDIT_DATABASE; `sms-credit migrate` makes an empty one)"
        ),
        other => other.to_string(),
    }
}

/// Starts the core on the database, runs `work`, and shuts the core down.
/// A database that does not exist is refused, as by [`with_store`].
pub fn with_core<F, Fut>(settings: &Settings, work: F) -> Result<(), String>
where
    F: FnOnce(Arc<Core>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut settings = settings.clone();
    settings.database.if_missing = IfMissing::Refuse;
    actix_rt::System::new().block_on(async move {
        let core = Arc::new(Core::start(&settings, Arc::new(SystemClock)).map_err(opening_error)?);
        let outcome = work(Arc::clone(&core)).await;
        if let Ok(core) = Arc::try_unwrap(core) {
            core.shutdown().await;
        }
        outcome
    })
}

/// Set once standard output's reader has gone (`| head`): what is printed
/// after is dropped, and the command carries on, so that what it does is
/// done and an error it meets is told on standard error all the same.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// A failure to write standard output other than its reader going away
/// (a full disk, say): told as an error once the command ends.
static STDOUT_FAILED: Mutex<Option<String>> = Mutex::new(None);

/// The exit code of a command whose reader went away, as a shell reports
/// a process ended by SIGPIPE (128 + 13).
const CLOSED_PIPE: u8 = 141;

/// Writes one line of a command's output (the `say!` macro): `println!`,
/// except that a closed or failing standard output never ends the command.
pub fn write_line(arguments: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{arguments}").and_then(|()| out.flush()) {
        note_write_error(&error);
    }
}

/// Notes why standard output could not be written.
pub fn note_write_error(error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        return;
    }
    let mut failed = STDOUT_FAILED.lock().unwrap_or_else(PoisonError::into_inner);
    failed.get_or_insert_with(|| error.to_string());
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
}

/// Whether standard output's reader has gone (nothing more need be written).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// How a command ends, its output considered: its own failure first (told
/// already), then a failure to write its output, then a closed pipe (quietly,
/// as other Unix tools end), else success.
pub fn exit_code(code: ExitCode) -> ExitCode {
    if code != ExitCode::SUCCESS {
        return code;
    }
    let failed = STDOUT_FAILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(error) = failed {
        eprintln!("error: could not write the output: {error}");
        return ExitCode::FAILURE;
    }
    if stdout_closed() {
        return ExitCode::from(CLOSED_PIPE);
    }
    code
}

/// Prints `value` as one line of JSON (for programs), or says why it
/// cannot.
pub fn print_json(value: &impl Serialize) -> Result<(), String> {
    let value = serde_json::to_value(value).map_err(|error| error.to_string())?;
    say!("{value}");
    Ok(())
}

/// How a column's cells line up.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    Right,
}

/// Prints a table for people: each column as wide as its widest cell (a
/// long phone, email, path or URL never pushes the others out of line),
/// two spaces between columns, the last one not padded.
pub fn print_table(columns: &[(&str, Align)], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|(name, _)| name.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let headers: Vec<String> = columns.iter().map(|(name, _)| name.to_string()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let last = row.len().saturating_sub(1);
        let cells: Vec<String> = row
            .iter()
            .zip(columns.iter().zip(&widths))
            .enumerate()
            .map(|(index, (cell, ((_, align), width)))| match align {
                Align::Right => format!("{cell:>width$}"),
                Align::Left if index == last => cell.clone(),
                Align::Left => format!("{cell:<width$}"),
            })
            .collect();
        say!("{}", cells.join("  ").trim_end());
    }
}

/// A count with its noun: `1 account`, `2 accounts`, `0 rows`.
pub fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

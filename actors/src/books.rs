//! The books: for a period, each category of credit's opening balance,
//! what was granted, consumed, expired and refunded, and its closing
//! balance, computed exactly from the ledger's rows and their funding. Pure
//! (no I/O): a store feeds every row made before the period's end
//! ([`Bookkeeper`]); the rules that place each row are here, so both stores
//! give the same answer.
//!
//! A row moves each category by the credit it made there less what it took
//! from that category's grants (`funded_by`; grant 0, what accounts owe, is
//! its own line, `owed`). Those moves sum to the row's amount, and each
//! lands in exactly one column, chosen by the row's kind:
//!
//! | row | column |
//! |---|---|
//! | `credit` | granted |
//! | `adjustment`, positive | granted |
//! | `adjustment`, negative | consumed |
//! | `debit` | consumed |
//! | `refund` without an order, positive (a message's cost given back) | consumed, negatively |
//! | `refund` with an order, or negative (a payment refunded or disputed, or credit given back for it) | refunded |
//! | `expiry` | expired |
//!
//! so `opening + granted − consumed − expired − refunded = closing` holds
//! for every line and every period, and the lines' closing balances sum to
//! the accounts' balances at the period's end. A row made before the
//! period counts in its opening.
//!
//! The books say when they were read (`as_of`) and whether the period is
//! closed then ([`OpenBecause`]): rows are dated when they are made, but
//! one dated a moment before the period's end may be committed a moment
//! after it, and an expiry row, dated when its grant expired, is written
//! by the sweep up to a round later. So a period is closed only once it
//! ended [`BOOKS_SETTLE_MS`] before `as_of` and the expiry sweep stood
//! past every grant that expired before its end, in the same moment of
//! the ledger the rows were read from; until then its closing balances
//! are what they are so far.

use serde::Serialize;

use crate::clock::{civil_from_days, days_from_civil, format_rfc3339_ms, parse_rfc3339_ms};
use crate::grants::{Category, Funding, SHORTFALL};
use crate::ledger::{AccountId, TransactionKind};
use crate::money::{Money, MoneyError};
use crate::store::error::{StoreError, UnknownValue};

const DAY_MS: i64 = 86_400_000;

/// How long after a period's end (by the reader's clock) its books may
/// still change by a row committed late: a row is dated by its writer's
/// clock when it is decided, so one dated just before the end may be
/// committed after it — moments later on a healthy store, later if a
/// commit stalls, and "later" by as much as the writer's clock is behind
/// the reader's. Five minutes: far more than the expiry sweep's margin for
/// a grant committed late
/// ([`crate::expiry_sweep::EXPIRY_SWEEP_SETTLE_MS`], 5 s), so that clocks
/// kept in step (NTP) and a stalled commit stay inside it. A reader whose
/// clock is ahead of the writers' by more, or a writer whose clock is
/// behind by more, can see a period closed that still changes: the
/// servers' clocks must be kept in step.
pub const BOOKS_SETTLE_MS: i64 = 5 * 60_000;

/// The moments a report covers: rows made at or after `from_ms` and before
/// `to_ms` (by their `created_at`, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Why a period was refused: said for the caller, as a sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PeriodRefused(pub String);

impl Period {
    /// A calendar month in UTC (`month` 1 to 12).
    pub fn month(year: i64, month: i64) -> Period {
        let next = if month == 12 {
            days_from_civil(year + 1, 1, 1)
        } else {
            days_from_civil(year, month + 1, 1)
        };
        Period {
            from_ms: days_from_civil(year, month, 1) * DAY_MS,
            to_ms: next * DAY_MS,
        }
    }

    /// The period a caller asked for, in the API's and the command line's
    /// words: `month` (`2026-11`, that calendar month in UTC), or both
    /// `from` and `to` (RFC 3339, or a date `2026-11-01` meaning its
    /// midnight UTC), `from` not after `to`.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        month: Option<&str>,
    ) -> Result<Period, PeriodRefused> {
        let refused = |message: &str| PeriodRefused(message.to_string());
        match (month, from, to) {
            (Some(month), None, None) => parse_month(month),
            (Some(_), _, _) => Err(refused(
                "give either month, or from and to: not both (month is that calendar month in UTC)",
            )),
            (None, Some(from), Some(to)) => {
                let from_ms = moment("from", from)?;
                let to_ms = moment("to", to)?;
                if from_ms > to_ms {
                    return Err(refused(&format!(
                        "from ({}) is after to ({}): the period starts at from and ends before to",
                        format_rfc3339_ms(from_ms),
                        format_rfc3339_ms(to_ms)
                    )));
                }
                Ok(Period { from_ms, to_ms })
            }
            (None, _, _) => Err(refused(
                "give the period: month (2026-11, a calendar month in UTC), or both from and to (2026-11-01T00:00:00Z)",
            )),
        }
    }

    /// The calendar month (UTC) the period is exactly, if it is one:
    /// `2026-11`.
    pub fn as_month(&self) -> Option<String> {
        if self.from_ms.rem_euclid(DAY_MS) != 0 {
            return None;
        }
        let (year, month, day) = civil_from_days(self.from_ms.div_euclid(DAY_MS));
        (day == 1 && Period::month(year, month) == *self).then(|| format!("{year:04}-{month:02}"))
    }

    /// A name for the period's files: the month (`2026-11`), or its two
    /// moments with nothing a file name may not hold
    /// (`20261101T000000Z-20261115T120000Z`).
    pub fn label(&self) -> String {
        self.as_month().unwrap_or_else(|| {
            let compact = |ms: i64| {
                format_rfc3339_ms(ms)
                    .replace(".000Z", "Z")
                    .replace(['-', ':'], "")
                    .replace('.', "_")
            };
            format!("{}-{}", compact(self.from_ms), compact(self.to_ms))
        })
    }
}

/// `2026-11`: that calendar month in UTC.
fn parse_month(text: &str) -> Result<Period, PeriodRefused> {
    let refused = || {
        PeriodRefused(format!(
            "month: '{text}' is not a month written YYYY-MM (2026-11)"
        ))
    };
    let (year, month) = text.split_once('-').ok_or_else(refused)?;
    let digits = |part: &str, length: usize| {
        (part.len() == length && part.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| part.parse::<i64>().ok())
            .flatten()
    };
    let (Some(year), Some(month)) = (digits(year, 4), digits(month, 2)) else {
        return Err(refused());
    };
    if !(1..=12).contains(&month) {
        return Err(refused());
    }
    if !(1970..=9999).contains(&year) || (year, month) == (9999, 12) {
        return Err(PeriodRefused(format!(
            "month: '{text}' is outside the months from 1970-01 to 9999-11"
        )));
    }
    Ok(Period::month(year, month))
}

/// The first moment after the periods the books are made for
/// (10000-01-01T00:00:00Z, which RFC 3339 cannot write).
const LAST_MOMENT_MS: i64 = 253_402_300_800_000;

/// A moment of a period: RFC 3339 to the millisecond (the ledger keeps
/// times in milliseconds, so a finer one would be cut), or a date alone,
/// its midnight UTC.
fn moment(name: &str, text: &str) -> Result<i64, PeriodRefused> {
    let refused = || {
        PeriodRefused(format!(
            "{name}: '{text}' is not a time (2026-11-01T00:00:00Z) or a date (2026-11-01)"
        ))
    };
    if text.len() == 10 {
        let at = parse_rfc3339_ms(&format!("{text}T00:00:00Z")).ok_or_else(refused)?;
        if !(0..LAST_MOMENT_MS).contains(&at) {
            return Err(PeriodRefused(format!(
                "{name}: '{text}' is outside the years 1970 to 9999"
            )));
        }
        return Ok(at);
    }
    let at = parse_rfc3339_ms(text).ok_or_else(refused)?;
    if !(0..LAST_MOMENT_MS).contains(&at) {
        return Err(PeriodRefused(format!(
            "{name}: '{text}' is outside the years 1970 to 9999"
        )));
    }
    // What comes after the milliseconds must be zeros: the parser keeps
    // three digits, and a bound cut short would move a row across it.
    if let Some(fraction) = text.get(20..) {
        let finer = fraction
            .bytes()
            .take_while(u8::is_ascii_digit)
            .skip(3)
            .any(|digit| digit != b'0');
        if text.as_bytes()[19] == b'.' && finer {
            return Err(PeriodRefused(format!(
                "{name}: '{text}' is finer than a millisecond, which the ledger's times are not"
            )));
        }
    }
    Ok(at)
}

/// A line of the books.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BookCategory {
    /// Credit customers paid for (a debt to them: deferred revenue).
    Paid,
    /// Credit given away.
    Promotional,
    /// What accounts owe (grant 0): zero or below.
    Owed,
    /// The three together: the ledger's own figures.
    Total,
}

impl BookCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            BookCategory::Paid => "paid",
            BookCategory::Promotional => "promotional",
            BookCategory::Owed => "owed",
            BookCategory::Total => "total",
        }
    }
}

/// The places of the lines in a row's moves and the running figures.
const PAID: usize = 0;
const PROMOTIONAL: usize = 1;
const OWED: usize = 2;

/// The line a grant of `category` is in (grant 0's is `owed`).
fn line_of(grant_id: i64, category: Category) -> usize {
    match (grant_id, category) {
        (SHORTFALL, _) => OWED,
        (_, Category::Paid) => PAID,
        (_, Category::Promotional) => PROMOTIONAL,
    }
}

/// One category's figures over the period, each in micro-dollars:
/// `opening + granted − consumed − expired − refunded = closing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BookLine {
    pub category: BookCategory,
    /// What the category held when the period began (the closing balance
    /// of everything before it).
    #[serde(rename = "opening_micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub opening: Money,
    /// Credit made: credits and positive adjustments (for `owed`, what
    /// paid credit paid down of what was owed).
    #[serde(rename = "granted_micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub granted: Money,
    /// Spent by messages and taken by negative adjustments, less the cost
    /// of messages given back (not sent, or refunded by the carrier).
    #[serde(rename = "consumed_micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub consumed: Money,
    /// What was left of grants when they expired (their expiry rows).
    #[serde(rename = "expired_micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub expired: Money,
    /// Taken back for payments refunded or disputed, less what was given
    /// back (a refund that failed, a dispute won).
    #[serde(rename = "refunded_micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub refunded: Money,
    /// What the category held when the period ended. For `paid`: what
    /// customers have paid for and not yet used.
    #[serde(rename = "closing_micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub closing: Money,
}

/// A line's running figures, summed wider than an amount (so that no
/// order of the rows can overflow a sum whose end is in range); each is
/// an exact amount again at the end, or the books are refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Running {
    opening: i128,
    granted: i128,
    consumed: i128,
    expired: i128,
    refunded: i128,
}

impl Running {
    fn line(self, category: BookCategory) -> Result<BookLine, BooksError> {
        let exact = |sum: i128| {
            i64::try_from(sum)
                .map(Money::from_micros)
                .map_err(|_| BooksError::Overflow)
        };
        let closing = self.opening + self.granted - self.consumed - self.expired - self.refunded;
        Ok(BookLine {
            category,
            opening: exact(self.opening)?,
            granted: exact(self.granted)?,
            consumed: exact(self.consumed)?,
            expired: exact(self.expired)?,
            refunded: exact(self.refunded)?,
            closing: exact(closing)?,
        })
    }

    fn plus(self, other: Running) -> Running {
        Running {
            opening: self.opening + other.opening,
            granted: self.granted + other.granted,
            consumed: self.consumed + other.consumed,
            expired: self.expired + other.expired,
            refunded: self.refunded + other.refunded,
        }
    }
}

/// Why a period's books are not final when they are read: its closing
/// balances are what they are so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OpenBecause {
    /// The period ends after `as_of`.
    PeriodNotEnded,
    /// It ended less than [`BOOKS_SETTLE_MS`] before `as_of`: a row dated
    /// within it may still be committed.
    Settling,
    /// The expiry sweep has not yet passed every grant that expired before
    /// the period's end: their expiry rows, dated within the period, may
    /// still be written.
    ExpiriesNotSwept,
}

impl OpenBecause {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenBecause::PeriodNotEnded => "period_not_ended",
            OpenBecause::Settling => "settling",
            OpenBecause::ExpiriesNotSwept => "expiries_not_swept",
        }
    }

    /// Why a period read at `as_of_ms` is still open, if it is: not ended,
    /// ended less than [`BOOKS_SETTLE_MS`] before, or with grants that
    /// expired before its end the sweep has not passed (`expiries_swept`,
    /// read in the moment of the ledger the books were).
    pub fn of(period: Period, as_of_ms: i64, expiries_swept: bool) -> Option<OpenBecause> {
        if period.to_ms > as_of_ms {
            Some(OpenBecause::PeriodNotEnded)
        } else if period.to_ms > as_of_ms.saturating_sub(BOOKS_SETTLE_MS) {
            Some(OpenBecause::Settling)
        } else if !expiries_swept {
            Some(OpenBecause::ExpiriesNotSwept)
        } else {
            None
        }
    }
}

/// The books of a period: `paid`, `promotional` and `owed`, and their
/// `total`, the ledger's own figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditBooks {
    /// The period's start (included).
    #[serde(rename = "from", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub from_ms: i64,
    /// The period's end (not included).
    #[serde(rename = "to", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub to_ms: i64,
    /// When the books were asked of the store (the server's clock): they
    /// hold every row committed by then.
    #[serde(rename = "as_of", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub as_of_ms: i64,
    /// Whether the period was closed at `as_of`: it ended five minutes or
    /// more before, and the expiry sweep had passed every grant that
    /// expired before its end, so no row can be added to it any more —
    /// provided the servers' clocks agree within those five minutes, and
    /// but for an expiry the sweep left (logged at ERROR) or a grant
    /// committed behind it, written later by the account's next change
    /// or the sweep's look back. Until then its closing balances are what
    /// they are so far.
    pub closed: bool,
    /// Why the period is not closed (`null` once it is).
    pub open_because: Option<OpenBecause>,
    /// `paid`, `promotional`, `owed`, in that order.
    pub categories: Vec<BookLine>,
    /// The categories summed: its closing is what every account's balance
    /// came to at the period's end.
    pub total: BookLine,
    /// The ledger rows made in the period.
    pub transactions_in_period: u64,
}

/// Why the books could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BooksError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row the books cannot place: its funding is missing or does not
    /// account for its amount, or an account's grants were never made.
    /// Never counted as zero.
    #[error("the books cannot be made: account {account_id}: {why} (run sms-credit verify)")]
    Unbookable { account_id: AccountId, why: String },
    /// A sum left the range of a 64-bit amount.
    #[error("the books cannot be made: a sum leaves the range of a 64-bit amount")]
    Overflow,
}

impl From<MoneyError> for BooksError {
    fn from(_: MoneyError) -> BooksError {
        BooksError::Overflow
    }
}

/// One ledger row as the books need it, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookRow {
    pub account_id: AccountId,
    pub seq: i64,
    /// The stored type, as text.
    pub kind: String,
    pub amount: i64,
    pub order_id: Option<i64>,
    pub created_at_ms: i64,
    /// The row's `funded_by`, as stored.
    pub funded_by: Option<String>,
    /// The grant the row made (the `credit_grants` row whose id is its
    /// seq): its amount and category, as stored.
    pub made: Option<(i64, String)>,
}

/// The column a row's moves land in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Granted,
    Consumed,
    Expired,
    Refunded,
}

/// Where a row of `kind` lands (see the module's table).
fn column(kind: TransactionKind, amount: i64, order_id: Option<i64>) -> Column {
    match kind {
        TransactionKind::Credit => Column::Granted,
        TransactionKind::Adjustment if amount > 0 => Column::Granted,
        TransactionKind::Adjustment | TransactionKind::Debit => Column::Consumed,
        TransactionKind::Refund if amount > 0 && order_id.is_none() => Column::Consumed,
        TransactionKind::Refund => Column::Refunded,
        TransactionKind::Expiry => Column::Expired,
    }
}

/// Makes the books from the rows a store feeds it: every ledger row made
/// before the period's end, and every account whose grants were never
/// made, in any order. What is wrong is kept, the first by (account, row)
/// whatever the order, so that every store says the same.
#[derive(Debug)]
pub struct Bookkeeper {
    period: Period,
    /// When the books were asked for.
    as_of_ms: i64,
    /// Whether the expiry sweep stands past every grant that expired
    /// before the period's end (until told otherwise).
    expiries_swept: bool,
    lines: [Running; 3],
    transactions_in_period: u64,
    /// The first problem by (account, seq); an account's own (its grants
    /// never made) at seq 0.
    problem: Option<((i64, i64), BooksError)>,
}

impl Bookkeeper {
    /// The books of `period`, asked for at `as_of_ms`.
    pub fn new(period: Period, as_of_ms: i64) -> Bookkeeper {
        Bookkeeper {
            period,
            as_of_ms,
            expiries_swept: true,
            lines: [Running::default(); 3],
            transactions_in_period: 0,
            problem: None,
        }
    }

    fn keep(&mut self, at: (i64, i64), problem: BooksError) {
        if self.problem.as_ref().is_none_or(|(first, _)| at < *first) {
            self.problem = Some((at, problem));
        }
    }

    /// An account whose grants were never made (`account_balances.grants`
    /// NULL: the backfill has not run): its rows' funding is not there, so
    /// there are no books.
    pub fn grants_not_made(&mut self, account_id: AccountId) {
        self.keep(
            (account_id.0, 0),
            BooksError::Unbookable {
                account_id,
                why: "its credit grants were never made, so its rows say nothing of their grants (run sms-credit migrate)".to_string(),
            },
        );
    }

    /// A grant that expired before the period's end is still ahead of
    /// where the expiry sweep stands (read in the moment of the ledger the
    /// rows are read from): its expiry row may yet be written into the
    /// period, which is therefore not closed.
    pub fn expiries_not_swept(&mut self) {
        self.expiries_swept = false;
    }

    /// Places one row: in the opening if it was made before the period,
    /// in its column if within it (a row made at or after the end is not
    /// one the store should feed, and is a problem).
    pub fn row(&mut self, row: BookRow) {
        let at = (row.account_id.0, row.seq);
        if let Err(problem) = self.place(&row) {
            self.keep(at, problem);
        }
    }

    fn place(&mut self, row: &BookRow) -> Result<(), BooksError> {
        let place = format!("account {} seq {}", row.account_id, row.seq);
        let kind = TransactionKind::parse(&row.kind).ok_or_else(|| {
            StoreError::UnknownValue(UnknownValue::new(
                "transactions",
                &place,
                "type",
                row.kind.clone(),
            ))
        })?;
        if row.created_at_ms >= self.period.to_ms {
            return Err(BooksError::Unbookable {
                account_id: row.account_id,
                why: format!("row #{} was made after the period's end", row.seq),
            });
        }
        let moves = moves(row, kind, &place)?;
        if row.created_at_ms < self.period.from_ms {
            for (line, amount) in self.lines.iter_mut().zip(moves) {
                line.opening += i128::from(amount.micros());
            }
            return Ok(());
        }
        self.transactions_in_period += 1;
        let column = column(kind, row.amount, row.order_id);
        for (line, amount) in self.lines.iter_mut().zip(moves) {
            let amount = i128::from(amount.micros());
            match column {
                Column::Granted => line.granted += amount,
                Column::Consumed => line.consumed -= amount,
                Column::Expired => line.expired -= amount,
                Column::Refunded => line.refunded -= amount,
            }
        }
        Ok(())
    }

    /// The books, once every row is in; or the first problem met.
    pub fn finish(self) -> Result<CreditBooks, BooksError> {
        if let Some((_, problem)) = self.problem {
            return Err(problem);
        }
        let (paid, promotional, owed) =
            (self.lines[PAID], self.lines[PROMOTIONAL], self.lines[OWED]);
        let total = paid.plus(promotional).plus(owed);
        let open_because = OpenBecause::of(self.period, self.as_of_ms, self.expiries_swept);
        Ok(CreditBooks {
            from_ms: self.period.from_ms,
            to_ms: self.period.to_ms,
            as_of_ms: self.as_of_ms,
            closed: open_because.is_none(),
            open_because,
            categories: vec![
                paid.line(BookCategory::Paid)?,
                promotional.line(BookCategory::Promotional)?,
                owed.line(BookCategory::Owed)?,
            ],
            total: total.line(BookCategory::Total)?,
            transactions_in_period: self.transactions_in_period,
        })
    }
}

/// What a row moved each line by (`paid`, `promotional`, `owed`): the
/// credit it made in its grant's category, less what it took from each
/// grant. Its amount must be the credit it made less what it took, and
/// the credit it made a recorded grant's: a row whose funding is missing
/// or short is refused, never read as having taken nothing.
fn moves(row: &BookRow, kind: TransactionKind, place: &str) -> Result<[Money; 3], BooksError> {
    let unbookable = |why: String| BooksError::Unbookable {
        account_id: row.account_id,
        why: format!(
            "row #{} ({} of {}) {why}",
            row.seq,
            kind.with_article(),
            Money::from_micros(row.amount)
        ),
    };
    let funding = match &row.funded_by {
        None => Funding::NONE,
        Some(text) => Funding::decode(text).map_err(|_| {
            StoreError::UnknownValue(UnknownValue::new(
                "transactions",
                place,
                "funded_by",
                text.clone(),
            ))
        })?,
    };
    let funded = funding.total()?;
    let made = Money::from_micros(row.amount).checked_add(funded)?;
    let mut moves = [Money::ZERO; 3];
    match &row.made {
        None if made.is_zero() => {}
        None if made.is_negative() => {
            return Err(unbookable(format!(
                "says it took {funded} from grants, which does not account for its amount: its funding is missing or short"
            )))
        }
        None => {
            return Err(unbookable(format!(
                "made {made} of credit by its funding, but no grant of it is recorded"
            )))
        }
        Some((amount, category)) => {
            if *amount != made.micros() {
                return Err(unbookable(format!(
                    "made a grant of {}, but its amount less what it took from grants is {made}",
                    Money::from_micros(*amount)
                )));
            }
            let category = Category::parse(category).ok_or_else(|| {
                StoreError::UnknownValue(UnknownValue::new(
                    "credit_grants",
                    format!("account {} id {}", row.account_id, row.seq),
                    "category",
                    category.clone(),
                ))
            })?;
            moves[line_of(row.seq, category)] = made;
        }
    }
    for draw in funding.draws() {
        let line = line_of(draw.grant_id, draw.category);
        moves[line] = moves[line].checked_sub(draw.amount)?;
    }
    Ok(moves)
}

/// The CSV's header: one line per category after it, `paid`,
/// `promotional`, `owed`, `total`. When the books were read and whether
/// the period was closed then are the last columns, on every line (as the
/// period is), so that the figures' columns stay where they were and the
/// file stays a plain table.
pub const CSV_HEADER: &str = "from,to,category,opening_micros,opening,granted_micros,granted,consumed_micros,consumed,expired_micros,expired,refunded_micros,refunded,closing_micros,closing,as_of,closed,open_because\r\n";

/// The books as CSV (RFC 4180): each figure in micro-dollars and in
/// dollars, exactly; then `as_of`, `closed` (`true` or `false`) and
/// `open_because` (empty once closed).
pub fn csv(books: &CreditBooks) -> String {
    let mut csv = String::from(CSV_HEADER);
    let from = format_rfc3339_ms(books.from_ms);
    let to = format_rfc3339_ms(books.to_ms);
    let standing = format!(
        ",{},{},{}",
        format_rfc3339_ms(books.as_of_ms),
        books.closed,
        books.open_because.map_or("", OpenBecause::as_str)
    );
    for line in books.categories.iter().chain([&books.total]) {
        csv.push_str(&format!("{from},{to},{}", line.category.as_str()));
        for figure in [
            line.opening,
            line.granted,
            line.consumed,
            line.expired,
            line.refunded,
            line.closing,
        ] {
            csv.push_str(&format!(
                ",{},{}",
                figure.micros(),
                crate::export::decimal(figure)
            ));
        }
        csv.push_str(&standing);
        csv.push_str("\r\n");
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: i64 = 1_000;
    const TO: i64 = 2_000;
    /// Long after the period: closed.
    const AS_OF: i64 = TO + BOOKS_SETTLE_MS;

    fn row(
        seq: i64,
        kind: &str,
        amount: i64,
        at: i64,
        funded_by: Option<&str>,
        made: Option<(i64, &str)>,
    ) -> BookRow {
        BookRow {
            account_id: AccountId(1),
            seq,
            kind: kind.to_string(),
            amount,
            order_id: None,
            created_at_ms: at,
            funded_by: funded_by.map(str::to_string),
            made: made.map(|(amount, category)| (amount, category.to_string())),
        }
    }

    fn with_order(mut row: BookRow, order_id: i64) -> BookRow {
        row.order_id = Some(order_id);
        row
    }

    /// (opening, granted, consumed, expired, refunded, closing) of a line.
    fn figures(line: &BookLine) -> [i64; 6] {
        [
            line.opening.micros(),
            line.granted.micros(),
            line.consumed.micros(),
            line.expired.micros(),
            line.refunded.micros(),
            line.closing.micros(),
        ]
    }

    fn books(rows: Vec<BookRow>) -> Result<CreditBooks, BooksError> {
        let mut keeper = Bookkeeper::new(
            Period {
                from_ms: FROM,
                to_ms: TO,
            },
            AS_OF,
        );
        for row in rows {
            keeper.row(row);
        }
        keeper.finish()
    }

    #[test]
    fn every_kind_lands_in_one_column_per_category_and_the_lines_reconcile() {
        let rows = vec![
            // Before the period: $10 paid, $3 promotional, $1 spent from it.
            row(
                1,
                "credit",
                10_000_000,
                10,
                None,
                Some((10_000_000, "paid")),
            ),
            row(
                2,
                "adjustment",
                3_000_000,
                20,
                None,
                Some((3_000_000, "promotional")),
            ),
            row(3, "debit", -1_000_000, 30, Some("2:r:1000000"), None),
            // Within: a message split across both, its cost given back.
            row(
                4,
                "debit",
                -2_500_000,
                FROM,
                Some("2:r:2000000;1:p:500000"),
                None,
            ),
            row(
                5,
                "refund",
                2_500_000,
                1_100,
                Some("1:p:-500000;2:r:-2000000"),
                None,
            ),
            // A refund of the paid order beyond what is left: owed.
            with_order(
                row(
                    6,
                    "refund",
                    -12_000_000,
                    1_200,
                    Some("1:p:10000000;0:p:2000000"),
                    None,
                ),
                9,
            ),
            // A dispute won gives $1 back: what is owed first.
            with_order(
                row(7, "refund", 1_000_000, 1_300, Some("0:p:-1000000"), None),
                9,
            ),
            // Paid credit pays down the rest of what is owed.
            row(
                8,
                "credit",
                5_000_000,
                1_400,
                Some("8:p:1000000;0:p:-1000000"),
                Some((5_000_000, "paid")),
            ),
            // The promotional credit left expires.
            row(9, "expiry", -2_000_000, 1_500, Some("2:r:2000000"), None),
            // A negative adjustment beyond the credit left.
            row(
                10,
                "adjustment",
                -6_000_000,
                1_600,
                Some("8:p:4000000;0:p:2000000"),
                None,
            ),
            // After the period: not fed, refused if it were.
        ];
        let ledger_sum: i64 = rows.iter().map(|row| row.amount).sum();
        let books = books(rows).unwrap();
        assert_eq!(books.transactions_in_period, 7);
        let [paid, promotional, owed] = [
            &books.categories[0],
            &books.categories[1],
            &books.categories[2],
        ];
        assert_eq!(
            (
                paid.category,
                promotional.category,
                owed.category,
                books.total.category
            ),
            (
                BookCategory::Paid,
                BookCategory::Promotional,
                BookCategory::Owed,
                BookCategory::Total
            )
        );
        // paid: 10 opening; granted 5 − 1 paid down; consumed 0.5 − 0.5
        // given back + 4; refunded 10.
        assert_eq!(
            figures(paid),
            [10_000_000, 4_000_000, 4_000_000, 0, 10_000_000, 0]
        );
        // promotional: 2 opening; consumed 2 − 2 given back; expired 2.
        assert_eq!(figures(promotional), [2_000_000, 0, 0, 2_000_000, 0, 0]);
        // owed: refunded 2 − 1 given back; granted 1 (paid down);
        // consumed 2 (the adjustment).
        assert_eq!(
            figures(owed),
            [0, 1_000_000, 2_000_000, 0, 1_000_000, -2_000_000]
        );
        assert_eq!(
            figures(&books.total),
            [12_000_000, 5_000_000, 6_000_000, 2_000_000, 11_000_000, -2_000_000]
        );
        for line in books.categories.iter().chain([&books.total]) {
            assert_eq!(
                line.opening.micros() + line.granted.micros()
                    - line.consumed.micros()
                    - line.expired.micros()
                    - line.refunded.micros(),
                line.closing.micros(),
                "{line:?}"
            );
        }
        // The total is the ledger: the rows' amounts.
        assert_eq!(books.total.closing.micros(), ledger_sum);
        assert_eq!(ledger_sum, -2_000_000);
    }

    #[test]
    fn a_row_whose_funding_is_missing_or_short_is_refused_never_counted_as_nothing() {
        let credit = || row(1, "credit", 1_000_000, 10, None, Some((1_000_000, "paid")));
        for (bad, says) in [
            // A debit with no funding (an earlier release's, written after
            // the upgrade).
            (
                row(2, "debit", -250_000, 20, None, None),
                "does not account for its amount",
            ),
            (
                row(2, "debit", -250_000, 20, Some("1:p:200000"), None),
                "does not account for its amount",
            ),
            // Credit made with no grant recorded.
            (
                row(2, "credit", 500_000, 20, None, None),
                "no grant of it is recorded",
            ),
            // A grant recorded of another amount.
            (
                row(2, "credit", 500_000, 20, None, Some((400_000, "paid"))),
                "made a grant of $0.40",
            ),
            (
                row(
                    2,
                    "debit",
                    -250_000,
                    20,
                    Some("1:p:250000"),
                    Some((1, "paid")),
                ),
                "made a grant of $0.000001",
            ),
        ] {
            let answer = books(vec![credit(), bad.clone()]);
            match answer {
                Err(BooksError::Unbookable { account_id, why }) => {
                    assert_eq!(account_id, AccountId(1));
                    assert!(why.contains("row #2") && why.contains(says), "{why}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Stored values this release does not know are unknown values.
        for (bad, column) in [
            (row(2, "gift", 1, 20, None, None), "type"),
            (row(2, "debit", -1, 20, Some("1:x:1"), None), "funded_by"),
            (row(2, "credit", 1, 20, None, Some((1, "gift"))), "category"),
        ] {
            match books(vec![credit(), bad]) {
                Err(BooksError::Store(StoreError::UnknownValue(unknown))) => {
                    assert_eq!(unknown.column, column);
                }
                other => panic!("{column}: {other:?}"),
            }
        }
        // Whatever order a store feeds them in, the first problem by
        // (account, row) is the one told.
        let short = |seq: i64| row(seq, "debit", -1, 20, None, None);
        let mut other_account = short(1);
        other_account.account_id = AccountId(2);
        for order in [
            vec![short(5), other_account.clone(), short(3)],
            vec![other_account, short(3), short(5)],
        ] {
            match books(order) {
                Err(BooksError::Unbookable { account_id, why }) => {
                    assert_eq!(account_id, AccountId(1));
                    assert!(why.starts_with("row #3 "), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        let mut keeper = Bookkeeper::new(
            Period {
                from_ms: FROM,
                to_ms: TO,
            },
            AS_OF,
        );
        keeper.row(short(1));
        keeper.grants_not_made(AccountId(1));
        assert!(matches!(
            keeper.finish(),
            Err(BooksError::Unbookable { why, .. }) if why.contains("never made")
        ));
        assert!(matches!(
            books(vec![row(1, "credit", 1, TO, None, Some((1, "paid")))]),
            Err(BooksError::Unbookable { .. })
        ));
        assert!(matches!(
            books(vec![
                row(1, "credit", i64::MAX, 10, None, Some((i64::MAX, "paid"))),
                row(1, "credit", i64::MAX, 10, None, Some((i64::MAX, "paid"))),
            ]),
            Err(BooksError::Overflow)
        ));
    }

    #[test]
    fn a_period_is_a_month_or_two_moments_and_anything_else_is_refused() {
        assert_eq!(
            Period::parse(None, None, Some("2026-11")),
            Ok(Period {
                from_ms: 1_793_491_200_000,
                to_ms: 1_796_083_200_000
            })
        );
        assert_eq!(
            Period::parse(None, None, Some("2026-12")).map(|period| period.to_ms),
            Ok(1_798_761_600_000),
            "December ends with the next year"
        );
        assert_eq!(
            Period::parse(Some("2026-11-01"), Some("2026-12-01T00:00:00Z"), None),
            Period::parse(None, None, Some("2026-11"))
        );
        assert_eq!(
            Period::parse(
                Some("2026-11-01T00:00:00.250+01:00"),
                Some("2026-11-01T00:00:00.250000+01:00"),
                None
            ),
            Ok(Period {
                from_ms: 1_793_487_600_250,
                to_ms: 1_793_487_600_250
            }),
            "an empty period is one"
        );
        for (from, to, month, says) in [
            (None, None, None, "give the period"),
            (Some("2026-11-01"), None, None, "give the period"),
            (None, Some("2026-11-01"), None, "give the period"),
            (
                Some("2026-11-01"),
                Some("2026-12-01"),
                Some("2026-11"),
                "not both",
            ),
            (None, None, Some("2026-13"), "YYYY-MM"),
            (None, None, Some("2026-1"), "YYYY-MM"),
            (None, None, Some("26-11"), "YYYY-MM"),
            (None, None, Some("2026-11-01"), "YYYY-MM"),
            (Some("2026-12-01"), Some("2026-11-01"), None, "is after to"),
            (
                Some("yesterday"),
                Some("2026-11-01"),
                None,
                "from: 'yesterday'",
            ),
            (
                Some("2026-11-01"),
                Some("2026-11-31"),
                None,
                "to: '2026-11-31'",
            ),
            (
                Some("2026-11-01T00:00:00.0001Z"),
                Some("2026-12-01"),
                None,
                "finer than a millisecond",
            ),
        ] {
            match Period::parse(from, to, month) {
                Err(PeriodRefused(message)) => assert!(message.contains(says), "{message}"),
                Ok(period) => panic!("{from:?} {to:?} {month:?}: {period:?}"),
            }
        }
    }

    #[test]
    fn a_period_is_named_by_its_month_or_its_moments() {
        let november = Period::parse(None, None, Some("2026-11")).unwrap();
        assert_eq!(november.as_month(), Some("2026-11".to_string()));
        assert_eq!(november.label(), "2026-11");
        let part = Period::parse(Some("2026-11-01"), Some("2026-11-15T12:00:00.5Z"), None).unwrap();
        assert_eq!(part.as_month(), None);
        assert_eq!(part.label(), "20261101T000000Z-20261115T120000_500Z");
    }

    #[test]
    fn a_period_is_closed_only_once_settled_and_swept() {
        let period = Period {
            from_ms: FROM,
            to_ms: TO,
        };
        for (as_of, swept, open) in [
            (TO - 1, true, Some(OpenBecause::PeriodNotEnded)),
            (TO - 1, false, Some(OpenBecause::PeriodNotEnded)),
            (TO, true, Some(OpenBecause::Settling)),
            (TO + BOOKS_SETTLE_MS - 1, true, Some(OpenBecause::Settling)),
            (TO + BOOKS_SETTLE_MS - 1, false, Some(OpenBecause::Settling)),
            (TO + BOOKS_SETTLE_MS, true, None),
            (
                TO + BOOKS_SETTLE_MS,
                false,
                Some(OpenBecause::ExpiriesNotSwept),
            ),
            (i64::MIN, true, Some(OpenBecause::PeriodNotEnded)),
        ] {
            assert_eq!(
                OpenBecause::of(period, as_of, swept),
                open,
                "{as_of} {swept}"
            );
        }
        let mut keeper = Bookkeeper::new(period, AS_OF);
        keeper.expiries_not_swept();
        let books = keeper.finish().unwrap();
        assert_eq!(
            (books.as_of_ms, books.closed, books.open_because),
            (AS_OF, false, Some(OpenBecause::ExpiriesNotSwept))
        );
        let books = Bookkeeper::new(period, AS_OF).finish().unwrap();
        assert_eq!((books.closed, books.open_because), (true, None));
    }

    #[test]
    fn the_csv_says_the_same_figures_exactly() {
        let books = books(vec![
            row(
                1,
                "credit",
                10_000_000,
                FROM,
                None,
                Some((10_000_000, "paid")),
            ),
            row(2, "debit", -56_500, FROM + 1, Some("1:p:56500"), None),
        ])
        .unwrap();
        let csv = csv(&books);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER.trim_end());
        assert_eq!(
            lines[1],
            "1970-01-01T00:00:01.000Z,1970-01-01T00:00:02.000Z,paid,0,0.00,10000000,10.00,56500,0.0565,0,0.00,0,0.00,9943500,9.9435,1970-01-01T00:05:02.000Z,true,"
        );
        let open = CreditBooks {
            closed: false,
            open_because: Some(OpenBecause::ExpiriesNotSwept),
            ..books.clone()
        };
        assert!(super::csv(&open)
            .split("\r\n")
            .skip(1)
            .filter(|line| !line.is_empty())
            .all(|line| line.ends_with(",1970-01-01T00:05:02.000Z,false,expiries_not_swept")));
        assert!(lines[2]
            .starts_with("1970-01-01T00:00:01.000Z,1970-01-01T00:00:02.000Z,promotional,0,0.00,"));
        assert!(lines[3].contains(",owed,"));
        assert!(lines[4].contains(",total,0,0.00,10000000,10.00,56500,0.0565,"));
        assert_eq!(lines[5], "", "every line ends with CRLF");
        assert_eq!(lines.len(), 6);
    }
}

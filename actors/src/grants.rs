//! Credit grants: where each micro-dollar of a balance came from, and the
//! rules that decide which grants a ledger row takes from or gives back to.
//! Pure (no I/O): the account actor decides every row's funding with them,
//! and the backfill replays an earlier release's ledger through the same.
//!
//! A grant is named within its account by the `seq` of the ledger row that
//! made it. Grant 0, the shortfall, is every account's own: it holds what the
//! account owes when a take-back or a negative adjustment exceeds all its
//! credit, so its remaining is never above zero. The remaining credit of
//! every grant sums to the balance, and a row's amount is the credit it
//! made less what it took from grants (`funded_by`: positive taken, negative
//! given back).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::money::{Money, MoneyError};

/// The id of grant 0, the shortfall.
pub const SHORTFALL: i64 = 0;

/// Appends `value` in decimal: the stored forms are written on every
/// ledger write, and this is several times cheaper than `write!`.
fn push_i64(text: &mut String, value: i64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        text.push('-');
    }
    for digit in &digits[at..] {
        text.push(char::from(*digit));
    }
}

/// Whether the customer paid for a grant's credit (a debt to them, and in
/// the books deferred revenue) or was given it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Paid,
    Promotional,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Paid => "paid",
            Category::Promotional => "promotional",
        }
    }

    pub fn parse(text: &str) -> Option<Category> {
        match text {
            "paid" => Some(Category::Paid),
            "promotional" => Some(Category::Promotional),
            _ => None,
        }
    }

    /// The letter a row's stored `funded_by` uses: `p` paid, `r`
    /// promotional (a reward; `p` was taken).
    pub fn letter(self) -> char {
        match self {
            Category::Paid => 'p',
            Category::Promotional => 'r',
        }
    }

    pub fn from_letter(letter: &str) -> Option<Category> {
        match letter {
            "p" => Some(Category::Paid),
            "r" => Some(Category::Promotional),
            _ => None,
        }
    }

    /// Promotional credit is spent before paid credit of the same priority.
    fn spending_rank(self) -> u8 {
        match self {
            Category::Promotional => 0,
            Category::Paid => 1,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What made a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    /// The credit included with access.
    Access,
    /// A top-up paid on a Checkout page.
    TopUp,
    /// `BUY` by SMS, charged to the saved card.
    Buy,
    /// An auto top-up.
    AutoTopUp,
    /// An administrator's positive adjustment.
    Adjustment,
    /// Credit given back with nothing to return it to (a refund of a
    /// message whose debit is not in the ledger).
    GiveBack,
    /// A credit of an earlier release whose source the backfill could not
    /// tell (one without an order).
    Migration,
    /// Grant 0: what the account owes.
    Shortfall,
}

impl GrantSource {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Access => "access",
            GrantSource::TopUp => "top_up",
            GrantSource::Buy => "buy",
            GrantSource::AutoTopUp => "auto_top_up",
            GrantSource::Adjustment => "adjustment",
            GrantSource::GiveBack => "give_back",
            GrantSource::Migration => "migration",
            GrantSource::Shortfall => "shortfall",
        }
    }

    pub fn parse(text: &str) -> Option<GrantSource> {
        match text {
            "access" => Some(GrantSource::Access),
            "top_up" => Some(GrantSource::TopUp),
            "buy" => Some(GrantSource::Buy),
            "auto_top_up" => Some(GrantSource::AutoTopUp),
            "adjustment" => Some(GrantSource::Adjustment),
            "give_back" => Some(GrantSource::GiveBack),
            "migration" => Some(GrantSource::Migration),
            "shortfall" => Some(GrantSource::Shortfall),
            _ => None,
        }
    }
}

impl fmt::Display for GrantSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A grant's priority: 0 to 100, lower spent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Priority(u8);

impl Priority {
    pub const DEFAULT: Priority = Priority(50);
    pub const MAX: u8 = 100;

    pub fn new(value: i64) -> Result<Priority, GrantError> {
        u8::try_from(value)
            .ok()
            .filter(|value| *value <= Priority::MAX)
            .map(Priority)
            .ok_or(GrantError::Priority(value))
    }

    pub fn value(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Priority {
        Priority::DEFAULT
    }
}

/// What a grant is made with, beside its amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantTerms {
    pub category: Category,
    pub priority: Priority,
    /// Unix milliseconds; none never expires.
    pub expires_at_ms: Option<i64>,
}

impl GrantTerms {
    /// Credit bought through Stripe: paid, the default priority, no expiry.
    pub const PAID: GrantTerms = GrantTerms {
        category: Category::Paid,
        priority: Priority::DEFAULT,
        expires_at_ms: None,
    };
}

/// A grant's lasting facts (a `credit_grants` row): what made it, of what,
/// on what terms. What is left of it lives with the account's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditGrant {
    /// The `seq` of the ledger row that made it.
    pub id: i64,
    pub category: Category,
    pub source: GrantSource,
    pub order_id: Option<i64>,
    pub amount: Money,
    pub priority: Priority,
    pub granted_at_ms: i64,
    pub expires_at_ms: Option<i64>,
}

impl CreditGrant {
    fn live(&self, remaining: Money) -> LiveGrant {
        LiveGrant {
            id: self.id,
            category: self.category,
            priority: self.priority,
            expires_at_ms: self.expires_at_ms,
            order_id: self.order_id,
            remaining,
        }
    }
}

/// What a ledger row took from one grant (positive) or gave back to it
/// (negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Draw {
    pub grant_id: i64,
    pub category: Category,
    #[serde(rename = "amount_micros")]
    pub amount: Money,
}

/// A row's `funded_by`: the grants it took from or gave back to, one draw
/// per grant. Empty for a row that touches no grant (a credit with no
/// shortfall to pay down). One pointer (nothing allocated when empty),
/// shared by its clones: every ledger write, receipt and feed message
/// carries a row, and a charge's answer a receipt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Funding(Option<std::sync::Arc<Vec<Draw>>>);

impl Serialize for Funding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.draws().serialize(serializer)
    }
}

/// A funding being decided: each grant once, in the order first met.
#[derive(Default)]
struct Draws(Vec<Draw>);

impl Draws {
    /// Adds `amount` to the draw of `grant_id` (making one if there is
    /// none); a draw that comes to zero is dropped.
    fn add(&mut self, grant_id: i64, category: Category, amount: Money) -> Result<(), GrantError> {
        if amount.is_zero() {
            return Ok(());
        }
        match self.0.iter().position(|draw| draw.grant_id == grant_id) {
            Some(index) => {
                let sum = self.0[index].amount.checked_add(amount)?;
                if sum.is_zero() {
                    self.0.remove(index);
                } else {
                    self.0[index].amount = sum;
                }
            }
            None => self.0.push(Draw {
                grant_id,
                category,
                amount,
            }),
        }
        Ok(())
    }

    fn finish(self) -> Funding {
        Funding::new(self.0)
    }
}

/// Why grants could not be decided or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the account's grants hold {available} that a debit may use, less than the {needed} it needs")]
    Insufficient { available: Money, needed: Money },
    #[error("grant {0} is not known")]
    UnknownGrant(i64),
    #[error("a priority is 0 to 100, not {0}")]
    Priority(i64),
    #[error("an amount of the account's grants leaves the range of a 64-bit amount")]
    Overflow,
    /// Stored text this release cannot read: never read as some default.
    #[error("{0}")]
    Malformed(String),
    /// Applying a decision would leave a grant with less than nothing, or
    /// the shortfall above zero: a decision these rules never make.
    #[error("grant {0} would be left out of its range")]
    OutOfRange(i64),
}

impl From<MoneyError> for GrantError {
    fn from(_: MoneyError) -> GrantError {
        GrantError::Overflow
    }
}

impl Funding {
    pub const NONE: Funding = Funding(None);

    pub fn new(draws: Vec<Draw>) -> Funding {
        Funding((!draws.is_empty()).then(|| std::sync::Arc::new(draws)))
    }

    pub fn draws(&self) -> &[Draw] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// What the row took from grants in all (negative: gave back).
    pub fn total(&self) -> Result<Money, MoneyError> {
        self.draws()
            .iter()
            .try_fold(Money::ZERO, |sum, draw| sum.checked_add(draw.amount))
    }

    /// The stored form, `12:p:5000000;15:r:-1000000`; `None` when empty.
    pub fn encode(&self) -> Option<String> {
        let draws = self.draws();
        if draws.is_empty() {
            return None;
        }
        let mut text = String::with_capacity(24 * draws.len());
        for (index, draw) in draws.iter().enumerate() {
            if index > 0 {
                text.push(';');
            }
            push_i64(&mut text, draw.grant_id);
            text.push(':');
            text.push(draw.category.letter());
            text.push(':');
            push_i64(&mut text, draw.amount.micros());
        }
        Some(text)
    }

    /// Reads the stored form back; anything this release did not write
    /// (an unknown letter, a zero or missing amount, a grant twice) is an
    /// error.
    pub fn decode(text: &str) -> Result<Funding, GrantError> {
        let malformed = |why: &str| GrantError::Malformed(format!("funded_by {text:?}: {why}"));
        if text.is_empty() {
            return Err(malformed("empty (no funding is stored as nothing)"));
        }
        let mut draws: Vec<Draw> = Vec::new();
        for part in text.split(';') {
            let mut fields = part.split(':');
            let (Some(id), Some(letter), Some(amount), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed("each part is grant:letter:micros"));
            };
            let grant_id: i64 = stored_number(id)
                .filter(|id| *id >= 0)
                .ok_or_else(|| malformed("a grant id is a whole number"))?;
            let category = Category::from_letter(letter).ok_or_else(|| {
                malformed(&format!("unknown category letter {letter:?} (p or r)"))
            })?;
            let amount: i64 = stored_number(amount)
                .filter(|amount| *amount != 0)
                .ok_or_else(|| malformed("an amount is whole, non-zero micro-dollars"))?;
            if grant_id == SHORTFALL && category != Category::Paid {
                return Err(malformed("grant 0 is paid"));
            }
            if draws.iter().any(|draw| draw.grant_id == grant_id) {
                return Err(malformed("a grant appears twice"));
            }
            draws.push(Draw {
                grant_id,
                category,
                amount: Money::from_micros(amount),
            });
        }
        Ok(Funding::new(draws))
    }

    /// The net of several rows' funding, per grant, in the order grants
    /// were first met.
    pub fn net<'a>(fundings: impl IntoIterator<Item = &'a Funding>) -> Result<Funding, GrantError> {
        let mut net = Draws::default();
        for funding in fundings {
            for draw in funding.draws() {
                net.add(draw.grant_id, draw.category, draw.amount)?;
            }
        }
        Ok(net.finish())
    }
}

/// What is left of one grant, as the snapshot stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remaining {
    pub grant_id: i64,
    pub amount: Money,
}

/// The snapshot's `grants`: `0:-500000,12:3400000`, ids ascending, only
/// grants with something left (or, grant 0, owed).
pub fn encode_remaining(remaining: &[Remaining]) -> String {
    let mut text = String::with_capacity(20 * remaining.len());
    for (index, grant) in remaining.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        push_i64(&mut text, grant.grant_id);
        text.push(':');
        push_i64(&mut text, grant.amount.micros());
    }
    text
}

/// A number as this release writes it (`push_i64`): digits with a `-` for
/// a negative one, no `+`, no leading zero; anything else is `None`.
fn stored_number(text: &str) -> Option<i64> {
    let number: i64 = text.parse().ok()?;
    // Written back, it is the text itself (no '+', no leading zero, no -0).
    (number.to_string() == text).then_some(number)
}

/// Reads the snapshot's `grants` back; anything this release did not write
/// is an error.
pub fn decode_remaining(text: &str) -> Result<Vec<Remaining>, GrantError> {
    let malformed = |why: &str| GrantError::Malformed(format!("grants {text:?}: {why}"));
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut remaining: Vec<Remaining> = Vec::new();
    for part in text.split(',') {
        let Some((id, amount)) = part.split_once(':') else {
            return Err(malformed("each part is grant:micros"));
        };
        let grant_id: i64 = stored_number(id)
            .filter(|id| *id >= 0)
            .ok_or_else(|| malformed("a grant id is a whole number"))?;
        let amount: i64 =
            stored_number(amount).ok_or_else(|| malformed("an amount is whole micro-dollars"))?;
        let in_range = if grant_id == SHORTFALL {
            amount < 0
        } else {
            amount > 0
        };
        if !in_range {
            return Err(malformed(&format!(
                "grant {grant_id} cannot hold {amount} (a grant holds more than nothing; grant 0 owes)"
            )));
        }
        if remaining
            .last()
            .is_some_and(|last| last.grant_id >= grant_id)
        {
            return Err(malformed("ids are ascending, each once"));
        }
        remaining.push(Remaining {
            grant_id,
            amount: Money::from_micros(amount),
        });
    }
    Ok(remaining)
}

/// A grant with credit left (or, restored, about to have), as the actor
/// keeps it: what the rules need to order and choose grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveGrant {
    pub id: i64,
    pub category: Category,
    pub priority: Priority,
    pub expires_at_ms: Option<i64>,
    pub order_id: Option<i64>,
    pub remaining: Money,
}

impl LiveGrant {
    fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The consumption order: priority, promotional before paid, the
    /// soonest expiry (none last), the oldest.
    fn spending_key(&self) -> (Priority, u8, i64, i64) {
        (
            self.priority,
            self.category.spending_rank(),
            self.expires_at_ms.unwrap_or(i64::MAX),
            self.id,
        )
    }
}

/// Which grants a take may draw from, after those with credit left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// A negative adjustment: every grant, in consumption order.
    Any,
    /// Credit taken back for a payment refunded or disputed: the order's
    /// own grant first, then other paid grants; never promotional credit,
    /// which never turns into cash.
    Paid { order_id: Option<i64> },
}

/// An account's grants with credit left, and what it owes (grant 0):
/// where its balance stands, grant by grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Book {
    /// Ascending ids, none 0, every remaining above zero.
    grants: Vec<LiveGrant>,
    /// Grant 0's remaining: zero or below.
    shortfall: Money,
}

impl Book {
    /// The book of an account's stored remaining and the facts of those
    /// grants (a grant whose facts are missing is an error).
    pub fn from_parts(remaining: &[Remaining], facts: &[CreditGrant]) -> Result<Book, GrantError> {
        let mut book = Book::default();
        for grant in remaining {
            if grant.grant_id == SHORTFALL {
                book.shortfall = grant.amount;
                continue;
            }
            let fact = facts
                .iter()
                .find(|fact| fact.id == grant.grant_id)
                .ok_or(GrantError::UnknownGrant(grant.grant_id))?;
            book.grants.push(fact.live(grant.amount));
        }
        Ok(book)
    }

    /// The book as the snapshot stores it.
    pub fn remaining(&self) -> Vec<Remaining> {
        let shortfall = (!self.shortfall.is_zero()).then_some(Remaining {
            grant_id: SHORTFALL,
            amount: self.shortfall,
        });
        shortfall
            .into_iter()
            .chain(self.grants.iter().map(|grant| Remaining {
                grant_id: grant.id,
                amount: grant.remaining,
            }))
            .collect()
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        self.encode_into(&mut text);
        text
    }

    /// The stored form, written into `text` (cleared first).
    pub fn encode_into(&self, text: &mut String) {
        text.clear();
        if !self.shortfall.is_zero() {
            push_i64(text, SHORTFALL);
            text.push(':');
            push_i64(text, self.shortfall.micros());
        }
        for grant in &self.grants {
            if !text.is_empty() {
                text.push(',');
            }
            push_i64(text, grant.id);
            text.push(':');
            push_i64(text, grant.remaining.micros());
        }
    }

    pub fn grants(&self) -> &[LiveGrant] {
        &self.grants
    }

    /// What the account owes (grant 0's remaining, zero or below).
    pub fn shortfall(&self) -> Money {
        self.shortfall
    }

    /// What the grants sum to: the balance.
    pub fn balance(&self) -> Result<Money, GrantError> {
        Ok(self.grants.iter().try_fold(self.shortfall, |sum, grant| {
            sum.checked_add(grant.remaining)
        })?)
    }

    /// Whether the book knows a grant's terms (it has credit left).
    pub fn knows(&self, grant_id: i64) -> bool {
        grant_id == SHORTFALL || self.grants.iter().any(|grant| grant.id == grant_id)
    }

    /// The book after another process's writes, from what the store says
    /// is left of each grant: `None` if a grant's terms are not known here
    /// (one made or restored there), so that it must be read. Only the
    /// terms of grants made at or before `committed_through` (the last
    /// position known committed) are taken from this book: one made by a
    /// write still in flight, or refused, may be another grant on disk,
    /// made by another process at the same position.
    pub fn moved_to(&self, remaining: &[Remaining], committed_through: i64) -> Option<Book> {
        let mut book = Book::default();
        for grant in remaining {
            if grant.grant_id == SHORTFALL {
                book.shortfall = grant.amount;
                continue;
            }
            if grant.grant_id > committed_through {
                return None;
            }
            let known = self
                .grants
                .iter()
                .find(|known| known.id == grant.grant_id)?;
            book.grants.push(LiveGrant {
                remaining: grant.amount,
                ..*known
            });
        }
        Some(book)
    }

    /// The grant that expired first (then the oldest) of those expired at
    /// `now_ms` with credit left: its expiry row comes before anything else
    /// is decided, and the expiry rows of several follow one another in the
    /// order the grants expired (each row dated its grant's expiry).
    pub fn due_expiry(&self, now_ms: i64) -> Option<&LiveGrant> {
        self.grants
            .iter()
            .filter(|grant| grant.expired(now_ms))
            .min_by_key(|grant| (grant.expires_at_ms, grant.id))
    }

    /// The grants a debit may use at `now_ms`, in consumption order.
    fn spendable(&self, now_ms: i64) -> Vec<&LiveGrant> {
        let mut spendable: Vec<&LiveGrant> = self
            .grants
            .iter()
            .filter(|grant| !grant.expired(now_ms))
            .collect();
        spendable.sort_by_key(|grant| grant.spending_key());
        spendable
    }

    /// Rule 1, a debit (a message's charge): from grants with credit left
    /// that have not expired, in consumption order; never from grant 0.
    pub fn debit(&self, amount: Money, now_ms: i64) -> Result<Funding, GrantError> {
        // Most accounts have one grant with credit left: no order to sort.
        if let [grant] = self.grants.as_slice() {
            if !grant.expired(now_ms) && grant.remaining >= amount && amount.is_positive() {
                return Ok(Funding::new(vec![Draw {
                    grant_id: grant.id,
                    category: grant.category,
                    amount,
                }]));
            }
        }
        let mut left = amount;
        let mut funding = Draws::default();
        for grant in self.spendable(now_ms) {
            if !left.is_positive() {
                break;
            }
            let taken = left.min(grant.remaining);
            funding.add(grant.id, grant.category, taken)?;
            left = left.checked_sub(taken)?;
        }
        if left.is_positive() {
            return Err(GrantError::Insufficient {
                available: amount.checked_sub(left)?,
                needed: amount,
            });
        }
        Ok(funding.finish())
    }

    /// Rules 2 and 3, credit taken away (`amount` positive): a negative
    /// adjustment from every grant in consumption order, a take-back from
    /// the order's own grant, then other paid grants; what they cannot
    /// cover, from grant 0 (the balance goes below zero).
    pub fn take(&self, amount: Money, now_ms: i64, take: Take) -> Result<Funding, GrantError> {
        let mut order: Vec<&LiveGrant> = self.spendable(now_ms);
        if let Take::Paid { order_id } = take {
            order.retain(|grant| grant.category == Category::Paid);
            // Stable: the order's own grant first, the rest as they were.
            order.sort_by_key(|grant| order_id.is_none() || grant.order_id != order_id);
        }
        let mut left = amount;
        let mut funding = Draws::default();
        for grant in order {
            if !left.is_positive() {
                break;
            }
            let taken = left.min(grant.remaining);
            funding.add(grant.id, grant.category, taken)?;
            left = left.checked_sub(taken)?;
        }
        funding.add(SHORTFALL, Category::Paid, left)?;
        Ok(funding.finish())
    }

    /// Rules 6 and 7, a row that makes a grant: a paid grant first pays
    /// down grant 0 with what it brings (the new grant gives it to grant
    /// 0); a promotional one does not.
    pub fn make(&self, grant: &CreditGrant) -> Result<Funding, GrantError> {
        let mut funding = Draws::default();
        if grant.category == Category::Paid {
            let paid_down = grant.amount.min(-self.shortfall);
            if paid_down.is_positive() {
                funding.add(grant.id, grant.category, paid_down)?;
                funding.add(SHORTFALL, Category::Paid, -paid_down)?;
            }
        }
        Ok(funding.finish())
    }

    /// Rules 4 and 5, credit given back (`amount` positive) for what
    /// `reversing` took (the debit of a message voided, or the net of an
    /// order's take-backs; positive draws are what is still taken). The
    /// paid part first pays down grant 0, then goes back to the paid grants
    /// it came from (never more than each gave); the promotional part goes
    /// back to its grants. A paid part that grant 0 no longer needs (a
    /// credit paid it down since), and what `reversing` does not account
    /// for (nothing to give it back to), pay down grant 0 and make a paid
    /// grant of the rest, `made` (its id is the row's `seq`): no grant ever
    /// holds more than it was made with.
    pub fn restore(
        &self,
        amount: Money,
        reversing: &Funding,
        made: impl FnOnce(Money) -> CreditGrant,
    ) -> Result<(Funding, Option<CreditGrant>), GrantError> {
        let taken = |category: Category| {
            reversing
                .draws()
                .iter()
                .filter(move |draw| draw.amount.is_positive() && draw.category == category)
        };
        let paid_cap = taken(Category::Paid)
            .try_fold(Money::ZERO, |sum, draw| sum.checked_add(draw.amount))?;
        let promotional_cap = taken(Category::Promotional)
            .try_fold(Money::ZERO, |sum, draw| sum.checked_add(draw.amount))?;
        let paid_back = amount.min(paid_cap);
        let promotional_back = amount.checked_sub(paid_back)?.min(promotional_cap);
        let mut extra = amount
            .checked_sub(paid_back)?
            .checked_sub(promotional_back)?;

        let mut funding = Draws::default();
        let mut owed = -self.shortfall;
        let paid_down = paid_back.min(owed);
        funding.add(SHORTFALL, Category::Paid, -paid_down)?;
        owed = owed.checked_sub(paid_down)?;
        let mut left = paid_back.checked_sub(paid_down)?;
        for draw in taken(Category::Paid).filter(|draw| draw.grant_id != SHORTFALL) {
            let back = left.min(draw.amount);
            funding.add(draw.grant_id, Category::Paid, -back)?;
            left = left.checked_sub(back)?;
        }
        // What grant 0 took and no longer needs (a credit paid it down
        // since) goes to no grant that gave nothing to it (that would leave
        // it holding more than it was made with): it makes a paid grant.
        extra = extra.checked_add(left)?;
        let mut left = promotional_back;
        for draw in taken(Category::Promotional) {
            let back = left.min(draw.amount);
            funding.add(draw.grant_id, Category::Promotional, -back)?;
            left = left.checked_sub(back)?;
        }
        if !extra.is_positive() {
            return Ok((funding.finish(), None));
        }
        let grant = made(extra);
        let paid_down = extra.min(owed);
        if paid_down.is_positive() {
            funding.add(grant.id, grant.category, paid_down)?;
            funding.add(SHORTFALL, Category::Paid, -paid_down)?;
        }
        Ok((funding.finish(), Some(grant)))
    }

    /// Rule 8, an expiry: all that is left of the grant.
    pub fn expire(&self, grant_id: i64) -> Result<Funding, GrantError> {
        let grant = self
            .grants
            .iter()
            .find(|grant| grant.id == grant_id)
            .ok_or(GrantError::UnknownGrant(grant_id))?;
        Ok(Funding::new(vec![Draw {
            grant_id,
            category: grant.category,
            amount: grant.remaining,
        }]))
    }

    /// Moves the book on by a row in place, without a copy; on an error it
    /// may be left part-way (the caller must no longer use it: the actor
    /// reads its grants again).
    pub fn apply_in_place(
        &mut self,
        made: Option<&CreditGrant>,
        funding: &Funding,
        facts: &[CreditGrant],
    ) -> Result<(), GrantError> {
        self.take_row(made, funding, facts)
    }

    /// Moves the book on by a row (see [`Book::applied`]); on an error it
    /// is left as it was.
    pub fn apply(
        &mut self,
        made: Option<&CreditGrant>,
        funding: &Funding,
        facts: &[CreditGrant],
    ) -> Result<(), GrantError> {
        *self = self.applied(made, funding, facts)?;
        Ok(())
    }

    /// The book after a row: the grant it made (if any) with its amount,
    /// then each draw taken from (or given back to) its grant. A grant given
    /// back to that has nothing left here takes its terms from `facts`.
    pub fn applied(
        &self,
        made: Option<&CreditGrant>,
        funding: &Funding,
        facts: &[CreditGrant],
    ) -> Result<Book, GrantError> {
        let mut next = self.clone();
        next.take_row(made, funding, facts)?;
        Ok(next)
    }

    fn take_row(
        &mut self,
        made: Option<&CreditGrant>,
        funding: &Funding,
        facts: &[CreditGrant],
    ) -> Result<(), GrantError> {
        if let Some(grant) = made {
            self.insert(grant.live(grant.amount));
        }
        for draw in funding.draws() {
            if draw.grant_id == SHORTFALL {
                self.shortfall = self.shortfall.checked_sub(draw.amount)?;
                if self.shortfall.is_positive() {
                    return Err(GrantError::OutOfRange(SHORTFALL));
                }
                continue;
            }
            let index = match self
                .grants
                .iter()
                .position(|grant| grant.id == draw.grant_id)
            {
                Some(index) => index,
                None => {
                    let fact = facts
                        .iter()
                        .find(|fact| fact.id == draw.grant_id)
                        .ok_or(GrantError::UnknownGrant(draw.grant_id))?;
                    self.insert(fact.live(Money::ZERO))
                }
            };
            let grant = &mut self.grants[index];
            grant.remaining = grant.remaining.checked_sub(draw.amount)?;
            if grant.remaining.is_negative() {
                return Err(GrantError::OutOfRange(grant.id));
            }
        }
        self.grants.retain(|grant| !grant.remaining.is_zero());
        Ok(())
    }

    /// Puts a grant in its place by id; answers the index.
    fn insert(&mut self, grant: LiveGrant) -> usize {
        let index = self.grants.partition_point(|known| known.id < grant.id);
        self.grants.insert(index, grant);
        index
    }
}

/// Why an adjustment's grant terms were refused, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TermsRefused {
    pub field: &'static str,
    pub message: String,
}

/// The terms of the grant a positive adjustment makes, read from what the
/// operator gave (the API's and the command line's words): a category
/// (`paid` or `promotional`), a priority (0 to 100) and an expiry (RFC
/// 3339). A negative adjustment makes no grant and takes none of them.
/// Whether the expiry is still to come is not judged here but by the
/// account's actor, after the adjustment's key
/// ([`crate::LedgerError::ExpiryPassed`]): a retry of an adjustment made
/// before its expiry passed is answered from its row, never refused.
#[allow(clippy::type_complexity)]
pub fn adjustment_terms(
    amount: Money,
    category: Option<&str>,
    priority: Option<i64>,
    expires_at: Option<&str>,
) -> Result<(Option<Category>, Option<Priority>, Option<i64>), TermsRefused> {
    let refused = |field: &'static str, message: &str| TermsRefused {
        field,
        message: message.to_string(),
    };
    if amount.is_negative() {
        let given = [
            ("category", category.is_some()),
            ("priority", priority.is_some()),
            ("expires_at", expires_at.is_some()),
        ];
        if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
            return Err(refused(
                field,
                "a negative adjustment takes credit and makes no grant: it takes no category, priority or expiry",
            ));
        }
    }
    let category = category
        .map(|text| {
            Category::parse(text)
                .ok_or_else(|| refused("category", "a category is paid or promotional"))
        })
        .transpose()?;
    let priority = priority
        .map(|value| {
            Priority::new(value)
                .map_err(|_| refused("priority", "a priority is 0 to 100 (lower is spent first)"))
        })
        .transpose()?;
    let expires_at_ms = expires_at
        .map(|text| {
            crate::clock::parse_rfc3339_ms(text).ok_or_else(|| {
                refused(
                    "expires_at",
                    "an expiry is an RFC 3339 time, such as 2026-12-31T23:59:59Z",
                )
            })
        })
        .transpose()?;
    Ok((category, priority, expires_at_ms))
}

/// Where a grant stands, for the listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    /// Credit left, not expired.
    Active,
    /// Nothing left, and its expiry (if any) not reached.
    Used,
    /// Its expiry has passed (an expiry row took what was left).
    Expired,
    /// Grant 0: what the account owes.
    Owed,
}

/// One grant as the listings show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantLine {
    pub grant: CreditGrant,
    pub remaining: Money,
    pub status: GrantStatus,
}

/// An account's grants, newest first, each with what is left of it at
/// `now_ms`; grant 0 (last) only while the account owes.
pub fn lines(grants: &[CreditGrant], remaining: &[Remaining], now_ms: i64) -> Vec<GrantLine> {
    let left = |grant_id: i64| {
        remaining
            .iter()
            .find(|grant| grant.grant_id == grant_id)
            .map_or(Money::ZERO, |grant| grant.amount)
    };
    let mut lines: Vec<GrantLine> = grants
        .iter()
        .rev()
        .map(|grant| {
            let remaining = left(grant.id);
            let expired = grant.expires_at_ms.is_some_and(|at| at <= now_ms);
            let status = if expired {
                GrantStatus::Expired
            } else if remaining.is_positive() {
                GrantStatus::Active
            } else {
                GrantStatus::Used
            };
            GrantLine {
                grant: grant.clone(),
                remaining,
                status,
            }
        })
        .collect();
    let owed = left(SHORTFALL);
    if owed.is_negative() {
        lines.push(GrantLine {
            grant: CreditGrant {
                id: SHORTFALL,
                category: Category::Paid,
                source: GrantSource::Shortfall,
                order_id: None,
                amount: Money::ZERO,
                priority: Priority::DEFAULT,
                granted_at_ms: 0,
                expires_at_ms: None,
            },
            remaining: owed,
            status: GrantStatus::Owed,
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(micros: i64) -> Money {
        Money::from_micros(micros)
    }

    fn grant(id: i64, category: Category, amount: i64) -> CreditGrant {
        CreditGrant {
            id,
            category,
            source: GrantSource::Adjustment,
            order_id: None,
            amount: money(amount),
            priority: Priority::DEFAULT,
            granted_at_ms: 0,
            expires_at_ms: None,
        }
    }

    fn draws(funding: &Funding) -> Vec<(i64, Category, i64)> {
        funding
            .draws()
            .iter()
            .map(|draw| (draw.grant_id, draw.category, draw.amount.micros()))
            .collect()
    }

    /// A book made the way the actor makes it: each grant's row, in order.
    fn book_of(grants: &[CreditGrant]) -> Book {
        let mut book = Book::default();
        for grant in grants {
            let funding = book.make(grant).unwrap();
            book.apply(Some(grant), &funding, &[]).unwrap();
        }
        book
    }

    use Category::{Paid, Promotional};

    #[test]
    fn a_debit_draws_by_priority_then_promotional_then_expiry_then_age() {
        let mut low_priority_promotional = grant(1, Promotional, 100);
        low_priority_promotional.priority = Priority::new(90).unwrap();
        let paid_old = grant(2, Paid, 100);
        let paid_expiring = CreditGrant {
            expires_at_ms: Some(5_000),
            ..grant(3, Paid, 100)
        };
        let promotional_late = CreditGrant {
            expires_at_ms: Some(9_000),
            ..grant(4, Promotional, 100)
        };
        let promotional = grant(5, Promotional, 100);
        let mut first = grant(6, Paid, 100);
        first.priority = Priority::new(10).unwrap();
        let book = book_of(&[
            low_priority_promotional,
            paid_old,
            paid_expiring,
            promotional_late,
            promotional,
            first,
        ]);
        let funding = book.debit(money(550), 0).unwrap();
        assert_eq!(
            draws(&funding),
            vec![
                (6, Paid, 100),
                (4, Promotional, 100),
                (5, Promotional, 100),
                (3, Paid, 100),
                (2, Paid, 100),
                (1, Promotional, 50),
            ]
        );
        // Never from grant 0, and never more than there is.
        assert_eq!(
            book.debit(money(601), 0),
            Err(GrantError::Insufficient {
                available: money(600),
                needed: money(601)
            })
        );
    }

    #[test]
    fn a_debit_is_split_and_leaves_what_it_did_not_take() {
        let mut book = book_of(&[grant(1, Promotional, 300), grant(2, Paid, 1_000)]);
        let funding = book.debit(money(500), 0).unwrap();
        assert_eq!(draws(&funding), vec![(1, Promotional, 300), (2, Paid, 200)]);
        book.apply(None, &funding, &[]).unwrap();
        assert_eq!(book.encode(), "2:800");
        assert_eq!(book.balance(), Ok(money(800)));
    }

    #[test]
    fn an_expired_grant_is_never_drawn_and_is_due_to_expire() {
        let expiring = CreditGrant {
            expires_at_ms: Some(1_000),
            ..grant(1, Promotional, 300)
        };
        let mut book = book_of(&[expiring, grant(2, Paid, 100)]);
        assert_eq!(book.due_expiry(999), None);
        assert_eq!(book.due_expiry(1_000).map(|grant| grant.id), Some(1));
        assert!(book.debit(money(101), 1_000).is_err());
        assert_eq!(
            draws(&book.debit(money(100), 1_000).unwrap()),
            vec![(2, Paid, 100)]
        );
        let expiry = book.expire(1).unwrap();
        assert_eq!(draws(&expiry), vec![(1, Promotional, 300)]);
        book.apply(None, &expiry, &[]).unwrap();
        assert_eq!(book.due_expiry(2_000), None);
        assert_eq!(book.encode(), "2:100");
    }

    #[test]
    fn grants_expired_together_are_due_in_the_order_they_expired() {
        let later = CreditGrant {
            expires_at_ms: Some(2_000),
            ..grant(1, Promotional, 300)
        };
        let sooner = CreditGrant {
            expires_at_ms: Some(1_000),
            ..grant(2, Promotional, 100)
        };
        let same = CreditGrant {
            expires_at_ms: Some(1_000),
            ..grant(3, Paid, 50)
        };
        let mut book = book_of(&[later, sooner, same]);
        let mut order = Vec::new();
        while let Some(due) = book.due_expiry(5_000).copied() {
            order.push(due.id);
            let expiry = book.expire(due.id).unwrap();
            book.apply(None, &expiry, &[]).unwrap();
        }
        assert_eq!(order, vec![2, 3, 1]);
        assert_eq!(book.balance(), Ok(money(0)));
    }

    #[test]
    fn a_take_back_takes_the_orders_grant_then_paid_then_grant_0_never_promotional() {
        let mut order_grant = grant(2, Paid, 1_000);
        order_grant.order_id = Some(77);
        let mut last = grant(4, Promotional, 50);
        last.priority = Priority::new(90).unwrap();
        let mut book = book_of(&[
            grant(1, Paid, 300),
            order_grant,
            grant(3, Promotional, 500),
            last,
        ]);
        // Part of the order's credit was spent (promotional first).
        let spent = book.debit(money(900), 0).unwrap();
        assert_eq!(
            draws(&spent),
            vec![(3, Promotional, 500), (1, Paid, 300), (2, Paid, 100)]
        );
        book.apply(None, &spent, &[]).unwrap();
        let taken = book
            .take(money(1_000), 0, Take::Paid { order_id: Some(77) })
            .unwrap();
        assert_eq!(draws(&taken), vec![(2, Paid, 900), (0, Paid, 100)]);
        book.apply(None, &taken, &[]).unwrap();
        assert_eq!(book.encode(), "0:-100,4:50");
        assert_eq!(book.balance(), Ok(money(-50)));
    }

    #[test]
    fn a_negative_adjustment_takes_every_category_then_grant_0() {
        let book = book_of(&[grant(1, Paid, 300), grant(2, Promotional, 100)]);
        let taken = book.take(money(500), 0, Take::Any).unwrap();
        assert_eq!(
            draws(&taken),
            vec![(2, Promotional, 100), (1, Paid, 300), (0, Paid, 100)]
        );
    }

    #[test]
    fn paid_credit_pays_down_the_shortfall_first_promotional_does_not() {
        let mut book = Book::default();
        let owed = book.take(money(400), 0, Take::Any).unwrap();
        book.apply(None, &owed, &[]).unwrap();
        assert_eq!(book.encode(), "0:-400");
        let promotional = grant(2, Promotional, 1_000);
        let funding = book.make(&promotional).unwrap();
        assert!(funding.is_empty());
        book.apply(Some(&promotional), &funding, &[]).unwrap();
        assert_eq!(book.encode(), "0:-400,2:1000");
        let paid = grant(3, Paid, 300);
        let funding = book.make(&paid).unwrap();
        assert_eq!(draws(&funding), vec![(3, Paid, 300), (0, Paid, -300)]);
        book.apply(Some(&paid), &funding, &[]).unwrap();
        assert_eq!(book.encode(), "0:-100,2:1000");
        let paid = grant(4, Paid, 300);
        let funding = book.make(&paid).unwrap();
        assert_eq!(draws(&funding), vec![(4, Paid, 100), (0, Paid, -100)]);
        book.apply(Some(&paid), &funding, &[]).unwrap();
        assert_eq!(book.encode(), "2:1000,4:200");
        // The row made 300 and took nothing in net: amount = made − funded.
        assert_eq!(funding.total(), Ok(Money::ZERO));
    }

    #[test]
    fn a_void_restores_exactly_what_its_debit_drew() {
        let mut book = book_of(&[grant(1, Promotional, 100), grant(2, Paid, 1_000)]);
        let debit = book.debit(money(300), 0).unwrap();
        book.apply(None, &debit, &[]).unwrap();
        assert_eq!(book.encode(), "2:800");
        let (restore, made) = book
            .restore(money(300), &debit, |_| unreachable!())
            .unwrap();
        assert_eq!(made, None);
        assert_eq!(
            draws(&restore),
            vec![(2, Paid, -200), (1, Promotional, -100)]
        );
        // Grant 1 had nothing left: its terms come from its facts.
        assert_eq!(
            book.apply(None, &restore, &[]),
            Err(GrantError::UnknownGrant(1))
        );
        book.apply(None, &restore, &[grant(1, Promotional, 100)])
            .unwrap();
        assert_eq!(book.encode(), "1:100,2:1000");
    }

    #[test]
    fn a_voids_paid_part_pays_down_the_shortfall_first() {
        let mut book = book_of(&[grant(1, Promotional, 100), grant(2, Paid, 200)]);
        let debit = book.debit(money(300), 0).unwrap();
        book.apply(None, &debit, &[]).unwrap();
        let owed = book.take(money(150), 0, Take::Any).unwrap();
        book.apply(None, &owed, &[]).unwrap();
        assert_eq!(book.encode(), "0:-150");
        let facts = [grant(1, Promotional, 100), grant(2, Paid, 200)];
        let (restore, _) = book
            .restore(money(300), &debit, |_| unreachable!())
            .unwrap();
        assert_eq!(
            draws(&restore),
            vec![(0, Paid, -150), (2, Paid, -50), (1, Promotional, -100)]
        );
        book.apply(None, &restore, &facts).unwrap();
        assert_eq!(book.encode(), "1:100,2:50");
    }

    #[test]
    fn a_give_back_reverses_the_take_backs_grant_0_first() {
        let mut order_grant = grant(2, Paid, 500);
        order_grant.order_id = Some(9);
        let mut book = book_of(&[grant(1, Paid, 100), order_grant.clone()]);
        let taken = book
            .take(money(800), 0, Take::Paid { order_id: Some(9) })
            .unwrap();
        assert_eq!(
            draws(&taken),
            vec![(2, Paid, 500), (1, Paid, 100), (0, Paid, 200)]
        );
        book.apply(None, &taken, &[]).unwrap();
        let facts = [grant(1, Paid, 100), order_grant];
        // Part given back (a refund that failed): grant 0 first.
        let (first, _) = book
            .restore(money(300), &taken, |_| unreachable!())
            .unwrap();
        assert_eq!(draws(&first), vec![(0, Paid, -200), (2, Paid, -100)]);
        book.apply(None, &first, &facts).unwrap();
        // The rest (a dispute won): the net of both rows is reversed.
        let net = Funding::net([&taken, &first]).unwrap();
        assert_eq!(draws(&net), vec![(2, Paid, 400), (1, Paid, 100)]);
        let (rest, _) = book.restore(money(500), &net, |_| unreachable!()).unwrap();
        assert_eq!(draws(&rest), vec![(2, Paid, -400), (1, Paid, -100)]);
        book.apply(None, &rest, &facts).unwrap();
        assert_eq!(book.encode(), "1:100,2:500");
    }

    #[test]
    fn what_grant_0_no_longer_needs_makes_a_paid_grant_never_overfilling_one() {
        let mut book = book_of(&[grant(1, Paid, 100)]);
        let taken = book
            .take(money(300), 0, Take::Paid { order_id: None })
            .unwrap();
        book.apply(None, &taken, &[]).unwrap();
        let credit = grant(5, Paid, 1_000);
        let funding = book.make(&credit).unwrap();
        book.apply(Some(&credit), &funding, &[]).unwrap();
        assert_eq!(book.encode(), "5:800");
        let (restore, made) = book
            .restore(money(300), &taken, |amount| CreditGrant {
                source: GrantSource::GiveBack,
                ..grant(6, Paid, amount.micros())
            })
            .unwrap();
        // Grant 1 gets back the 100 taken from it, no more; the 200 grant 0
        // took (and grant 5 paid down since) make grant 6.
        let made = made.unwrap();
        assert_eq!(made.amount, money(200));
        assert_eq!(draws(&restore), vec![(1, Paid, -100)]);
        book.apply(Some(&made), &restore, &[grant(1, Paid, 100)])
            .unwrap();
        assert_eq!(book.encode(), "1:100,5:800,6:200");
    }

    #[test]
    fn credit_given_back_with_nothing_to_reverse_pays_down_then_makes_a_grant() {
        let mut book = Book::default();
        let owed = book.take(money(100), 0, Take::Any).unwrap();
        book.apply(None, &owed, &[]).unwrap();
        let (funding, made) = book
            .restore(money(250), &Funding::NONE, |amount| CreditGrant {
                source: GrantSource::GiveBack,
                ..grant(7, Paid, amount.micros())
            })
            .unwrap();
        let made = made.unwrap();
        assert_eq!(made.amount, money(250));
        assert_eq!(draws(&funding), vec![(7, Paid, 100), (0, Paid, -100)]);
        book.apply(Some(&made), &funding, &[]).unwrap();
        assert_eq!(book.encode(), "7:150");
        // amount = made − funded: 250 − 0.
        assert_eq!(funding.total(), Ok(Money::ZERO));
    }

    #[test]
    fn funding_reads_back_what_it_wrote_and_refuses_anything_else() {
        let funding = Funding::new(vec![
            Draw {
                grant_id: 12,
                category: Paid,
                amount: money(5_000_000),
            },
            Draw {
                grant_id: 15,
                category: Promotional,
                amount: money(-1_000_000),
            },
            Draw {
                grant_id: 0,
                category: Paid,
                amount: money(7),
            },
        ]);
        let text = funding.encode().unwrap();
        assert_eq!(text, "12:p:5000000;15:r:-1000000;0:p:7");
        assert_eq!(Funding::decode(&text), Ok(funding));
        assert_eq!(Funding::NONE.encode(), None);
        for bad in [
            "",
            "12:x:5",
            "12:P:5",
            "12:p",
            "12:p:5:1",
            "12:p:0",
            "-1:p:5",
            "a:p:5",
            "12:p:5;12:p:6",
            "0:r:5",
            "12:p:5,",
            "12:p:+5",
            "012:p:5",
            "12:p:007",
            "12:p:-05",
        ] {
            assert!(
                matches!(Funding::decode(bad), Err(GrantError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn remaining_reads_back_what_it_wrote_and_refuses_anything_else() {
        let remaining = vec![
            Remaining {
                grant_id: 0,
                amount: money(-500_000),
            },
            Remaining {
                grant_id: 12,
                amount: money(3_400_000),
            },
            Remaining {
                grant_id: 15,
                amount: money(20_000),
            },
        ];
        let text = encode_remaining(&remaining);
        assert_eq!(text, "0:-500000,12:3400000,15:20000");
        assert_eq!(decode_remaining(&text), Ok(remaining));
        assert_eq!(decode_remaining(""), Ok(Vec::new()));
        for bad in [
            "12:0",
            "12:-5",
            "0:5",
            "15:1,12:1",
            "12:1,12:1",
            "12",
            "x:1",
            "12:1;15:1",
            "12:+5",
            "+12:5",
            "012:5",
            "12:007",
            "0:-05",
        ] {
            assert!(
                matches!(decode_remaining(bad), Err(GrantError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_book_reads_back_from_the_snapshot_and_its_facts() {
        let facts = [grant(3, Promotional, 100), grant(5, Paid, 900)];
        let book = book_of(&facts);
        let again = Book::from_parts(&book.remaining(), &facts).unwrap();
        assert_eq!(again, book);
        assert_eq!(
            Book::from_parts(&book.remaining(), &facts[..1]),
            Err(GrantError::UnknownGrant(5))
        );
        // Another process's writes: known grants move, an unknown one
        // must be read.
        let moved = decode_remaining("0:-5,5:10").unwrap();
        assert_eq!(
            book.moved_to(&moved, 5).map(|book| book.encode()),
            Some("0:-5,5:10".to_string())
        );
        assert_eq!(book.moved_to(&decode_remaining("6:10").unwrap(), 6), None);
        // A grant known here from a write not known committed may be
        // another made at its position: read.
        assert_eq!(book.moved_to(&moved, 4), None);
    }

    #[test]
    fn an_adjustments_terms_are_refused_clearly() {
        let positive = money(1_000);
        assert_eq!(
            adjustment_terms(positive, None, None, None),
            Ok((None, None, None))
        );
        assert_eq!(
            adjustment_terms(
                positive,
                Some("paid"),
                Some(10),
                Some("2026-01-01T00:00:00Z"),
            ),
            Ok((
                Some(Paid),
                Some(Priority::new(10).unwrap()),
                Some(1_767_225_600_000)
            ))
        );
        let field = |result: Result<_, TermsRefused>| result.map_err(|refused| refused.field);
        assert_eq!(
            field(adjustment_terms(money(-1), Some("paid"), None, None)),
            Err("category")
        );
        assert_eq!(
            field(adjustment_terms(money(-1), None, None, Some("x"))),
            Err("expires_at")
        );
        assert_eq!(
            field(adjustment_terms(positive, Some("gift"), None, None)),
            Err("category")
        );
        assert_eq!(
            field(adjustment_terms(positive, None, Some(101), None)),
            Err("priority")
        );
        assert_eq!(
            field(adjustment_terms(positive, None, None, Some("tomorrow"))),
            Err("expires_at")
        );
    }

    #[test]
    fn the_listing_is_newest_first_with_what_is_owed_last() {
        let expiring = CreditGrant {
            expires_at_ms: Some(100),
            ..grant(2, Promotional, 50)
        };
        let grants = [grant(1, Paid, 100), expiring, grant(3, Paid, 10)];
        let remaining = decode_remaining("0:-5,3:10").unwrap();
        let statuses: Vec<(i64, GrantStatus, i64)> = lines(&grants, &remaining, 100)
            .iter()
            .map(|line| (line.grant.id, line.status, line.remaining.micros()))
            .collect();
        assert_eq!(
            statuses,
            vec![
                (3, GrantStatus::Active, 10),
                (2, GrantStatus::Expired, 0),
                (1, GrantStatus::Used, 0),
                (0, GrantStatus::Owed, -5),
            ]
        );
    }

    #[test]
    fn numbers_are_written_exactly() {
        for value in [0, 7, -7, 10, 56_500, -1_000_000, i64::MAX, i64::MIN] {
            let mut text = String::new();
            push_i64(&mut text, value);
            assert_eq!(text, value.to_string());
        }
    }

    #[test]
    fn words_and_priorities_are_exact() {
        for category in [Paid, Promotional] {
            assert_eq!(Category::parse(category.as_str()), Some(category));
            assert_eq!(
                Category::from_letter(&category.letter().to_string()),
                Some(category)
            );
        }
        assert_eq!(Category::parse("Paid"), None);
        for source in [
            GrantSource::Access,
            GrantSource::TopUp,
            GrantSource::Buy,
            GrantSource::AutoTopUp,
            GrantSource::Adjustment,
            GrantSource::GiveBack,
            GrantSource::Migration,
            GrantSource::Shortfall,
        ] {
            assert_eq!(GrantSource::parse(source.as_str()), Some(source));
        }
        assert_eq!(GrantSource::parse("gift"), None);
        assert_eq!(Priority::new(0).map(Priority::value), Ok(0));
        assert_eq!(Priority::new(100).map(Priority::value), Ok(100));
        assert_eq!(Priority::new(101), Err(GrantError::Priority(101)));
        assert_eq!(Priority::new(-1), Err(GrantError::Priority(-1)));
    }
}

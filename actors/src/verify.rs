//! Recomputes every account from its ledger and reports where the ledger
//! and the snapshots disagree: what `sms-credit verify` prints. A store
//! feeds the rows ([`Verifier`]); the rules are here.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::grants::{decode_remaining, Category, Funding, SHORTFALL};
use crate::ledger::{AccountId, TransactionKind};

/// One disagreement between the ledger and the snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The account's ledger skips or repeats a position.
    SeqGap {
        account_id: AccountId,
        expected_seq: i64,
        found_seq: i64,
    },
    /// A row's `balance_after` is not the running sum of the rows up to it.
    BalanceAfterMismatch {
        account_id: AccountId,
        seq: i64,
        running_sum_micros: i128,
        recorded_micros: i64,
    },
    /// A debit left the balance below zero.
    DebitBelowZero {
        account_id: AccountId,
        seq: i64,
        balance_micros: i64,
    },
    /// The snapshot does not match what the ledger sums to.
    SnapshotMismatch {
        account_id: AccountId,
        ledger_sum_micros: i128,
        ledger_seq: i64,
        snapshot_balance_micros: i64,
        snapshot_seq: i64,
    },
    /// An account has no snapshot row.
    MissingSnapshot { account_id: AccountId },
    /// A row's type is not one this release knows.
    UnknownType {
        account_id: AccountId,
        seq: i64,
        stored: String,
    },
    /// A row's `funded_by` is not one this release can read.
    UnreadableFunding {
        account_id: AccountId,
        seq: i64,
        stored: String,
    },
    /// A row's amount is not the credit it made less what it took from
    /// grants.
    FundingMismatch {
        account_id: AccountId,
        seq: i64,
        amount_micros: i64,
        made_micros: i64,
        funded_micros: i128,
    },
    /// A row takes from, or gives back to, a grant no row made (or with
    /// another category than the grant's).
    UnknownGrant {
        account_id: AccountId,
        seq: i64,
        grant_id: i64,
    },
    /// The account's grants were never made (the backfill has not run).
    GrantsMissing { account_id: AccountId },
    /// The snapshot's `grants` is not one this release can read.
    UnreadableGrants {
        account_id: AccountId,
        stored: String,
    },
    /// What the snapshot says is left of a grant is not its amount less
    /// what the ledger's rows took from it.
    GrantMismatch {
        account_id: AccountId,
        grant_id: i64,
        ledger_micros: i128,
        snapshot_micros: i64,
    },
    /// The ledger leaves a grant with less than nothing (or grant 0 with
    /// more than nothing).
    GrantOutOfRange {
        account_id: AccountId,
        grant_id: i64,
        ledger_micros: i128,
    },
    /// A row takes from a grant against the rules that decide every
    /// row's funding (the amounts may still add up).
    FundingBreaksRule {
        account_id: AccountId,
        seq: i64,
        grant_id: i64,
        rule: FundingRule,
    },
    /// What the snapshot says is left of the grants does not sum to its
    /// balance.
    GrantsSumMismatch {
        account_id: AccountId,
        grants_sum_micros: i128,
        balance_micros: i64,
    },
}

/// The rule of a row's funding that a row breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FundingRule {
    /// A debit took from a grant at or after its expiry.
    DrewOnExpired,
    /// A debit took from what the account owes (grant 0).
    DebitTookOwed,
    /// Credit taken back for a refund or dispute took promotional credit.
    PromotionalTakenBack,
    /// An expiry row took from a grant before its expiry (or one that
    /// never expires).
    ExpiredEarly,
    /// An expiry row left something of the grant it expired.
    ExpiryLeftSome,
    /// Credit bought through Stripe made a promotional grant.
    PaidAsPromotional,
    /// The row left a grant with less than nothing, or more than it was
    /// made with (grant 0: owing less than nothing).
    LeftOutOfRange,
}

/// What a verification found.
#[derive(Clone, Debug, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyReport {
    pub accounts_checked: u64,
    pub transactions_checked: u64,
    pub problems: Vec<Problem>,
}

/// An amount summed wider than an `i64`, in dollars when it fits one.
fn wide_amount(micros: i128) -> String {
    match i64::try_from(micros) {
        Ok(micros) => crate::money::Money::from_micros(micros).to_string(),
        Err(_) => format!("{micros} micro-dollars"),
    }
}

/// A problem for people, one line: the account, what is wrong and where.
impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let money = crate::money::Money::from_micros;
        match self {
            Problem::SeqGap {
                account_id,
                expected_seq,
                found_seq,
            } => write!(
                formatter,
                "account {account_id}: the ledger skips from #{} to #{found_seq} (expected #{expected_seq})",
                expected_seq - 1
            ),
            Problem::BalanceAfterMismatch {
                account_id,
                seq,
                running_sum_micros,
                recorded_micros,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} says the balance became {}, but the rows up to it sum to {}",
                money(*recorded_micros),
                wide_amount(*running_sum_micros)
            ),
            Problem::DebitBelowZero {
                account_id,
                seq,
                balance_micros,
            } => write!(
                formatter,
                "account {account_id}: the debit #{seq} took the balance below zero, to {}",
                money(*balance_micros)
            ),
            Problem::SnapshotMismatch {
                account_id,
                ledger_sum_micros,
                ledger_seq,
                snapshot_balance_micros,
                snapshot_seq,
            } => write!(
                formatter,
                "account {account_id}: its balance says {} at #{snapshot_seq}, but its ledger sums to {} at #{ledger_seq}",
                money(*snapshot_balance_micros),
                wide_amount(*ledger_sum_micros)
            ),
            Problem::MissingSnapshot { account_id } => {
                write!(formatter, "account {account_id}: it has no balance row")
            }
            Problem::UnknownType {
                account_id,
                seq,
                stored,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} has a type this release does not know: {stored:?}"
            ),
            Problem::UnreadableFunding {
                account_id,
                seq,
                stored,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} says it was funded by {stored:?}, which this release cannot read"
            ),
            Problem::FundingMismatch {
                account_id,
                seq,
                amount_micros,
                made_micros,
                funded_micros,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} moved the balance by {}, but it made {} of credit and took {} from grants",
                money(*amount_micros),
                money(*made_micros),
                wide_amount(*funded_micros)
            ),
            Problem::UnknownGrant {
                account_id,
                seq,
                grant_id,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} draws on grant {grant_id}, which no row of the account made with that category"
            ),
            Problem::GrantsMissing { account_id } => write!(
                formatter,
                "account {account_id}: its credit grants were never made (sms-credit migrate makes them from its ledger once it leads to its balance)"
            ),
            Problem::UnreadableGrants { account_id, stored } => write!(
                formatter,
                "account {account_id}: its balance row says its grants hold {stored:?}, which this release cannot read"
            ),
            Problem::GrantMismatch {
                account_id,
                grant_id,
                ledger_micros,
                snapshot_micros,
            } => write!(
                formatter,
                "account {account_id}: grant {grant_id} has {} left by its ledger, but its balance row says {}",
                wide_amount(*ledger_micros),
                money(*snapshot_micros)
            ),
            Problem::GrantOutOfRange {
                account_id,
                grant_id,
                ledger_micros,
            } => write!(
                formatter,
                "account {account_id}: its ledger leaves grant {grant_id} with {}, {}",
                wide_amount(*ledger_micros),
                if *grant_id == SHORTFALL {
                    "but what the account owes is never above zero"
                } else {
                    "but a grant never holds less than nothing"
                }
            ),
            Problem::FundingBreaksRule {
                account_id,
                seq,
                grant_id,
                rule,
            } => write!(
                formatter,
                "account {account_id}: row #{seq} {}",
                match rule {
                    FundingRule::DrewOnExpired => format!("is a debit that took from grant {grant_id} at or after its expiry"),
                    FundingRule::DebitTookOwed => "is a debit that took from what the account owes (grant 0)".to_string(),
                    FundingRule::PromotionalTakenBack => format!("takes credit back for a payment from promotional grant {grant_id}, which never turns into cash"),
                    FundingRule::ExpiredEarly => format!("expires grant {grant_id} before its expiry"),
                    FundingRule::ExpiryLeftSome => format!("expires grant {grant_id} but leaves some of it"),
                    FundingRule::PaidAsPromotional => format!("credits a payment as promotional grant {grant_id}"),
                    FundingRule::LeftOutOfRange => format!("leaves grant {grant_id} with less than nothing or more than it was made with"),
                }
            ),
            Problem::GrantsSumMismatch {
                account_id,
                grants_sum_micros,
                balance_micros,
            } => write!(
                formatter,
                "account {account_id}: its grants hold {} in all, but its balance says {}",
                wide_amount(*grants_sum_micros),
                money(*balance_micros)
            ),
        }
    }
}

/// The rule a row's draw on a grant breaks, if any: `left` is what the
/// grant holds after the row, `terms` the grant's amount and expiry (none
/// for grant 0).
fn broken_rule(
    row: &VerifyRow,
    kind: Option<TransactionKind>,
    draw: &crate::grants::Draw,
    left: i128,
    terms: Option<(i128, Option<i64>)>,
) -> Option<FundingRule> {
    let takes = draw.amount.is_positive();
    let expires_at = terms.and_then(|(_, expires_at)| expires_at);
    let in_range = match terms {
        Some((amount, _)) => (0..=amount).contains(&left),
        None => left <= 0,
    };
    if !in_range {
        return Some(FundingRule::LeftOutOfRange);
    }
    match kind {
        Some(TransactionKind::Debit) if takes && draw.grant_id == SHORTFALL => {
            Some(FundingRule::DebitTookOwed)
        }
        Some(TransactionKind::Debit)
            if takes && expires_at.is_some_and(|at| row.created_at >= at) =>
        {
            Some(FundingRule::DrewOnExpired)
        }
        Some(TransactionKind::Refund)
            if takes && row.amount < 0 && draw.category == Category::Promotional =>
        {
            Some(FundingRule::PromotionalTakenBack)
        }
        Some(TransactionKind::Expiry)
            if takes && expires_at.is_none_or(|at| row.created_at < at) =>
        {
            Some(FundingRule::ExpiredEarly)
        }
        Some(TransactionKind::Expiry) if takes && left != 0 => Some(FundingRule::ExpiryLeftSome),
        _ => None,
    }
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The running totals of the account being scanned.
struct AccountScan {
    account_id: AccountId,
    sum: i128,
    last_seq: i64,
    /// The account's snapshot (balance, seq), if it has one.
    snapshot: Option<(i64, i64)>,
    /// The snapshot's `grants`, as stored.
    snapshot_grants: Option<String>,
    /// Per grant: what the rows so far left of it, and its category.
    grants: BTreeMap<i64, (i128, Category)>,
    /// Per grant made by a row: its amount and expiry.
    terms: BTreeMap<i64, (i128, Option<i64>)>,
}

/// One ledger row as the verifier needs it, with its account's snapshot.
pub struct VerifyRow {
    pub account_id: AccountId,
    pub seq: i64,
    /// The stored type, as text (an unknown one is reported, not fatal).
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    /// The row's `funded_by`, as stored.
    pub funded_by: Option<String>,
    /// The grant the row made (the `credit_grants` row whose id is its
    /// seq): its amount and category, as stored.
    pub made: Option<(i64, String)>,
    /// That grant's expiry.
    pub made_expires_at: Option<i64>,
    pub created_at: i64,
    pub order_id: Option<i64>,
    /// The account's snapshot (balance, seq), if it has one.
    pub snapshot: Option<(i64, i64)>,
    /// The snapshot's `grants`, as stored.
    pub snapshot_grants: Option<String>,
}

/// Recomputes accounts from rows a store feeds it: every ledger row in
/// (account, seq) order, then every account that has no rows. The store
/// reads; the verifier decides what is a problem.
#[derive(Default)]
pub struct Verifier {
    report: VerifyReport,
    current: Option<AccountScan>,
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// The next ledger row, in (account, seq) order.
    pub fn row(&mut self, row: VerifyRow) {
        self.report.transactions_checked += 1;
        if self.current.as_ref().map(|scan| scan.account_id) != Some(row.account_id) {
            self.finish_account();
            let mut grants = BTreeMap::new();
            grants.insert(SHORTFALL, (0, Category::Paid));
            self.current = Some(AccountScan {
                account_id: row.account_id,
                sum: 0,
                last_seq: 0,
                snapshot: row.snapshot,
                snapshot_grants: row.snapshot_grants.clone(),
                grants,
                terms: BTreeMap::new(),
            });
        }
        let Some(scan) = self.current.as_mut() else {
            return;
        };
        let problems = &mut self.report.problems;
        if row.seq != scan.last_seq + 1 {
            problems.push(Problem::SeqGap {
                account_id: row.account_id,
                expected_seq: scan.last_seq + 1,
                found_seq: row.seq,
            });
        }
        scan.last_seq = row.seq;
        scan.sum += i128::from(row.amount);
        if scan.sum != i128::from(row.balance_after) {
            problems.push(Problem::BalanceAfterMismatch {
                account_id: row.account_id,
                seq: row.seq,
                running_sum_micros: scan.sum,
                recorded_micros: row.balance_after,
            });
        }
        match TransactionKind::parse(&row.kind) {
            Some(TransactionKind::Debit) if row.balance_after < 0 => {
                problems.push(Problem::DebitBelowZero {
                    account_id: row.account_id,
                    seq: row.seq,
                    balance_micros: row.balance_after,
                })
            }
            Some(_) => {}
            None => problems.push(Problem::UnknownType {
                account_id: row.account_id,
                seq: row.seq,
                stored: row.kind.clone(),
            }),
        }
        Self::check_funding(scan, problems, &row);
    }

    /// A row's funding: its amount is what it made less what it took, and
    /// each grant it draws on was made (with that category) by a row.
    fn check_funding(scan: &mut AccountScan, problems: &mut Vec<Problem>, row: &VerifyRow) {
        // An account whose grants were never made is said once, as that
        // (`GrantsMissing`), not once a row.
        if row.snapshot.is_some() && row.snapshot_grants.is_none() {
            return;
        }
        let made = match &row.made {
            Some((amount, category)) => match Category::parse(category) {
                Some(category) => {
                    scan.grants.insert(row.seq, (i128::from(*amount), category));
                    scan.terms
                        .insert(row.seq, (i128::from(*amount), row.made_expires_at));
                    if category == Category::Promotional
                        && row.kind == TransactionKind::Credit.as_str()
                        && row.order_id.is_some()
                    {
                        problems.push(Problem::FundingBreaksRule {
                            account_id: row.account_id,
                            seq: row.seq,
                            grant_id: row.seq,
                            rule: FundingRule::PaidAsPromotional,
                        });
                    }
                    *amount
                }
                None => {
                    problems.push(Problem::UnknownGrant {
                        account_id: row.account_id,
                        seq: row.seq,
                        grant_id: row.seq,
                    });
                    *amount
                }
            },
            None => 0,
        };
        let funding = match row.funded_by.as_deref().map(Funding::decode) {
            None => Funding::NONE,
            Some(Ok(funding)) => funding,
            Some(Err(_)) => {
                problems.push(Problem::UnreadableFunding {
                    account_id: row.account_id,
                    seq: row.seq,
                    stored: row.funded_by.clone().unwrap_or_default(),
                });
                return;
            }
        };
        let mut funded: i128 = 0;
        let kind = TransactionKind::parse(&row.kind);
        for draw in funding.draws() {
            funded += i128::from(draw.amount.micros());
            let left = match scan.grants.get_mut(&draw.grant_id) {
                Some((left, category)) if *category == draw.category => {
                    *left -= i128::from(draw.amount.micros());
                    *left
                }
                _ => {
                    problems.push(Problem::UnknownGrant {
                        account_id: row.account_id,
                        seq: row.seq,
                        grant_id: draw.grant_id,
                    });
                    continue;
                }
            };
            let terms = scan.terms.get(&draw.grant_id).copied();
            if let Some(rule) = broken_rule(row, kind, draw, left, terms) {
                problems.push(Problem::FundingBreaksRule {
                    account_id: row.account_id,
                    seq: row.seq,
                    grant_id: draw.grant_id,
                    rule,
                });
            }
        }
        if i128::from(row.amount) != i128::from(made) - funded {
            problems.push(Problem::FundingMismatch {
                account_id: row.account_id,
                seq: row.seq,
                amount_micros: row.amount,
                made_micros: made,
                funded_micros: funded,
            });
        }
    }

    /// The account's grants against its ledger: what the snapshot says is
    /// left of each is what the rows left, and sums to the balance.
    fn check_grants(
        problems: &mut Vec<Problem>,
        account_id: AccountId,
        ledger: &BTreeMap<i64, (i128, Category)>,
        stored: Option<&str>,
        balance: i64,
        balance_agrees: bool,
    ) {
        for (grant_id, (left, _)) in ledger {
            let out_of_range = if *grant_id == SHORTFALL {
                *left > 0
            } else {
                *left < 0
            };
            if out_of_range {
                problems.push(Problem::GrantOutOfRange {
                    account_id,
                    grant_id: *grant_id,
                    ledger_micros: *left,
                });
            }
        }
        let Some(stored) = stored else {
            problems.push(Problem::GrantsMissing { account_id });
            return;
        };
        let remaining = match decode_remaining(stored) {
            Ok(remaining) => remaining,
            Err(_) => {
                problems.push(Problem::UnreadableGrants {
                    account_id,
                    stored: stored.to_string(),
                });
                return;
            }
        };
        let snapshot: BTreeMap<i64, i64> = remaining
            .iter()
            .map(|grant| (grant.grant_id, grant.amount.micros()))
            .collect();
        let ids: std::collections::BTreeSet<i64> =
            ledger.keys().chain(snapshot.keys()).copied().collect();
        for grant_id in ids {
            let by_ledger = ledger.get(&grant_id).map_or(0, |(left, _)| *left);
            let by_snapshot = snapshot.get(&grant_id).copied().unwrap_or(0);
            if by_ledger != i128::from(by_snapshot) {
                problems.push(Problem::GrantMismatch {
                    account_id,
                    grant_id,
                    ledger_micros: by_ledger,
                    snapshot_micros: by_snapshot,
                });
            }
        }
        // A balance that disagrees with the ledger is said once, as that.
        let sum: i128 = snapshot.values().map(|left| i128::from(*left)).sum();
        if balance_agrees && sum != i128::from(balance) {
            problems.push(Problem::GrantsSumMismatch {
                account_id,
                grants_sum_micros: sum,
                balance_micros: balance,
            });
        }
    }

    /// An account with no ledger row: its snapshot must be empty.
    pub fn account_without_rows(
        &mut self,
        account_id: AccountId,
        snapshot: Option<(i64, i64)>,
        snapshot_grants: Option<String>,
    ) {
        self.finish_account();
        self.report.accounts_checked += 1;
        if let Some((balance, _)) = snapshot {
            let mut ledger = BTreeMap::new();
            ledger.insert(SHORTFALL, (0, Category::Paid));
            Self::check_grants(
                &mut self.report.problems,
                account_id,
                &ledger,
                snapshot_grants.as_deref(),
                balance,
                balance == 0,
            );
        }
        match snapshot {
            Some((0, 0)) => {}
            Some((balance, seq)) => self.report.problems.push(Problem::SnapshotMismatch {
                account_id,
                ledger_sum_micros: 0,
                ledger_seq: 0,
                snapshot_balance_micros: balance,
                snapshot_seq: seq,
            }),
            None => self
                .report
                .problems
                .push(Problem::MissingSnapshot { account_id }),
        }
    }

    /// Compares the account just scanned with its snapshot.
    fn finish_account(&mut self) {
        let Some(scan) = self.current.take() else {
            return;
        };
        self.report.accounts_checked += 1;
        if let Some((balance, _)) = scan.snapshot {
            Self::check_grants(
                &mut self.report.problems,
                scan.account_id,
                &scan.grants,
                scan.snapshot_grants.as_deref(),
                balance,
                i128::from(balance) == scan.sum,
            );
        }
        match scan.snapshot {
            None => self.report.problems.push(Problem::MissingSnapshot {
                account_id: scan.account_id,
            }),
            Some((balance, seq)) if i128::from(balance) != scan.sum || seq != scan.last_seq => {
                self.report.problems.push(Problem::SnapshotMismatch {
                    account_id: scan.account_id,
                    ledger_sum_micros: scan.sum,
                    ledger_seq: scan.last_seq,
                    snapshot_balance_micros: balance,
                    snapshot_seq: seq,
                })
            }
            Some(_) => {}
        }
    }

    pub fn finish(mut self) -> VerifyReport {
        self.finish_account();
        self.report
    }
}

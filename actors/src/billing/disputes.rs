//! Disputes of orders' payments, in the core's words: a chargeback takes
//! the disputed credit back (as a refund does) and a dispute won gives it
//! back; an inquiry (Stripe's `warning_*` statuses) moves no money, so it
//! takes nothing back until it becomes a dispute. What Stripe's
//! `charge.dispute.*` events say, what is stored of each dispute, and what
//! the console lists.

use serde::{Deserialize, Serialize};

use super::stripe_refunds::RefundStanding;
use crate::ledger::AccountId;
use crate::money::{Money, MoneyError};

/// A dispute's status, as Stripe names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    /// An inquiry: the bank asks before any chargeback; no funds moved.
    WarningNeedsResponse,
    WarningUnderReview,
    /// An inquiry that ended without becoming a chargeback.
    WarningClosed,
    /// A chargeback: the funds are withdrawn; evidence is due.
    NeedsResponse,
    UnderReview,
    /// Decided for the seller: the funds are reinstated.
    Won,
    /// Decided for the cardholder: the funds stay withdrawn.
    Lost,
    /// Stopped before it became a dispute: no funds lost.
    Prevented,
}

impl DisputeStatus {
    pub const ALL: [DisputeStatus; 8] = [
        DisputeStatus::WarningNeedsResponse,
        DisputeStatus::WarningUnderReview,
        DisputeStatus::WarningClosed,
        DisputeStatus::NeedsResponse,
        DisputeStatus::UnderReview,
        DisputeStatus::Won,
        DisputeStatus::Lost,
        DisputeStatus::Prevented,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisputeStatus::WarningNeedsResponse => "warning_needs_response",
            DisputeStatus::WarningUnderReview => "warning_under_review",
            DisputeStatus::WarningClosed => "warning_closed",
            DisputeStatus::NeedsResponse => "needs_response",
            DisputeStatus::UnderReview => "under_review",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
            DisputeStatus::Prevented => "prevented",
        }
    }

    pub fn parse(text: &str) -> Option<DisputeStatus> {
        DisputeStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Whether the dispute is over (nothing more will happen to it).
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            DisputeStatus::WarningClosed
                | DisputeStatus::Won
                | DisputeStatus::Lost
                | DisputeStatus::Prevented
        )
    }

    /// What the status says of the disputed funds, when no event says
    /// they moved.
    fn funds(self) -> DisputeFunds {
        match self {
            DisputeStatus::WarningNeedsResponse
            | DisputeStatus::WarningUnderReview
            | DisputeStatus::WarningClosed => DisputeFunds::None,
            DisputeStatus::NeedsResponse | DisputeStatus::UnderReview | DisputeStatus::Lost => {
                DisputeFunds::Withdrawn
            }
            DisputeStatus::Won | DisputeStatus::Prevented => DisputeFunds::Reinstated,
        }
    }
}

/// Where a dispute's funds stand, as far as the credit is concerned. It
/// only ever moves forward (a later event never moves it back, whatever
/// order Stripe's events arrive in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DisputeFunds {
    /// An inquiry: nothing withdrawn, no credit held back.
    None,
    /// Withdrawn: the disputed credit is held back (and stays so if lost).
    Withdrawn,
    /// Reinstated (won), or never to be withdrawn (prevented): nothing
    /// held back.
    Reinstated,
}

impl DisputeFunds {
    pub fn as_str(self) -> &'static str {
        match self {
            DisputeFunds::None => "none",
            DisputeFunds::Withdrawn => "withdrawn",
            DisputeFunds::Reinstated => "reinstated",
        }
    }

    pub fn parse(text: &str) -> Option<DisputeFunds> {
        match text {
            "none" => Some(DisputeFunds::None),
            "withdrawn" => Some(DisputeFunds::Withdrawn),
            "reinstated" => Some(DisputeFunds::Reinstated),
            _ => None,
        }
    }
}

/// Which `charge.dispute.*` event it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeChange {
    /// `charge.dispute.created`
    Created,
    /// `charge.dispute.updated`
    Updated,
    /// `charge.dispute.funds_withdrawn`
    FundsWithdrawn,
    /// `charge.dispute.funds_reinstated`
    FundsReinstated,
    /// `charge.dispute.closed`
    Closed,
}

/// A dispute as one of Stripe's events reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeReport {
    pub dispute_id: String,
    pub charge_id: String,
    /// The disputed PaymentIntent, which finds the order.
    pub payment_intent_id: Option<String>,
    pub amount_cents: i64,
    pub status: DisputeStatus,
    /// The cardholder's reason, as Stripe names it (`fraudulent`, …).
    pub reason: String,
    /// When evidence is due (Unix milliseconds), if Stripe said.
    pub respond_by_ms: Option<i64>,
    pub change: DisputeChange,
}

impl DisputeReport {
    /// Where this event says the funds stand: an event that moves them
    /// says so; any other, its status.
    pub fn funds(&self) -> DisputeFunds {
        match self.change {
            DisputeChange::FundsWithdrawn => DisputeFunds::Withdrawn,
            DisputeChange::FundsReinstated => DisputeFunds::Reinstated,
            DisputeChange::Created | DisputeChange::Updated | DisputeChange::Closed => {
                self.status.funds()
            }
        }
    }
}

/// A dispute to record (or to move forward), with its order.
#[derive(Clone, Debug)]
pub struct DisputeUpdate {
    pub dispute_id: String,
    pub order_id: i64,
    pub account_id: AccountId,
    pub charge_id: String,
    pub amount: Money,
    pub reason: String,
    pub status: DisputeStatus,
    pub funds: DisputeFunds,
    pub respond_by_ms: Option<i64>,
    pub now_ms: i64,
}

/// A dispute, as stored. Its status never goes back from closed to open,
/// nor from a chargeback to an inquiry, and its funds only move forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DisputeRecord {
    pub dispute_id: String,
    pub order_id: i64,
    pub account_id: AccountId,
    pub charge_id: String,
    #[serde(rename = "amount_micros")]
    pub amount: Money,
    pub reason: String,
    pub status: DisputeStatus,
    pub funds: DisputeFunds,
    pub respond_by_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What an order's refunds and disputes claim of its credit, read at one
/// moment: the credit held back is what its refunds that stand and its
/// disputes whose funds are withdrawn come to, up to what the order
/// credited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderClaims {
    /// What the order's refunds that stand (not failed nor canceled) come
    /// to, each recorded once by its Stripe id (with a legacy record's).
    pub refunds: Money,
    /// The amounts of the order's disputes whose funds are withdrawn.
    pub disputed: Money,
}

/// One claim on an order's credit as the store holds it: a refund by its
/// standing, a dispute by where its funds stand (each read back typed, so
/// a value this release does not know is an error, never left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredClaim {
    Refund(Money, RefundStanding),
    Dispute(Money, DisputeFunds),
}

impl OrderClaims {
    /// What `claims`, all of an order's, come to.
    pub fn of(claims: &[StoredClaim]) -> Result<OrderClaims, MoneyError> {
        let mut totals = OrderClaims {
            refunds: Money::ZERO,
            disputed: Money::ZERO,
        };
        for claim in claims {
            match *claim {
                StoredClaim::Refund(amount, standing) if standing.holds_back() => {
                    totals.refunds = totals.refunds.checked_add(amount)?;
                }
                StoredClaim::Dispute(amount, DisputeFunds::Withdrawn) => {
                    totals.disputed = totals.disputed.checked_add(amount)?;
                }
                StoredClaim::Refund(..) | StoredClaim::Dispute(..) => {}
            }
        }
        Ok(totals)
    }

    /// The credit the order's refunds and disputes hold back, out of
    /// `credited`: never more than it, never less than nothing.
    pub fn held_back(&self, credited: Money) -> Result<Money, MoneyError> {
        Ok(self
            .refunds
            .checked_add(self.disputed)?
            .min(credited)
            .max(Money::ZERO))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dollars(amount: i64) -> Money {
        Money::from_micros(amount * 1_000_000)
    }

    #[test]
    fn claims_count_the_refunds_that_stand_and_the_funds_withdrawn() {
        use DisputeFunds::*;
        use RefundStanding::*;
        let claims = OrderClaims::of(&[
            StoredClaim::Refund(dollars(3), Counted),
            StoredClaim::Refund(dollars(4), Failed),
            StoredClaim::Refund(dollars(2), Legacy),
            StoredClaim::Refund(dollars(5), Replaced),
            StoredClaim::Dispute(dollars(10), Withdrawn),
            StoredClaim::Dispute(dollars(6), Reinstated),
            StoredClaim::Dispute(dollars(7), None),
        ])
        .unwrap();
        assert_eq!(
            claims,
            OrderClaims {
                refunds: dollars(5),
                disputed: dollars(10)
            }
        );
    }

    #[test]
    fn every_status_reads_back_and_inquiries_move_no_funds() {
        for status in DisputeStatus::ALL {
            assert_eq!(DisputeStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(DisputeStatus::parse("charge_refunded"), None);
        for funds in [
            DisputeFunds::None,
            DisputeFunds::Withdrawn,
            DisputeFunds::Reinstated,
        ] {
            assert_eq!(DisputeFunds::parse(funds.as_str()), Some(funds));
        }
        let report = |status, change| DisputeReport {
            dispute_id: "dp_1".into(),
            charge_id: "ch_1".into(),
            payment_intent_id: None,
            amount_cents: 1000,
            status,
            reason: "fraudulent".into(),
            respond_by_ms: None,
            change,
        };
        use DisputeChange::*;
        use DisputeStatus::*;
        assert_eq!(
            report(WarningNeedsResponse, Created).funds(),
            DisputeFunds::None
        );
        assert_eq!(
            report(NeedsResponse, Created).funds(),
            DisputeFunds::Withdrawn
        );
        assert_eq!(
            report(WarningUnderReview, FundsWithdrawn).funds(),
            DisputeFunds::Withdrawn
        );
        assert_eq!(report(Won, Closed).funds(), DisputeFunds::Reinstated);
        assert_eq!(
            report(UnderReview, FundsReinstated).funds(),
            DisputeFunds::Reinstated
        );
        assert_eq!(report(Lost, Closed).funds(), DisputeFunds::Withdrawn);
    }

    #[test]
    fn what_is_held_back_never_exceeds_the_credit_nor_goes_below_nothing() {
        let claims = |refunds, disputed| OrderClaims {
            refunds: dollars(refunds),
            disputed: dollars(disputed),
        };
        let ten = dollars(10);
        assert_eq!(claims(3, 0).held_back(ten).unwrap(), dollars(3));
        assert_eq!(claims(3, 7).held_back(ten).unwrap(), ten);
        assert_eq!(claims(10, 10).held_back(ten).unwrap(), ten);
        assert_eq!(claims(10, 10).held_back(dollars(5)).unwrap(), dollars(5));
        assert_eq!(claims(0, 4).held_back(ten).unwrap(), dollars(4));
        assert_eq!(claims(0, 0).held_back(ten).unwrap(), Money::ZERO);
        assert_eq!(claims(3, 0).held_back(Money::ZERO).unwrap(), Money::ZERO);
    }
}

//! Stripe's refunds of orders' payments, each recorded once by its id.
//! What an order's refunds hold back of its credit is what those that
//! stand (made: pending or succeeded) come to, whatever Stripe's running
//! total of the charge (`amount_refunded`) says: Stripe does not say
//! whether a refund that fails stays in that total, so it decides nothing.
//! A refund seen failed (or canceled) stops counting, for good.

use serde::Serialize;

use crate::money::Money;

/// Where a recorded refund stands, as far as the order's credit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RefundStanding {
    /// Made (pending, succeeded, or waiting on the customer): its amount
    /// is held back.
    Counted,
    /// Failed or canceled: its money came back, nothing is held back for
    /// it. Never counted again.
    Failed,
    /// What an order refunded before refunds were recorded one by one held
    /// back (Stripe's running total less the refunds reported failed),
    /// held back until Stripe's list of the payment's refunds replaces it.
    Legacy,
    /// A legacy record that Stripe's list of the payment's refunds
    /// replaced: it holds back nothing.
    Replaced,
}

impl RefundStanding {
    pub const ALL: [RefundStanding; 4] = [
        RefundStanding::Counted,
        RefundStanding::Failed,
        RefundStanding::Legacy,
        RefundStanding::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStanding::Counted => "counted",
            RefundStanding::Failed => "failed",
            RefundStanding::Legacy => "legacy",
            RefundStanding::Replaced => "replaced",
        }
    }

    pub fn parse(text: &str) -> Option<RefundStanding> {
        RefundStanding::ALL
            .into_iter()
            .find(|standing| standing.as_str() == text)
    }

    /// Whether the record holds back its amount of the order's credit.
    pub fn holds_back(self) -> bool {
        matches!(self, RefundStanding::Counted | RefundStanding::Legacy)
    }
}

/// How a refund came to be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RecordedBy {
    /// Reported by an event, or by Stripe's list asked for one.
    Event,
    /// Found in Stripe's list of the payment's refunds that replaced the
    /// order's legacy record, within what that record held back: the host
    /// was told of it by the earlier release's running total, and is not
    /// told again.
    LegacyReplacement,
}

impl RecordedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordedBy::Event => "event",
            RecordedBy::LegacyReplacement => "legacy_replacement",
        }
    }

    /// Whether the host was told of the refund before it was recorded
    /// (by the earlier release's running total): it is recorded told.
    pub fn told_before(self) -> bool {
        self == RecordedBy::LegacyReplacement
    }

    pub fn parse(text: &str) -> Option<RecordedBy> {
        match text {
            "event" => Some(RecordedBy::Event),
            "legacy_replacement" => Some(RecordedBy::LegacyReplacement),
            _ => None,
        }
    }
}

/// The id of the legacy record of an order (one per order refunded before
/// refunds were recorded one by one; the migration makes it).
pub fn legacy_refund_id(order_id: i64) -> String {
    format!("legacy-order-{order_id}")
}

/// An order that holds a legacy record, claimed by the sweep that
/// replaces it with Stripe's list of the payment's refunds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyOrder {
    pub order_id: i64,
    /// The payment whose refunds Stripe is asked for (`None`: the order
    /// has none; nothing can be asked).
    pub payment_intent_id: Option<String>,
}

/// A refund as Stripe reported it, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRefund {
    pub refund_id: String,
    pub amount: Money,
    /// Stripe made it (it is not failed nor canceled).
    pub made: bool,
    /// Stripe's own word for its status, kept as said.
    pub stripe_status: String,
    /// Found in Stripe's list of the payment's refunds that replaces the
    /// order's legacy record, within what that record held back (see
    /// [`held_by_legacy`]): if this recording replaces it, the refund is
    /// recorded [`RecordedBy::LegacyReplacement`].
    pub held_by_legacy: bool,
}

/// Which refunds of Stripe's list of a payment's refunds (newest first,
/// as Stripe lists them: id, amount, whether the legacy record's amount
/// counts it — every refund but those recorded failed before the upgrade,
/// which the earlier release left out of it) an order's legacy record of
/// `held_back` held back: oldest first, as far as that amount goes (a
/// refund only part of which fits is not one of them). The earlier release
/// told the host of those by its running total; a refund beyond them was
/// made after the upgrade, or was one the earlier release did not count.
pub fn held_by_legacy(
    listed_newest_first: &[(String, Money, bool)],
    held_back: Money,
) -> Vec<&str> {
    let mut held = Vec::new();
    let mut covered = Money::ZERO;
    for (refund_id, amount, counted) in listed_newest_first.iter().rev() {
        if !*counted || held.contains(&refund_id.as_str()) {
            continue;
        }
        match covered.checked_add(*amount) {
            Ok(sum) if sum <= held_back => {
                covered = sum;
                held.push(refund_id.as_str());
            }
            _ => break,
        }
    }
    held
}

/// The refunds of an order that Stripe reported, to record in one
/// transaction.
#[derive(Clone, Debug)]
pub struct RefundsSeen {
    pub order_id: i64,
    pub refunds: Vec<SeenRefund>,
    /// `refunds` is Stripe's whole list of the payment's refunds, asked of
    /// Stripe just now: it replaces the order's legacy record, if it has
    /// one.
    pub replace_legacy: bool,
    pub now_ms: i64,
}

/// A refund as recorded (or an order's legacy record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StripeRefund {
    /// Stripe's id of the refund (`legacy-order-…`: the order's legacy
    /// record, no refund of Stripe's).
    pub refund_id: String,
    pub order_id: i64,
    #[serde(rename = "amount_micros")]
    pub amount: Money,
    pub standing: RefundStanding,
    /// Stripe's word for the refund's status when its standing was decided.
    pub stripe_status: String,
    pub recorded_by: RecordedBy,
    #[serde(
        rename = "recorded_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub recorded_at_ms: i64,
    #[serde(
        rename = "updated_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at_ms: i64,
    /// The host was told of it otherwise than by a ledger row of its own
    /// (its own `payment.refunded`, written with this mark; or, held back
    /// by its order's legacy record, the earlier release's running total):
    /// never told again. A refund whose row is in the ledger was told by
    /// that row. Decides; not shown (a refund told by its row is `false`).
    #[serde(skip)]
    pub told: bool,
    /// Where the legacy refund sweep stands with the order's legacy
    /// record, or its replacement; `null` for a refund of Stripe's.
    pub sweep: Option<SweepMarks>,
}

/// Where the background sweep that replaces orders' legacy records stands
/// with one (see [`crate::billing::legacy_refunds`]), as its marks on the
/// record say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepMarks {
    pub state: SweepState,
    /// A round of the sweep holds the order until then (`null`: none
    /// does); a claim that ran out is the next round's.
    #[serde(
        rename = "claimed_until",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub claimed_until_ms: Option<i64>,
    /// When the order's credit was settled with the refunds that replaced
    /// the record (`null`: not yet, or not replaced).
    #[serde(
        rename = "settled_at",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub settled_at_ms: Option<i64>,
    /// Why the sweep left the record as it is, for good (`null`: it did
    /// not): it holds back what it held, and a refund event about the
    /// order may still replace it.
    pub left_because: Option<String>,
}

/// What the sweep does with an order's legacy record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SweepState {
    /// It takes the order up (the record is not replaced yet, or its
    /// replacement's refunds are not all settled).
    Pending,
    /// Replaced, and the order's credit settled with Stripe's refunds: it
    /// takes the order no more.
    Settled,
    /// Left for good (`left_because` says why).
    Left,
}

impl SweepMarks {
    /// The marks a record of `standing` holds, read back: a legacy record
    /// or its replacement has them (settled only once replaced); a refund
    /// of Stripe's none. Any other is not a record this release wrote:
    /// `Err` names the mark that is out of place (its column) and its value.
    pub fn read(
        standing: RefundStanding,
        claimed_until_ms: Option<i64>,
        settled_at_ms: Option<i64>,
        left_because: Option<String>,
    ) -> Result<Option<SweepMarks>, (&'static str, String)> {
        let out_of_place = |column, value: String| {
            Err((column, format!("{value} on a {} record", standing.as_str())))
        };
        match standing {
            RefundStanding::Counted | RefundStanding::Failed => {
                if let Some(until) = claimed_until_ms {
                    return out_of_place("claimed_until", until.to_string());
                }
                if let Some(at) = settled_at_ms {
                    return out_of_place("settled_at", at.to_string());
                }
                if let Some(because) = left_because {
                    return out_of_place("sweep_left_because", because);
                }
                return Ok(None);
            }
            RefundStanding::Legacy => {
                if let Some(at) = settled_at_ms {
                    return out_of_place("settled_at", at.to_string());
                }
            }
            RefundStanding::Replaced => {}
        }
        let state = match (settled_at_ms, &left_because) {
            (Some(_), _) => SweepState::Settled,
            (None, Some(_)) => SweepState::Left,
            (None, None) => SweepState::Pending,
        };
        Ok(Some(SweepMarks {
            state,
            claimed_until_ms,
            settled_at_ms,
            left_because,
        }))
    }
}

/// An order's refunds as recorded, after a recording: all of them, and
/// the ids of those this recording made or moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRefunds {
    pub refunds: Vec<StripeRefund>,
    pub changed: Vec<String>,
}

impl OrderRefunds {
    pub fn get(&self, refund_id: &str) -> Option<&StripeRefund> {
        self.refunds
            .iter()
            .find(|refund| refund.refund_id == refund_id)
    }

    /// What the refunds that stand come to (the order's refunded figure).
    pub fn standing(&self) -> Result<Money, crate::money::MoneyError> {
        total(
            self.refunds
                .iter()
                .filter(|refund| refund.standing.holds_back()),
        )
    }

    /// What the order's refunds came to in all, those that failed since
    /// too: it never goes down (what `payment.refunded` tells the host).
    pub fn in_all(&self) -> Result<Money, crate::money::MoneyError> {
        total(
            self.refunds
                .iter()
                .filter(|refund| refund.standing != RefundStanding::Replaced),
        )
    }

    /// Where the order's refunds stood when they were read (see
    /// [`RefundsAsRead`]).
    pub fn as_read(&self) -> RefundsAsRead {
        let count = |refunds: usize| i64::try_from(refunds).unwrap_or(i64::MAX);
        RefundsAsRead {
            recorded: count(self.refunds.len()),
            failed: count(
                self.refunds
                    .iter()
                    .filter(|refund| refund.standing == RefundStanding::Failed)
                    .count(),
            ),
        }
    }

    /// Whether the order holds back a legacy record.
    pub fn has_legacy(&self) -> bool {
        self.refunds
            .iter()
            .any(|refund| refund.standing == RefundStanding::Legacy)
    }
}

/// Where an order's refunds stood when they were read: how many are
/// recorded (its legacy record with them), and how many of those failed.
/// Both only grow — a refund is recorded once and moves only from counted
/// to failed (a legacy record only to replaced, which an order whose
/// record is replaced does no more) — so any recording since the read
/// makes another: the mark of an order settled is written only where it
/// still reads the same (see
/// [`crate::store::BillingStore::legacy_replacement_settled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundsAsRead {
    pub recorded: i64,
    pub failed: i64,
}

fn total<'a>(
    mut refunds: impl Iterator<Item = &'a StripeRefund>,
) -> Result<Money, crate::money::MoneyError> {
    refunds.try_fold(Money::ZERO, |sum, refund| sum.checked_add(refund.amount))
}

/// Why a refund Stripe reported was not recorded: what is recorded of it
/// already says otherwise (Stripe never moves a refund to another payment
/// nor changes its amount).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefundMismatch {
    #[error("refund {refund_id} is recorded for order {recorded}, not order {reported}")]
    OtherOrder {
        refund_id: String,
        recorded: i64,
        reported: i64,
    },
    #[error("refund {refund_id} is recorded as {recorded}, reported as {reported}")]
    OtherAmount {
        refund_id: String,
        recorded: Money,
        reported: Money,
    },
}

/// What a refund reported to an order comes to, given what is recorded of
/// it (`None`: nothing): the standing to record, or nothing to change. A
/// refund only ever moves from counted to failed; a legacy record is not a
/// Stripe refund and is never reported.
pub fn standing_after(
    recorded: Option<&StripeRefund>,
    seen: &SeenRefund,
    order_id: i64,
) -> Result<Option<RefundStanding>, RefundMismatch> {
    let reported = if seen.made {
        RefundStanding::Counted
    } else {
        RefundStanding::Failed
    };
    let Some(recorded) = recorded else {
        return Ok(Some(reported));
    };
    if recorded.order_id != order_id {
        return Err(RefundMismatch::OtherOrder {
            refund_id: seen.refund_id.clone(),
            recorded: recorded.order_id,
            reported: order_id,
        });
    }
    if recorded.amount != seen.amount {
        return Err(RefundMismatch::OtherAmount {
            refund_id: seen.refund_id.clone(),
            recorded: recorded.amount,
            reported: seen.amount,
        });
    }
    Ok(
        (recorded.standing == RefundStanding::Counted && reported == RefundStanding::Failed)
            .then_some(RefundStanding::Failed),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seen(made: bool, cents: i64) -> SeenRefund {
        SeenRefund {
            refund_id: "re_1".into(),
            amount: Money::from_cents(cents).unwrap(),
            made,
            stripe_status: if made { "succeeded" } else { "failed" }.into(),
            held_by_legacy: false,
        }
    }

    fn recorded(standing: RefundStanding) -> StripeRefund {
        StripeRefund {
            refund_id: "re_1".into(),
            order_id: 7,
            amount: Money::from_cents(300).unwrap(),
            standing,
            stripe_status: "succeeded".into(),
            recorded_by: RecordedBy::Event,
            recorded_at_ms: 0,
            updated_at_ms: 0,
            told: false,
            sweep: None,
        }
    }

    #[test]
    fn a_refund_moves_only_from_counted_to_failed() {
        use RefundStanding::*;
        assert_eq!(standing_after(None, &seen(true, 300), 7), Ok(Some(Counted)));
        assert_eq!(standing_after(None, &seen(false, 300), 7), Ok(Some(Failed)));
        let counted = recorded(Counted);
        assert_eq!(
            standing_after(Some(&counted), &seen(true, 300), 7),
            Ok(None)
        );
        assert_eq!(
            standing_after(Some(&counted), &seen(false, 300), 7),
            Ok(Some(Failed))
        );
        let failed = recorded(Failed);
        assert_eq!(standing_after(Some(&failed), &seen(true, 300), 7), Ok(None));
        assert_eq!(
            standing_after(Some(&failed), &seen(false, 300), 7),
            Ok(None)
        );
        assert!(matches!(
            standing_after(Some(&counted), &seen(true, 300), 8),
            Err(RefundMismatch::OtherOrder { .. })
        ));
        assert!(matches!(
            standing_after(Some(&counted), &seen(true, 200), 7),
            Err(RefundMismatch::OtherAmount { .. })
        ));
        for standing in RefundStanding::ALL {
            assert_eq!(RefundStanding::parse(standing.as_str()), Some(standing));
        }
        for by in [RecordedBy::Event, RecordedBy::LegacyReplacement] {
            assert_eq!(RecordedBy::parse(by.as_str()), Some(by));
        }
        assert_eq!(RefundStanding::parse("pending"), None);
    }

    #[test]
    fn a_legacy_record_holds_the_oldest_refunds_that_stand_as_far_as_it_goes() {
        let dollars = |amount: i64| Money::from_cents(amount * 100).unwrap();
        let listed: Vec<(String, Money, bool)> = [
            ("re_new", 4, true),
            ("re_2", 2, true),
            ("re_failed", 3, false),
            ("re_1", 1, true),
        ]
        .into_iter()
        .map(|(id, amount, made)| (id.to_string(), dollars(amount), made))
        .collect();
        assert_eq!(held_by_legacy(&listed, dollars(3)), ["re_1", "re_2"]);
        assert_eq!(held_by_legacy(&listed, dollars(2)), ["re_1"]);
        assert_eq!(
            held_by_legacy(&listed, dollars(7)),
            ["re_1", "re_2", "re_new"]
        );
        assert!(held_by_legacy(&listed, Money::ZERO).is_empty());
    }

    #[test]
    fn the_sweeps_marks_are_read_only_where_it_writes_them() {
        use RefundStanding::*;
        let left = || Some("no PaymentIntent".to_string());
        // A refund of Stripe's has none; one that has one was not written
        // by this release.
        let out_of_place = |column: &'static str, value: &str| Err((column, value.to_string()));
        assert_eq!(SweepMarks::read(Counted, None, None, None), Ok(None));
        assert_eq!(
            SweepMarks::read(Failed, Some(1), None, None),
            out_of_place("claimed_until", "1 on a failed record")
        );
        assert_eq!(
            SweepMarks::read(Counted, None, Some(2), None),
            out_of_place("settled_at", "2 on a counted record")
        );
        assert_eq!(
            SweepMarks::read(Counted, None, None, left()),
            out_of_place("sweep_left_because", "no PaymentIntent on a counted record")
        );
        // A legacy record is settled only once replaced.
        assert_eq!(
            SweepMarks::read(Legacy, None, Some(3), None),
            out_of_place("settled_at", "3 on a legacy record")
        );
        let state = |standing, claimed, settled, because| {
            SweepMarks::read(standing, claimed, settled, because)
                .unwrap()
                .unwrap()
                .state
        };
        assert_eq!(state(Legacy, Some(5), None, None), SweepState::Pending);
        assert_eq!(state(Replaced, None, None, None), SweepState::Pending);
        assert_eq!(state(Legacy, None, None, left()), SweepState::Left);
        assert_eq!(state(Replaced, None, Some(7), None), SweepState::Settled);
        // Left by the sweep, then settled by an event about the order.
        assert_eq!(state(Replaced, None, Some(7), left()), SweepState::Settled);
    }

    #[test]
    fn refunds_as_read_move_with_every_recording() {
        use RefundStanding::*;
        let refund = |id: &str, standing| StripeRefund {
            refund_id: id.into(),
            ..recorded(standing)
        };
        let mut refunds = OrderRefunds {
            refunds: vec![refund("legacy-order-7", Replaced), refund("re_1", Counted)],
            changed: Vec::new(),
        };
        let first = refunds.as_read();
        assert_eq!(
            first,
            RefundsAsRead {
                recorded: 2,
                failed: 0
            }
        );
        refunds.refunds[1].standing = Failed;
        let failed = refunds.as_read();
        assert_ne!(failed, first);
        refunds.refunds.push(refund("re_2", Counted));
        assert_ne!(refunds.as_read(), failed);
        assert!(RecordedBy::LegacyReplacement.told_before());
        assert!(!RecordedBy::Event.told_before());
    }

    #[test]
    fn what_stands_and_what_was_refunded_in_all() {
        use RefundStanding::*;
        let refund = |id: &str, cents: i64, standing| StripeRefund {
            refund_id: id.into(),
            amount: Money::from_cents(cents).unwrap(),
            ..recorded(standing)
        };
        let refunds = OrderRefunds {
            refunds: vec![
                refund("legacy-order-7", 500, Replaced),
                refund("re_1", 300, Failed),
                refund("re_2", 200, Counted),
                refund("legacy-order-8", 100, Legacy),
            ],
            changed: Vec::new(),
        };
        assert_eq!(refunds.standing().unwrap(), Money::from_cents(300).unwrap());
        assert_eq!(refunds.in_all().unwrap(), Money::from_cents(600).unwrap());
        assert!(refunds.has_legacy());
    }
}

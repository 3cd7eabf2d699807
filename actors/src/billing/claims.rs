//! An order's credit, settled against what its refunds and disputes claim
//! of it: a refund takes back its amount, and gives it back if it fails; a
//! dispute's funds withdrawn take the disputed credit back (what is unspent
//! first, then the balance may go below zero), reinstated give it back.
//! Each claim is recorded in the store first (a refund once by its Stripe
//! id), then the account's actor brings what the order's rows took back to
//! what all its claims hold back (never more than the order credited),
//! keyed by the claim; then the order is checked once more, so that a claim
//! recorded on another instance at the same moment is counted whichever
//! instance's row commits first.

use super::checkout::Billing;
use super::disputes::{DisputeFunds, DisputeRecord, DisputeReport, DisputeStatus, DisputeUpdate};
use super::events::{cents, payment_intent_key, EventOutcome};
use super::gateway::{GatewayError, RefundReport};
use super::orders::{Order, OrderStatus};
use super::stripe_refunds::{
    held_by_legacy, legacy_refund_id, standing_after, OrderRefunds, RecordedBy, RefundStanding,
    RefundsSeen, SeenRefund, StripeRefund,
};
use super::BillingError;
use crate::account_actor::{TakeBack, TakeBackCause, TakenBack};
use crate::ledger::{IdempotencyKey, LedgerEntry};
use crate::money::Money;
use crate::store::StoreError;
use crate::webhooks::events::{payment_dispute_closed, payment_disputed, payment_refunded};

/// How many checks of an order one settling makes at most: a check that
/// writes a row (another instance's change met this one's) is followed by
/// another.
const SETTLE_CHECKS: u32 = 4;

/// One change of an order's claims to settle the credit by: a row keyed
/// by what changed.
#[derive(Clone, Debug)]
pub(super) struct Settle {
    pub key: IdempotencyKey,
    pub description: String,
    pub cause: TakeBackCause,
}

/// What settling an order's credit came to: what each keyed change's row
/// came to, in turn, and the checks of the order that followed.
#[derive(Debug)]
pub(super) struct Settled {
    pub changes: Vec<TakenBack>,
    pub checks: Vec<TakenBack>,
}

impl Settled {
    /// What the rows moved in all: taken back, given back (both positive).
    fn moved(&self) -> Result<(Money, Money), BillingError> {
        let (mut taken_back, mut given_back) = (Money::ZERO, Money::ZERO);
        for taken in self.changes.iter().chain(&self.checks) {
            let TakenBack::Row(receipt) = taken else {
                continue;
            };
            let amount = receipt.entry.amount;
            if amount.is_negative() {
                taken_back = taken_back.checked_sub(amount).map_err(money_error)?;
            } else {
                given_back = given_back.checked_add(amount).map_err(money_error)?;
            }
        }
        Ok((taken_back, given_back))
    }
}

impl Billing {
    /// Brings what `order`'s rows took back to what its refunds and
    /// disputes hold back, by a row keyed by each change in turn (answered
    /// from the row if the key has one), then checks the order (see
    /// [`Billing::check_order`]) — whether or not a change wrote a row.
    pub(super) async fn settle_credit(
        &self,
        order: &Order,
        credited: Money,
        changes: Vec<Settle>,
    ) -> Result<Settled, BillingError> {
        let mut answers = Vec::with_capacity(changes.len());
        for change in changes {
            let taken = self
                .registry
                .send(
                    order.account_id,
                    TakeBack {
                        order: order.clone(),
                        credited,
                        idempotency_key: change.key,
                        description: change.description,
                        cause: change.cause,
                    },
                )
                .await?;
            answers.push(taken);
        }
        let checks = self.check_order(order, credited).await?;
        Ok(Settled {
            changes: answers,
            checks,
        })
    }

    /// Brings what `order`'s rows took back to what its refunds and
    /// disputes hold back now, by a row keyed by where the account's
    /// ledger stood (`stripe_settle`), until a check finds nothing to
    /// change. Every event about an order ends with it, a retry that finds
    /// every row of its own there too: a check that failed (a crash, a
    /// read or a commit that failed), after a row another instance's claim
    /// met, is made again by Stripe's retry of the event. Its amount is
    /// decided by the account's actor from what it reads, guarded by the
    /// position it read at, so two checks at once move the credit once.
    pub(super) async fn check_order(
        &self,
        order: &Order,
        credited: Money,
    ) -> Result<Vec<TakenBack>, BillingError> {
        let mut checks = Vec::new();
        for _ in 0..SETTLE_CHECKS {
            // A completed order's account has its balance row: without
            // one, where its ledger stands is not known, and no check is
            // keyed by a guess (never as a ledger at its start, `at-0`).
            let seq = self
                .store
                .ledger()
                .snapshot(order.account_id)
                .await?
                .ok_or_else(|| {
                    StoreError::Database(format!(
                        "account {} of order {} has no balance row: where its ledger stands is not known",
                        order.account_id, order.id
                    ))
                })?
                .seq;
            let checked = self
                .registry
                .send(
                    order.account_id,
                    TakeBack {
                        order: order.clone(),
                        credited,
                        idempotency_key: IdempotencyKey::stripe_settle(order.id, seq),
                        description: format!(
                            "order {}: credit settled with its refunds and disputes",
                            order.id
                        ),
                        cause: TakeBackCause::Claims,
                    },
                )
                .await?;
            let settled = matches!(checked, TakenBack::Nothing);
            checks.push(checked);
            if settled {
                break;
            }
        }
        Ok(checks)
    }

    /// The order of a PaymentIntent, if it is completed, and what it
    /// credited; else what the event waits for.
    async fn completed_order(
        &self,
        payment_intent_id: &str,
    ) -> Result<Result<(Order, Money), EventOutcome>, BillingError> {
        let waiting = |detail: String| EventOutcome::Waiting {
            detail,
            on: payment_intent_key(payment_intent_id),
        };
        let order = self
            .store
            .billing()
            .order_by_payment_intent(payment_intent_id.to_string())
            .await?;
        let order = match order {
            Some(order) if order.status != OrderStatus::Pending => order,
            _ => {
                return Ok(Err(waiting(format!(
                    "no completed order for PaymentIntent {payment_intent_id} yet"
                ))))
            }
        };
        match self.credited_by(&order).await? {
            Some(credited) => Ok(Ok((order, credited))),
            None => Ok(Err(waiting(format!(
                "order {}'s credit is not in the ledger yet",
                order.id
            )))),
        }
    }

    /// A `charge.dispute.*` event: the dispute is recorded (or moved
    /// forward), the order's credit follows where its funds stand, and the
    /// host application is told (`payment.disputed` once a chargeback
    /// withdraws funds, `payment.dispute_closed` once it ends), once per
    /// dispute. An inquiry takes nothing back and tells the host nothing:
    /// it is listed for the operator until it closes or becomes a dispute.
    pub(super) async fn apply_dispute(
        &self,
        dispute: &DisputeReport,
        now_ms: i64,
    ) -> Result<EventOutcome, BillingError> {
        let Some(payment_intent_id) = dispute.payment_intent_id.as_deref() else {
            return Ok(EventOutcome::Ignored(
                "a dispute of a charge without a PaymentIntent".into(),
            ));
        };
        let (order, credited) = match self.completed_order(payment_intent_id).await? {
            Ok(found) => found,
            Err(waiting) => return Ok(waiting),
        };
        let record = self
            .store
            .billing()
            .record_dispute(DisputeUpdate {
                dispute_id: dispute.dispute_id.clone(),
                order_id: order.id,
                account_id: order.account_id,
                charge_id: dispute.charge_id.clone(),
                amount: cents(dispute.amount_cents)?,
                reason: dispute.reason.clone(),
                status: dispute.status,
                funds: dispute.funds(),
                respond_by_ms: dispute.respond_by_ms,
                now_ms,
            })
            .await?;
        // The credit follows the dispute as recorded, whatever this event
        // said: a late `created` after the dispute was won takes nothing.
        let stage_key = |funds: DisputeFunds| {
            IdempotencyKey::stripe_dispute(&record.dispute_id, funds.as_str())
                .map_err(|_| BillingError::invalid_id("dispute", &record.dispute_id))
        };
        let description = match record.funds {
            DisputeFunds::None => None,
            DisputeFunds::Withdrawn => Some(format!(
                "dispute {} of order {}: credit taken back",
                record.dispute_id, order.id
            )),
            DisputeFunds::Reinstated => Some(format!(
                "dispute {} of order {} {}: credit given back",
                record.dispute_id,
                order.id,
                record.status.as_str()
            )),
        };
        let Some(description) = description else {
            return Ok(EventOutcome::Applied(format!(
                "inquiry {} about order {} ({}): no credit taken back",
                record.dispute_id,
                order.id,
                record.status.as_str()
            )));
        };
        let settled = self
            .settle_credit(
                &order,
                credited,
                vec![Settle {
                    key: stage_key(record.funds)?,
                    description,
                    cause: TakeBackCause::Claims,
                }],
            )
            .await?
            .changes
            .into_iter()
            .next()
            .unwrap_or(TakenBack::Nothing);
        let row_of = |taken: &TakenBack| match taken {
            TakenBack::Row(receipt) => Some(receipt.entry.clone()),
            TakenBack::Nothing => None,
        };
        let (withdrawn, reinstated) = match record.funds {
            DisputeFunds::Withdrawn => (row_of(&settled), None),
            _ => (
                self.dispute_row(&order, stage_key(DisputeFunds::Withdrawn)?)
                    .await?,
                row_of(&settled),
            ),
        };
        self.tell_dispute(
            &order,
            &record,
            withdrawn.as_ref(),
            reinstated.as_ref(),
            now_ms,
        )
        .await?;
        let moved = |row: &Option<LedgerEntry>| row.as_ref().map_or(Money::ZERO, |row| row.amount);
        Ok(EventOutcome::Applied(format!(
            "dispute {} of order {} {}: {} of credit taken back, {} given back",
            record.dispute_id,
            order.id,
            record.status.as_str(),
            (-moved(&withdrawn)).max(Money::ZERO),
            moved(&reinstated).max(Money::ZERO)
        )))
    }

    /// The row a dispute's stage made, if it made one.
    async fn dispute_row(
        &self,
        order: &Order,
        key: IdempotencyKey,
    ) -> Result<Option<LedgerEntry>, BillingError> {
        Ok(self
            .store
            .ledger()
            .entry_by_key(order.account_id, key)
            .await?)
    }

    /// Tells the host application of a chargeback and of its end, each
    /// once per dispute (recorded after the rows; the Stripe event is
    /// decided only after, so Stripe's retry records what a crash left out).
    async fn tell_dispute(
        &self,
        order: &Order,
        record: &DisputeRecord,
        withdrawn: Option<&LedgerEntry>,
        reinstated: Option<&LedgerEntry>,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        // Prevented before it became a dispute: nothing was withdrawn, so
        // there is nothing to tell (as for an inquiry).
        if record.status == DisputeStatus::Prevented && withdrawn.is_none() {
            return Ok(());
        }
        let mut told = self
            .store
            .webhooks()
            .record_event(payment_disputed(order, record, withdrawn, now_ms)?)
            .await?;
        if record.status.is_closed() {
            told |= self
                .store
                .webhooks()
                .record_event(payment_dispute_closed(order, record, reinstated, now_ms)?)
                .await?;
        }
        if told {
            self.store.webhooks_ready().notify_one();
        }
        Ok(())
    }

    /// Refunds Stripe reported of a payment — a `charge.refunded`'s list
    /// of the charge's refunds, a `refund.*` event's own refund — each
    /// recorded once by its id; then the order's credit is settled by each
    /// refund that stands (a row that takes back no more than it, keyed by
    /// the refund) and each that failed (keyed by its failure), and the
    /// host is told `payment.refunded` once per refund. How much is held
    /// back never depends on the charge's running total. Where the event
    /// may not list every refund it is about (`listed_in_part`: a charge's
    /// list left out or cut short), a report lacks its amount, or the order
    /// holds a legacy record, Stripe is asked for the payment's refunds
    /// first: Stripe not answering fails the event, with nothing recorded,
    /// and Stripe retries it. An order whose legacy record was replaced is
    /// marked settled at the end (the sweep leaves it from then on).
    pub(super) async fn apply_refunds(
        &self,
        payment_intent_id: Option<&str>,
        reported: &[RefundReport],
        listed_in_part: bool,
        now_ms: i64,
    ) -> Result<EventOutcome, BillingError> {
        let Some(payment_intent_id) = payment_intent_id else {
            return Ok(EventOutcome::Ignored(
                "a refund of a charge without a PaymentIntent".into(),
            ));
        };
        let (order, credited) = match self.completed_order(payment_intent_id).await? {
            Ok(found) => found,
            Err(waiting) => return Ok(waiting),
        };
        let recorded = self.store.billing().stripe_refunds(order.id).await?;
        let legacy = recorded
            .iter()
            .find(|refund| refund.standing == RefundStanding::Legacy)
            .map(|refund| refund.amount);
        let has_legacy = legacy.is_some();
        let lacks_amount = reported.iter().any(|report| report.amount_cents.is_none());
        let ask_stripe = listed_in_part || lacks_amount || has_legacy;
        let mut reports = reported.to_vec();
        let mut listed_by_stripe = Vec::new();
        if ask_stripe {
            let listed = self
                .gateway
                .refunds_of(payment_intent_id.to_string())
                .await
                .map_err(|error| {
                    let said = |message| {
                        format!(
                            "Stripe could not list the refunds of {payment_intent_id}: {message}"
                        )
                    };
                    match error {
                        GatewayError::Unavailable(message) => {
                            BillingError::GatewayUnavailable(said(message))
                        }
                        GatewayError::Refused(message) => BillingError::Gateway(said(message)),
                        GatewayError::Missing(message) => {
                            BillingError::GatewayMissing(said(message))
                        }
                        GatewayError::KeyRefused(message) => {
                            BillingError::GatewayKeyRefused(said(message))
                        }
                    }
                })?;
            listed_by_stripe = listed.clone();
            reports.extend(listed);
        }
        let mut seen = refunds_seen(&reports)?;
        if let Some(held_back) = legacy {
            mark_held_by_legacy(&mut seen, &listed_by_stripe, &recorded, held_back)?;
        }
        let recorded = match self
            .record_seen(&order, recorded, &seen, ask_stripe && has_legacy, now_ms)
            .await?
        {
            Ok(recorded) => recorded,
            Err(refused) => return Ok(refused),
        };
        // The refund requests the admin made that these reports settle.
        self.settle_reported_refunds(&reports, now_ms).await?;
        let changes = self.refund_changes(&order, &seen, &recorded).await?;
        let settled = self
            .settle_credit(&order, credited, changes.clone())
            .await?;
        self.tell_refunds_without_rows(&order, &changes, &settled.changes, now_ms)
            .await?;
        // Every refund recorded of the order when it was read is settled
        // now: its legacy record's replacement, if it has one, is done with
        // (the sweep takes it up until then) — unless a refund was recorded
        // since, which its recorder settles, or else the sweep.
        let legacy = legacy_refund_id(order.id);
        if recorded
            .refunds
            .iter()
            .any(|refund| refund.refund_id == legacy && refund.standing == RefundStanding::Replaced)
        {
            self.store.settled_mark_point().await;
            self.store
                .billing()
                .legacy_replacement_settled(order.id, recorded.as_read(), now_ms)
                .await?;
        }
        let (taken_back, given_back) = settled.moved()?;
        Ok(EventOutcome::Applied(format!(
            "order {}: {} refunded and standing ({} refunds known, {} new or changed); \
             {taken_back} of credit taken back, {given_back} given back",
            order.id,
            recorded.standing().map_err(money_error)?,
            recorded.refunds.len(),
            recorded.changed.len(),
        )))
    }

    /// Records the refunds seen of `order`, whose refunds were read as
    /// `recorded_before`, replacing its legacy record if `replace_legacy`;
    /// answers them as they stand, or the event's outcome if the store
    /// refused them (a refund recorded for another order or of another
    /// amount: nothing recorded). Nothing to record — every refund reported
    /// is recorded so already, as Stripe's retries and a refund's several
    /// events report it — is no write: a refund only moves forward, so
    /// what was read cannot have moved since to where this would move it.
    async fn record_seen(
        &self,
        order: &Order,
        recorded_before: Vec<StripeRefund>,
        seen: &[SeenRefund],
        replace_legacy: bool,
        now_ms: i64,
    ) -> Result<Result<OrderRefunds, EventOutcome>, BillingError> {
        let unchanged = !replace_legacy
            && seen.iter().all(|refund| {
                let known = recorded_before
                    .iter()
                    .find(|known| known.refund_id == refund.refund_id);
                matches!(standing_after(known, refund, order.id), Ok(None))
            });
        if unchanged {
            return Ok(Ok(OrderRefunds {
                refunds: recorded_before,
                changed: Vec::new(),
            }));
        }
        let recorded = self
            .store
            .billing()
            .record_refunds(RefundsSeen {
                order_id: order.id,
                refunds: seen.to_vec(),
                replace_legacy,
                now_ms,
            })
            .await;
        match recorded {
            Ok(recorded) => Ok(Ok(recorded)),
            Err(BillingError::RefundMismatch(mismatch)) => Ok(Err(EventOutcome::Failed(format!(
                "{mismatch}: nothing recorded of order {}'s refunds",
                order.id
            )))),
            Err(error) => Err(error),
        }
    }

    /// The rows that settle the order's credit after its refunds were
    /// recorded: each refund of the order whose row is not in the ledger
    /// (those this recording made or moved are settled again by their key
    /// anyway), by where it stands — so a refund recorded by an earlier
    /// try of the event (Stripe listed it; the try stopped before its row)
    /// is settled, and told of, by the retry, which may not ask Stripe
    /// again —, then its legacy record's replacement, if this recording
    /// made it (what is left to bring to what the refunds Stripe lists
    /// hold back). Refunds that stand come first, those this recording
    /// made or moved first and then newest first as reported (so that each
    /// new refund's row takes its own credit), then refunds that failed,
    /// then those the legacy record held back (they find their credit
    /// held back already).
    async fn refund_changes(
        &self,
        order: &Order,
        seen: &[SeenRefund],
        recorded: &OrderRefunds,
    ) -> Result<Vec<Settle>, BillingError> {
        let key_error = |id: &str| BillingError::invalid_id("refund", id);
        let total_refunded = recorded.in_all().map_err(money_error)?;
        let mut changes = Vec::new();
        let reported_at = |refund_id: &str| {
            seen.iter()
                .position(|refund| refund.refund_id == refund_id)
                .unwrap_or(usize::MAX)
        };
        let mut ordered: Vec<(usize, &StripeRefund)> =
            recorded.refunds.iter().enumerate().collect();
        ordered.sort_by_key(|(recorded_at, refund)| {
            let group = match (refund.standing, refund.recorded_by) {
                (RefundStanding::Counted, RecordedBy::Event) => 0,
                (RefundStanding::Failed, _) => 1,
                _ => 2,
            };
            (
                group,
                !recorded.changed.contains(&refund.refund_id),
                reported_at(&refund.refund_id),
                std::cmp::Reverse(*recorded_at),
            )
        });
        for (_, record) in ordered {
            let id = &record.refund_id;
            let change = match record.standing {
                RefundStanding::Counted if record.amount.is_positive() => Settle {
                    key: IdempotencyKey::stripe_refund(id).map_err(|_| key_error(id))?,
                    description: format!("refund {id} of order {}", order.id),
                    cause: TakeBackCause::Refund {
                        refund_id: id.clone(),
                        refunded: record.amount,
                        total_refunded,
                        // An earlier release's server (a rolling upgrade)
                        // records a refund its legacy record held back
                        // without the mark: told by the running total all
                        // the same.
                        announce: !(record.told || record.recorded_by.told_before()),
                    },
                },
                RefundStanding::Failed => Settle {
                    key: IdempotencyKey::stripe_refund_failed(id).map_err(|_| key_error(id))?,
                    description: format!(
                        "refund {id} of order {} {}: credit given back",
                        order.id, record.stripe_status
                    ),
                    cause: TakeBackCause::Claims,
                },
                _ => continue,
            };
            let settled_before = !recorded.changed.contains(id)
                && self
                    .store
                    .ledger()
                    .entry_by_key(order.account_id, change.key.clone())
                    .await?
                    .is_some();
            if !settled_before {
                changes.push(change);
            }
        }
        let legacy = legacy_refund_id(order.id);
        if recorded.changed.contains(&legacy) {
            changes.push(Settle {
                key: IdempotencyKey::stripe_refund(&legacy).map_err(|_| key_error(&legacy))?,
                description: format!(
                    "order {}: the refunds recorded before, as Stripe lists them",
                    order.id
                ),
                cause: TakeBackCause::Claims,
            });
        }
        Ok(changes)
    }

    /// `payment.refunded` for each refund that stands and whose row took
    /// nothing back (what it refunded was held back already: a dispute
    /// took it, a check of the order made when two of its events met took
    /// it, or the order credited less): an event of its own, as the row's
    /// would have been, saying no credit was taken back for it, written
    /// with the refund's mark that it was told — once per refund for good,
    /// however long after the webhook retention pruned the event. Not for
    /// a refund marked told already (the order's legacy record held it
    /// back: the host was told of it by the charge's running total).
    async fn tell_refunds_without_rows(
        &self,
        order: &Order,
        changes: &[Settle],
        taken: &[TakenBack],
        now_ms: i64,
    ) -> Result<(), BillingError> {
        let mut told = false;
        for (change, taken) in changes.iter().zip(taken) {
            let (
                TakeBackCause::Refund {
                    refund_id,
                    refunded,
                    total_refunded,
                    announce: true,
                },
                TakenBack::Nothing,
            ) = (&change.cause, taken)
            else {
                continue;
            };
            let event = payment_refunded(order, refund_id, *refunded, *total_refunded, Money::ZERO)
                .standalone(
                    order.account_id,
                    format!("payment.refunded:{refund_id}"),
                    now_ms,
                )?;
            told |= self
                .store
                .billing()
                .tell_refund(refund_id.clone(), event)
                .await?;
        }
        if told {
            self.store.webhooks_ready().notify_one();
        }
        Ok(())
    }
}

fn money_error(error: crate::money::MoneyError) -> BillingError {
    BillingError::Invalid(format!("an amount out of range: {error}"))
}

/// Marks the refunds seen that the order's legacy record of `held_back`
/// held back (see [`held_by_legacy`]), from Stripe's list of the payment's
/// refunds; those recorded failed before (`recorded_before`: the earlier
/// release knew, and left them out of the amount) are not counted in it.
fn mark_held_by_legacy(
    seen: &mut [SeenRefund],
    listed_by_stripe: &[RefundReport],
    recorded_before: &[StripeRefund],
    held_back: Money,
) -> Result<(), BillingError> {
    let failed_before = |refund_id: &str| {
        recorded_before
            .iter()
            .any(|known| known.refund_id == refund_id && known.standing == RefundStanding::Failed)
    };
    let mut listed = Vec::with_capacity(listed_by_stripe.len());
    for report in listed_by_stripe {
        let Some(cents) = report.amount_cents else {
            continue;
        };
        let amount = Money::from_cents(cents).map_err(|_| {
            BillingError::Invalid(format!("refund {}: amount out of range", report.refund_id))
        })?;
        listed.push((
            report.refund_id.clone(),
            amount,
            !failed_before(&report.refund_id),
        ));
    }
    let held = held_by_legacy(&listed, held_back);
    for refund in seen {
        refund.held_by_legacy = held.contains(&refund.refund_id.as_str());
    }
    Ok(())
}

/// The refunds the reports name, each once, in the order first reported:
/// one any report says failed (or canceled) is failed, whatever another
/// (older) report says. A report without its amount says nothing of it.
fn refunds_seen(reports: &[RefundReport]) -> Result<Vec<SeenRefund>, BillingError> {
    let mut seen: Vec<SeenRefund> = Vec::new();
    for report in reports {
        let Some(cents) = report.amount_cents else {
            continue;
        };
        let refund = SeenRefund {
            refund_id: report.refund_id.clone(),
            amount: Money::from_cents(cents).map_err(|_| {
                BillingError::Invalid(format!("refund {}: amount out of range", report.refund_id))
            })?,
            made: report.made(),
            stripe_status: report.status.clone(),
            held_by_legacy: false,
        };
        match seen
            .iter_mut()
            .find(|known| known.refund_id == refund.refund_id)
        {
            Some(known) if known.made && !refund.made => *known = refund,
            Some(_) => {}
            None => seen.push(refund),
        }
    }
    Ok(seen)
}

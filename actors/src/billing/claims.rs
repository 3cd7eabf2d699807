//! An order's credit, settled against what its refunds and disputes claim
//! of it: a dispute's funds withdrawn take the disputed credit back (what
//! is unspent first, then the balance may go below zero), reinstated give
//! it back; a refund that failed gives back what its refund took. Each
//! claim is recorded in the store first, then the account's actor brings
//! what the order's rows took back to what all its claims hold back (never
//! more than the order credited), keyed by the claim; then the order is
//! checked once more, so that a claim recorded on another instance at the
//! same moment is counted whichever instance's row commits first.

use super::checkout::Billing;
use super::disputes::{
    DisputeFunds, DisputeRecord, DisputeReport, DisputeStatus, DisputeUpdate, FailedRefund,
};
use super::events::{cents, payment_intent_key, EventOutcome};
use super::gateway::RefundReport;
use super::orders::{Order, OrderStatus};
use super::BillingError;
use crate::account_actor::{TakeBack, TakeBackCause, TakenBack};
use crate::ledger::{IdempotencyKey, LedgerEntry};
use crate::money::Money;
use crate::webhooks::events::{payment_dispute_closed, payment_disputed};

/// How many times an order is checked again after a row that settled its
/// credit: each check that writes a row (another instance's claim met this
/// one's) is checked once more.
const SETTLE_CHECKS: u32 = 4;

impl Billing {
    /// Brings what `order`'s rows took back to what its refunds and
    /// disputes hold back, by a row keyed `key` (answered from the row if
    /// the key has one), then checks the order again until nothing is left
    /// to change. Answers what the keyed row came to.
    pub(super) async fn settle_credit(
        &self,
        order: &Order,
        credited: Money,
        key: IdempotencyKey,
        description: String,
        cause: TakeBackCause,
    ) -> Result<TakenBack, BillingError> {
        let account_id = order.account_id;
        let taken = self
            .registry
            .send(
                account_id,
                TakeBack {
                    order: order.clone(),
                    credited,
                    idempotency_key: key.clone(),
                    description,
                    cause,
                },
            )
            .await?;
        if matches!(taken, TakenBack::Row(_)) {
            for pass in 1..=SETTLE_CHECKS {
                let check = IdempotencyKey::stripe_settle(&key, pass)
                    .map_err(|_| BillingError::Invalid(format!("key {key} is too long")))?;
                let checked = self
                    .registry
                    .send(
                        account_id,
                        TakeBack {
                            order: order.clone(),
                            credited,
                            idempotency_key: check,
                            description: format!(
                                "order {}: credit settled with its refunds and disputes",
                                order.id
                            ),
                            cause: TakeBackCause::Claims,
                        },
                    )
                    .await?;
                if matches!(checked, TakenBack::Nothing { .. }) {
                    break;
                }
            }
        }
        Ok(taken)
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
                stage_key(record.funds)?,
                description,
                TakeBackCause::Claims,
            )
            .await?;
        let row_of = |taken: &TakenBack| match taken {
            TakenBack::Row(receipt) => Some(receipt.entry.clone()),
            TakenBack::Nothing { .. } => None,
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

    /// A refund Stripe reports failed or canceled: recorded once, and the
    /// credit its refund took back comes back (what the order's refunds
    /// still hold back, less this one). Answers `None` when the report is
    /// not of a failed refund of this service's orders.
    pub(super) async fn apply_refund_failure(
        &self,
        refund: &RefundReport,
        now_ms: i64,
    ) -> Result<Option<EventOutcome>, BillingError> {
        let (Some(payment_intent_id), Some(amount_cents)) =
            (refund.payment_intent_id.as_deref(), refund.amount_cents)
        else {
            return Ok(None);
        };
        if refund.made() {
            return Ok(None);
        }
        let (order, credited) = match self.completed_order(payment_intent_id).await? {
            Ok(found) => found,
            Err(waiting) => return Ok(Some(waiting)),
        };
        let amount = cents(amount_cents)?;
        self.store
            .billing()
            .record_failed_refund(FailedRefund {
                refund_id: refund.refund_id.clone(),
                order_id: order.id,
                amount,
                now_ms,
            })
            .await?;
        let key = IdempotencyKey::stripe_refund_failed(&refund.refund_id)
            .map_err(|_| BillingError::invalid_id("refund", &refund.refund_id))?;
        let settled = self
            .settle_credit(
                &order,
                credited,
                key,
                format!(
                    "refund {} of order {} {}: credit given back",
                    refund.refund_id, order.id, refund.status
                ),
                TakeBackCause::Claims,
            )
            .await?;
        let given_back = match settled {
            TakenBack::Row(receipt) => receipt.entry.amount.max(Money::ZERO),
            TakenBack::Nothing { .. } => Money::ZERO,
        };
        Ok(Some(EventOutcome::Applied(format!(
            "refund {} of order {} {} ({} refunded): {} of credit given back",
            refund.refund_id, order.id, refund.status, amount, given_back
        ))))
    }
}

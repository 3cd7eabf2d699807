//! Refunds the admin asks Stripe for (`POST /v1/admin/orders/{id}/refund`,
//! `sms-credit orders refund`): recorded before Stripe is asked, with the
//! refund's number on its order, from which Stripe's Idempotency-Key is
//! made, so a repeated click or a retry refunds once. The credit comes off
//! when Stripe's events about the refund arrive (its own, or the charge's),
//! exactly as for a refund made in Stripe's dashboard: one ledger row, keyed
//! by Stripe's refund id, whichever way it started.

use std::collections::BTreeMap;

use serde::Serialize;

use super::checkout::{Billing, KEY_TRUSTED_FOR_MS};
use super::gateway::{metadata as keys, GatewayError, NewRefund, RefundReport};
use super::orders::OrderStatus;
use super::BillingError;
use crate::money::Money;

/// Where a refund request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Asked of Stripe, no answer yet (or none came: asking again with
    /// the same key is safe for 23 hours; after that Stripe is asked what
    /// became of it instead). Stripe's refund events settle it too.
    Requested,
    /// Stripe made the refund (it may still be `pending` at Stripe); its
    /// event takes the credit back.
    Succeeded,
    /// Stripe refused it, reports it failed or canceled (also after it was
    /// recorded `succeeded`: the credit taken back for it comes back), or,
    /// asked after its key could have expired, had no refund for it:
    /// nothing refunded.
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Requested => "requested",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<RefundStatus> {
        match text {
            "requested" => Some(RefundStatus::Requested),
            "succeeded" => Some(RefundStatus::Succeeded),
            "failed" => Some(RefundStatus::Failed),
            _ => None,
        }
    }
}

/// A refund the admin asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefundRequest {
    pub id: i64,
    pub order_id: i64,
    /// The refund's number on its order (1, 2, …).
    pub n: i64,
    pub idempotency_key: String,
    #[serde(rename = "amount_micros")]
    pub amount: Money,
    pub reason: String,
    pub status: RefundStatus,
    pub stripe_refund_id: Option<String>,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
}

/// A refund to record, checked against the order in the store's
/// transaction.
#[derive(Clone, Debug)]
pub struct OpenRefund {
    pub order_id: i64,
    pub idempotency_key: String,
    /// `None`: everything not refunded yet.
    pub amount: Option<Money>,
    pub reason: String,
    pub now_ms: i64,
}

/// What recording a refund came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    New(RefundRequest),
    /// The same idempotency key was used before: that request.
    Known(RefundRequest),
}

/// The answer to a refund request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refunded {
    pub refund: RefundRequest,
    /// True when this idempotency key was used before.
    pub replayed: bool,
}

/// The Idempotency-Key Stripe gets for a refund: the order and the
/// refund's number.
pub fn stripe_key(order_id: i64, n: i64) -> String {
    format!("sms-credit-refund-{order_id}-{n}")
}

/// The idempotency key of a refund asked without one: the amount (or
/// "the rest") and the reason, so that the same request twice is one
/// refund. Two refunds of one amount for one reason need keys of their own.
pub fn default_key(amount: Option<Money>, reason: &str) -> String {
    use sha2::Digest;
    let amount = amount.map_or("rest".to_string(), |amount| amount.micros().to_string());
    let digest = sha2::Sha256::digest(format!("{amount}:{}", reason.trim()).as_bytes());
    format!("refund-{}", &hex::encode(digest)[..32])
}

/// Which orders can be refunded.
pub fn refundable(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Completed | OrderStatus::Refunded)
}

/// How long after it was sent a request to Stripe has surely ended (its
/// answer or its timeout), with room to spare.
const LAST_SEND_ENDED_WITHIN_MS: i64 = 10 * 60 * 1_000;

impl Billing {
    /// Asks Stripe to refund (part of) a paid order, once per idempotency
    /// key. Stripe refusing records the request as failed (nothing is
    /// refunded); Stripe not answering leaves it requested, and the same
    /// request asks again with the same Stripe key.
    pub async fn refund_order(
        &self,
        order_id: i64,
        amount: Option<Money>,
        reason: &str,
        idempotency_key: &str,
        now_ms: i64,
    ) -> Result<Refunded, BillingError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(BillingError::Invalid(
                "reason: say why (it is kept with the refund)".into(),
            ));
        }
        if let Some(amount) = amount {
            if !amount.is_positive() || amount.micros() % 10_000 != 0 {
                return Err(BillingError::Invalid(
                    "amount_micros: a positive amount in whole cents".into(),
                ));
            }
        }
        crate::ledger::IdempotencyKey::parse(idempotency_key)
            .map_err(|error| BillingError::Invalid(format!("idempotency_key: {error}")))?;
        let opened = self
            .store
            .billing()
            .open_refund(OpenRefund {
                order_id,
                idempotency_key: idempotency_key.to_string(),
                amount,
                reason: reason.to_string(),
                now_ms,
            })
            .await?;
        let (request, replayed) = match opened {
            Opened::New(request) => (request, false),
            Opened::Known(request) => match request.status {
                RefundStatus::Succeeded => {
                    return Ok(Refunded {
                        refund: request,
                        replayed: true,
                    })
                }
                RefundStatus::Failed => return Err(BillingError::RefundRefused(request.id)),
                RefundStatus::Requested => (request, true),
            },
        };
        let order = self
            .store
            .billing()
            .order(order_id)
            .await?
            .ok_or(BillingError::OrderNotFound(order_id))?;
        let payment_intent_id = order.stripe_payment_intent_id.clone().ok_or_else(|| {
            BillingError::NotRefundable("the order has no payment to refund".into())
        })?;
        // Past the time Stripe surely keeps the key, ask what became of
        // the request instead of sending it again (which could refund a
        // second time).
        if now_ms.saturating_sub(request.created_at_ms) >= KEY_TRUSTED_FOR_MS {
            return self
                .ask_about_refund(request, payment_intent_id, now_ms)
                .await;
        }
        let mut metadata = BTreeMap::new();
        metadata.insert(keys::ORDER_ID.to_string(), order_id.to_string());
        metadata.insert(keys::REFUND_NUMBER.to_string(), request.n.to_string());
        let asked = self
            .gateway
            .refund(NewRefund {
                payment_intent_id,
                amount: request.amount,
                metadata,
                idempotency_key: stripe_key(order_id, request.n),
            })
            .await;
        match asked {
            Ok(stripe_refund_id) => {
                let refund = self
                    .store
                    .billing()
                    .refund_settled(request.id, Ok(stripe_refund_id), now_ms)
                    .await?;
                tracing::info!(order_id, n = refund.n, amount = %refund.amount, "refund made by Stripe");
                Ok(Refunded { refund, replayed })
            }
            // A request Stripe refused for any reason made no refund
            // (recorded failed; a new one takes a new key).
            Err(
                GatewayError::Refused(message)
                | GatewayError::Missing(message)
                | GatewayError::KeyRefused(message),
            ) => {
                tracing::warn!(order_id, n = request.n, %message, "Stripe refused a refund");
                self.store
                    .billing()
                    .refund_settled(request.id, Err(message), now_ms)
                    .await?;
                Err(BillingError::RefundRefused(request.id))
            }
            Err(GatewayError::Unavailable(message)) => Err(BillingError::Gateway(message)),
        }
    }

    /// What became of a request left `requested` whose key Stripe may have
    /// forgotten: the PaymentIntent's refunds, as Stripe lists them, say.
    /// Found: settled as Stripe reports it. Not found: nothing was
    /// refunded, and it is failed (a new refund needs a new key). Stripe
    /// not answering (or refusing to list) leaves it requested: unknown is
    /// never a refusal.
    async fn ask_about_refund(
        &self,
        request: RefundRequest,
        payment_intent_id: String,
        now_ms: i64,
    ) -> Result<Refunded, BillingError> {
        let (order_id, n) = (request.order_id, request.n);
        let listed = self
            .gateway
            .refunds_of(payment_intent_id.clone())
            .await
            .map_err(|error| BillingError::Gateway(error.message().to_string()))?;
        let found = listed
            .into_iter()
            .find(|report| report.is_for(&request, &payment_intent_id));
        // A resend made just before the 23 hours may still be on its way
        // (a request waits up to Stripe's timeout): until it surely ended,
        // a refund Stripe does not list is not one never made.
        let sends_ended = now_ms.saturating_sub(request.created_at_ms)
            >= KEY_TRUSTED_FOR_MS.saturating_add(LAST_SEND_ENDED_WITHIN_MS);
        if found.is_none() && !sends_ended {
            return Err(BillingError::Gateway(
                "Stripe has no refund for it yet, and a request sent just before may still be \
                 on its way: ask again in a few minutes"
                    .into(),
            ));
        }
        let outcome = match &found {
            Some(report) if report.made() => Ok(report.refund_id.clone()),
            Some(report) => Err(format!(
                "Stripe reports refund {} {}",
                report.refund_id, report.status
            )),
            None => Err(
                "Stripe has no refund for it (asked after its key could have expired)".to_string(),
            ),
        };
        let refund = self
            .store
            .billing()
            .refund_settled(request.id, outcome, now_ms)
            .await?;
        tracing::info!(
            order_id,
            n,
            status = refund.status.as_str(),
            "a refund request left requested was asked about, not sent again"
        );
        match (refund.status, found) {
            (RefundStatus::Succeeded, _) => Ok(Refunded {
                refund,
                replayed: true,
            }),
            (RefundStatus::Requested, _) => Err(BillingError::Gateway(
                "the refund request is still being settled".into(),
            )),
            (RefundStatus::Failed, Some(_)) => Err(BillingError::RefundRefused(refund.id)),
            (RefundStatus::Failed, None) => Err(BillingError::RefundNotMade(refund.id)),
        }
    }

    /// Settles the refund requests that Stripe's refunds, as an event
    /// reports them, say are made or failed: a request left `requested`
    /// (Stripe did not answer) moves on when its refund's event arrives,
    /// and one recorded `succeeded` (Stripe took it, pending perhaps) ends
    /// `failed` when Stripe says its refund failed or was canceled. Refunds
    /// made elsewhere are skipped. Answers how many it settled.
    pub(super) async fn settle_reported_refunds(
        &self,
        reports: &[RefundReport],
        now_ms: i64,
    ) -> Result<usize, BillingError> {
        let mut settled = 0;
        for report in reports {
            let (Some(order_id), Some(n)) = (report.order_id, report.number) else {
                continue;
            };
            let requests = self.store.billing().refunds_of(order_id).await?;
            let Some(request) = requests.into_iter().find(|request| request.n == n) else {
                continue;
            };
            let order = self.store.billing().order(order_id).await?;
            let payment_intent_id = order.and_then(|order| order.stripe_payment_intent_id);
            if !payment_intent_id.is_some_and(|intent| report.is_for(&request, &intent)) {
                tracing::warn!(order_id, n, refund_id = %report.refund_id,
                    "a refund names a request of ours but is not its payment or amount: not settled by it");
                continue;
            }
            let failure = format!(
                "Stripe reports refund {} {}",
                report.refund_id, report.status
            );
            let refund = match (request.status, report.made()) {
                (RefundStatus::Requested, true) => {
                    self.store
                        .billing()
                        .refund_settled(request.id, Ok(report.refund_id.clone()), now_ms)
                        .await?
                }
                (RefundStatus::Requested | RefundStatus::Succeeded, false) => {
                    self.store
                        .billing()
                        .refund_failed_later(request.id, report.refund_id.clone(), failure, now_ms)
                        .await?
                }
                _ => continue,
            };
            if refund.status == request.status {
                // Another refund than the one recorded for it: not this
                // request's to settle.
                continue;
            }
            tracing::info!(order_id, n, refund_id = %report.refund_id, status = refund.status.as_str(), "a refund request was settled by Stripe's event");
            settled += 1;
        }
        Ok(settled)
    }
}

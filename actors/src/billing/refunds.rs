//! Refunds the admin asks Stripe for (`POST /v1/admin/orders/{id}/refund`,
//! `sms-credit orders refund`): recorded before Stripe is asked, with the
//! refund's number on its order, from which Stripe's Idempotency-Key is
//! made, so a repeated click or a retry refunds once. The credit comes off
//! when Stripe's `charge.refunded` event arrives, exactly as for a refund
//! made in Stripe's dashboard: one ledger row, whichever way it started.

use std::collections::BTreeMap;

use serde::Serialize;

use super::checkout::Billing;
use super::gateway::{GatewayError, NewRefund};
use super::orders::OrderStatus;
use super::BillingError;
use crate::money::Money;

/// Where a refund request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Asked of Stripe, no answer yet (or none came: asking again is safe).
    Requested,
    /// Stripe made the refund; its event takes the credit back.
    Succeeded,
    /// Stripe refused it.
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
        let mut metadata = BTreeMap::new();
        metadata.insert("sms_credit_order_id".to_string(), order_id.to_string());
        metadata.insert("sms_credit_refund".to_string(), request.n.to_string());
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
            Err(GatewayError::Refused(message)) => {
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
}

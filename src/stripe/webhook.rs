//! Verifies a Stripe webhook on its raw body (async-stripe's
//! `Webhook::construct_event`, 300 s tolerance) and turns the event into
//! the core's `StripeEvent`.

use sms_credit_actors::billing::disputes::{DisputeChange, DisputeReport, DisputeStatus};
use sms_credit_actors::billing::events::StripeEvent;
use sms_credit_actors::billing::gateway::{metadata, PaymentPurpose};
use stripe_shared::CheckoutSessionPaymentStatus;
use stripe_webhook::{EventObject, Webhook, WebhookError};

/// Why a webhook request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WebhookFailure {
    /// Missing, malformed, wrong or stale signature: 400.
    BadSignature(String),
    /// Signed, but not an event we can read: 400.
    Unparseable(String),
}

/// A verified event: its id, type and meaning (or, for an event Stripe
/// signed that could not be read, why: it is recorded as failed).
pub struct VerifiedEvent {
    pub id: String,
    pub event_type: String,
    pub event: Result<StripeEvent, String>,
}

/// The id and type of a signed event that async-stripe could not read
/// (an object of a newer API version, say), read loosely.
fn unreadable(body: &str, reason: String) -> Result<VerifiedEvent, WebhookFailure> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|error| WebhookFailure::Unparseable(format!("{reason}: {error}")))?;
    let text = |field: &str| value.get(field).and_then(serde_json::Value::as_str);
    match (text("id"), text("type")) {
        (Some(id), Some(event_type)) if !id.is_empty() => Ok(VerifiedEvent {
            id: id.to_string(),
            event_type: event_type.to_string(),
            event: Err(reason),
        }),
        _ => Err(WebhookFailure::Unparseable(format!(
            "{reason}; the body has no event id and type"
        ))),
    }
}

fn metadata_order_id(metadata: Option<&std::collections::HashMap<String, String>>) -> Option<i64> {
    metadata?.get(metadata::ORDER_ID)?.parse().ok()
}

fn purpose(metadata: &std::collections::HashMap<String, String>) -> Option<PaymentPurpose> {
    PaymentPurpose::parse(metadata.get(metadata::PURPOSE)?)
}

pub fn verify_and_parse(
    body: &str,
    signature: Option<&str>,
    secret: &str,
    now_unix: i64,
) -> Result<VerifiedEvent, WebhookFailure> {
    let signature = signature
        .ok_or_else(|| WebhookFailure::BadSignature("missing Stripe-Signature header".into()))?;
    let verified = match Webhook::construct_event_with_timestamp(body, signature, secret, now_unix)
    {
        Ok(verified) => verified,
        // Only a signed, fresh event gets this far.
        Err(WebhookError::BadParse(reason)) => return unreadable(body, reason),
        Err(WebhookError::BadTimestamp(_)) => {
            return Err(WebhookFailure::BadSignature(
                "the signature is too old (over 300 s)".into(),
            ))
        }
        Err(other) => return Err(WebhookFailure::BadSignature(other.to_string())),
    };
    let event = match verified.data.object {
        EventObject::CheckoutSessionCompleted(session)
        | EventObject::CheckoutSessionAsyncPaymentSucceeded(session) => {
            StripeEvent::CheckoutCompleted {
                order_id: metadata_order_id(session.metadata.as_ref()).or_else(|| {
                    session
                        .client_reference_id
                        .as_deref()
                        .and_then(|id| id.parse().ok())
                }),
                session_id: session.id.to_string(),
                paid: matches!(
                    session.payment_status,
                    CheckoutSessionPaymentStatus::Paid
                        | CheckoutSessionPaymentStatus::NoPaymentRequired
                ),
                amount_total_cents: session.amount_total,
                customer_id: session
                    .customer
                    .as_ref()
                    .map(|customer| customer.id().to_string()),
                payment_intent_id: session
                    .payment_intent
                    .as_ref()
                    .map(|intent| intent.id().to_string()),
            }
        }
        EventObject::CheckoutSessionAsyncPaymentFailed(session) => StripeEvent::CheckoutFailed {
            order_id: metadata_order_id(session.metadata.as_ref()),
            session_id: session.id.to_string(),
        },
        EventObject::CheckoutSessionExpired(session) => StripeEvent::CheckoutExpired {
            order_id: metadata_order_id(session.metadata.as_ref()),
            session_id: session.id.to_string(),
        },
        EventObject::PaymentIntentSucceeded(intent) => StripeEvent::PaymentSucceeded {
            payment_intent_id: intent.id.to_string(),
            amount_received_cents: intent.amount_received,
            customer_id: intent
                .customer
                .as_ref()
                .map(|customer| customer.id().to_string()),
            payment_method_id: intent
                .payment_method
                .as_ref()
                .map(|method| method.id().to_string()),
            order_id: metadata_order_id(Some(&intent.metadata)),
            purpose: purpose(&intent.metadata),
        },
        EventObject::PaymentIntentPaymentFailed(intent) => StripeEvent::PaymentFailed {
            payment_intent_id: intent.id.to_string(),
            order_id: metadata_order_id(Some(&intent.metadata)),
            purpose: purpose(&intent.metadata),
        },
        EventObject::PaymentMethodDetached(method) => StripeEvent::PaymentMethodDetached {
            payment_method_id: method.id.to_string(),
        },
        EventObject::ChargeRefunded(charge) => StripeEvent::ChargeRefunded {
            charge_id: charge.id.to_string(),
            payment_intent_id: charge
                .payment_intent
                .as_ref()
                .map(|intent| intent.id().to_string()),
            amount_refunded_cents: charge.amount_refunded,
            // A Charge without its list of refunds (Stripe's current API
            // versions leave it out), or with the first page of a longer
            // one, does not list them all: the core asks Stripe for them.
            refunds: charge
                .refunds
                .as_ref()
                .map(|list| {
                    list.data
                        .iter()
                        .map(super::gateway::refund_report)
                        .collect()
                })
                .unwrap_or_default(),
            refunds_complete: charge.refunds.as_ref().is_some_and(|list| !list.has_more),
        },
        EventObject::RefundCreated(refund)
        | EventObject::RefundUpdated(refund)
        | EventObject::RefundFailed(refund)
        | EventObject::ChargeRefundUpdated(refund) => StripeEvent::RefundUpdated {
            refund: super::gateway::refund_report(&refund),
        },
        EventObject::ChargeDisputeCreated(dispute) => {
            return dispute_event(
                &verified.id,
                &verified.type_,
                &dispute,
                DisputeChange::Created,
            )
        }
        EventObject::ChargeDisputeUpdated(dispute) => {
            return dispute_event(
                &verified.id,
                &verified.type_,
                &dispute,
                DisputeChange::Updated,
            )
        }
        EventObject::ChargeDisputeFundsWithdrawn(dispute) => {
            return dispute_event(
                &verified.id,
                &verified.type_,
                &dispute,
                DisputeChange::FundsWithdrawn,
            )
        }
        EventObject::ChargeDisputeFundsReinstated(dispute) => {
            return dispute_event(
                &verified.id,
                &verified.type_,
                &dispute,
                DisputeChange::FundsReinstated,
            )
        }
        EventObject::ChargeDisputeClosed(dispute) => {
            return dispute_event(
                &verified.id,
                &verified.type_,
                &dispute,
                DisputeChange::Closed,
            )
        }
        _ => StripeEvent::Other,
    };
    Ok(VerifiedEvent {
        id: verified.id.to_string(),
        event_type: verified.type_.as_str().to_string(),
        event: Ok(event),
    })
}

/// A `charge.dispute.*` event in the core's words; one whose status this
/// release does not know is recorded as unreadable (failed), for an admin
/// to see, never taken for another status.
fn dispute_event(
    id: &impl std::fmt::Display,
    event_type: &stripe_shared::event::EventType,
    dispute: &stripe_shared::Dispute,
    change: DisputeChange,
) -> Result<VerifiedEvent, WebhookFailure> {
    let status = DisputeStatus::parse(dispute.status.as_str()).ok_or_else(|| {
        format!(
            "dispute {}: unknown status {:?}",
            dispute.id,
            dispute.status.as_str()
        )
    });
    let event = status.map(|status| StripeEvent::Dispute {
        dispute: DisputeReport {
            dispute_id: dispute.id.to_string(),
            charge_id: dispute.charge.id().to_string(),
            payment_intent_id: dispute
                .payment_intent
                .as_ref()
                .map(|intent| intent.id().to_string()),
            amount_cents: dispute.amount,
            status,
            reason: dispute.reason.clone(),
            // Stripe says 0 when the bank takes no response.
            respond_by_ms: dispute
                .evidence_details
                .due_by
                .filter(|due_by| *due_by > 0)
                .map(|due_by| due_by.saturating_mul(1000)),
            change,
        },
    });
    Ok(VerifiedEvent {
        id: id.to_string(),
        event_type: event_type.as_str().to_string(),
        event,
    })
}

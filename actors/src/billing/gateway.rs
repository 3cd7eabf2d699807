//! The payment gateway: the few Stripe operations the product needs, as a
//! trait, so that the core never sees HTTP. The server implements it with
//! async-stripe; tests point that client at a fake Stripe.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::money::Money;

/// The metadata keys the product sets on Stripe objects (sessions,
/// PaymentIntents, customers) and reads back from Stripe's events.
pub mod metadata {
    /// The product's order the payment is for.
    pub const ORDER_ID: &str = "sms_credit_order_id";
    /// The account the Stripe object belongs to.
    pub const ACCOUNT_ID: &str = "sms_credit_account_id";
    /// Why the payment was made: a [`super::PaymentPurpose`].
    pub const PURPOSE: &str = "sms_credit_purpose";
    /// On a refund the admin asked for: the refund's number on its order.
    pub const REFUND_NUMBER: &str = "sms_credit_refund";
}

/// Why a payment was made, as stored in its metadata: it decides who
/// credits it (a Checkout's session events, or the PaymentIntent's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentPurpose {
    /// Paid on a Checkout page; `checkout.session.*` events complete it.
    Checkout,
    /// A saved card charged without the customer (`BUY $10`, or an auto
    /// top-up); `payment_intent.*` events complete it.
    OffSessionTopUp,
}

impl PaymentPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentPurpose::Checkout => "checkout",
            PaymentPurpose::OffSessionTopUp => "off_session_top_up",
        }
    }

    /// The purpose in a payment's metadata; `None` for a payment this
    /// product did not make (another product on the same Stripe account).
    pub fn parse(text: &str) -> Option<PaymentPurpose> {
        match text {
            "checkout" => Some(PaymentPurpose::Checkout),
            "off_session_top_up" => Some(PaymentPurpose::OffSessionTopUp),
            _ => None,
        }
    }
}

/// A boxed future, so the trait can be used as `dyn PaymentGateway`.
pub type GatewayFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// Why the gateway did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Stripe could not be reached, answered with a server error, or is
    /// still answering another request with the same idempotency key (a
    /// 409): nothing is known of what was asked, and asking again with
    /// the same key is safe.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
    /// Stripe refused the request.
    #[error("Stripe refused the request: {0}")]
    Refused(String),
}

/// A customer to create.
#[derive(Clone, Debug)]
pub struct NewCustomer {
    pub email: Option<String>,
    pub phone: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: String,
}

/// A Checkout Session to create (mode payment, one line item, the card
/// saved for off-session use).
#[derive(Clone, Debug)]
pub struct NewCheckoutSession {
    pub customer_id: String,
    /// When Stripe closes the session unpaid (Unix seconds): soon, so an
    /// abandoned checkout gives back the discount code's use it holds.
    pub expires_at: i64,
    pub amount: Money,
    pub product_name: String,
    pub success_url: String,
    pub cancel_url: String,
    pub allow_promotion_codes: bool,
    /// Set on the session and on its PaymentIntent.
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

/// A charge of a saved card without the customer present.
#[derive(Clone, Debug)]
pub struct OffSessionCharge {
    pub customer_id: String,
    pub payment_method_id: String,
    pub amount: Money,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// Sent as Stripe's `Idempotency-Key`: a retry never charges twice.
    pub idempotency_key: String,
}

/// How an off-session charge went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        payment_intent_id: String,
        amount: Money,
    },
    /// Accepted but not final yet; the webhook will say.
    Processing { payment_intent_id: String },
    /// The bank wants the customer present (3-D Secure).
    AuthenticationRequired { payment_intent_id: Option<String> },
    Declined {
        decline_code: Option<String>,
        message: String,
    },
}

/// The card a payment was made with, as Stripe reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCard {
    pub payment_method_id: String,
    /// Brand, last four digits and expiry (absent for a method that is
    /// not a card).
    pub card: Option<crate::accounts::Card>,
}

/// A refund of (part of) a payment.
#[derive(Clone, Debug)]
pub struct NewRefund {
    pub payment_intent_id: String,
    /// Whole cents.
    pub amount: Money,
    pub metadata: BTreeMap<String, String>,
    /// Sent as Stripe's `Idempotency-Key`: a retry never refunds twice.
    pub idempotency_key: String,
}

/// A refund as Stripe reports it (in an event, or when asked): which of
/// this service's refund requests it is, from its metadata, and whether
/// it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundReport {
    pub refund_id: String,
    /// The order and the refund's number on it, as this service set them
    /// (`None`: a refund made elsewhere, in Stripe's dashboard say).
    pub order_id: Option<i64>,
    pub number: Option<i64>,
    /// Stripe's status: `pending`, `requires_action`, `succeeded`,
    /// `failed` or `canceled`.
    pub status: String,
    /// What was refunded, in cents (what comes back if it failed).
    #[serde(default)]
    pub amount_cents: Option<i64>,
    /// The refunded PaymentIntent, which finds the order of a refund made
    /// elsewhere.
    #[serde(default)]
    pub payment_intent_id: Option<String>,
}

impl RefundReport {
    /// Whether this is the refund a request of ours asked for: its
    /// metadata names the request, and the payment and the amount are the
    /// request's too (metadata alone can be written by anyone with access
    /// to the Stripe account, on any refund).
    pub fn is_for(
        &self,
        request: &crate::billing::refunds::RefundRequest,
        payment_intent_id: &str,
    ) -> bool {
        self.order_id == Some(request.order_id)
            && self.number == Some(request.n)
            && self.payment_intent_id.as_deref() == Some(payment_intent_id)
            && self
                .amount_cents
                .and_then(|cents| Money::from_cents(cents).ok())
                == Some(request.amount)
    }

    /// Whether Stripe made the refund (it may still be on its way):
    /// anything but failed or canceled.
    pub fn made(&self) -> bool {
        !matches!(self.status.as_str(), "failed" | "canceled")
    }
}

pub trait PaymentGateway: Send + Sync + 'static {
    /// Creates a customer and returns its id.
    fn create_customer(&self, customer: NewCustomer) -> GatewayFuture<'_, String>;
    fn create_checkout_session(
        &self,
        session: NewCheckoutSession,
    ) -> GatewayFuture<'_, CheckoutSession>;
    fn charge_off_session(&self, charge: OffSessionCharge) -> GatewayFuture<'_, ChargeOutcome>;
    /// The payment method a PaymentIntent was paid with (retrieved with
    /// the method expanded); `None` when it has none yet.
    fn payment_method_of(&self, payment_intent_id: String) -> GatewayFuture<'_, Option<SavedCard>>;
    /// What became of the off-session charge of `order_id`, asked of Stripe
    /// by the PaymentIntent's metadata instead of sending it again (once
    /// its idempotency key may have been forgotten); `None`: none was made.
    fn find_charge(&self, order_id: i64) -> GatewayFuture<'_, Option<ChargeOutcome>>;
    /// Stripe's receipt of a PaymentIntent's payment (its latest charge's
    /// `receipt_url`, retrieved with the charge expanded); `None` when it
    /// has no charge or the charge no receipt yet.
    fn receipt_of(&self, payment_intent_id: String) -> GatewayFuture<'_, Option<String>>;
    /// Asks Stripe for a refund; answers the refund's id.
    fn refund(&self, refund: NewRefund) -> GatewayFuture<'_, String>;
    /// The refunds of a PaymentIntent, as Stripe lists them (the most
    /// recent 100), asked instead of sending a refund again once its
    /// idempotency key may have been forgotten.
    fn refunds_of(&self, payment_intent_id: String) -> GatewayFuture<'_, Vec<RefundReport>>;
}

//! Orders: what was sold to whom, at what price and mode, and where its
//! Stripe payment stands.

use serde::Serialize;

use super::pricing::PricingMode;
use crate::ledger::AccountId;
use crate::money::Money;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    InitialAccess,
    TopUp,
    /// A top-up the account's auto top-up started.
    AutoTopUp,
}

impl OrderType {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::InitialAccess => "initial_access",
            OrderType::TopUp => "top_up",
            OrderType::AutoTopUp => "auto_top_up",
        }
    }

    pub fn parse(text: &str) -> Option<OrderType> {
        match text {
            "initial_access" => Some(OrderType::InitialAccess),
            "top_up" => Some(OrderType::TopUp),
            "auto_top_up" => Some(OrderType::AutoTopUp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Completed,
    Failed,
    Refunded,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Completed => "completed",
            OrderStatus::Failed => "failed",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<OrderStatus> {
        match text {
            "pending" => Some(OrderStatus::Pending),
            "completed" => Some(OrderStatus::Completed),
            "failed" => Some(OrderStatus::Failed),
            "refunded" => Some(OrderStatus::Refunded),
            "expired" => Some(OrderStatus::Expired),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    pub id: i64,
    pub account_id: AccountId,
    pub order_type: OrderType,
    /// Expected while pending; what Stripe says was paid once completed.
    #[serde(rename = "amount_micros")]
    pub amount: Money,
    #[serde(rename = "list_price_micros")]
    pub list_price: Money,
    pub pricing_mode: Option<PricingMode>,
    pub stripe_session_id: Option<String>,
    pub stripe_payment_intent_id: Option<String>,
    pub discount_code_id: Option<i64>,
    /// What the order's refunds that stand come to (not those that failed),
    /// as recorded by their Stripe ids.
    #[serde(rename = "amount_refunded_micros")]
    pub amount_refunded: Money,
    pub status: OrderStatus,
    #[serde(
        rename = "created_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at_ms: i64,
    #[serde(
        rename = "completed_at",
        serialize_with = "crate::clock::rfc3339::option::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub completed_at_ms: Option<i64>,
    /// Stripe's receipt for the payment (its charge's `receipt_url`), once
    /// learnt: asked of Stripe when the account holder lists their payments.
    pub receipt_url: Option<String>,
    /// When Stripe was last asked for the receipt (not shown).
    #[serde(skip)]
    pub receipt_asked_at_ms: Option<i64>,
}

/// A limit on the off-session charges of one kind (their keys share a
/// prefix) an account may open since a moment (the start of the UTC day),
/// decided in the transaction that opens the order.
#[derive(Clone, Debug)]
pub struct DailyCap {
    pub key_prefix: String,
    pub limit: Money,
    pub since_ms: i64,
}

/// An order to be created (pending).
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub account_id: AccountId,
    pub order_type: OrderType,
    pub amount: Money,
    pub list_price: Money,
    pub pricing_mode: Option<PricingMode>,
    pub discount_code_id: Option<i64>,
}

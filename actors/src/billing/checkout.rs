//! Starting payments: Checkout Sessions for access and $10 top-ups (the
//! card saved for later), and off-session charges of a saved card.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::discounts::Discount;
use super::gateway::{
    metadata, ChargeOutcome, GatewayError, NewCheckoutSession, NewCustomer, OffSessionCharge,
    PaymentGateway, PaymentPurpose,
};
use super::orders::{DailyCap, NewOrder, Order, OrderStatus, OrderType};
use super::pricing::Pricing;
use super::BillingError;
use crate::account_actor::{Credit, Receipt};
use crate::accounts::{Account, Email, PhoneNumber};
use crate::grants::GrantSource;
use crate::ledger::{AccountId, IdempotencyKey};
use crate::money::Money;
use crate::registry::Registry;
use crate::store::{AccessOrderRequest, OrderCompletion, Store};
use crate::webhooks::events::{payment_failed, payment_succeeded, PaymentSource};

/// Stripe's smallest charge in US dollars.
const MINIMUM_CHARGE: Money = Money::from_micros(500_000);

/// The price of access in the current mode, less the discount of a code
/// (if any): the list price and what to charge. A price below Stripe's
/// minimum charge is refused (and the code's use given back).
fn price_access(
    pricing: &Pricing,
    discount: Option<Discount>,
) -> Result<(Money, Money), BillingError> {
    let list_price = pricing.price();
    let amount = match discount {
        Some(discount) => discount.apply(list_price),
        None => list_price,
    };
    if amount < MINIMUM_CHARGE {
        return Err(BillingError::BelowMinimumCharge(amount));
    }
    Ok((list_price, amount))
}

/// What checkout needs to know beyond the request.
#[derive(Clone, Debug)]
pub struct BillingSettings {
    /// Where Checkout sends the customer after paying / after giving up.
    pub success_url: String,
    pub cancel_url: String,
    /// Let customers type Stripe promotion codes on the Checkout page.
    pub allow_promotion_codes: bool,
    /// Credit that comes with access, credited once on completion.
    pub included_credit: Money,
    /// Auto top-up's waits after failures and its limit.
    pub auto_top_up: super::auto_top_up::AutoTopUpPolicy,
    /// The most `BUY` by SMS may charge one account in a UTC day.
    pub buy_daily_limit: Money,
}

/// Everything the billing flows use.
#[derive(Clone)]
pub struct Billing {
    pub store: Store,
    pub registry: Registry,
    pub gateway: Arc<dyn PaymentGateway>,
    pub settings: Arc<BillingSettings>,
    /// When waiting Stripe events were last checked for expiry (clock ms).
    pub last_expiry_check_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Where the sweep of waiting events goes on from (received at, event
    /// id): `None` from the oldest.
    pub sweep_after: Arc<std::sync::Mutex<Option<(i64, String)>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckoutStarted {
    pub order_id: i64,
    pub account_id: AccountId,
    pub checkout_url: String,
}

/// Why an off-session charge did not get an answer.
#[derive(Debug)]
pub(super) enum ChargeFailure {
    /// Stripe could not be reached or failed: try again with the same key.
    Unavailable(String),
    /// Stripe refused this service's API key (401, 403): nothing was
    /// charged by this request (an earlier one with the key may have
    /// been); the operator's to mend, never the holder's failure. Said in
    /// this service's words (Stripe's went to the log).
    KeyRefused(String),
    Other(BillingError),
}

impl From<BillingError> for ChargeFailure {
    fn from(error: BillingError) -> ChargeFailure {
        ChargeFailure::Other(error)
    }
}

/// How an off-session charge ended for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeResult {
    /// Paid and credited.
    Credited {
        receipt: Receipt,
        payment_intent_id: String,
        /// The card that paid, as its holder knows it.
        card: Option<crate::accounts::Card>,
    },
    /// Accepted, not final; the webhook will credit it.
    Pending {
        payment_intent_id: String,
    },
    AuthenticationRequired,
    Declined {
        message: String,
    },
    /// Asked of Stripe instead of sent again (the key was too old to trust):
    /// Stripe has no charge for it, so nothing was charged; the order is
    /// closed, and a new charge needs a new key.
    NotCharged,
}

/// What an off-session charge came to, as far as Stripe said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeAnswer {
    /// Stripe answered (or, asked later, said what became of the charge).
    Answered(ChargeResult),
    /// Stripe gave no answer (none in time, a 5xx, a 409 while the key's
    /// first request is still in progress): the card may have been charged.
    /// Asked again with the same key, it is answered once Stripe knows; a
    /// charge that succeeded is credited once, here or by the webhook.
    Unknown(String),
}

/// How long a Checkout Session stays open: Stripe's minimum, 30 minutes
/// after Stripe receives the request, and a minute for the way there. An
/// abandoned one gives the discount code's use back about half an hour
/// later, not after Stripe's default of a day.
pub const CHECKOUT_EXPIRES_AFTER_SECS: i64 = 31 * 60;

/// How long after a session would have closed an order that never got one
/// is ended (its session may still be on its way to being recorded).
const UNOPENED_GRACE_SECS: i64 = 5 * 60;

/// When the Checkout Session of an order opened at `created_at_ms` closes
/// (Unix seconds): from the order, so a retry sends the same request, and
/// rounded up, so that it is never under the minimum.
pub fn checkout_expires_at(created_at_ms: i64) -> i64 {
    created_at_ms.div_euclid(1000)
        + i64::from(created_at_ms.rem_euclid(1000) > 0)
        + CHECKOUT_EXPIRES_AFTER_SECS
}

/// How long an idempotency key is trusted: Stripe keeps one for at least
/// 24 hours, then may forget it, and a request with a forgotten key is a
/// new request. A charge first sent longer ago than this is never sent
/// again: Stripe is asked what became of it.
pub const KEY_TRUSTED_FOR_MS: i64 = 23 * 3_600 * 1_000;

/// What an attempt or a reply says of Stripe refusing this service's API
/// key (no credential, no Stripe text).
const KEY_REFUSED: &str = "the payment provider refused this service's credentials";

fn gateway_error(error: GatewayError) -> BillingError {
    BillingError::Gateway(error.to_string())
}

fn metadata_map(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_string(), value.clone()))
        .collect()
}

impl Billing {
    /// Starts paying for access: finds or creates the (pending) account,
    /// prices it in the current mode with an optional discount code (one
    /// use reserved), records a pending order and opens a Checkout Session.
    pub async fn start_access_checkout(
        &self,
        phone: PhoneNumber,
        email: Email,
        discount_code: Option<String>,
        now_ms: i64,
    ) -> Result<CheckoutStarted, BillingError> {
        let (account, order) = self
            .store
            .billing()
            .open_access_order(AccessOrderRequest {
                phone,
                email: email.clone(),
                discount_code,
                price: price_access,
                now_ms,
            })
            .await?;
        self.open_checkout(&account, Some(&email), &order, "SMS forecasts: access")
            .await
    }

    /// Starts a $10 top-up by Checkout for an active account.
    pub async fn start_top_up_checkout(
        &self,
        account_id: AccountId,
        now_ms: i64,
    ) -> Result<CheckoutStarted, BillingError> {
        let (account, order) = self
            .store
            .billing()
            .open_order(
                NewOrder {
                    account_id,
                    order_type: OrderType::TopUp,
                    amount: super::TOP_UP,
                    list_price: super::TOP_UP,
                    pricing_mode: None,
                    discount_code_id: None,
                },
                now_ms,
            )
            .await?;
        let email = account.email.clone();
        self.open_checkout(&account, email.as_ref(), &order, "SMS credit: $10 top-up")
            .await
    }

    /// Creates the customer if needed and the Checkout Session; a failure
    /// fails the order and gives back its discount use.
    async fn open_checkout(
        &self,
        account: &Account,
        email: Option<&Email>,
        order: &Order,
        product_name: &str,
    ) -> Result<CheckoutStarted, BillingError> {
        let opened = async {
            let customer_id = self.ensure_customer(account, email).await?;
            let order_metadata = metadata_map(&[
                (metadata::ORDER_ID, order.id.to_string()),
                (metadata::ACCOUNT_ID, account.id.to_string()),
                (
                    metadata::PURPOSE,
                    PaymentPurpose::Checkout.as_str().to_string(),
                ),
            ]);
            let session = self
                .gateway
                .create_checkout_session(NewCheckoutSession {
                    customer_id,
                    expires_at: checkout_expires_at(order.created_at_ms),
                    amount: order.amount,
                    product_name: product_name.to_string(),
                    success_url: self.settings.success_url.clone(),
                    cancel_url: self.settings.cancel_url.clone(),
                    allow_promotion_codes: self.settings.allow_promotion_codes,
                    metadata: order_metadata,
                    idempotency_key: format!("sms-credit-checkout-order-{}", order.id),
                })
                .await
                .map_err(gateway_error)?;
            Ok::<_, BillingError>(session)
        }
        .await;
        let order_id = order.id;
        match opened {
            Ok(session) => {
                self.store
                    .billing()
                    .set_order_session(order_id, session.id.clone())
                    .await?;
                Ok(CheckoutStarted {
                    order_id,
                    account_id: account.id,
                    checkout_url: session.url,
                })
            }
            Err(error) => {
                self.store
                    .billing()
                    .end_order(order_id, OrderStatus::Failed, None)
                    .await?;
                Err(error)
            }
        }
    }

    /// Gives back the discount code uses held by orders that never got a
    /// Checkout Session (the server stopped, or the request was dropped,
    /// between opening the order and creating its session): once any
    /// session of theirs would have closed, they end as failed. Answers how
    /// many.
    pub async fn end_unopened_orders(&self, now_ms: i64) -> Result<usize, BillingError> {
        let opened_before_ms = now_ms - (CHECKOUT_EXPIRES_AFTER_SECS + UNOPENED_GRACE_SECS) * 1000;
        let ended = self
            .store
            .billing()
            .end_unopened_orders(opened_before_ms, 1_000)
            .await?;
        if !ended.is_empty() {
            tracing::warn!(orders = ?ended, "orders that never got a Checkout Session ended; their discount code uses are back");
        }
        Ok(ended.len())
    }

    /// The account's Stripe customer, created on first need.
    async fn ensure_customer(
        &self,
        account: &Account,
        email: Option<&Email>,
    ) -> Result<String, BillingError> {
        if let Some(customer_id) = &account.stripe_customer_id {
            return Ok(customer_id.clone());
        }
        let created = self
            .gateway
            .create_customer(NewCustomer {
                email: email.map(|email| email.as_str().to_string()),
                phone: account.phone.as_str().to_string(),
                metadata: metadata_map(&[(metadata::ACCOUNT_ID, account.id.to_string())]),
                idempotency_key: format!("sms-credit-customer-{}", account.id),
            })
            .await
            .map_err(gateway_error)?;
        let stored = self
            .store
            .accounts()
            .set_stripe_customer(account.id, created)
            .await?;
        Ok(stored)
    }

    /// Charges the account's saved card off-session. The same
    /// `idempotency_key` again finds the same order and sends the same
    /// Stripe `Idempotency-Key`, so a retry never charges twice; a success
    /// is credited once, keyed by the PaymentIntent, whether learnt here or
    /// from the webhook.
    pub async fn charge_saved_card(
        &self,
        account_id: AccountId,
        amount: Money,
        idempotency_key: &str,
        cap: Option<DailyCap>,
        now_ms: i64,
    ) -> Result<ChargeResult, BillingError> {
        match self
            .try_charge_saved_card(account_id, amount, idempotency_key, cap, now_ms)
            .await?
        {
            ChargeAnswer::Answered(result) => Ok(result),
            ChargeAnswer::Unknown(message) => Err(BillingError::Gateway(message)),
        }
    }

    /// As [`Billing::charge_saved_card`], telling a charge Stripe did not
    /// answer (which may have been made) from a refusal: never an error,
    /// so that no caller takes it for "not charged".
    pub async fn try_charge_saved_card(
        &self,
        account_id: AccountId,
        amount: Money,
        idempotency_key: &str,
        cap: Option<DailyCap>,
        now_ms: i64,
    ) -> Result<ChargeAnswer, BillingError> {
        let (account, order) = self
            .open_charge(
                account_id,
                OrderType::TopUp,
                amount,
                idempotency_key,
                cap,
                now_ms,
            )
            .await?;
        match self
            .send_charge(account, order, idempotency_key, now_ms)
            .await
        {
            Ok(result) => Ok(ChargeAnswer::Answered(result)),
            Err(ChargeFailure::Unavailable(message)) => Ok(ChargeAnswer::Unknown(message)),
            // Not charged by this request: refused, as before the key
            // was told from other refusals (the reply offers the web).
            Err(ChargeFailure::KeyRefused(message)) => Err(BillingError::Gateway(message)),
            Err(ChargeFailure::Other(error)) => Err(error),
        }
    }

    /// The order of an off-session charge (found again by its key), with
    /// the account, after making sure the card is known: a card Stripe has
    /// not told of yet is asked for, an expired one is forgotten.
    pub(super) async fn open_charge(
        &self,
        account_id: AccountId,
        order_type: OrderType,
        amount: Money,
        idempotency_key: &str,
        cap: Option<DailyCap>,
        now_ms: i64,
    ) -> Result<(Account, Order), BillingError> {
        if !amount.is_positive() || amount.micros() % 10_000 != 0 {
            return Err(BillingError::Invalid(
                "a charge is a positive amount in whole cents".into(),
            ));
        }
        self.make_sure_of_card(account_id, now_ms).await?;
        self.store
            .billing()
            .open_off_session_order(
                NewOrder {
                    account_id,
                    order_type,
                    amount,
                    list_price: amount,
                    pricing_mode: None,
                    discount_code_id: None,
                },
                idempotency_key.to_string(),
                cap,
                now_ms,
            )
            .await
    }

    /// Sends an opened charge to Stripe and acts on the answer.
    pub(super) async fn send_charge(
        &self,
        account: Account,
        order: Order,
        idempotency_key: &str,
        now_ms: i64,
    ) -> Result<ChargeResult, ChargeFailure> {
        let (Some(customer_id), Some(payment_method_id)) =
            (account.stripe_customer_id, account.stripe_payment_method_id)
        else {
            return Err(ChargeFailure::Other(BillingError::NoSavedCard));
        };
        let (account_id, order_id, card) = (account.id, order.id, account.card);
        let description = match order.order_type {
            OrderType::AutoTopUp => "SMS credit auto top-up",
            _ => "SMS credit top-up",
        };
        // The order was opened when its key was first sent: past the time
        // Stripe surely keeps the key, ask what happened instead of
        // sending again (which could charge a second time).
        if now_ms.saturating_sub(order.created_at_ms) >= KEY_TRUSTED_FOR_MS {
            let found = self
                .gateway
                .find_charge(order_id)
                .await
                // A search Stripe refused (its rate limit, a key without the
                // permission) says nothing of the charge: asked again later,
                // as when Stripe cannot be reached, never taken as "not
                // charged" or as a refusal of the charge.
                .map_err(|error| ChargeFailure::Unavailable(error.message().to_string()))?;
            return match found {
                Some(outcome) => self.charge_answered(order, card, outcome, now_ms).await,
                None => {
                    self.store
                        .billing()
                        .end_order(order_id, OrderStatus::Failed, None)
                        .await
                        .map_err(BillingError::from)?;
                    Ok(ChargeResult::NotCharged)
                }
            };
        }
        let outcome = self
            .gateway
            .charge_off_session(OffSessionCharge {
                customer_id,
                payment_method_id,
                amount: order.amount,
                description: description.to_string(),
                metadata: metadata_map(&[
                    (metadata::ORDER_ID, order_id.to_string()),
                    (metadata::ACCOUNT_ID, account_id.to_string()),
                    (
                        metadata::PURPOSE,
                        PaymentPurpose::OffSessionTopUp.as_str().to_string(),
                    ),
                ]),
                idempotency_key: format!("sms-credit-charge-{idempotency_key}"),
            })
            .await
            .map_err(|error| match error {
                GatewayError::Unavailable(message) => ChargeFailure::Unavailable(message),
                // Stripe refused this service's API key (401, 403): the
                // operator's to mend, and nothing was charged by this
                // request — but an earlier one with the key may have
                // been: asked again with the same key, as when Stripe
                // cannot be reached, never the holder's failure.
                GatewayError::KeyRefused(said) => {
                    tracing::error!(order_id, %said, "Stripe refused the API key when charging a saved card");
                    ChargeFailure::KeyRefused(KEY_REFUSED.to_string())
                }
                refused @ (GatewayError::Refused(_) | GatewayError::Missing(_)) => {
                    ChargeFailure::Other(gateway_error(refused))
                }
            })?;
        self.charge_answered(order, card, outcome, now_ms).await
    }

    /// Acts on what Stripe said of an off-session charge (its answer, or
    /// what it said when asked later).
    async fn charge_answered(
        &self,
        order: Order,
        card: Option<crate::accounts::Card>,
        outcome: ChargeOutcome,
        now_ms: i64,
    ) -> Result<ChargeResult, ChargeFailure> {
        let order_id = order.id;
        let billing = self.store.billing();
        match outcome {
            ChargeOutcome::Succeeded {
                payment_intent_id,
                amount,
            } => {
                let receipt = self
                    .credit_payment(&order, &payment_intent_id, amount, now_ms)
                    .await?;
                Ok(ChargeResult::Credited {
                    receipt,
                    payment_intent_id,
                    card,
                })
            }
            ChargeOutcome::Processing { payment_intent_id } => {
                billing
                    .set_order_payment_intent(order_id, payment_intent_id.clone())
                    .await
                    .map_err(BillingError::from)?;
                Ok(ChargeResult::Pending { payment_intent_id })
            }
            ChargeOutcome::AuthenticationRequired { payment_intent_id } => {
                if let Some(payment_intent_id) = payment_intent_id {
                    billing
                        .set_order_payment_intent(order_id, payment_intent_id)
                        .await
                        .map_err(BillingError::from)?;
                }
                Ok(ChargeResult::AuthenticationRequired)
            }
            ChargeOutcome::Declined { message, .. } => {
                let event = payment_failed(&order, &message, now_ms).map_err(BillingError::from)?;
                billing
                    .end_order(order_id, OrderStatus::Failed, Some(event))
                    .await
                    .map_err(BillingError::from)?;
                self.store.webhooks_ready().notify_one();
                Ok(ChargeResult::Declined { message })
            }
        }
    }

    /// Learns the card from the account's last paid order when none is
    /// recorded yet (Stripe's events may not have said), and forgets one
    /// that has expired. A Stripe that cannot be asked leaves it as it is.
    async fn make_sure_of_card(
        &self,
        account_id: AccountId,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        let account = self
            .store
            .accounts()
            .get(account_id)
            .await?
            .ok_or(BillingError::AccountNotFound(account_id))?;
        if let (Some(card), Some(payment_method_id)) =
            (&account.card, &account.stripe_payment_method_id)
        {
            let (year, month) = super::auto_top_up::year_month(now_ms);
            if card.expired_before(year, month) {
                self.forget_card(payment_method_id, now_ms).await?;
            }
            return Ok(());
        }
        let Some(customer_id) = account.stripe_customer_id.clone() else {
            return Ok(());
        };
        if account.stripe_payment_method_id.is_some() {
            return Ok(());
        }
        let orders = self.store.billing().orders_of(account_id).await?;
        let paid = orders
            .iter()
            .filter(|order| order.status == OrderStatus::Completed)
            .filter_map(|order| order.stripe_payment_intent_id.clone())
            .next_back();
        if let Some(payment_intent_id) = paid {
            self.learn_card(&customer_id, &payment_intent_id).await;
        }
        Ok(())
    }

    /// Asks Stripe which card paid a PaymentIntent and saves it (with what
    /// the holder knows it by). A failure is logged: the card is then
    /// learnt from `payment_intent.succeeded`, or asked for at charge time.
    pub(super) async fn learn_card(&self, customer_id: &str, payment_intent_id: &str) {
        let learnt = async {
            if let Some(saved) = self
                .gateway
                .payment_method_of(payment_intent_id.to_string())
                .await
                .map_err(gateway_error)?
            {
                self.store
                    .billing()
                    .save_card(customer_id.to_string(), saved.payment_method_id, saved.card)
                    .await?;
            }
            Ok::<(), BillingError>(())
        }
        .await;
        if let Err(error) = learnt {
            tracing::warn!(%error, payment_intent_id, "could not learn the card that paid");
        }
    }

    /// Completes an off-session top-up order and credits what was paid,
    /// once per PaymentIntent.
    pub async fn credit_payment(
        &self,
        order: &Order,
        payment_intent_id: &str,
        amount: Money,
        now_ms: i64,
    ) -> Result<Receipt, BillingError> {
        let (account_id, order_id) = (order.account_id, order.id);
        self.store
            .billing()
            .complete_order(OrderCompletion {
                order_id,
                paid: amount,
                payment_intent_id: Some(payment_intent_id.to_string()),
                customer: None,
                activate: None,
                now_ms,
            })
            .await?;
        let idempotency_key = IdempotencyKey::stripe_payment(payment_intent_id)
            .map_err(|_| BillingError::invalid_id("PaymentIntent", payment_intent_id))?;
        let description = match order.order_type {
            OrderType::AutoTopUp => "auto top-up by saved card",
            _ => "top-up by saved card",
        };
        let source = match order.order_type {
            OrderType::AutoTopUp => PaymentSource::AutoTopUp,
            _ => PaymentSource::SavedCard,
        };
        let card = self
            .store
            .accounts()
            .get(account_id)
            .await?
            .and_then(|account| account.card);
        let credit = Credit {
            amount,
            idempotency_key,
            description: description.to_string(),
            order_id: Some(order_id),
            // Off-session: `BUY`, or an auto top-up.
            source: match order.order_type {
                OrderType::AutoTopUp => GrantSource::AutoTopUp,
                _ => GrantSource::Buy,
            },
            event: Some(payment_succeeded(
                order,
                amount,
                amount,
                source,
                card.as_ref(),
            )),
        };
        Ok(self.registry.send(account_id, credit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_closes_at_least_thirty_one_minutes_after_its_order_opened() {
        for created_at_ms in [1_795_253_400_000, 1_795_253_400_001, 1_795_253_400_999] {
            let expires_at = checkout_expires_at(created_at_ms);
            assert!(
                expires_at * 1000 >= created_at_ms + 31 * 60 * 1000,
                "{created_at_ms}: {expires_at}"
            );
            assert!(expires_at * 1000 < created_at_ms + 31 * 60 * 1000 + 1000);
        }
    }
}

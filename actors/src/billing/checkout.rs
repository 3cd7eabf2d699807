//! Starting payments: Checkout Sessions for access and $10 top-ups (the
//! card saved for later), and off-session charges of a saved card.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::discounts;
use super::gateway::{
    metadata, ChargeOutcome, GatewayError, NewCheckoutSession, NewCustomer, OffSessionCharge,
    PaymentGateway, PaymentPurpose,
};
use super::orders::{self, NewOrder, Order, OrderStatus, OrderType};
use super::pricing;
use super::BillingError;
use crate::account_actor::{Credit, Receipt};
use crate::accounts::{Account, AccountStatus, Email, NewAccount, PhoneNumber};
use crate::ledger::{AccountId, IdempotencyKey};
use crate::money::Money;
use crate::registry::Registry;
use crate::store::{queries, Store};

/// Stripe's smallest charge in US dollars.
const MINIMUM_CHARGE: Money = Money::from_micros(500_000);

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
}

/// Everything the billing flows use.
#[derive(Clone)]
pub struct Billing {
    pub store: Store,
    pub registry: Registry,
    pub gateway: Arc<dyn PaymentGateway>,
    pub settings: Arc<BillingSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckoutStarted {
    pub order_id: i64,
    pub account_id: AccountId,
    pub checkout_url: String,
}

/// How an off-session charge ended for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeResult {
    /// Paid and credited.
    Credited {
        receipt: Receipt,
        payment_intent_id: String,
    },
    /// Accepted, not final; the webhook will credit it.
    Pending {
        payment_intent_id: String,
    },
    AuthenticationRequired,
    Declined {
        message: String,
    },
}

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
        let email_for_account = email.clone();
        let (account, order) = self
            .store
            .write(move |connection| {
                let account = match queries::find_account_by_phone(connection, &phone)? {
                    Some(account) if account.status == AccountStatus::Active => {
                        return Err(BillingError::AlreadyActive(account.id))
                    }
                    Some(account) => account,
                    None => {
                        let new_account = NewAccount {
                            phone,
                            email: Some(email_for_account),
                            status: AccountStatus::Pending,
                        };
                        queries::insert_account(connection, &new_account, now_ms).map_err(
                            |error| match error {
                                queries::CreateAccountError::Store(store) => {
                                    BillingError::Store(store)
                                }
                                other => BillingError::Invalid(other.to_string()),
                            },
                        )?
                    }
                };
                let pricing = pricing::load(connection)?;
                let list_price = pricing.price();
                let (discount_code_id, amount) = match discount_code {
                    Some(code) => {
                        let reserved = discounts::reserve(connection, &code)?;
                        (Some(reserved.id), reserved.discount.apply(list_price))
                    }
                    None => (None, list_price),
                };
                if amount < MINIMUM_CHARGE {
                    return Err(BillingError::BelowMinimumCharge(amount));
                }
                let order = orders::insert(
                    connection,
                    &NewOrder {
                        account_id: account.id,
                        order_type: OrderType::InitialAccess,
                        amount,
                        list_price,
                        pricing_mode: Some(pricing.mode.as_str()),
                        discount_code_id,
                        charge_key: None,
                    },
                    now_ms,
                )?;
                Ok((account, order))
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
        let amount = super::TOP_UP;
        let (account, order) = self
            .store
            .write(move |connection| {
                let account = queries::get_account(connection, account_id)?
                    .ok_or(BillingError::AccountNotFound(account_id))?;
                if account.status != AccountStatus::Active {
                    return Err(BillingError::Invalid(
                        "only an active account can top up; buy access first".into(),
                    ));
                }
                let order = orders::insert(
                    connection,
                    &NewOrder {
                        account_id,
                        order_type: OrderType::TopUp,
                        amount,
                        list_price: amount,
                        pricing_mode: None,
                        discount_code_id: None,
                        charge_key: None,
                    },
                    now_ms,
                )?;
                Ok((account, order))
            })
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
                let session_id = session.id.clone();
                self.store
                    .write(move |connection| orders::set_session(connection, order_id, &session_id))
                    .await?;
                Ok(CheckoutStarted {
                    order_id,
                    account_id: account.id,
                    checkout_url: session.url,
                })
            }
            Err(error) => {
                self.store
                    .write(move |connection| {
                        orders::end_pending(connection, order_id, OrderStatus::Failed)?;
                        discounts::release_for_order(connection, order_id)
                    })
                    .await?;
                Err(error)
            }
        }
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
        let account_id = account.id;
        let stored = self
            .store
            .write(move |connection| queries::set_stripe_customer(connection, account_id, &created))
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
        now_ms: i64,
    ) -> Result<ChargeResult, BillingError> {
        if !amount.is_positive() || amount.micros() % 10_000 != 0 {
            return Err(BillingError::Invalid(
                "a charge is a positive amount in whole cents".into(),
            ));
        }
        let charge_key = idempotency_key.to_string();
        let (account, order) = self
            .store
            .write(move |connection| {
                let account = queries::get_account(connection, account_id)?
                    .ok_or(BillingError::AccountNotFound(account_id))?;
                if account.stripe_customer_id.is_none()
                    || account.stripe_payment_method_id.is_none()
                {
                    return Err(BillingError::NoSavedCard);
                }
                let order = match orders::find_by_charge_key(connection, &charge_key)? {
                    Some(order) => order,
                    None => orders::insert(
                        connection,
                        &NewOrder {
                            account_id,
                            order_type: OrderType::TopUp,
                            amount,
                            list_price: amount,
                            pricing_mode: None,
                            discount_code_id: None,
                            charge_key: Some(&charge_key),
                        },
                        now_ms,
                    )?,
                };
                Ok((account, order))
            })
            .await?;
        let (Some(customer_id), Some(payment_method_id)) =
            (account.stripe_customer_id, account.stripe_payment_method_id)
        else {
            return Err(BillingError::NoSavedCard);
        };
        let order_id = order.id;
        let outcome = self
            .gateway
            .charge_off_session(OffSessionCharge {
                customer_id,
                payment_method_id,
                amount: order.amount,
                description: "SMS credit top-up".to_string(),
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
            .map_err(gateway_error)?;
        match outcome {
            ChargeOutcome::Succeeded {
                payment_intent_id,
                amount,
            } => {
                let receipt = self
                    .credit_payment(account_id, order_id, &payment_intent_id, amount, now_ms)
                    .await?;
                Ok(ChargeResult::Credited {
                    receipt,
                    payment_intent_id,
                })
            }
            ChargeOutcome::Processing { payment_intent_id } => {
                let recorded = payment_intent_id.clone();
                self.store
                    .write(move |connection| {
                        orders::set_payment_intent(connection, order_id, &recorded)
                    })
                    .await?;
                Ok(ChargeResult::Pending { payment_intent_id })
            }
            ChargeOutcome::AuthenticationRequired { payment_intent_id } => {
                if let Some(payment_intent_id) = payment_intent_id {
                    self.store
                        .write(move |connection| {
                            orders::set_payment_intent(connection, order_id, &payment_intent_id)
                        })
                        .await?;
                }
                Ok(ChargeResult::AuthenticationRequired)
            }
            ChargeOutcome::Declined { message, .. } => {
                self.store
                    .write(move |connection| {
                        orders::end_pending(connection, order_id, OrderStatus::Failed)
                    })
                    .await?;
                Ok(ChargeResult::Declined { message })
            }
        }
    }

    /// Completes an off-session top-up order and credits what was paid,
    /// once per PaymentIntent.
    pub async fn credit_payment(
        &self,
        account_id: AccountId,
        order_id: i64,
        payment_intent_id: &str,
        amount: Money,
        now_ms: i64,
    ) -> Result<Receipt, BillingError> {
        let recorded = payment_intent_id.to_string();
        self.store
            .write(move |connection| {
                orders::complete(connection, order_id, amount, Some(&recorded), now_ms)
            })
            .await?;
        let idempotency_key = IdempotencyKey::stripe_payment(payment_intent_id)
            .map_err(|_| super::events::invalid_id("PaymentIntent", payment_intent_id))?;
        let credit = Credit {
            amount,
            idempotency_key,
            description: "top-up by saved card".to_string(),
            order_id: Some(order_id),
        };
        Ok(self.registry.send(account_id, credit).await?)
    }
}

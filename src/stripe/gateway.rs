//! The real Stripe client (async-stripe 1.0), pointed at a configurable base
//! URL so that tests can use a local fake.

use std::collections::{BTreeMap, HashMap};

use sms_credit_actors::accounts::Card;
use sms_credit_actors::billing::gateway::{
    metadata, ChargeOutcome, CheckoutSession, GatewayError, GatewayFuture, NewCheckoutSession,
    NewCustomer, NewRefund, OffSessionCharge, PaymentGateway, RefundReport, SavedCard,
};
use sms_credit_actors::Money;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionPaymentIntentData, CreateCheckoutSessionPaymentIntentDataSetupFutureUsage,
    ProductData,
};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{
    CreatePaymentIntent, CreatePaymentIntentOffSession, RetrievePaymentIntent, SearchPaymentIntent,
};
use stripe_core::refund::{CreateRefund, ListRefund};
use stripe_shared::{CheckoutSessionMode, PaymentIntentStatus};
use stripe_types::Currency;

use crate::config::StripeSettings;

/// How long one request to Stripe may take (Stripe's own libraries wait up
/// to 80 s; a webhook or SMS reply cannot wait that long).
const STRIPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Stripe's API through async-stripe.
pub struct StripeGateway {
    client: Client,
}

impl StripeGateway {
    pub fn new(settings: &StripeSettings) -> Result<StripeGateway, String> {
        // A Stripe that does not answer is an error after this long, never
        // a wait forever (a charge is then asked again with the same key).
        let client = ClientBuilder::new(settings.secret_key.expose())
            .url(format!("{}/", settings.api_base))
            .timeout(STRIPE_TIMEOUT)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(StripeGateway { client })
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, GatewayError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|error| GatewayError::Refused(format!("bad idempotency key: {error}")))
}

fn to_hash_map(metadata: BTreeMap<String, String>) -> HashMap<String, String> {
    metadata.into_iter().collect()
}

/// Stripe's 409 Conflict: another request with the same idempotency key
/// is still in progress (`idempotency_error`), or another request holds
/// the object. It decides nothing: the same request asked again with the
/// same key gets the first one's answer, so it is never a refusal.
const CONFLICT: u16 = 409;

/// Stripe's 429 Too Many Requests: its rate limit (or a lock on the object
/// held by another request) was met before the request was looked at.
const TOO_MANY_REQUESTS: u16 = 429;

/// The most pages of a PaymentIntent's refunds read.
const REFUND_PAGES: usize = 10;

/// What Stripe's error says of the request: a 409 (the key's first request
/// still in progress), a 429 (the rate limit, met before anything was
/// done) and an `idempotency_error` (the key was used with other
/// parameters: what its first request did is not said) decide nothing, so
/// they are "ask again", never a refusal; any other 4xx is Stripe's
/// refusal; anything else is Stripe not answering.
fn gateway_error(error: StripeError) -> GatewayError {
    match error {
        StripeError::Stripe(api_error, CONFLICT) => GatewayError::Unavailable(format!(
            "Stripe is still answering a request with the same key: {}",
            api_error.message.as_deref().unwrap_or("409 Conflict")
        )),
        StripeError::Stripe(api_error, status)
            if status == TOO_MANY_REQUESTS
                || api_error.type_ == stripe_shared::ApiErrorsType::IdempotencyError =>
        {
            GatewayError::Unavailable(format!(
                "Stripe did not take the request ({status}): {}",
                api_error.message.as_deref().unwrap_or("no message")
            ))
        }
        StripeError::Stripe(api_error, status) if status < 500 => GatewayError::Refused(
            api_error
                .message
                .clone()
                .unwrap_or_else(|| format!("status {status}")),
        ),
        other => GatewayError::Unavailable(other.to_string()),
    }
}

fn cents(amount: Money) -> i64 {
    amount.cents_toward_zero()
}

impl PaymentGateway for StripeGateway {
    fn create_customer(&self, customer: NewCustomer) -> GatewayFuture<'_, String> {
        Box::pin(async move {
            let mut request = CreateCustomer::new()
                .phone(customer.phone)
                .metadata(to_hash_map(customer.metadata));
            if let Some(email) = customer.email {
                request = request.email(email);
            }
            let created = request
                .customize()
                .request_strategy(idempotent(&customer.idempotency_key)?)
                .send(&self.client)
                .await
                .map_err(gateway_error)?;
            Ok(created.id.to_string())
        })
    }

    fn create_checkout_session(
        &self,
        session: NewCheckoutSession,
    ) -> GatewayFuture<'_, CheckoutSession> {
        Box::pin(async move {
            let mut price_data = CreateCheckoutSessionLineItemsPriceData::new(Currency::USD);
            price_data.unit_amount = Some(cents(session.amount));
            price_data.product_data = Some(ProductData::new(session.product_name));
            let mut line_item = CreateCheckoutSessionLineItems::new();
            line_item.price_data = Some(price_data);
            line_item.quantity = Some(1);
            let mut payment_intent_data = CreateCheckoutSessionPaymentIntentData::new();
            payment_intent_data.setup_future_usage =
                Some(CreateCheckoutSessionPaymentIntentDataSetupFutureUsage::OffSession);
            payment_intent_data.metadata = Some(to_hash_map(session.metadata.clone()));
            let mut request = CreateCheckoutSession::new()
                .mode(CheckoutSessionMode::Payment)
                .customer(session.customer_id)
                .line_items(vec![line_item])
                .payment_intent_data(payment_intent_data)
                .metadata(to_hash_map(session.metadata.clone()))
                .success_url(session.success_url)
                .cancel_url(session.cancel_url)
                .expires_at(session.expires_at);
            if let Some(order_id) = session.metadata.get(metadata::ORDER_ID) {
                request = request.client_reference_id(order_id.clone());
            }
            if session.allow_promotion_codes {
                request = request.allow_promotion_codes(true);
            }
            let created = request
                .customize()
                .request_strategy(idempotent(&session.idempotency_key)?)
                .send(&self.client)
                .await
                .map_err(gateway_error)?;
            let url = created.url.ok_or_else(|| {
                GatewayError::Unavailable("Stripe answered a Checkout Session without a URL".into())
            })?;
            Ok(CheckoutSession {
                id: created.id.to_string(),
                url,
            })
        })
    }

    fn charge_off_session(&self, charge: OffSessionCharge) -> GatewayFuture<'_, ChargeOutcome> {
        Box::pin(async move {
            let request = CreatePaymentIntent::new(cents(charge.amount), Currency::USD)
                .customer(charge.customer_id)
                .payment_method(charge.payment_method_id)
                .off_session(CreatePaymentIntentOffSession::Bool(true))
                .confirm(true)
                .description(charge.description)
                .metadata(to_hash_map(charge.metadata));
            let answered = request
                .customize()
                .request_strategy(idempotent(&charge.idempotency_key)?)
                .send(&self.client)
                .await;
            match answered {
                Ok(intent) => outcome_of(&intent),
                Err(StripeError::Stripe(api_error, status))
                    if status < 500 && status != CONFLICT =>
                {
                    let code = api_error
                        .code
                        .as_ref()
                        .map(|code| code.as_str().to_string());
                    let payment_intent_id = api_error
                        .payment_intent
                        .as_ref()
                        .map(|intent| intent.id.to_string());
                    let message = api_error
                        .message
                        .clone()
                        .unwrap_or_else(|| "the card was declined".to_string());
                    match code.as_deref() {
                        Some("authentication_required") => {
                            Ok(ChargeOutcome::AuthenticationRequired { payment_intent_id })
                        }
                        Some("card_declined")
                        | Some("expired_card")
                        | Some("incorrect_cvc")
                        | Some("insufficient_funds") => Ok(ChargeOutcome::Declined {
                            decline_code: api_error.decline_code.clone().or(code),
                            message,
                        }),
                        _ if api_error.type_.as_str() == "card_error" => {
                            Ok(ChargeOutcome::Declined {
                                decline_code: api_error.decline_code.clone().or(code),
                                message,
                            })
                        }
                        // Not about the card: what the request's answer
                        // says (a rate limit is "ask again").
                        _ => Err(gateway_error(StripeError::Stripe(api_error, status))),
                    }
                }
                Err(other) => Err(gateway_error(other)),
            }
        })
    }

    fn refund(&self, refund: NewRefund) -> GatewayFuture<'_, String> {
        Box::pin(async move {
            let created = CreateRefund::new()
                .payment_intent(refund.payment_intent_id)
                .amount(cents(refund.amount))
                .metadata(to_hash_map(refund.metadata))
                .customize()
                .request_strategy(idempotent(&refund.idempotency_key)?)
                .send(&self.client)
                .await
                .map_err(gateway_error)?;
            Ok(created.id.to_string())
        })
    }

    /// Every page of the PaymentIntent's refunds (up to `REFUND_PAGES` of
    /// 100: a list cut short would make a refund not listed look never
    /// made, so a longer one is an error).
    fn refunds_of(&self, payment_intent_id: String) -> GatewayFuture<'_, Vec<RefundReport>> {
        Box::pin(async move {
            let mut reports = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..REFUND_PAGES {
                let mut list = ListRefund::new()
                    .payment_intent(payment_intent_id.clone())
                    .limit(100);
                if let Some(after) = &after {
                    list = list.starting_after(after.clone());
                }
                let listed = list.send(&self.client).await.map_err(gateway_error)?;
                reports.extend(listed.data.iter().map(refund_report));
                match listed.data.last() {
                    Some(last) if listed.has_more => after = Some(last.id.to_string()),
                    _ => return Ok(reports),
                }
            }
            Err(GatewayError::Unavailable(format!(
                "PaymentIntent {payment_intent_id} has more than {} refunds",
                REFUND_PAGES * 100
            )))
        })
    }

    fn payment_method_of(&self, payment_intent_id: String) -> GatewayFuture<'_, Option<SavedCard>> {
        Box::pin(async move {
            let intent = RetrievePaymentIntent::new(payment_intent_id.as_str())
                .expand(vec!["payment_method".to_string()])
                .send(&self.client)
                .await
                .map_err(gateway_error)?;
            let Some(method) = intent.payment_method else {
                return Ok(None);
            };
            let card = method.as_object().and_then(|method| {
                method.card.as_ref().map(|card| Card {
                    brand: card.brand.clone(),
                    last4: card.last4.clone(),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                })
            });
            Ok(Some(SavedCard {
                payment_method_id: method.id().to_string(),
                card,
            }))
        })
    }

    fn receipt_of(&self, payment_intent_id: String) -> GatewayFuture<'_, Option<String>> {
        Box::pin(async move {
            let intent = RetrievePaymentIntent::new(payment_intent_id.as_str())
                .expand(vec!["latest_charge".to_string()])
                .send(&self.client)
                .await
                .map_err(gateway_error)?;
            Ok(intent
                .latest_charge
                .as_ref()
                .and_then(|charge| charge.as_object())
                .and_then(|charge| charge.receipt_url.clone()))
        })
    }

    /// Stripe's Search API by the order's id in the PaymentIntent's
    /// metadata (set on every charge this server makes).
    fn find_charge(&self, order_id: i64) -> GatewayFuture<'_, Option<ChargeOutcome>> {
        Box::pin(async move {
            let query = format!("metadata['{}']:'{order_id}'", metadata::ORDER_ID);
            let found = SearchPaymentIntent::new(query)
                .limit(10)
                .send(&self.client)
                .await
                .map_err(gateway_error)?;
            // One key, one PaymentIntent: any that succeeded settles it.
            let mut outcome = None;
            for intent in found.data {
                let this = outcome_of(&intent)?;
                if matches!(this, ChargeOutcome::Succeeded { .. }) || outcome.is_none() {
                    outcome = Some(this);
                }
            }
            Ok(outcome)
        })
    }
}

/// A refund as the core reads it: which request of this service it is
/// (its metadata), and its status.
pub fn refund_report(refund: &stripe_shared::Refund) -> RefundReport {
    let number = |key: &str| {
        refund
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.get(key))
            .and_then(|value| value.parse().ok())
    };
    RefundReport {
        refund_id: refund.id.to_string(),
        order_id: number(metadata::ORDER_ID),
        number: number(metadata::REFUND_NUMBER),
        status: refund
            .status
            .clone()
            .unwrap_or_else(|| "pending".to_string()),
        amount_cents: Some(refund.amount),
        payment_intent_id: refund
            .payment_intent
            .as_ref()
            .map(|intent| intent.id().to_string()),
    }
}

/// What a PaymentIntent's status says of its charge.
fn outcome_of(intent: &stripe_shared::PaymentIntent) -> Result<ChargeOutcome, GatewayError> {
    Ok(match intent.status {
        PaymentIntentStatus::Succeeded => ChargeOutcome::Succeeded {
            payment_intent_id: intent.id.to_string(),
            amount: Money::from_cents(intent.amount_received)
                .map_err(|_| GatewayError::Unavailable("amount out of range".into()))?,
        },
        PaymentIntentStatus::RequiresAction => ChargeOutcome::AuthenticationRequired {
            payment_intent_id: Some(intent.id.to_string()),
        },
        PaymentIntentStatus::RequiresPaymentMethod | PaymentIntentStatus::Canceled => {
            ChargeOutcome::Declined {
                decline_code: None,
                message: "the card was not charged".to_string(),
            }
        }
        _ => ChargeOutcome::Processing {
            payment_intent_id: intent.id.to_string(),
        },
    })
}

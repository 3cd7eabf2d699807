//! Stripe's receipts of paid orders: an account's payments, newest first,
//! each with the link to its receipt (the charge's `receipt_url`) once
//! learnt. A receipt is asked of Stripe the first time its holder lists
//! their payments after the order completed (a few at a time), and kept:
//! Stripe is never asked again for one it gave.

use futures_util::future::join_all;

use super::gateway::PaymentGateway;
use super::orders::{Order, OrderStatus};
use crate::ledger::AccountId;
use crate::store::error::StoreError;
use crate::store::Store;

/// The most receipts one listing asks Stripe for (the newest first); the
/// others are asked by the next listings.
pub const ASKED_AT_ONCE: usize = 5;

/// The account's payments (orders completed, refunded or not), newest
/// first. With a gateway, the receipts not learnt yet of the newest
/// [`ASKED_AT_ONCE`] are asked of Stripe and recorded; one Stripe does not
/// give (no answer, no charge yet, a link that is not `https`) is left out
/// of this answer and asked again by a later one.
pub async fn payments_of(
    store: &Store,
    gateway: Option<&dyn PaymentGateway>,
    account_id: AccountId,
) -> Result<Vec<Order>, StoreError> {
    let mut payments: Vec<Order> = store
        .billing()
        .orders_of(account_id)
        .await?
        .into_iter()
        .filter(|order| matches!(order.status, OrderStatus::Completed | OrderStatus::Refunded))
        .collect();
    payments.sort_by_key(|order| std::cmp::Reverse((order.completed_at_ms, order.id)));
    let Some(gateway) = gateway else {
        return Ok(payments);
    };
    let asked: Vec<(usize, String)> = payments
        .iter()
        .enumerate()
        .filter(|(_, order)| order.receipt_url.is_none())
        .filter_map(|(index, order)| {
            order
                .stripe_payment_intent_id
                .clone()
                .map(|intent| (index, intent))
        })
        .take(ASKED_AT_ONCE)
        .collect();
    let answers = join_all(
        asked
            .iter()
            .map(|(_, intent)| gateway.receipt_of(intent.clone())),
    )
    .await;
    for ((index, intent), answer) in asked.into_iter().zip(answers) {
        let order_id = payments[index].id;
        match answer {
            Ok(Some(url)) if is_receipt_link(&url) => {
                store
                    .billing()
                    .record_receipt(order_id, url.clone())
                    .await?;
                payments[index].receipt_url = Some(url);
            }
            Ok(Some(url)) => {
                tracing::warn!(order_id, payment_intent = %intent, %url, "Stripe gave a receipt link that is not https: not shown");
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(order_id, payment_intent = %intent, %error, "Stripe's receipt of the order could not be had; asked again when the payments are next listed");
            }
        }
    }
    Ok(payments)
}

/// A link a page may show: `https`, with a host, and nothing that would
/// break out of an attribute.
pub fn is_receipt_link(url: &str) -> bool {
    url.strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '<' | '>' | '\''))
}

#[cfg(test)]
mod tests {
    use super::is_receipt_link;

    #[test]
    fn only_https_links_with_a_host_are_shown() {
        assert!(is_receipt_link(
            "https://pay.stripe.com/receipts/payment/CAca"
        ));
        assert!(!is_receipt_link("http://pay.stripe.com/receipts/x"));
        assert!(!is_receipt_link("javascript:alert(1)"));
        assert!(!is_receipt_link("https:///x"));
        assert!(!is_receipt_link("https://"));
        assert!(!is_receipt_link("https://a.example/\"><script>"));
    }
}

//! Stripe's receipts of paid orders: an account's payments, newest first,
//! each with the link to its receipt (the charge's `receipt_url`) once
//! learnt. A receipt is asked of Stripe when its holder lists their
//! payments after the order completed (a few at a time), and kept: Stripe
//! is never asked again for one it gave, and one it did not give is asked
//! again only an hour later, for 30 days after the payment. Each ask is
//! claimed in the store first, so that of listings at once (one server's,
//! or several servers') one alone asks. The receipts are a courtesy to the
//! listing: a store that cannot record them leaves the listing answered
//! all the same (logged, and asked again later).

use futures_util::future::join_all;

use super::gateway::PaymentGateway;
use super::orders::{Order, OrderStatus};
use crate::ledger::AccountId;
use crate::store::error::StoreError;
use crate::store::Store;

/// The most receipts one listing asks Stripe for (the newest first); the
/// others are asked by the next listings.
pub const ASKED_AT_ONCE: usize = 5;

/// How long after asking Stripe for a receipt it did not give it is asked
/// again.
pub const ASK_AGAIN_AFTER_MS: i64 = 3_600_000;

/// How long after a payment its receipt is asked for.
pub const ASK_FOR_MS: i64 = 30 * 86_400_000;

/// The account's payments (orders completed, refunded or not), newest
/// first. With a gateway, the receipts not learnt yet of the newest
/// [`ASKED_AT_ONCE`] that are due (never asked, or asked
/// [`ASK_AGAIN_AFTER_MS`] ago or more, within [`ASK_FOR_MS`] of the
/// payment) are claimed (the store records the ask, unless another
/// listing claimed it first: that one asks, and this answer goes without
/// it), then asked of Stripe; one Stripe does not give (no answer, no
/// charge yet, a link that is not `https`) is left out of this answer and
/// asked again by a later one once due. A claim or a receipt the store
/// cannot record is logged and fails nothing: a receipt Stripe gave is
/// shown all the same, and asked again once due (an ask not claimed is not
/// made, and the next listing claims it).
pub async fn payments_of(
    store: &Store,
    gateway: Option<&dyn PaymentGateway>,
    account_id: AccountId,
    now_ms: i64,
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
    let due: Vec<(usize, String)> = payments
        .iter()
        .enumerate()
        .filter(|(_, order)| order.receipt_url.is_none() && receipt_due(order, now_ms))
        .filter_map(|(index, order)| {
            order
                .stripe_payment_intent_id
                .clone()
                .map(|intent| (index, intent))
        })
        .take(ASKED_AT_ONCE)
        .collect();
    let last_asked_by_ms = now_ms.saturating_sub(ASK_AGAIN_AFTER_MS);
    let claims = join_all(due.iter().map(|(index, _)| {
        store
            .billing()
            .claim_receipt_ask(payments[*index].id, now_ms, last_asked_by_ms)
    }))
    .await;
    let mut asked = Vec::with_capacity(due.len());
    for ((index, intent), claim) in due.into_iter().zip(claims) {
        let order_id = payments[index].id;
        match claim {
            Ok(true) => {
                payments[index].receipt_asked_at_ms = Some(now_ms);
                asked.push((index, intent));
            }
            // Another listing asks (or learnt it): shown by the next.
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(order_id, %error, "the ask for the order's receipt could not be recorded; Stripe not asked, the next listing asks");
            }
        }
    }
    let answers = join_all(
        asked
            .iter()
            .map(|(_, intent)| gateway.receipt_of(intent.clone())),
    )
    .await;
    for ((index, intent), answer) in asked.into_iter().zip(answers) {
        let order_id = payments[index].id;
        let given = match answer {
            Ok(Some(url)) if is_receipt_link(&url) => url,
            Ok(Some(url)) => {
                tracing::warn!(order_id, payment_intent = %intent, %url, "Stripe gave a receipt link that is not https: not shown");
                continue;
            }
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(order_id, payment_intent = %intent, %error, "Stripe's receipt of the order could not be had; asked again in an hour, when the payments are listed");
                continue;
            }
        };
        if let Err(error) = store
            .billing()
            .record_receipt(order_id, given.clone())
            .await
        {
            tracing::warn!(order_id, payment_intent = %intent, %error, "the receipt Stripe gave could not be recorded; shown in this listing, asked again in an hour");
        }
        payments[index].receipt_url = Some(given);
    }
    Ok(payments)
}

/// Whether Stripe is to be asked for the receipt of `order` (paid, none
/// learnt) at `now_ms`: within [`ASK_FOR_MS`] of its payment, never asked
/// or asked [`ASK_AGAIN_AFTER_MS`] ago or more.
fn receipt_due(order: &Order, now_ms: i64) -> bool {
    let recent = order
        .completed_at_ms
        .is_some_and(|paid| now_ms.saturating_sub(paid) <= ASK_FOR_MS);
    let rested = order
        .receipt_asked_at_ms
        .is_none_or(|asked| now_ms.saturating_sub(asked) >= ASK_AGAIN_AFTER_MS);
    recent && rested
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
    use super::{is_receipt_link, receipt_due, ASK_AGAIN_AFTER_MS, ASK_FOR_MS};
    use crate::billing::orders::{Order, OrderStatus, OrderType};
    use crate::ledger::AccountId;
    use crate::money::Money;

    fn paid_at(completed_at_ms: i64, receipt_asked_at_ms: Option<i64>) -> Order {
        Order {
            id: 1,
            account_id: AccountId(1),
            order_type: OrderType::TopUp,
            amount: Money::from_micros(10_000_000),
            list_price: Money::from_micros(10_000_000),
            pricing_mode: None,
            stripe_session_id: None,
            stripe_payment_intent_id: Some("pi_1".into()),
            discount_code_id: None,
            amount_refunded: Money::ZERO,
            status: OrderStatus::Completed,
            created_at_ms: completed_at_ms,
            completed_at_ms: Some(completed_at_ms),
            receipt_url: None,
            receipt_asked_at_ms,
        }
    }

    #[test]
    fn a_receipt_is_asked_for_hourly_within_thirty_days_of_the_payment() {
        let paid = 1_000_000_000_000;
        assert!(receipt_due(&paid_at(paid, None), paid));
        assert!(!receipt_due(
            &paid_at(paid, Some(paid)),
            paid + ASK_AGAIN_AFTER_MS - 1
        ));
        assert!(receipt_due(
            &paid_at(paid, Some(paid)),
            paid + ASK_AGAIN_AFTER_MS
        ));
        assert!(receipt_due(&paid_at(paid, None), paid + ASK_FOR_MS));
        assert!(!receipt_due(&paid_at(paid, None), paid + ASK_FOR_MS + 1));
    }

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

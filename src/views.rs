//! What the API, the balance feed and the command line's `--json` show of
//! the core's rows, one shape each, below every module that shows them
//! (`routes` answers with them, and `feed`, which `routes` opens, sends
//! them too).

use serde::Serialize;
use sms_credit_actors::account_actor::ADJUSTMENT_DESCRIPTION;
use sms_credit_actors::clock::format_rfc3339_ms;
use sms_credit_actors::grants::Draw;
use sms_credit_actors::{AccountId, LedgerEntry, TransactionKind};

/// A ledger row as the API, the balance feed and `--json` show it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TransactionView {
    account_id: AccountId,
    seq: i64,
    #[serde(rename = "type")]
    kind: TransactionKind,
    amount_micros: i64,
    balance_after_micros: i64,
    /// What names the change; not shown to the account holder for an
    /// adjustment (the operator's own words).
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    order_id: Option<i64>,
    /// What the account holder reads of the row.
    description: String,
    /// The operator's reason for an adjustment: in the admin API only,
    /// never shown to the account holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// The grants the row took credit from (positive) or gave it back to
    /// (negative); empty when it touched none (a credit that paid down
    /// nothing). The row's amount is the credit it made less their sum.
    funded_by: Vec<Draw>,
}

impl TransactionView {
    /// The row as its account holder reads it: nothing of an adjustment
    /// that is the operator's own words (its reason, its key), and its
    /// description only when the row was written with its reason apart.
    /// A server of the release before (during a rolling upgrade) writes the
    /// operator's reason as the description and no reason: the holder
    /// reads the neutral description for such a row.
    pub fn for_holder(entry: &LedgerEntry) -> TransactionView {
        let adjustment = entry.kind == TransactionKind::Adjustment;
        let description = if adjustment && entry.reason.is_none() {
            ADJUSTMENT_DESCRIPTION.to_string()
        } else {
            entry.description.clone()
        };
        TransactionView {
            reason: None,
            idempotency_key: (!adjustment).then(|| entry.idempotency_key.clone()),
            description,
            ..TransactionView::from(entry)
        }
    }
}

/// The row as the operator reads it.
impl From<&LedgerEntry> for TransactionView {
    fn from(entry: &LedgerEntry) -> TransactionView {
        TransactionView {
            account_id: entry.account_id,
            seq: entry.seq,
            kind: entry.kind,
            amount_micros: entry.amount.micros(),
            balance_after_micros: entry.balance_after.micros(),
            idempotency_key: Some(entry.idempotency_key.clone()),
            order_id: entry.order_id,
            description: entry.description.clone(),
            reason: entry.reason.as_deref().cloned(),
            created_at: format_rfc3339_ms(entry.created_at_ms),
            funded_by: entry.funded_by.draws().to_vec(),
        }
    }
}

//! An account's ledger as CSV (RFC 4180), for spreadsheets and auditors:
//! amounts in integer micro-dollars and in dollars, text fields quoted when
//! needed and defused when a spreadsheet would read them as a formula.

use crate::clock::format_rfc3339_ms;
use crate::ledger::LedgerEntry;

/// The header row. `description` is what the account holder reads;
/// `reason` (after the columns earlier releases had, so that they keep
/// their places) the operator's reason for an adjustment; `funded_by`,
/// last, the grants the row took from (positive) or gave back to
/// (negative): `grant:category:micros`, `;`-separated.
pub const CSV_HEADER: &str = "account_id,seq,type,amount_micros,amount,balance_after_micros,balance_after,idempotency_key,order_id,description,created_at,reason,funded_by\r\n";

/// A row's funding in its CSV cell: `12:paid:5000000;15:promotional:-20000`.
fn funding_cell(entry: &LedgerEntry) -> String {
    entry
        .funded_by
        .draws()
        .iter()
        .map(|draw| {
            format!(
                "{}:{}:{}",
                draw.grant_id,
                draw.category,
                draw.amount.micros()
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// One text cell: a leading `=`, `+`, `-`, `@`, tab or CR gets a `'` so it
/// stays text; a cell with a comma, quote or line break is quoted.
fn text_cell(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// Dollars as a plain decimal, every significant digit kept.
pub fn decimal(amount: crate::money::Money) -> String {
    amount.to_string().replacen('$', "", 1)
}

/// One ledger row as a CSV line (ending in CRLF).
pub fn csv_row(entry: &LedgerEntry) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
        entry.account_id,
        entry.seq,
        entry.kind,
        entry.amount.micros(),
        decimal(entry.amount),
        entry.balance_after.micros(),
        decimal(entry.balance_after),
        text_cell(&entry.idempotency_key),
        entry.order_id.map(|id| id.to_string()).unwrap_or_default(),
        text_cell(&entry.description),
        format_rfc3339_ms(entry.created_at_ms),
        // Only an adjustment carries the operator's reason: any other row
        // has none, an empty cell (not a value read back and defaulted).
        text_cell(entry.reason.as_deref().map_or("", String::as_str)),
        funding_cell(entry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{AccountId, TransactionKind};
    use crate::money::Money;

    #[test]
    fn rows_are_exact_and_text_is_quoted_and_defused() {
        let entry = LedgerEntry {
            account_id: AccountId(3),
            seq: 7,
            kind: TransactionKind::Debit,
            amount: Money::from_micros(-56_500),
            balance_after: Money::from_micros(1_943_500),
            idempotency_key: "msg:12".to_string(),
            order_id: None,
            description: "=HYPERLINK(\"x\"), then more".to_string(),
            reason: None,
            created_at_ms: 0,
            funded_by: crate::grants::Funding::new(vec![
                crate::grants::Draw {
                    grant_id: 2,
                    category: crate::grants::Category::Promotional,
                    amount: Money::from_micros(6_500),
                },
                crate::grants::Draw {
                    grant_id: 5,
                    category: crate::grants::Category::Paid,
                    amount: Money::from_micros(50_000),
                },
            ]),
        };
        assert_eq!(
            csv_row(&entry),
            "3,7,debit,-56500,-0.0565,1943500,1.9435,msg:12,,\"'=HYPERLINK(\"\"x\"\"), then more\",1970-01-01T00:00:00.000Z,,2:promotional:6500;5:paid:50000\r\n"
        );
        assert_eq!(text_cell("plain"), "plain");
        assert_eq!(text_cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(
            CSV_HEADER.matches(',').count(),
            csv_row(&entry).matches(',').count() - 1,
            "one comma is inside the quoted description"
        );
    }
}
